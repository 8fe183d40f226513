"""The agent bundle fleet VMs install: the ``modelfleet`` wheel plus every dependency wheel, built at ``pulumi up``.

A VM installs the agent with no package index: the bundle (one zip in the store, ``_agent/<sha256>/<name>.zip``)
carries the ``modelfleet`` wheel, the wheels of its pinned dependency closure (``templates/agent-requirements.txt``)
for the VM's platform (``VM_TARGET``: CPython 3.12, manylinux x86_64, glibc 2.39: Ubuntu 24.04 on both clouds), a
``requirements.txt`` with one sha256 per wheel, and the VM-side scripts the boot installs beside the venv. On the VM
``install-agent.sh`` checks the bundle against the sha256 in the user-data and runs ``pip install --no-index
--find-links <bundle>/wheels --require-hashes -r <bundle>/requirements.txt``: PyPI is never asked.

Layout of the zip (stored, not compressed: wheels are zips already):

    bundle.json              what it was built for (``python``, ``platforms``) and the agent wheel's name
    requirements.txt         ``name==version --hash=sha256:...`` for every wheel, the agent's included
    wheels/*.whl             the agent wheel and its dependency closure, one file per package
    scripts/*                VM-side helpers (``BUNDLED_SCRIPTS``), installed into /opt/modelfleet

The build is reproducible: the agent wheel is (fixed zip timestamps and file modes; only ``pyproject.toml``,
``model_export/`` and ``modelfleet/`` staged), PyPI never changes a published file, and the zip has fixed entry
order, timestamps and modes. So the bundle's hash, and with it the instance template, changes only when the agent's
code, its pins or the bundled scripts change. See docs/bootstrap.md ("Agent delivery").
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from model_export.errors import ModelfleetError
from model_export.layout import agent_wheel_key
from model_export.transfer import sha256_file

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "templates"
# The agent's pinned runtime closure (names and versions; the bundle adds the hashes of the files it carries).
AGENT_REQUIREMENTS = TEMPLATES / "agent-requirements.txt"
# VM-side scripts that travel in the bundle instead of the user-data (AWS's 16 KB limit): installed next to the venv.
BUNDLED_SCRIPTS = ("livez_report.py", "registry_login.py")
# Zip timestamps of every build (1980-01-01, the earliest a zip can hold): the wheel's bytes depend on content only.
SOURCE_DATE_EPOCH = "315532800"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
# The library and the apps; never `infra/`, tests or docs, whose edits must not roll the fleet.
_STAGED = ("pyproject.toml", "model_export", "modelfleet")
BUNDLE_MANIFEST, BUNDLE_REQUIREMENTS, BUNDLE_WHEELS, BUNDLE_SCRIPTS = (
    "bundle.json",
    "requirements.txt",
    "wheels",
    "scripts",
)
_OLDEST_MANYLINUX_GLIBC = 17  # manylinux_2_17 = manylinux2014, the oldest tag current wheels use
# name-version(-build)?-python-abi-platform.whl (PEP 427); the name as the file spells it (underscores)
_WHEEL_FILE = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


@dataclass(frozen=True)
class VmTarget:
    """The interpreter and platform the fleet VMs install the agent on; the wheels are downloaded for it.

    Both clouds boot Ubuntu 24.04 LTS (GCP ``ubuntu-2404-lts-amd64`` and the Deep Learning VM built on it; AWS
    Canonical's 24.04 AMI and the Deep Learning Base AMI for Ubuntu 24.04), whose ``/usr/bin/python3`` is CPython
    3.12 and whose glibc is 2.39. ``install-agent.sh`` refuses a bundle built for another Python (``bundle.json``).
    """

    python_version: str = "3.12"  # major.minor
    glibc: tuple[int, int] = (2, 39)
    arch: str = "x86_64"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d{1,2}", self.python_version):
            raise ValueError(f"python_version {self.python_version!r}: use major.minor, e.g. '3.12'")
        if self.glibc[0] != 2 or self.glibc[1] < _OLDEST_MANYLINUX_GLIBC:
            raise ValueError(f"glibc {self.glibc!r}: manylinux wheels need glibc 2.{_OLDEST_MANYLINUX_GLIBC} or later")

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platforms(self) -> tuple[str, ...]:
        """Every manylinux tag a VM of this glibc runs, newest first. pip does not widen ``--platform
        manylinux_2_39_x86_64`` to older glibc tags itself (only the legacy manylinux2014/2010 aliases), so each is
        named; ``manylinux2014`` brings ``manylinux2010`` and ``manylinux1`` with it."""
        newest = self.glibc[1]
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(newest, _OLDEST_MANYLINUX_GLIBC - 1, -1)]
        return (*tags, f"manylinux2014_{self.arch}")

    @property
    def tag(self) -> str:
        """``cp312-manylinux_2_39_x86_64``: in the bundle's file name."""
        return f"{self.abi}-manylinux_{self.glibc[0]}_{self.glibc[1]}_{self.arch}"

    def pip_download_args(self) -> list[str]:
        """pip's cross-platform download options: binary wheels for this interpreter and platform only (pip requires
        ``--only-binary=:all:`` or ``--no-deps`` with them; we pass both: the requirements are the whole closure)."""
        args = ["--only-binary=:all:", "--no-deps", "--implementation", "cp"]
        args += ["--python-version", self.python_version, "--abi", self.abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args


VM_TARGET = VmTarget()


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


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if not line.startswith("WARNING:")]
    return (lines or proc.stderr.strip().splitlines() or ["no output"])[-1]


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
            raise ModelfleetError(f"building the agent wheel from {repo_root} failed: {_last_line(proc)}")
        target = out_dir / wheels[0].name
        shutil.move(str(wheels[0]), target)
    return target, sha256_file(target).sha256


# --- the dependency wheelhouse -------------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    """PEP 503's normalised project name (``Typing_Extensions`` -> ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = AGENT_REQUIREMENTS) -> dict[str, str]:
    """``{canonical name: version}`` of a requirements file of ``name==version`` lines (comments ignored)."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line)
        if not match:
            raise ModelfleetError(f"{path}:{number}: {raw!r} is not an exact pin (name==version)")
        name = canonical_name(match.group(1))
        if name in pins:
            raise ModelfleetError(f"{path}:{number}: {name} is pinned twice")
        pins[name] = match.group(2)
    return pins


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str  # canonical
    version: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> Wheel:
        match = _WHEEL_FILE.match(path.name)
        if not match:
            raise ModelfleetError(f"{path.name} is not a wheel file name")
        return cls(path, canonical_name(match.group("name")), match.group("version"), sha256_file(path).sha256)

    @property
    def requirement(self) -> str:
        """Its line in the bundle's requirements: exact version, and the one file pip may install for it."""
        return f"{self.name}=={self.version} --hash=sha256:{self.sha256}"


def download_wheels(dest: Path, target: VmTarget = VM_TARGET, requirements: Path = AGENT_REQUIREMENTS) -> list[Wheel]:
    """``pip download`` the pinned closure for ``target`` into ``dest``: one binary wheel per pin, nothing else.

    Uses the deploying machine's pip configuration (its index or mirror; pip checks each file against the index's
    published sha256) and pip's HTTP cache, so a second build downloads nothing.
    """
    pins = read_pins(requirements)
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", str(dest)]
    proc = subprocess.run(
        [*cmd, *target.pip_download_args(), "--requirement", str(requirements)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise ModelfleetError(
            f"downloading the agent's dependencies for {target.tag} failed: {_last_line(proc)}; the deploying machine "
            "needs its package index (PyPI or a mirror) at `pulumi up`, never the VMs"
        )
    files = sorted(dest.iterdir())
    wheels = [Wheel.of(path) for path in files if path.suffix == ".whl"]
    wanted = [w for w in wheels if pins.get(w.name) == w.version]
    unexpected = sorted({p.name for p in files} - {w.path.name for w in wanted})
    missing = sorted(set(pins) - {w.name for w in wanted})
    if missing or unexpected or len(wanted) != len(pins):
        raise ModelfleetError(
            f"pip download for {target.tag} did not give exactly one wheel per pin of {requirements.name} "
            f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'})"
        )
    return wanted


def hashed_requirements(wheels: Sequence[Wheel]) -> str:
    """The bundle's requirements.txt: every wheel pinned to its version and its one file's sha256 (pip's
    hash-checking mode: ``--require-hashes`` refuses any other file and any requirement without a hash)."""
    header = "# modelfleet agent bundle: install with --no-index --require-hashes (infra/agent_package.py)\n"
    return header + "".join(f"{w.requirement}\n" for w in sorted(wheels, key=lambda w: w.name))


# --- the bundle -----------------------------------------------------------------------------------------------------


def _zip_entry(archive: zipfile.ZipFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_STORED
    info.create_system = 3  # unix: the mode below is read as such on every platform
    info.external_attr = (0o100000 | mode) << 16
    archive.writestr(info, data)


def bundle_name(agent_wheel: Path, target: VmTarget) -> str:
    """``modelfleet-<version>-agent-<target tag>.zip``."""
    match = _WHEEL_FILE.match(agent_wheel.name)
    if not match or match.group("name") != "modelfleet":
        raise ModelfleetError(f"{agent_wheel.name} is not a modelfleet wheel")
    return f"modelfleet-{match.group('version')}-agent-{target.tag}.zip"


def write_bundle(
    out: Path, agent: Wheel, dependencies: Sequence[Wheel], target: VmTarget, scripts: Mapping[str, bytes]
) -> None:
    """Write the bundle zip: fixed entry order, timestamps and modes, so equal inputs give equal bytes."""
    wheels = sorted([agent, *dependencies], key=lambda w: w.path.name)
    manifest = {
        "agent": agent.path.name,
        "python": target.python_version,
        "platforms": list(target.platforms),
        "format": 1,
    }
    with zipfile.ZipFile(out, "w") as archive:
        _zip_entry(archive, BUNDLE_MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
        _zip_entry(archive, BUNDLE_REQUIREMENTS, hashed_requirements(wheels).encode())
        for name in sorted(scripts):
            _zip_entry(archive, f"{BUNDLE_SCRIPTS}/{name}", scripts[name], 0o755)
        for wheel in wheels:
            _zip_entry(archive, f"{BUNDLE_WHEELS}/{wheel.path.name}", wheel.path.read_bytes())


def build_agent_bundle(
    out_dir: Path,
    repo_root: Path = REPO_ROOT,
    target: VmTarget = VM_TARGET,
    requirements: Path = AGENT_REQUIREMENTS,
) -> tuple[Path, str]:
    """Build the agent bundle for ``target`` into ``out_dir``; return its path and sha256 (what the user-data names).

    Needs the deploying machine's package index (``download_wheels``); the VMs never do.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="modelfleet-bundle-") as tmp:
        agent_path, _ = build_agent_wheel(Path(tmp) / "agent", repo_root)
        agent = Wheel.of(agent_path)
        dependencies = download_wheels(Path(tmp) / "wheels", target, requirements)
        if agent.name in {w.name for w in dependencies}:
            raise ModelfleetError(f"{requirements.name} pins modelfleet itself; the bundle adds the agent wheel")
        scripts = {name: (TEMPLATES / name).read_bytes() for name in BUNDLED_SCRIPTS}
        out = out_dir / bundle_name(agent_path, target)
        write_bundle(out, agent, dependencies, target, scripts)
    return out, sha256_file(out).sha256


def bundle_requirements(bundle: Path) -> dict[str, tuple[str, str]]:
    """``{name: (version, sha256)}`` of a bundle's requirements.txt (for checks and tests)."""
    with zipfile.ZipFile(bundle) as archive:
        text = archive.read(BUNDLE_REQUIREMENTS).decode()
    found: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            spec, digest = line.split(" --hash=sha256:")
            name, version = spec.split("==")
            found[name] = (version, digest)
    return found


@dataclass(frozen=True)
class AgentWheelFile:
    """The agent artefact on the deploying machine, and where it goes in a store: since the offline boot, the agent
    bundle (``build_agent_bundle``). The stores upload ``path`` under ``key(prefix)``."""

    path: Path
    sha256: str

    def key(self, prefix: str) -> str:
        """Where the bundle goes under the store prefix ``prefix`` (see ``model_export.layout.agent_wheel_key``)."""
        return agent_wheel_key(self.sha256, self.path.name, prefix)


def agent_wheel_uri(store_uri: str, wheel: Path, sha256: str) -> str:
    """The artefact's content-addressed location in the store at ``store_uri``."""
    return f"{store_uri.rstrip('/')}/{AgentWheelFile(wheel, sha256).key('')}"


@functools.cache
def deployed_agent_wheel() -> AgentWheelFile:
    """The agent bundle a stack deploys, built once per process into a directory that outlives the program: the
    Pulumi engine reads the FileAsset when it uploads, which may be after the program has returned."""
    path, sha256 = build_agent_bundle(Path(tempfile.mkdtemp(prefix="modelfleet-agent-")))
    return AgentWheelFile(path, sha256)
