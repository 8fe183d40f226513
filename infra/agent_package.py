"""The agent wheel that fleet VMs install: the ``modelfleet`` distribution, built at ``pulumi up`` time.

The stack uploads it to ``<store>/_agent/<sha256>/<wheel name>`` (``model_export.layout.agent_wheel_key``, via
``agent_wheel_uri``) and hands the URI and hash to ``infra.bootstrap``; the VM verifies the hash before installing.
The build is reproducible (fixed zip timestamps and file modes, only ``pyproject.toml``, ``model_export/`` and
``modelfleet/`` staged), so the hash, and with it the instance template, changes only when the agent's code or
packaging does. See docs/bootstrap.md.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from model_export.errors import ModelfleetError
from model_export.layout import agent_wheel_key
from model_export.transfer import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
# Zip timestamps of every build (1980-01-01, the earliest a zip can hold): the wheel's bytes depend on content only.
SOURCE_DATE_EPOCH = "315532800"
# The library and the apps; never `infra/`, tests or docs, whose edits must not roll the fleet.
_STAGED = ("pyproject.toml", "model_export", "modelfleet")


def _stage(repo_root: Path, stage: Path) -> None:
    """Copy what the wheel is built from, with normalised modes (a umask must not change the hash)."""
    for name in _STAGED:
        src = repo_root / name
        if not src.exists():
            raise ModelfleetError(f"cannot build the agent wheel: {src} does not exist")
        if src.is_dir():
            shutil.copytree(src, stage / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"))
        else:
            shutil.copyfile(src, stage / name)
    for path in stage.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def build_agent_wheel(out_dir: Path, repo_root: Path = REPO_ROOT) -> tuple[Path, str]:
    """Build ``modelfleet-<version>-py3-none-any.whl`` into ``out_dir``; return its path and sha256.

    Runs ``pip wheel --no-deps --no-build-isolation`` on a staged copy of the project (``_STAGED`` only), with the
    deploying
    environment's setuptools. The base requirements carry no TensorFlow or Pulumi (those are extras).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelfleet-wheel-") as tmp:
        stage, dist = Path(tmp) / "src", Path(tmp) / "dist"
        stage.mkdir()
        _stage(repo_root, stage)
        env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet"]
        proc = subprocess.run([*cmd, "--wheel-dir", str(dist), str(stage)], capture_output=True, text=True, env=env)
        wheels = sorted(dist.glob("*.whl")) if dist.is_dir() else []
        if proc.returncode != 0 or len(wheels) != 1:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise ModelfleetError(f"building the agent wheel from {repo_root} failed: {detail}")
        target = out_dir / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target, sha256_file(target).sha256


@dataclass(frozen=True)
class AgentWheelFile:
    """A built agent wheel on the deploying machine, and where it goes in a store."""

    path: Path
    sha256: str

    def key(self, prefix: str) -> str:
        """Where the wheel goes under the store prefix ``prefix`` (see ``model_export.layout.agent_wheel_key``)."""
        return agent_wheel_key(self.sha256, self.path.name, prefix)


def agent_wheel_uri(store_uri: str, wheel: Path, sha256: str) -> str:
    """The wheel's content-addressed location in the store at ``store_uri``."""
    return f"{store_uri.rstrip('/')}/{AgentWheelFile(wheel, sha256).key('')}"


@functools.cache
def deployed_agent_wheel() -> AgentWheelFile:
    """The wheel a stack deploys, built once per process into a directory that outlives the program: the Pulumi
    engine reads the FileAsset when it uploads, which may be after the program has returned."""
    path, sha256 = build_agent_wheel(Path(tempfile.mkdtemp(prefix="modelfleet-agent-")))
    return AgentWheelFile(path, sha256)
