"""`modelfleet plan` that a person can read: typos caught in one line, text within 120 columns, complete JSON, the
serving settings shown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infra.plan import WIDTH, fit, pack, setting_items
from tests.infra.test_plan_cmd import MINIMAL, make_project
from tests.support import REPO_ROOT
from tests.support.cli import run_cli


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)


def test_a_namespace_typo_is_an_error_not_a_silent_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path, {"typo": MINIMAL["gcp"]})
    stack_file = project / "stacks" / "Pulumi.typo.yaml"
    stack_file.write_text(stack_file.read_text() + "  modelfeet:agentPollSeconds: 60\n  gcp:project: acme-ml-test\n")
    code, out, err = run_cli(capsys, "plan", "--project-dir", str(project), "--stack", "typo")
    assert (code, out) == (2, "")
    assert err == (
        f"modelfleet: error: stack file {str(project.resolve() / 'stacks' / 'Pulumi.typo.yaml')!r} sets "
        "modelfeet:agentPollSeconds is in namespace 'modelfeet', which nothing reads; "
        "did you mean modelfleet:agentPollSeconds?\n"
    )


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("agentPolSeconds", "did you mean modelfleet:agentPollSeconds?"),
        ("colour", 'see the README\'s "Stack config reference" table'),
    ],
)
def test_an_unknown_key_is_one_short_line(
    key: str, hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(tmp_path, {"t": {**MINIMAL["gcp"], key: 5}})
    code, _, err = run_cli(capsys, "plan", "--project-dir", str(project), "--stack", "t")
    assert (code, err) == (2, f"modelfleet: error: modelfleet:{key} is not a modelfleet setting; {hint}\n")


@pytest.mark.usefixtures("in_repo")
@pytest.mark.parametrize("stack", ["staging", "prod", "aws-staging", "aws-prod"])
def test_plan_text_fits_120_columns(stack: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "plan", "--stack", stack)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= WIDTH


@pytest.mark.usefixtures("in_repo")
def test_plan_json_is_complete(capsys: pytest.CaptureFixture[str]) -> None:
    """The Cloud Armor rules and the IAM policies are whole in --json, however long; only the text view cuts."""
    _, text, _ = run_cli(capsys, "plan", "--stack", "aws-staging")
    code, out, _ = run_cli(capsys, "plan", "--stack", "aws-staging", "--json")
    assert code == 0
    plan = json.loads(out)
    policies = [r["settings"]["policy"] for r in plan["resources"] if "policy" in r["settings"]]
    long = [p for p in policies if isinstance(p, str) and len(p) > WIDTH]
    assert long and all(json.loads(p)["Statement"] for p in long)  # each a whole JSON document
    assert "…" in text and "…" not in out


def test_setting_items_give_each_element_its_own_item() -> None:
    value = {"weightedBackendServices": [{"backendService": "s", "weight": 90}, {"backendService": "c", "weight": 10}]}
    assert setting_items("route", value, 200) == [
        'route={"weightedBackendServices":[{"backendService":"s","weight":90},{"backendService":"c","weight":10}]}'
    ]
    assert setting_items("route", value, 60) == [
        'route.weightedBackendServices[0]={"backendService":"s","weight":90}',
        'route.weightedBackendServices[1]={"backendService":"c","weight":10}',
    ]


def test_pack_wraps_and_cuts_at_120_columns() -> None:
    items: list[Any] = ["a=" + "x" * 40, "b=" + "y" * 40, "c=" + "z" * 200]
    lines = pack("  gcp:Thing name", items)
    assert lines == [
        f"  gcp:Thing name  a={'x' * 40} b={'y' * 40}",
        fit("      c=" + "z" * 200),
    ]
    assert lines[1].endswith("z…") and len(lines[1]) == WIDTH


@pytest.mark.usefixtures("in_repo")
def test_plan_shows_the_serving_settings(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run_cli(capsys, "plan", "--stack", "staging")
    assert out.splitlines()[1:3] == [
        "serving: tfServingImage=tensorflow/serving:2.20.0 agentPollSeconds=5 agentStoreTimeoutSeconds=10",
        "    modelConfigPollSeconds=5 versionSwitch=auto",
    ]
    _, out, _ = run_cli(capsys, "plan", "--stack", "staging", "--json")
    assert json.loads(out)["serving"] == {
        "tfServingImage": "tensorflow/serving:2.20.0",
        "agentPollSeconds": 5,
        "agentStoreTimeoutSeconds": 10,
        "modelConfigPollSeconds": 5,
        "versionSwitch": "auto",
    }


# --- what only the cloud can tell, and the warnings ------------------------------------------------------------


@pytest.mark.usefixtures("in_repo")
def test_values_only_the_cloud_knows_are_marked(capsys: pytest.CaptureFixture[str]) -> None:
    """The offline provider's made-up address, account ARNs and generated names are marked; what the stack file or
    the program names (an explicit bucket, a certificate ARN from config) is not."""
    code, out, _ = run_cli(capsys, "plan", "--stack", "staging")
    outputs = {line.split(":", 1)[0].strip(): line for line in out.split("\noutputs:\n", 1)[1].splitlines()[:11]}
    assert code == 0
    assert outputs["endpoint"].endswith('"http://203.0.113.221" (known after deploy)')
    assert outputs["loadBalancerAddress"].endswith("(known after deploy)")
    assert not outputs["storeUri"].endswith("(known after deploy)")  # the stack names its bucket

    code, out, _ = run_cli(capsys, "plan", "--stack", "aws-prod", "--json")
    plan = json.loads(out)
    assert {"endpoint", "loadBalancerAddress", "fleetIdentity", "publisherPolicyArn"} <= set(plan["knownAfterDeploy"])
    assert "canaryWeightPercent" not in plan["knownAfterDeploy"]
    by_name = {r["name"]: r for r in plan["resources"]}
    https = by_name["mf-aws-prod-lb-https"]
    assert "defaultActions" in https["knownAfterDeploy"]  # the target group's ARN
    assert "certificateArn" not in https["knownAfterDeploy"]  # the stack file's value, known now


@pytest.mark.usefixtures("in_repo")
def test_plan_text_ends_with_the_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "plan", "--stack", "prod")
    assert (code, err) == (0, "")  # said once, in the section, not also on stderr
    section = out.split("\nwarnings:\n", 1)[1].splitlines()
    assert section[0].startswith("  modelfleet:allowedSourceCidrs is empty: the load balancer admits no client")
    assert any(
        line.startswith("  pulumi up refuses this stack: stack 'prod' cannot be deployed as it is:") for line in section
    )
    assert all(len(line) <= WIDTH and line.startswith("  ") for line in section)

    code, out, err = run_cli(capsys, "plan", "--stack", "prod", "--json")
    assert err.startswith("modelfleet: warning: modelfleet:allowedSourceCidrs is empty")  # --json: stderr too


def test_plan_has_no_warnings_section_when_nothing_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path, {"ok": {**MINIMAL["gcp"], "allowedSourceCidrs": ["198.51.100.0/24"]}})
    code, out, err = run_cli(capsys, "plan", "--project-dir", str(project), "--stack", "ok")
    assert (code, err) == (0, "")
    assert "\nwarnings:" not in out
