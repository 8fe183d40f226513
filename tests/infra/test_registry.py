"""The stacks' own Docker Hub mirrors under Pulumi's mocks: GCP's Artifact Registry remote repository and AWS's ECR
pull-through cache, who may pull from them (nobody but the fleet, on that repository only), and what the fleets'
user-data does with them: the image from the stack's registry, a login with the VM's identity, no Docker Hub or PyPI
anywhere on the boot path, and the VMs created only once the registry and its grant exist. The user-data is read
back from the instance and launch templates and checked by ``cloud-init schema`` and ``shellcheck``."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import pulumi
import pytest
import yaml

import infra.offline
from infra import bootstrap
from infra.aws import registry as aws_registry
from infra.aws.registry import DockerHubCredential
from infra.config import StackConfig, load_config
from infra.gcp import registry as gcp_registry
from infra.offline import Answers, OfflineProvider, Plan, PlannedResource, RecordingMonitor
from model_export.constants import ROLES
from tests.support.plan import one

DIGEST = "sha256:" + "7c" * 32
T_REPO = "gcp:artifactregistry/repository:Repository"
T_REPO_IAM = "gcp:artifactregistry/repositoryIamMember:RepositoryIamMember"
T_TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
T_MIG = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
T_RULE = "aws:ecr/pullThroughCacheRule:PullThroughCacheRule"
T_SECRET = "aws:secretsmanager/secret:Secret"
T_SECRET_VERSION = "aws:secretsmanager/secretVersion:SecretVersion"
T_ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
T_ROLE = "aws:iam/role:Role"
T_LT = "aws:ec2/launchTemplate:LaunchTemplate"
PYPI = ("pypi", "pythonhosted", "index-url", "pip download")
DOCKER_HUB = ("docker.io/", "registry-1.docker.io", "index.docker.io", "hub.docker.com")
SECRET_SIG = "4dabf18193072939515e22adb298388d"  # Pulumi's wire marker of a secret value


# --- evaluation that also keeps each registration's dependencies ---------------------------------------------------


class DependencyMonitor(RecordingMonitor):
    """The offline monitor, also keeping the URNs each registration depends on (``depends_on`` and the resources
    behind its input Outputs): what makes the engine create a resource only after those."""

    def __init__(self, provider: OfflineProvider) -> None:
        super().__init__(provider)
        self.dependencies: dict[str, set[str]] = {}

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        deps = set(request.dependencies)
        for urns in request.propertyDependencies.values():
            deps |= set(urns.urns)
        self.dependencies[response.urn] = deps
        return response


_run = cast(Callable[[Callable[[], Any]], Callable[[], None]], pulumi.runtime.test)


def evaluate(stack: str, program: Callable[[], Mapping[str, Any]], cloud: str) -> tuple[Plan, dict[str, set[str]]]:
    provider = OfflineProvider(answers(cloud))
    monitor = DependencyMonitor(provider)
    pulumi.runtime.reset_options()
    pulumi.runtime.set_mocks(provider, project="modelfleet", stack=stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}
    _run(lambda: pulumi.Output.from_input(dict(program())).apply(outputs.update))()
    return Plan(stack, sorted(monitor.recorded, key=lambda r: r.urn), outputs), monitor.dependencies


def answers(cloud: str) -> Answers:
    """The offline provider's answers, plus the ARN AWS gives a Secrets Manager secret (random suffix included)."""
    base = infra.offline.ANSWERS[cloud]()
    if cloud != "aws":
        return base

    def secret(name: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        physical = f"{inputs.get('namePrefix') or name}20261120000000000000000001"
        return {"name": physical, "arn": f"arn:aws:secretsmanager:eu-west-1:123456789012:secret:{physical}-AbCdEf"}

    return Answers(resources={**base.resources, T_SECRET: secret}, invokes=base.invokes)


def after(deps: dict[str, set[str]], resource: PlannedResource, others: list[PlannedResource]) -> bool:
    """``resource`` waits for every one of ``others`` (directly, or through a component they belong to)."""
    mine = deps[resource.urn]
    return all(o.urn in mine or (o.parent is not None and o.parent in mine) for o in others)


# --- the components -------------------------------------------------------------------------------------------------


FLEET = "serviceAccount:mf-test-fleet@acme-ml.iam.gserviceaccount.com"


def test_gcp_registry_is_a_docker_hub_remote_repository_only_the_fleet_reads() -> None:
    def program() -> dict[str, Any]:
        reg = gcp_registry.ImageRegistry(
            "mf-test-registry",
            gcp_registry.ImageRegistryArgs(
                project="acme-ml", location="europe-west1", repository_id="mf-test-dockerhub", reader_members=[FLEET]
            ),
        )
        return {"ready": reg.ready, "image": reg.image(f"tensorflow/serving:2.20.0@{DIGEST}")}

    plan, _ = evaluate("test", program, "gcp")
    repo = one(plan, T_REPO).inputs
    assert (repo["format"], repo["mode"], repo["location"], repo["project"]) == (
        "DOCKER",
        "REMOTE_REPOSITORY",
        "europe-west1",
        "acme-ml",
    )
    assert repo["remoteRepositoryConfig"]["dockerRepository"] == {"publicRepository": "DOCKER_HUB"}
    grant = one(plan, T_REPO_IAM).inputs
    assert grant == {
        "project": "acme-ml",
        "location": "europe-west1",
        "repository": repo["repositoryId"],
        "role": "roles/artifactregistry.reader",  # pull only
        "member": FLEET,
    }
    # Nothing else: no project-wide grant, no other repository.
    assert {r.type for r in plan.resources if r.custom} == {T_REPO, T_REPO_IAM}
    base = "europe-west1-docker.pkg.dev/acme-ml/mf-test-dockerhub"
    assert plan.outputs == {"ready": base, "image": f"{base}/tensorflow/serving:2.20.0@{DIGEST}"}


@pytest.mark.parametrize("repository_id", ["", "9lives", "Upper", "ends-", "x" * 64, "has_underscore"])
def test_gcp_repository_ids_are_checked(repository_id: str) -> None:
    with pytest.raises(ValueError, match="repository_id"):
        gcp_registry.ImageRegistryArgs(project="acme-ml", location="europe-west1", repository_id=repository_id)


def aws_registry_plan(credential: DockerHubCredential) -> tuple[Plan, dict[str, set[str]]]:
    def program() -> dict[str, Any]:
        reg = aws_registry.ImageRegistry(
            "mf-test-registry",
            aws_registry.ImageRegistryArgs(
                region="eu-west-1", prefix="mf-test-dockerhub", fleet_role_name="mf-test-fleet", credential=credential
            ),
        )
        return {"ready": reg.ready, "image": reg.image(f"tensorflow/serving:2.20.0@{DIGEST}")}

    return evaluate("test", program, "aws")


def test_aws_registry_is_a_docker_hub_pull_through_cache_only_the_fleet_pulls_from() -> None:
    plan, deps = aws_registry_plan(DockerHubCredential(username="acme-bot", access_token="dckr_pat_x"))
    rule = one(plan, T_RULE)
    assert rule.inputs["upstreamRegistryUrl"] == "registry-1.docker.io"
    assert rule.inputs["ecrRepositoryPrefix"] == "mf-test-dockerhub"
    secret = one(plan, T_SECRET)
    # ECR reads only secrets named ecr-pullthroughcache/...; the rule names this one, once its value is in.
    assert secret.inputs["namePrefix"].startswith(aws_registry.CREDENTIAL_NAME_PREFIX)
    assert rule.inputs["credentialArn"] == secret.state["arn"]
    version = one(plan, T_SECRET_VERSION)
    assert after(deps, rule, [secret, version])
    # The token travels as a Pulumi secret (encrypted in the state), in the shape ECR expects.
    wire = version.inputs["secretString"]
    assert isinstance(wire, dict) and wire[SECRET_SIG]
    assert json.loads(wire["value"]) == {"username": "acme-bot", "accessToken": "dckr_pat_x"}

    policy = one(plan, T_ROLE_POLICY).inputs
    assert policy["role"] == "mf-test-fleet"
    statements = {s["Sid"]: s for s in json.loads(policy["policy"])["Statement"]}
    assert statements["LogInToEcr"] == {
        "Sid": "LogInToEcr",
        "Effect": "Allow",
        "Action": "ecr:GetAuthorizationToken",  # no resource-level permission exists for it
        "Resource": "*",
    }
    pull = statements["PullThroughDockerHubCache"]
    assert pull["Resource"] == "arn:aws:ecr:eu-west-1:123456789012:repository/mf-test-dockerhub/*"
    assert set(pull["Action"]) == {
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "ecr:BatchImportUpstreamImage",  # a cache miss imports the image
        "ecr:CreateRepository",  # the first pull of an image creates its repository
    }
    assert set(statements) == {"LogInToEcr", "PullThroughDockerHubCache"}
    base = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mf-test-dockerhub"
    assert plan.outputs == {"ready": base, "image": f"{base}/tensorflow/serving:2.20.0@{DIGEST}"}


def test_aws_registry_can_use_an_existing_secret() -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    plan, _ = aws_registry_plan(DockerHubCredential(secret_arn=arn))
    assert one(plan, T_RULE).inputs["credentialArn"] == arn
    assert not plan.of_type(T_SECRET) and not plan.of_type(T_SECRET_VERSION)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"username": "u"}, "both the username and the access token"),
        ({"access_token": "t"}, "both the username and the access token"),
        ({}, "both the username and the access token"),
        ({"username": "u", "access_token": "t", "secret_arn": "arn:x"}, "not both"),
    ],
)
def test_a_docker_hub_credential_is_whole(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DockerHubCredential(**kwargs)


@pytest.mark.parametrize("prefix", ["x", "a" * 31, "Upper", "-lead", "has space"])
def test_ecr_prefixes_are_checked(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        aws_registry.ImageRegistryArgs(
            region="eu-west-1", prefix=prefix, fleet_role_name="r", credential=DockerHubCredential(secret_arn="arn:x")
        )


# --- the stacks ---------------------------------------------------------------------------------------------------


def gcp_config(**overrides: Any) -> StackConfig:
    values = {"cloud": "gcp", "region": "europe-west1", "gcpProject": "acme-ml-test", "models": ["digits"]}
    return load_config({**values, **overrides}, "regtest")


def aws_config(**overrides: Any) -> StackConfig:
    return load_config({"cloud": "aws", "region": "eu-west-1", "models": ["digits"], **overrides}, "regtest")


def gcp_plan(cfg: StackConfig) -> tuple[Plan, dict[str, set[str]]]:
    from infra.gcp.stack import build

    return evaluate(cfg.stack, lambda: build(cfg), "gcp")


def aws_plan(cfg: StackConfig) -> tuple[Plan, dict[str, set[str]]]:
    from infra.aws.stack import build

    return evaluate("regtest", lambda: build(cfg), "aws")


def user_data_of(resource: PlannedResource) -> str:
    if resource.type == T_LT:
        return base64.b64decode(resource.inputs["userData"]).decode()
    return str(resource.inputs["metadata"]["user-data"])


def public_registries(text: str) -> list[str]:
    """PyPI and Docker Hub as the user-data names them, the image TF Serving pulls included."""
    lower = text.lower()
    found = [word for word in (*PYPI, *DOCKER_HUB) if word in lower]
    doc = yaml.safe_load(text)
    (unit,) = [f["content"] for f in doc["write_files"] if f["path"].endswith(f"/{bootstrap.TFS_UNIT}")]
    images = re.findall(r"--entrypoint /usr/bin/tensorflow_model_server \\\n\s+(\S+) ", unit)
    assert len(images) == 1, unit
    if bootstrap.parse_image(images[0]).on_docker_hub:
        found.append(f"Docker Hub image {images[0]}")
    return found


def check_with_the_tools(text: str, tmp_path: Path) -> None:
    """cloud-init's schema and shellcheck on the embedded install script, as the VM gets them."""
    path = tmp_path / "user-data"
    path.write_text(text)
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Valid cloud-config" in proc.stdout, proc.stdout + proc.stderr
    files = {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
    script = tmp_path / "install-agent.sh"
    script.write_text(files[f"{bootstrap.AGENT_HOME}/install-agent.sh"])
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def login_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if bootstrap.REGISTRY_LOGIN in line and "ExecStartPre" in line]


def test_gcp_fleets_pull_from_the_stacks_artifact_registry_with_no_public_registry(tmp_path: Path) -> None:
    cfg = dataclasses.replace(gcp_config(), tfs_image=f"tensorflow/serving:2.20.0@{DIGEST}")
    plan, deps = gcp_plan(cfg)
    repo, grant = one(plan, T_REPO), one(plan, T_REPO_IAM)
    assert repo.inputs["repositoryId"] == "mf-regtest-dockerhub"
    assert grant.inputs["member"] == f"serviceAccount:{plan.outputs['fleetIdentity']}"
    assert grant.inputs["repository"] == repo.inputs["repositoryId"]
    image = f"europe-west1-docker.pkg.dev/acme-ml-test/mf-regtest-dockerhub/tensorflow/serving:2.20.0@{DIGEST}"
    templates = plan.of_type(T_TEMPLATE)
    assert len(templates) == len(ROLES)
    for template in templates:
        text = user_data_of(template)
        assert public_registries(text) == []
        assert f" {image} " in text
        assert login_lines(text) == [
            f"ExecStartPre=-{bootstrap.AGENT_HOME}/venv/bin/python {bootstrap.REGISTRY_LOGIN} "
            "europe-west1-docker.pkg.dev"
        ]
        check_with_the_tools(text, tmp_path)
    # No VM is created before the repository and the fleet's grant on it exist.
    for mig in plan.of_type(T_MIG):
        assert after(deps, mig, [repo, grant])
        assert not after(deps, mig, [one(plan, "gcp:compute/uRLMap:URLMap")])  # the check can fail: it reads deps


def test_gcp_a_mirror_image_is_pulled_as_it_is_and_no_repository_is_made() -> None:
    mirror = f"mirror.example.com/tfs/serving:2.20.0@{DIGEST}"
    plan, _ = gcp_plan(dataclasses.replace(gcp_config(), tfs_image=mirror))
    assert not plan.of_type(T_REPO) and not plan.of_type(T_REPO_IAM)
    for template in plan.of_type(T_TEMPLATE):
        text = user_data_of(template)
        assert public_registries(text) == [] and f" {mirror} " in text and login_lines(text) == []


def test_aws_fleets_pull_from_the_stacks_ecr_cache_with_no_public_registry(tmp_path: Path) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ecr-pullthroughcache/docker-hub-AbCdEf"
    cfg = aws_config(tfServingImage=f"tensorflow/serving:2.20.0@{DIGEST}", dockerHubCredentialArn=arn)
    plan, deps = aws_plan(cfg)
    assert one(plan, T_RULE).inputs["credentialArn"] == arn and not plan.of_type(T_SECRET)
    rule, policy = one(plan, T_RULE), one(plan, T_ROLE_POLICY, "mf-regtest-registry-fleet-pull")
    assert rule.inputs["ecrRepositoryPrefix"] == "mf-regtest-dockerhub"
    fleet_role = one(plan, T_ROLE, "mf-regtest-iam-fleet")
    assert policy.inputs["role"] == fleet_role.state["name"]
    host = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    image = f"{host}/mf-regtest-dockerhub/tensorflow/serving:2.20.0@{DIGEST}"
    templates = plan.of_type(T_LT)
    assert len(templates) == len(ROLES)
    for template in templates:
        text = user_data_of(template)
        assert public_registries(text) == []
        assert f" {image} " in text
        assert login_lines(text) == [
            f"ExecStartPre=-{bootstrap.AGENT_HOME}/venv/bin/python {bootstrap.REGISTRY_LOGIN} {host}"
        ]
        assert len(text.encode()) <= bootstrap.USER_DATA_LIMIT_BYTES
        check_with_the_tools(text, tmp_path)
        # The launch template (so every VM) comes after the cache rule and the fleet's grant to pull through it.
        assert after(deps, template, [rule, policy])
        assert not after(deps, template, [one(plan, "aws:lb/loadBalancer:LoadBalancer")])  # the check can fail


def test_aws_without_a_docker_hub_credential_pulls_from_docker_hub() -> None:
    """ECR cannot cache Docker Hub without a credential: until one is configured the boot path keeps Docker Hub (the
    one public registry left); PyPI is gone either way."""
    plan, _ = aws_plan(aws_config())
    assert not plan.of_type(T_RULE) and not plan.of_type(T_SECRET)
    for template in plan.of_type(T_LT):
        assert public_registries(user_data_of(template)) == ["Docker Hub image tensorflow/serving:2.20.0"]


def test_the_public_registry_check_sees_them() -> None:
    """Proves the stacks' check above looks: a Docker Hub image and a PyPI line are reported."""
    plan, _ = gcp_plan(dataclasses.replace(gcp_config(), tfs_image="mirror.example.com/tfs/serving:2.20.0"))
    text = user_data_of(plan.of_type(T_TEMPLATE)[0])
    hub = text.replace("mirror.example.com/tfs/serving:2.20.0", "docker.io/tensorflow/serving:2.20.0")
    assert "docker.io/" in public_registries(hub)
    assert "pypi" in public_registries(text + "\n# pip install -i https://pypi.org/simple x\n")
