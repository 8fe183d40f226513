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

from infra.config import KEYS, load_config
from infra.plan import FleetPeak, QuotaNeed, cpu_quota, quotas_to_check, vcpus
from infra.stack import STACKS_DIR, stacks_dir_of
from tests.support import REPO_ROOT
from tests.support.cli import run_cli

# Only the keys each cloud requires: every other key keeps its default.
MINIMAL: dict[str, dict[str, Any]] = {
    "gcp": {"cloud": "gcp", "region": "europe-west1", "gcpProject": "acme-ml-test", "models": ["digits"]},
    "aws": {"cloud": "aws", "region": "eu-west-1", "models": ["digits"]},
}
DOCKER_HUB = (
    "modelfleet:dockerHubCredentialArn is empty: every VM pulls tensorflow/serving:2.20.0 from Docker Hub through the "
    "NAT (one anonymous pull quota for the whole fleet); set it (ECR then caches the image in the stack's account) or "
    "set modelfleet:tfServingImage to your mirror"
)
NOBODY = {
    "gcp": "modelfleet:allowedSourceCidrs is empty: the load balancer admits no client (Cloud Armor answers 403 to "
    "every request); list your clients' ranges, e.g. pulumi config set --path 'allowedSourceCidrs[0]' 203.0.113.0/24",
    "aws": "modelfleet:allowedSourceCidrs is empty: the load balancer admits no client (its security group drops "
    "every connection); list your clients' ranges, e.g. pulumi config set --path 'allowedSourceCidrs[0]' "
    "203.0.113.0/24",
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
    at = next(i for i, line in enumerate(lines) if "gcp:URLMap" in line)
    assert lines[at : at + 3] == [  # each weighted backend on a line of its own (within 120 columns)
        "    gcp:URLMap mf-staging-lb-urlmap",
        '        defaultRouteAction.weightedBackendServices[0]={"backendService":"mf-staging-lb-stable","weight":90}',
        '        defaultRouteAction.weightedBackendServices[1]={"backendService":"mf-staging-lb-canary","weight":10}',
    ]
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
    warnings = [NOBODY[cloud], *([DOCKER_HUB] if cloud == "aws" else [])]  # no allowedSourceCidrs: nobody gets in
    assert (code, err) == (0, "".join(f"modelfleet: warning: {w}\n" for w in warnings))
    plan = json.loads(out)
    assert (plan["warnings"], plan["notDeployable"]) == (warnings, None)
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


# --- what `pulumi up` would warn about or refuse ---------------------------------------------------------------


@pytest.mark.usefixtures("in_repo")
def test_plan_draws_an_example_stack_and_says_pulumi_up_refuses_it(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plan", "--stack", "aws-prod", "--json")
    assert code == 0 and json.loads(out)["stack"] == "aws-prod"
    assert err.splitlines() == [
        f"modelfleet: warning: {NOBODY['aws']}",
        f"modelfleet: warning: {DOCKER_HUB}",
        "modelfleet: warning: pulumi up refuses this stack: stack 'aws-prod' cannot be deployed as it is: "
        "modelfleet:certificateArn "
        "'arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000' "
        "names AWS's documentation account 123456789012: set the ARN of your ACM certificate in eu-west-1; "
        "modelfleet:accessLogsBucket 'acme-lb-access-logs' is an example value: set an existing S3 bucket in "
        "eu-west-1, encrypted with SSE-S3, whose bucket policy lets Elastic Load Balancing write logs (README "
        '"Deploying for real"), or "" for no access logs',
    ]
    code, out, err = run_cli(capsys, "plan", "--stack", "aws-prod")
    assert (code, err) == (0, "") and out.startswith("stack aws-prod (aws, eu-west-1): ")
    section = " ".join(line.strip() for line in out.split("\nwarnings:\n", 1)[1].splitlines())
    assert section.endswith('write logs (README "Deploying for real"), or "" for no access logs')
    assert "pulumi up refuses this stack: stack 'aws-prod' cannot be deployed as it is: " in section
    code, out, _ = run_cli(capsys, "plan", "--stack", "prod", "--json")
    plan = json.loads(out)
    assert plan["warnings"] == [NOBODY["gcp"]]
    assert plan["notDeployable"].startswith("stack 'prod' cannot be deployed as it is: modelfleet:gcpProject ")


# --- the vCPUs a rolling update needs ------------------------------------------------------------------------------


@pytest.mark.usefixtures("in_repo")
def test_plan_prints_the_rolling_update_peak_and_the_quotas(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "plan", "--stack", "staging")
    assert out.split("\nwarnings:\n")[0].splitlines()[-7:] == [
        "rolling update peak (each fleet at its maximum, old and new VMs side by side):",
        "  stable: (2 max + 2 surge) x e2-standard-2 (2 vCPUs) = 4 VMs, 8 vCPUs",
        "  canary: (1 max + 1 surge) x e2-standard-2 (2 vCPUs) = 2 VMs, 4 vCPUs",
        "quotas to check in europe-west1 (free, on top of what else runs there):",
        "  CPUS: 12 vCPUs",
        "  CPUS_ALL_REGIONS: 12 vCPUs",
        "  SSD_TOTAL_GB: 300 GB",
    ]
    _, out, _ = run_cli(capsys, "plan", "--stack", "aws-prod")
    assert out.split("\nwarnings:\n")[0].splitlines()[-6:] == [
        "rolling update peak (each fleet at its maximum, old and new VMs side by side):",
        "  stable: (12 max + 12 surge) x c6i.2xlarge (8 vCPUs) = 24 VMs, 192 vCPUs",
        "  canary: not running (0 VMs)",
        "quotas to check in eu-west-1 (free, on top of what else runs there):",
        "  Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances: 192 vCPUs",
        "  Storage for General Purpose SSD (gp3) volumes: 2 TiB",
    ]
    _, out, _ = run_cli(capsys, "plan", "--stack", "prod", "--json")
    peak = json.loads(out)["rollingUpdatePeak"]
    assert peak["fleets"][0] == {
        "fleet": "stable",
        "machineType": "n2-standard-8",
        "vcpusPerVm": 8,
        "maxVms": 12,
        "surgeVms": 3,
        "peakVms": 15,
        "peakVcpus": 120,
        "quota": "N2_CPUS",
    }
    assert {q["quota"]: q["amount"] for q in peak["quotas"]} == {
        "N2_CPUS": 120,
        "CPUS_ALL_REGIONS": 120,
        "SSD_TOTAL_GB": 750,
    }


@pytest.mark.parametrize(
    ("cloud", "machine_type", "count", "quota"),
    [
        ("gcp", "e2-standard-4", 4, "CPUS"),
        ("gcp", "e2-medium", 2, "CPUS"),
        ("gcp", "n2-highmem-16", 16, "N2_CPUS"),
        ("gcp", "c3-highcpu-22", 22, "C3_CPUS"),
        ("gcp", "n2-custom-6-24576", 6, "N2_CPUS"),
        ("gcp", "custom-4-16384", 4, "CPUS"),
        ("gcp", "n1-standard-8", 8, "CPUS"),
        ("gcp", "g2-standard-8", 8, "G2_CPUS"),
        ("gcp", "a2-highgpu-2g", 24, "A2_CPUS"),
        ("gcp", "m1-megamem-96", 96, "M1_CPUS"),
        ("gcp", "mystery", None, "MYSTERY_CPUS"),
        ("aws", "c6i.large", 2, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
        ("aws", "c6i.xlarge", 4, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
        ("aws", "m7i.48xlarge", 192, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
        ("aws", "t3.medium", 2, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
        ("aws", "g5.2xlarge", 8, "Running On-Demand G and VT instances"),
        ("aws", "p4d.24xlarge", 96, "Running On-Demand P instances"),
        ("aws", "inf2.xlarge", 4, "Running On-Demand Inf instances"),
        ("aws", "c7i.metal-24xl", None, "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances"),
    ],
)
def test_vcpus_and_quota_of_a_machine_type(cloud: str, machine_type: str, count: int | None, quota: str) -> None:
    assert vcpus(cloud, machine_type) == count
    assert cpu_quota(cloud, machine_type) == quota


def test_gpu_quotas_on_gcp() -> None:
    cfg = load_config({**MINIMAL["gcp"], "gpu": True, "machineType": "n1-standard-8", "diskSizeGb": 100}, "t")
    peaks = [FleetPeak("stable", "n1-standard-8", 8, 2, 2, 4, 32, "CPUS")]
    assert quotas_to_check(cfg, peaks) == [
        QuotaNeed("CPUS", 32, "vCPUs"),
        QuotaNeed("CPUS_ALL_REGIONS", 32, "vCPUs"),
        QuotaNeed("GPUS_ALL_REGIONS", 4, "GPUs"),
        QuotaNeed("NVIDIA_T4_GPUS", 4, "GPUs"),
        QuotaNeed("SSD_TOTAL_GB", 400, "GB"),
    ]
