"""infra/agent_package.py: the agent wheel, the pinned dependency list, and the bundle fleet VMs install both from with
no package index (built for real: the deploying machine's index, PyPI here, is asked at build time)."""

from __future__ import annotations

import hashlib
import itertools
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

from infra import agent_package, bootstrap
from infra.agent_package import (
    REPO_ROOT,
    VM_TARGET,
    VmTarget,
    agent_wheel_uri,
    build_agent_bundle,
    build_agent_wheel,
    bundle_requirements,
    read_pins,
)
from model_export.errors import ModelfleetError

# Ubuntu 24.04 LTS, the fleet's image: markers are evaluated for its Python, not the one running the tests.
VM_ENV = {
    "python_version": VM_TARGET.python_version,
    "python_full_version": f"{VM_TARGET.python_version}.3",
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
    assert base == {"argcomplete", "boto3", "google-cloud-storage", "numpy", "pydantic", "tqdm"}
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


def test_agent_wheel_uri_is_content_addressed(bundle: tuple[Path, str]) -> None:
    wheel, sha = bundle
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


# --- the bundle: the agent and its dependency wheels for the VM, installed with no package index -------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build_agent_bundle(tmp_path_factory.mktemp("bundle"))


def bundle_names(bundle: Path) -> list[str]:
    with zipfile.ZipFile(bundle) as z:
        return z.namelist()


def test_the_vm_target_is_ubuntu_2404s_python_and_glibc() -> None:
    assert (VM_TARGET.python_version, VM_TARGET.glibc, VM_TARGET.arch) == ("3.12", (2, 39), "x86_64")
    args = VM_TARGET.pip_download_args()
    assert {"--only-binary=:all:", "--no-deps"} <= set(args)
    pairs = list(itertools.pairwise(args))
    assert ("--python-version", "3.12") in pairs and ("--implementation", "cp") in pairs and ("--abi", "cp312") in pairs
    platforms = [value for flag, value in pairs if flag == "--platform"]
    # pip widens only the legacy aliases itself: every glibc from 2.39 down to 2.17 is named, newest first
    assert platforms[0] == "manylinux_2_39_x86_64" and "manylinux_2_28_x86_64" in platforms
    assert platforms[-2:] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert VM_TARGET.tag == "cp312-manylinux_2_39_x86_64"


def test_bundle_holds_the_agent_and_one_wheel_per_pin_each_with_its_hash(bundle: tuple[Path, str]) -> None:
    path, sha = bundle
    assert path.name == f"modelfleet-{dist_version(path)}-agent-cp312-manylinux_2_39_x86_64.zip"
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    pins = read_pins()
    required = bundle_requirements(path)
    assert set(required) == set(pins) | {"modelfleet"}
    assert {name: version for name, (version, _) in required.items() if name != "modelfleet"} == pins
    with zipfile.ZipFile(path) as z:
        wheels = {n.removeprefix("wheels/"): z.read(n) for n in z.namelist() if n.startswith("wheels/")}
        requirements = z.read("requirements.txt").decode()
    assert len(wheels) == len(required)
    # every requirement line is an exact pin with the sha256 of the one file the bundle carries for it
    digests = {hashlib.sha256(data).hexdigest() for data in wheels.values()}
    assert {digest for _, digest in required.values()} == digests
    lines = [line for line in requirements.splitlines() if line and not line.startswith("#")]
    assert len(lines) == len(required) and all(" --hash=sha256:" in line and "==" in line for line in lines)


def dist_version(bundle: Path) -> str:
    with zipfile.ZipFile(bundle) as z:
        return str(json.loads(z.read("bundle.json"))["agent"].split("-")[1])


def _fits_the_vm(wheel: str) -> bool:
    """A wheel file name's tags run on CPython 3.12, manylinux glibc <= 2.39, x86_64."""
    _name, _version, *rest = wheel.removesuffix(".whl").split("-")
    python, abi, platforms = rest[-3:]
    pythons = python.split(".")
    if abi == "none":
        python_ok = any(p in ("py3", "py2", "cp312") for p in pythons)
    elif abi == "abi3":
        python_ok = any(p.startswith("cp3") and int(p[3:]) <= 12 for p in pythons)
    else:
        python_ok = abi == "cp312" and "cp312" in pythons

    def platform_ok(p: str) -> bool:
        if p == "any":
            return True
        if p in ("manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"):
            return True
        parts = p.split("_")
        return p.startswith("manylinux_2_") and p.endswith("_x86_64") and int(parts[2]) <= 39

    return python_ok and any(platform_ok(p) for p in platforms.split("."))


def test_every_wheel_in_the_bundle_runs_on_the_vm(bundle: tuple[Path, str]) -> None:
    wheels = [n.removeprefix("wheels/") for n in bundle_names(bundle[0]) if n.startswith("wheels/")]
    assert wheels and all(_fits_the_vm(w) for w in wheels), [w for w in wheels if not _fits_the_vm(w)]
    # ... and the check refuses what would not.
    for wrong in (
        "numpy-2.4.6-cp311-cp311-manylinux_2_27_x86_64.whl",
        "numpy-2.4.6-cp312-cp312-macosx_14_0_arm64.whl",
        "cryptography-50.0.2-cp311-abi3-manylinux_2_40_x86_64.whl",
        "numpy-2.4.6-cp312-cp312-manylinux_2_27_aarch64.whl",
    ):
        assert not _fits_the_vm(wrong), wrong


def test_bundle_manifest_and_scripts(bundle: tuple[Path, str]) -> None:
    with zipfile.ZipFile(bundle[0]) as z:
        manifest = json.loads(z.read("bundle.json"))
        scripts = {n.removeprefix("scripts/"): z.read(n) for n in z.namelist() if n.startswith("scripts/")}
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
        stored = {i.compress_type for i in z.infolist()}
        times = {i.date_time for i in z.infolist()}
    assert manifest["python"] == "3.12" and manifest["platforms"] == list(VM_TARGET.platforms)
    assert manifest["agent"].startswith("modelfleet-") and manifest["agent"].endswith("-py3-none-any.whl")
    assert f"wheels/{manifest['agent']}" in modes
    assert set(scripts) == set(agent_package.BUNDLED_SCRIPTS)
    for name, data in scripts.items():
        assert data == (bootstrap.TEMPLATES / name).read_bytes()
        assert modes[f"scripts/{name}"] & 0o777 == 0o755
    assert stored == {zipfile.ZIP_STORED} and times == {(1980, 1, 1, 0, 0, 0)}


def test_bundle_build_is_reproducible(bundle: tuple[Path, str], tmp_path: Path) -> None:
    """Same sources and pins, same bundle hash: an unchanged agent must not roll the fleet on every `pulumi up`."""
    assert build_agent_bundle(tmp_path)[1] == bundle[1]


def test_bundled_requirements_install_with_no_index_and_require_hashes(
    bundle: tuple[Path, str], tmp_path: Path
) -> None:
    """pip itself accepts the bundle's requirements in hash-checking mode against its wheels, with no index: a dry
    run resolves every requirement from the bundle for the VM's platform (pip's own cross-platform check)."""
    with zipfile.ZipFile(bundle[0]) as z:
        z.extractall(tmp_path)
    target = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    target += [arg for p in VM_TARGET.platforms for arg in ("--platform", p)]
    wheels, requirements = str(tmp_path / "wheels"), str(tmp_path / "requirements.txt")
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--find-links", wheels, *target]
    cmd += ["--require-hashes", "--only-binary=:all:", "--dry-run", "--ignore-installed", "--target", str(tmp_path)]
    proc = subprocess.run([*cmd, "--requirement", requirements], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Would install" in proc.stdout and "modelfleet-" in proc.stdout
    # A tampered wheel is refused by hash.
    numpy = next((tmp_path / "wheels").glob("numpy-*.whl"))
    numpy.write_bytes(numpy.read_bytes() + b"tampered")
    proc = subprocess.run([*cmd, "--requirement", requirements], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "THESE PACKAGES DO NOT MATCH THE HASHES" in proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("boto3>=1.0\n", r"is not an exact pin"),
        ("boto3==1.0\nBoto3==1.0\n", r"boto3 is pinned twice"),
    ],
)
def test_requirements_must_be_exact_unique_pins(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    with pytest.raises(ModelfleetError, match=message):
        read_pins(path)


def test_a_failed_download_raises_a_project_error_naming_the_target(tmp_path: Path) -> None:
    path = tmp_path / "requirements.txt"
    path.write_text("modelfleet-surely-not-a-package==0.0.1\n")
    with pytest.raises(ModelfleetError, match=r"downloading the agent's dependencies for cp312-manylinux_2_39"):
        agent_package.download_wheels(tmp_path / "wheels", VM_TARGET, path)


@pytest.mark.parametrize(("kwargs", "message"), [({"python_version": "3"}, "major.minor"), ({"glibc": (2, 5)}, "2.17")])
def test_a_vm_target_is_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VmTarget(**kwargs)  # type: ignore[arg-type]
