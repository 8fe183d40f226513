"""infra/agent_package.py: the wheel fleet VMs install, and the pinned dependency list they install it onto."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from email.parser import Parser
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from infra import bootstrap
from infra.agent_package import REPO_ROOT, agent_wheel_uri, build_agent_wheel
from model_export.errors import ModelfleetError

# Ubuntu 24.04 LTS, the fleet's image: markers are evaluated for its Python, not the one running the tests.
VM_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
HEAVY = ("tensorflow", "keras", "pulumi", "sklearn", "scipy")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_agent_wheel(tmp_path_factory.mktemp("wheel"))


def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def dist_info_file(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as z:
        (path,) = [n for n in z.namelist() if n.endswith(f".dist-info/{name}")]
        return z.read(path).decode()


def base_requirements(wheel: Path) -> list[Requirement]:
    metadata = Parser().parsestr(dist_info_file(wheel, "METADATA"))
    reqs = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(VM_ENV)]


def test_wheel_name_and_hash(built: tuple[Path, str]) -> None:
    wheel, sha = built
    assert wheel.name.startswith("modelfleet-") and wheel.name.endswith("-py3-none-any.whl")
    assert sha == hashlib.sha256(wheel.read_bytes()).hexdigest() and len(sha) == 64


def test_build_is_reproducible(built: tuple[Path, str], tmp_path: Path) -> None:
    """Same sources, same hash: an unchanged agent must not roll the fleet on every `pulumi up`."""
    _, sha = build_agent_wheel(tmp_path)
    assert sha == built[1]


def test_wheel_holds_the_package_and_nothing_else(built: tuple[Path, str]) -> None:
    contents = names(built[0])
    sources = {
        p.relative_to(REPO_ROOT).as_posix()
        for package in ("model_export", "modelfleet")
        for p in (REPO_ROOT / package).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources and sources <= contents
    assert not any(n.startswith(("infra/", "tests/", "bench/")) or n.endswith(".pyc") for n in contents)
    assert "modelfleet = modelfleet.cli:main" in dist_info_file(built[0], "entry_points.txt")


def test_wheel_contains_the_agent(built: tuple[Path, str]) -> None:
    assert "modelfleet/agent/__init__.py" in names(built[0])


def test_a_new_subpackage_is_packaged_and_changes_the_hash(built: tuple[Path, str], tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copyfile(REPO_ROOT / "pyproject.toml", repo / "pyproject.toml")
    for package in ("model_export", "modelfleet"):
        shutil.copytree(REPO_ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    probe = repo / "modelfleet" / "zz_probe"
    probe.mkdir()
    (probe / "__init__.py").write_text('"""a new subpackage"""\n')
    (probe / "mod.py").write_text("PROBE = 1\n")
    wheel, sha = build_agent_wheel(tmp_path / "out", repo_root=repo)
    assert {"modelfleet/zz_probe/__init__.py", "modelfleet/zz_probe/mod.py"} <= names(wheel)
    assert sha != built[1]


def test_base_requirements_have_no_tensorflow_or_pulumi(built: tuple[Path, str]) -> None:
    base = {canonicalize_name(r.name) for r in base_requirements(built[0])}
    assert base == {"boto3", "google-cloud-storage", "numpy", "pydantic", "tqdm"}
    assert not any(heavy in name for name in base for heavy in HEAVY)
    # ... while the extras that do need them are still declared.
    metadata = dist_info_file(built[0], "METADATA")
    assert 'extra == "export"' in metadata and 'extra == "infra"' in metadata


def test_cli_imports_from_the_wheel_without_heavy_dependencies(built: tuple[Path, str]) -> None:
    """On the VM only the base install exists: `modelfleet --help` must work with TensorFlow and Pulumi absent."""
    code = textwrap.dedent(
        f"""
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HEAVY!r}:
                    raise ImportError(f"blocked: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        sys.path.insert(0, {str(built[0])!r})
        import model_export
        assert model_export.__file__.startswith({str(built[0])!r}), model_export.__file__
        from modelfleet.cli import main
        try:
            main(["--help"])
        except SystemExit as e:
            sys.exit(e.code)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "modelfleet" in proc.stdout


def test_cli_and_agent_import_only_what_the_vm_installs(built: tuple[Path, str]) -> None:
    """Every third-party module the CLI and the agent import at start-up comes from a package the VM installs
    (agent-requirements.txt): a module missing there is an ImportError on every fleet VM."""
    code = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(built[0])!r})
        import modelfleet.cli, modelfleet.agent.main
        print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    owners = packages_distributions()
    # Interpreter-level names (``__main__``, site hooks such as setuptools' ``_distutils_hack``) are not our imports.
    ours = {"model_export", "modelfleet"}
    imported = {name for name in json.loads(proc.stdout) if not name.startswith("_") and name not in ours}
    imported -= set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    third_party = {canonicalize_name(dist) for name in imported for dist in owners.get(name, [name])}
    pins = _pins(bootstrap.TEMPLATES / "agent-requirements.txt")
    assert third_party - set(pins) == set(), "imported at start-up but not installed on the VMs"


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_agent_requirements_are_the_pinned_closure_of_the_base_install(built: tuple[Path, str]) -> None:
    """The VM's requirements list = every package the base install needs, at constraints.txt's versions."""
    pins = _pins(bootstrap.TEMPLATES / "agent-requirements.txt")
    constraints = _pins(REPO_ROOT / "constraints.txt")
    assert {name: constraints.get(name) for name in pins} == pins

    closure: set[str] = set()
    todo = base_requirements(built[0])
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        assert name in pins, f"{name} (needed via {req}) is not pinned in agent-requirements.txt"
        assert req.specifier.contains(Version(pins[name]), prereleases=True), f"{name}=={pins[name]} violates {req}"
        if name not in closure:
            closure.add(name)
            requires = distribution(name).requires or []
            todo += [r for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate(VM_ENV)]
    assert closure == set(pins)


def test_agent_wheel_uri_is_content_addressed(built: tuple[Path, str]) -> None:
    wheel, sha = built
    uri = agent_wheel_uri("gs://mf-store/prod/", wheel, sha)
    assert uri == f"gs://mf-store/prod/_agent/{sha}/{wheel.name}"
    # ... and is what the bootstrap accepts.
    bootstrap.BootstrapArgs(
        cloud="gcp",
        store_uri="gs://mf-store/prod",
        models=("digits",),
        role="stable",
        agent_wheel=bootstrap.AgentWheel(uri, sha),
    )


def test_a_failed_build_raises_a_project_error(tmp_path: Path) -> None:
    for package in ("model_export", "modelfleet"):
        (tmp_path / package).mkdir()
    with pytest.raises(ModelfleetError, match=r"pyproject\.toml does not exist"):
        build_agent_wheel(tmp_path / "out", repo_root=tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project\n")
    with pytest.raises(ModelfleetError, match=r"building the agent wheel .* failed"):
        build_agent_wheel(tmp_path / "out", repo_root=tmp_path)
