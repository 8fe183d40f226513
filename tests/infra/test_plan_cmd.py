"""`modelfleet plan`: a stack's resource tree, offline, from the program `pulumi up` runs, in the user's project."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import KEYS
from infra.stack import STACKS_DIR, stacks_dir_of
from tests.support import REPO_ROOT
from tests.support.cli import run_cli

# Only the keys each cloud requires: every other key keeps its default.
MINIMAL: dict[str, dict[str, Any]] = {
    "gcp": {"cloud": "gcp", "region": "europe-west1", "gcpProject": "acme-ml-test", "models": ["digits"]},
    "aws": {"cloud": "aws", "region": "eu-west-1", "models": ["digits"]},
}


def make_project(root: Path, stacks: dict[str, dict[str, Any]]) -> Path:
    """A user's project: this checkout's Pulumi.yaml and infra/ (linked), and its own stack files."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "Pulumi.yaml", root / "Pulumi.yaml")
    (root / "infra").symlink_to(REPO_ROOT / "infra", target_is_directory=True)
    (root / "stacks").mkdir()
    for name, values in stacks.items():
        doc = {"config": {f"modelfleet:{k}": v for k, v in values.items()}}
        (root / "stacks" / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc))
    return root


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


@pytest.mark.usefixtures("in_repo")
def test_plan_text_shows_the_tree_and_key_settings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", "--stack", "staging")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("stack staging (gcp, europe-west1): ")
    assert "canary weight 10%" in lines[0]
    components = [line.strip() for line in lines if line.startswith("  modelfleet:")]
    assert {c.split()[0] for c in components} >= {
        "modelfleet:LoadBalancer",
        "modelfleet:ModelStore",
        "modelfleet:Network",
        "modelfleet:ServingFleet",
    }
    template = next(line for line in lines if "gcp:InstanceTemplate mf-staging-stable-template" in line)
    assert template.startswith("    ") and 'machineType="e2-standard-2"' in template
    urlmap = next(line for line in lines if "gcp:URLMap" in line)
    assert '{"backendService":"mf-staging-lb-stable","weight":90}' in urlmap
    assert '{"backendService":"mf-staging-lb-canary","weight":10}' in urlmap
    assert 'storeUri: "gs://' in out


@pytest.mark.usefixtures("in_repo")
def test_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", "--stack", "aws-staging", "--json")
    assert code == 0
    plan = json.loads(out)
    assert (plan["stack"], plan["cloud"]) == ("aws-staging", "aws")
    asgs = [r for r in plan["resources"] if r["type"] == "aws:autoscaling/group:Group"]
    assert sorted((r["settings"]["minSize"], r["settings"]["maxSize"]) for r in asgs) == [(1, 1), (1, 2)]
    assert plan["outputs"]["storeUri"].startswith("s3://")


@pytest.mark.usefixtures("in_repo")
def test_plan_unknown_stack_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "plan", "--stack", "qa")
    assert code == 2
    assert err.startswith("modelfleet: error: no stack 'qa': ")
    assert err.endswith("(stacks: aws-prod, aws-staging, prod, staging)\n")


def test_plan_finds_the_project_above_the_working_directory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO_ROOT / "docs")
    code, out, _ = run_cli(capsys, "plan", "--stack", "staging", "--json")
    assert code == 0
    assert json.loads(out)["region"] == "europe-west1"


@pytest.mark.parametrize("cloud", ["gcp", "aws"])
def test_a_stack_with_only_the_required_keys_plans(
    cloud: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defaults validate on both clouds (AWS used to refuse its own default gRPC without HTTPS), end to end."""
    values = MINIMAL[cloud]
    assert set(values) == {k.name for k in KEYS if k.required and cloud in k.clouds}
    project = make_project(tmp_path / "serving", {"minimal": values})
    monkeypatch.chdir(tmp_path)  # outside the project: --project-dir finds it
    code, out, err = run_cli(capsys, "plan", "--project-dir", str(project), "--stack", "minimal", "--json")
    assert (code, err) == (0, "")
    plan = json.loads(out)
    assert (plan["stack"], plan["cloud"], plan["region"]) == ("minimal", cloud, values["region"])
    assert plan["outputs"]["storeUri"].startswith({"gcp": "gs://", "aws": "s3://"}[cloud])
    assert plan["outputs"].get("grpcEndpoint") is None  # gRPC is opt-in
    monkeypatch.chdir(project / "stacks")  # inside the project: found from the working directory upwards
    code, out, _ = run_cli(capsys, "plan", "--stack", "minimal")
    assert code == 0
    assert out.startswith(f"stack minimal ({cloud}, {values['region']}): ")


def test_plan_reads_the_stack_files_where_pulumi_yaml_keeps_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(tmp_path, {"minimal": MINIMAL["gcp"]})
    (project / "stacks").rename(project / "config")
    (project / "Pulumi.yaml").write_text((project / "Pulumi.yaml").read_text().replace("stackConfigDir: stacks", ""))
    code, _, err = run_cli(capsys, "plan", "--project-dir", str(project), "--stack", "minimal")
    assert code == 2
    assert f"{project.resolve()}/Pulumi.minimal.yaml does not exist" in err  # Pulumi's default: beside Pulumi.yaml
    (project / "Pulumi.yaml").write_text((project / "Pulumi.yaml").read_text() + "stackConfigDir: config\n")
    code, out, _ = run_cli(capsys, "plan", "--project-dir", str(project), "--stack", "minimal")
    assert code == 0 and out.startswith("stack minimal (gcp, europe-west1): ")


def test_stacks_dir_of_this_checkout() -> None:
    assert stacks_dir_of(REPO_ROOT / "Pulumi.yaml") == STACKS_DIR


def test_plan_outside_any_project_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "plan", "--stack", "staging")
    assert (code, out) == (2, "")
    assert err == (
        f"modelfleet: error: no Pulumi project here: no Pulumi.yaml in {tmp_path.resolve()} or above "
        "(run from your modelfleet project, or pass --project-dir)\n"
    )


def test_project_dir_without_pulumi_yaml_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "plan", "--project-dir", str(tmp_path), "--stack", "staging")
    assert code == 2
    assert err == f"modelfleet: error: no Pulumi project in {tmp_path}: it has no Pulumi.yaml\n"


def test_a_pulumi_project_without_infra_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: other\nruntime: python\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "plan", "--stack", "staging")
    assert code == 2
    assert err == (
        f"modelfleet: error: {tmp_path.resolve()} has Pulumi.yaml but no infra/ package: is it a modelfleet project?\n"
    )


@pytest.mark.parametrize("module", ["pulumi", "pulumi_aws", "yaml"])
def test_without_the_infra_extra_plan_says_so_in_one_line(module: str) -> None:
    """A fresh process where `module` cannot be imported (as without `pip install 'modelfleet[infra]'`)."""
    program = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from modelfleet.cli import main\n"
        "raise SystemExit(main(['plan', '--stack', 'aws-staging']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "modelfleet: error: modelfleet plan needs the infra extra: pip install 'modelfleet[infra]' "
        f"(no module named {module!r})\n"
    )
