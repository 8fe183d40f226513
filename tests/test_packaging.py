"""The distribution as a user installs it (`pip install .`, not editable): what it holds and what it leaves out.

The wheel is the one `pulumi up` builds for the VMs (`infra.agent_package` builds it from a staged copy of the
checkout, with the same pyproject.toml), installed with pip into a directory of its own. Commands run through the
installed console script, so nothing is imported from the checkout unless the command puts the project there itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from infra.agent_package import build_agent_wheel
from modelfleet import __version__
from tests.support import REPO_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-editable install of the checkout: ``<dir>/`` holds the packages, ``<dir>/bin/modelfleet`` the script."""
    wheel, _ = build_agent_wheel(tmp_path_factory.mktemp("wheel"))
    target = tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(target)]
    subprocess.run([*pip, str(wheel)], check=True, timeout=120)
    return target


def run(installed: Path, argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # The dependencies come from this environment's site-packages; ours only from the install.
    env = {"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def python(installed: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run(installed, [sys.executable, "-c", code], cwd)


def test_the_wheel_holds_the_library_and_the_apps_and_not_infra(installed: Path) -> None:
    wheels = list(installed.glob("modelfleet-*.dist-info"))
    assert len(wheels) == 1
    assert (installed / "model_export" / "__init__.py").is_file()
    assert (installed / "modelfleet" / "agent" / "__init__.py").is_file()
    assert not (installed / "infra").exists()
    assert not any(p.name in ("tests", "bench", "docs") for p in installed.iterdir())


def test_both_packages_import_from_the_install_and_infra_does_not(installed: Path, tmp_path: Path) -> None:
    proc = python(
        installed, "import model_export, modelfleet; print(model_export.__file__, modelfleet.__file__)", tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert all(path.startswith(str(installed)) for path in proc.stdout.split())
    proc = python(installed, "import infra", tmp_path)
    assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'infra'" in proc.stderr


def test_the_library_api_imports_without_tensorflow(installed: Path, tmp_path: Path) -> None:
    """A publish-only job (or the agent) must not pay TensorFlow's import; `export_model` loads it on first use."""
    code = (
        "import sys, model_export; from model_export import publish, promote, rollback, open_store; "
        "assert callable(publish) and 'export_model' in model_export.__all__; print('tensorflow' in sys.modules)"
    )
    proc = python(installed, code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_version_is_single_sourced(installed: Path, tmp_path: Path) -> None:
    proc = run(installed, [str(installed / "bin" / "modelfleet"), "--version"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"modelfleet {__version__}\n"
    (dist_info,) = installed.glob("modelfleet-*.dist-info")
    assert f"Version: {__version__}\n" in (dist_info / "METADATA").read_text()
    assert dist_info.name == f"modelfleet-{__version__}.dist-info"


def test_plan_runs_from_a_checkout(installed: Path) -> None:
    """`infra/` is not installed: `plan` finds it in the project (the directory holding Pulumi.yaml)."""
    proc = run(installed, [str(installed / "bin" / "modelfleet"), "plan", "--stack", "staging"], REPO_ROOT / "docs")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("stack staging (gcp, ")


def test_plan_outside_a_project_fails_with_one_line(installed: Path, tmp_path: Path) -> None:
    proc = run(installed, [str(installed / "bin" / "modelfleet"), "plan", "--stack", "staging"], tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("modelfleet: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Pulumi.yaml" in proc.stderr
