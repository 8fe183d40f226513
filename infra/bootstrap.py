"""Cloud-init user-data for a fleet VM (Ubuntu 24.04 LTS on GCE or EC2). Design and start ordering: docs/bootstrap.md.

The GCP stack puts ``render_user_data(args)`` in the instance template's ``user-data`` metadata; the AWS stack
base64-encodes it into the launch template's ``user_data``. Everything a VM needs is in the document, so any change
(image, flags, agent bundle hash) changes the template and rolls the fleet.

On the VM: Docker runs TF Serving (``tfserving.service``) from local disk only, its image pulled from the registry
the stack names (the stack's own Artifact Registry remote repository or ECR pull-through cache, logged in to with the
VM's identity, or a mirror); the modelfleet agent, installed into ``/opt/modelfleet/venv`` from the agent bundle in
the store with no package index (``pip install --no-index --require-hashes``), first writes the start-up config from
local state with no store request (``modelfleet-sync.service``, ordered before TF Serving) and then syncs and serves
the health check (``modelfleet-agent.service``). On AWS a fourth unit (``modelfleet-livez.service``) reports the
agent's liveness to the auto scaling group (docs/aws.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml

from infra.config import Batching, Cloud, StackConfig, bad_value, check_batching, check_region, validate
from model_export.constants import (
    AGENT_POLL_SECONDS,
    AGENT_PORT,
    AGENT_STORE_TIMEOUT_SECONDS,
    DEFAULT_DRAIN_WAIT_SECONDS,
    DEFAULT_MAX_DRAINING_PERCENT,
    DEFAULT_TFS_IMAGE,
    DEFAULT_VERSION_SWITCH,
    LIVE_PATH,
    LOCAL_TFS_URL,
    MODEL_CONFIG_NAME,
    MODEL_CONFIG_POLL_SECONDS,
    ROLES,
    STABLE,
    TFS_GRPC_PORT,
    TFS_METRICS_PATH,
    TFS_REST_PORT,
)
from model_export.errors import BadInput
from model_export.manifest import check_model_names
from model_export.store import parse_uri

if TYPE_CHECKING:  # infra.components imports this module
    from infra.components import HealthCheck

STORE_SCHEME: Mapping[str, str] = {"gcp": "gs", "aws": "s3"}
# AWS refuses user-data over 16 KB (raw, before base64); GCE metadata allows 256 KB.
USER_DATA_LIMIT_BYTES = 16 * 1024

# Paths on the VM. The agent writes TF Serving's config into its --root.
MODEL_ROOT = "/var/lib/modelfleet/models"
MODEL_CONFIG_PATH = f"{MODEL_ROOT}/{MODEL_CONFIG_NAME}"
TFS_CONFIG_DIR = "/etc/modelfleet/tfserving"
MONITORING_CONFIG_PATH = f"{TFS_CONFIG_DIR}/monitoring.config"
BATCHING_CONFIG_PATH = f"{TFS_CONFIG_DIR}/batching.config"
AGENT_HOME = "/opt/modelfleet"
AGENT_BIN = f"{AGENT_HOME}/venv/bin/modelfleet"
AGENT_ENV_FILE = "/etc/modelfleet/agent.env"
UNIT_DIR = "/etc/systemd/system"
TFS_CONTAINER = "tfserving"
# The image's own entrypoint adds --model_name/--model_base_path; the VM (and infra/local) call the server directly.
TFS_ENTRYPOINT = "/usr/bin/tensorflow_model_server"
# Docker's json-file log rotation for TF Serving's container, on a VM and in infra/local's compose file.
TFS_LOG_OPTIONS: Mapping[str, str] = {"max-size": "50m", "max-file": "3"}
TFS_UNIT, SYNC_UNIT, AGENT_UNIT = "tfserving.service", "modelfleet-sync.service", "modelfleet-agent.service"
LIVEZ_UNIT = "modelfleet-livez.service"  # AWS only
LIVEZ_REPORT = f"{AGENT_HOME}/livez_report.py"  # from the agent bundle (infra.agent_package.BUNDLED_SCRIPTS)
REGISTRY_LOGIN = f"{AGENT_HOME}/registry_login.py"  # from the agent bundle too
FETCH_OBJECT = f"{AGENT_HOME}/fetch_object.py"  # the cloud's store fetcher (templates/fetch_gs.py, fetch_s3.py)
FETCHERS: Mapping[str, str] = {"gcp": "fetch_gs.py", "aws": "fetch_s3.py"}
TEMPLATES = Path(__file__).resolve().parent / "templates"

# A version that fails to load is retried this often, this far apart. TF Serving's defaults (5 retries, 60 s apart) hold
# its one load/unload thread for 5 minutes per bad version, and every other load and unload on the VM waits, a rollback
# included (../shared/notes/tf-serving.md). The files are local and verified before TF Serving sees them, so a retry
# rarely helps: two, 5 s apart.
TFS_MAX_LOAD_RETRIES = 2
TFS_LOAD_RETRY_INTERVAL_SECONDS = 5
# Liveness (LIVE_PATH) failures before a VM is replaced, and how often it is probed: GCP's autohealing check
# (infra/gcp/fleet.py) and the AWS VM's own report (LIVEZ_UNIT) use the same numbers, a minute of failures.
LIVENESS_INTERVAL_SECONDS = 10
LIVENESS_FAILURES = 6
# The AWS groups' launch lifecycle hook (infra/aws/fleet.py): a new VM goes in service once LIVEZ_UNIT has seen it live.
READY_HOOK = "modelfleet-ready"
MAX_FLEET_SIZE = 1000  # the replica keys' limit
MAX_DRAIN_WAIT_SECONDS = 3600

# TF Serving flags this module owns; extra_tfs_flags may not set them.
MANAGED_TFS_FLAGS = frozenset(
    {
        "max_num_load_retries",
        "load_retry_interval_micros",
        "port",
        "rest_api_port",
        "model_config_file",
        "model_config_file_poll_wait_seconds",
        "monitoring_config_file",
        "enable_batching",
        "batching_parameters_file",
        "enable_grpc_healthcheck_service",
        "allow_version_labels_for_unavailable_models",
        "model_name",
        "model_base_path",
    }
)
FLOATING_TAGS = frozenset({"latest", "latest-gpu", "nightly", "nightly-gpu"})
# Every value that lands in a systemd ExecStart= line matches this: no quoting, no %-specifiers, no $-expansion.
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_.,:/@+=-]+$")
_FLAG = re.compile(r"^--([a-z][a-z0-9_]*)(?:=([A-Za-z0-9_.,:/@+=-]*))?$")
# A Docker image reference, [registry/]repository[:tag][@sha256:digest]. Which first component is a registry host is
# Docker's own rule (``parse_image``): one with a '.' or a ':', or 'localhost'; else the image is on Docker Hub.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:(?P<registry>[a-z0-9-]+(?:\.[a-z0-9-]+)*(?::[0-9]+)?)/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
DOCKER_HUB_HOSTS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# Registries the VM logs in to with its own identity before pulling (templates/registry_login.py: same patterns).
_LOGIN_HOSTS = (
    re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$"),  # GCP Artifact Registry
    re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?$"),  # AWS ECR
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The agent bundle's file name (infra.agent_package.bundle_name).
_BUNDLE_NAME = re.compile(r"^modelfleet-[A-Za-z0-9_.+!]+-agent-cp3\d+-manylinux_\d+_\d+_[a-z0-9_]+\.zip$")


def _field_error(field: str, value: object, valid: str) -> BadInput:
    """A bootstrap field's own error, in ``infra.config.bad_value``'s one shape: ``bootstrap <field> = <value> ...``."""
    return bad_value(field, value, valid, owner="bootstrap ")


@dataclass(frozen=True)
class AgentWheel:
    """The agent bundle in the store: the agent wheel and its dependency wheels (``infra.agent_package``
    ``build_agent_bundle`` + ``agent_wheel_uri``); the VM installs it with no package index."""

    uri: str  # gs://bucket/prefix/_agent/<sha256>/modelfleet-0.2.0-agent-cp312-manylinux_2_39_x86_64.zip
    sha256: str  # of the bundle zip


@dataclass(frozen=True)
class BootstrapArgs:
    """Everything a fleet VM needs. Validated on construction: an invalid value raises ``BadInput`` naming it.

    Values that come from a stack key (cloud, models, region, poll intervals, batching) are checked by that key's own
    rule in ``infra.config`` (errors name the key); the rest (image, store and wheel URIs, flags) here.
    """

    cloud: Cloud
    store_uri: str  # gs://bucket/prefix on gcp, s3://bucket/prefix on aws
    models: tuple[str, ...]
    role: str  # model_export.constants.ROLES
    agent_wheel: AgentWheel
    # [registry/]repository[:tag][@sha256:digest]: a version tag (the "-gpu" variant when gpu=True) or a digest. The
    # stacks pass the reference through their own registry (``mirror_image``); the VM logs in to the registries of
    # ``_LOGIN_HOSTS`` with its own identity.
    tfs_image: str = DEFAULT_TFS_IMAGE
    gpu: bool = False  # needs a GPU image with the NVIDIA driver, Docker and the NVIDIA container toolkit
    batching: Batching | None = None  # infra.config's; None or enabled=False: --enable_batching off
    model_config_poll_seconds: int = MODEL_CONFIG_POLL_SECONDS  # --model_config_file_poll_wait_seconds
    agent_poll_seconds: int = AGENT_POLL_SECONDS  # modelfleet agent --poll
    agent_store_timeout_seconds: int = AGENT_STORE_TIMEOUT_SECONDS  # modelfleet agent --store-timeout
    version_switch: str = DEFAULT_VERSION_SWITCH  # modelfleet agent --switch (stack key versionSwitch)
    max_draining_percent: int = DEFAULT_MAX_DRAINING_PERCENT  # --max-draining-percent (maxDrainingPercent)
    fleet_size: int = 1  # --fleet-size: the fleet's minimum replica count (the drain slots' base)
    # --drain-wait-seconds: the stack's load balancer health checks' interval x unhealthy threshold (drain_wait_seconds)
    drain_wait_seconds: int = DEFAULT_DRAIN_WAIT_SECONDS
    aws_region: str | None = None  # required on aws (the SDKs do not read it from instance metadata)
    extra_tfs_flags: tuple[str, ...] = ()  # e.g. ("--enable_serialization_as_tensor_content=true",)

    def __post_init__(self) -> None:
        validate("cloud", self.cloud)
        scheme = STORE_SCHEME[self.cloud]
        _check_uri("store_uri", self.store_uri, scheme, self.cloud)
        try:
            models = check_model_names(self.models)
        except BadInput as e:
            raise _field_error("models", self.models, str(e)) from None
        object.__setattr__(self, "models", models)
        if self.role not in ROLES:
            raise _field_error("role", self.role, f"use one of {', '.join(ROLES)}")
        _check_image(self.tfs_image, self.gpu)
        if self.batching is not None:
            if not isinstance(self.batching, Batching):
                raise _field_error("batching", self.batching, "pass an infra.config.Batching or None")
            check_batching(self.batching)
        validate("modelConfigPollSeconds", self.model_config_poll_seconds)
        validate("agentPollSeconds", self.agent_poll_seconds)
        validate("agentStoreTimeoutSeconds", self.agent_store_timeout_seconds)
        validate("versionSwitch", self.version_switch)
        validate("maxDrainingPercent", self.max_draining_percent)
        if isinstance(self.fleet_size, bool) or not isinstance(self.fleet_size, int):
            raise _field_error("fleet_size", self.fleet_size, "expected an integer")
        if not 1 <= self.fleet_size <= MAX_FLEET_SIZE:
            raise _field_error("fleet_size", self.fleet_size, f"must be between 1 and {MAX_FLEET_SIZE}")
        if isinstance(self.drain_wait_seconds, bool) or not isinstance(self.drain_wait_seconds, int):
            raise _field_error("drain_wait_seconds", self.drain_wait_seconds, "expected an integer")
        if not 0 <= self.drain_wait_seconds <= MAX_DRAIN_WAIT_SECONDS:
            raise _field_error(
                "drain_wait_seconds", self.drain_wait_seconds, f"must be between 0 and {MAX_DRAIN_WAIT_SECONDS}"
            )
        if self.cloud == "aws":
            if self.aws_region is None:
                raise _field_error("aws_region", self.aws_region, "set the stack's region on aws, e.g. 'us-east-1'")
            check_region("aws", self.aws_region)
        elif self.aws_region is not None:
            raise _field_error("aws_region", self.aws_region, "leave it unset on gcp")
        _check_uri("agent_wheel.uri", self.agent_wheel.uri, scheme, self.cloud)
        bundle_name = self.agent_wheel.uri.rsplit("/", 1)[-1]
        if not _BUNDLE_NAME.match(bundle_name):
            raise _field_error(
                "agent_wheel.uri",
                self.agent_wheel.uri,
                "it must name the agent bundle, modelfleet-<version>-agent-<python>-<platform>.zip "
                "(infra.agent_package.build_agent_bundle)",
            )
        if not _SHA256.match(self.agent_wheel.sha256):
            raise _field_error("agent_wheel.sha256", self.agent_wheel.sha256, "use 64 lowercase hex digits")
        if isinstance(self.extra_tfs_flags, str):
            raise _field_error("extra_tfs_flags", self.extra_tfs_flags, "pass a sequence of flags, not one string")
        flags = tuple(self.extra_tfs_flags)
        object.__setattr__(self, "extra_tfs_flags", flags)
        for flag in flags:
            match = _FLAG.match(flag)
            if not match:
                raise _field_error("extra_tfs_flags", flag, "use --name or --name=value, value of [A-Za-z0-9_.,:/@+=-]")
            if match.group(1) in MANAGED_TFS_FLAGS:
                raise _field_error("extra_tfs_flags", flag, f"--{match.group(1)} is set by the bootstrap itself")

    @property
    def enabled_batching(self) -> Batching | None:
        """The batching parameters when batching is on, else None."""
        return self.batching if self.batching is not None and self.batching.enabled else None


def drain_wait_seconds(*checks: HealthCheck) -> int:
    """How long a load balancer takes to stop sending to a VM that starts failing ``checks`` (the ones that route
    traffic to it): the longest interval x unhealthy threshold. A draining agent waits this long after its 503."""
    return max(hc.interval_seconds * hc.unhealthy_threshold for hc in checks)


def fleet_bootstrap_args(
    cfg: StackConfig,
    role: str,
    store_uri: str,
    wheel: AgentWheel,
    drain_wait_seconds: int = DEFAULT_DRAIN_WAIT_SECONDS,
    tfs_image: str | None = None,
) -> BootstrapArgs:
    """What a fleet of ``role`` in the stack ``cfg`` boots with (both clouds). ``drain_wait_seconds`` comes from the
    stack's load balancer checks (``drain_wait_seconds(...)``); the fleet size for the drain slots is the role's
    minimum replica count (never more than what runs: see ``modelfleet.agent.lease``). ``tfs_image``: the reference
    the VMs pull, when the stack serves ``cfg.tfs_image`` through its own registry (``mirror_image``)."""
    size = cfg.stable if role == STABLE else cfg.canary
    return BootstrapArgs(
        cloud=cast(Cloud, cfg.cloud),  # load_config admits only gcp and aws
        aws_region=cfg.region if cfg.cloud == "aws" else None,
        store_uri=store_uri,
        models=cfg.models,
        role=role,
        agent_wheel=wheel,
        tfs_image=tfs_image or cfg.tfs_image,
        gpu=cfg.gpu,
        batching=cfg.batching,
        model_config_poll_seconds=cfg.model_config_poll_seconds,
        agent_poll_seconds=cfg.agent_poll_seconds,
        agent_store_timeout_seconds=cfg.agent_store_timeout_seconds,
        version_switch=cfg.version_switch,
        max_draining_percent=cfg.max_draining_percent,
        fleet_size=max(1, size.min_replicas),
        drain_wait_seconds=drain_wait_seconds,
    )


def _check_uri(field: str, uri: str, scheme: str, cloud: str) -> None:
    try:
        got, _, _ = parse_uri(uri)
    except BadInput as e:
        raise _field_error(field, uri, f"use {scheme}://bucket/prefix on {cloud} ({e})") from e
    if got != scheme:
        raise _field_error(field, uri, f"use {scheme}://bucket/prefix on {cloud}")
    if not _SAFE_ARG.match(uri):
        raise _field_error(field, uri, "use only [A-Za-z0-9_.,:/@+=-] in the path")


@dataclass(frozen=True)
class ImageRef:
    """A parsed image reference. ``registry`` None: Docker Hub (``path`` then has its ``library/`` namespace)."""

    registry: str | None
    path: str
    tag: str | None
    digest: str | None

    @property
    def on_docker_hub(self) -> bool:
        return self.registry is None

    @property
    def version(self) -> str:
        """``:tag``, ``@digest`` or both, as the reference spells them."""
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return f"{self.registry + '/' if self.registry else ''}{self.path}{self.version}"


def parse_image(image: str, field: str = "tfs_image") -> ImageRef:
    """Split a reference by Docker's rules; raises ``BadInput`` naming ``field`` if it is not one."""
    match = IMAGE_REFERENCE.match(image) if isinstance(image, str) else None
    if not match:
        example = f"{DEFAULT_TFS_IMAGE!r} or 'registry.example.com/tfs/serving:2.20.0@sha256:<64 hex>'"
        raise _field_error(field, image, f"use a Docker reference such as {example}")
    registry, path = match.group("registry"), match.group("path")
    if registry is not None and "." not in registry and ":" not in registry and registry != "localhost":
        registry, path = None, f"{registry}/{path}"  # 'tensorflow/serving': a Docker Hub namespace, not a host
    if registry in DOCKER_HUB_HOSTS:
        registry = None
    if registry is None and "/" not in path:
        path = f"library/{path}"  # Docker Hub's official images
    return ImageRef(registry, path, match.group("tag"), match.group("digest"))


def mirror_image(image: str, registry_base: str) -> str:
    """``image`` (on Docker Hub) pulled through the Docker Hub mirror at ``registry_base`` (``host/path``, e.g. an
    Artifact Registry remote repository ``europe-west1-docker.pkg.dev/proj/repo`` or an ECR pull-through cache
    prefix ``123456789012.dkr.ecr.eu-west-1.amazonaws.com/docker-hub``): same path, tag and digest."""
    ref = parse_image(image)
    if not ref.on_docker_hub:
        raise _field_error("tfs_image", image, "only a Docker Hub image can be pulled through the Docker Hub mirror")
    return f"{registry_base.rstrip('/')}/{ref.path}{ref.version}"


def registry_login_host(image: str) -> str | None:
    """The registry host the VM logs in to before pulling ``image`` (its own registry), or None."""
    registry = parse_image(image).registry
    host = registry.split(":", 1)[0] if registry else None
    return registry if host and any(p.match(host) for p in _LOGIN_HOSTS) else None


def _check_image(image: str, gpu: bool) -> None:
    ref = parse_image(image)
    tag = ref.tag
    if tag is None and ref.digest is None:
        raise _field_error("tfs_image", image, f"pin a version tag or a digest, e.g. {DEFAULT_TFS_IMAGE!r}")
    if tag in FLOATING_TAGS and ref.digest is None:
        raise _field_error(
            "tfs_image", image, f"tag {tag!r} floats; pin a version or a digest, e.g. {DEFAULT_TFS_IMAGE!r}"
        )
    if tag is None:
        return  # a digest alone: the variant cannot be told from the name
    if gpu and not tag.endswith("-gpu"):
        raise _field_error("tfs_image", image, f"gpu=True needs the -gpu variant, e.g. '{DEFAULT_TFS_IMAGE}-gpu'")
    if not gpu and tag.endswith("-gpu"):
        raise _field_error("tfs_image", image, "a -gpu image needs gpu=True (and a GPU machine image)")


# --- TF Serving config texts (text protos) ---------------------------------------------------------------------


def initial_model_config() -> str:
    """A ModelServerConfig that TF Serving starts with: an empty list, no model to wait for or fail on."""
    return (
        "# Placeholder from the VM's first boot: the modelfleet agent replaces this file with the synced models.\n"
        "model_config_list {\n}\n"
    )


def monitoring_config() -> str:
    """MonitoringConfig: Prometheus metrics on TF Serving's REST port at TFS_METRICS_PATH."""
    return f'prometheus_config {{\n  enable: true\n  path: "{TFS_METRICS_PATH}"\n}}\n'


def batching_config(batching: Batching) -> str:
    """BatchingParameters (the size and time fields are google.protobuf.Int64Value wrappers)."""
    lines = [
        f"max_batch_size {{ value: {batching.max_batch_size} }}",
        f"batch_timeout_micros {{ value: {batching.batch_timeout_micros} }}",
        f"max_enqueued_batches {{ value: {batching.max_enqueued_batches} }}",
        f"num_batch_threads {{ value: {batching.num_batch_threads} }}",
    ]
    return "\n".join(lines) + "\n"


# --- commands and units ------------------------------------------------------------------------------------------


def tfs_server_flags(
    model_config_poll_seconds: int = MODEL_CONFIG_POLL_SECONDS, batching: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """The tensorflow_model_server flags, in order: a VM's (``tfs_flags``) and the local compose file's
    (``infra.local``), so the two never drift."""
    flags = [
        f"--port={TFS_GRPC_PORT}",
        f"--rest_api_port={TFS_REST_PORT}",
        f"--model_config_file={MODEL_CONFIG_PATH}",
        f"--model_config_file_poll_wait_seconds={model_config_poll_seconds}",
        f"--monitoring_config_file={MONITORING_CONFIG_PATH}",
        "--enable_grpc_healthcheck_service=true",
        f"--max_num_load_retries={TFS_MAX_LOAD_RETRIES}",
        f"--load_retry_interval_micros={TFS_LOAD_RETRY_INTERVAL_SECONDS * 1_000_000}",
        # TF Serving checks a config's labels before it loads anything (server_core.cc UpdateModelVersionLabelMap),
        # so at start-up, where nothing is AVAILABLE yet, any label makes it exit 255. The agent's steady config
        # carries labels (on versions TF Serving has loaded here), so a restart (crash, OOM kill, docker restart) that
        # reads it before the agent has seen TF Serving down and rewritten it failed once, until systemd's RestartSec.
        # This flag admits a label on a version that is not AVAILABLE only when the label is new or keeps its
        # version (../shared/notes/tf-serving.md; tests/support/tfserving_standin.py plays it): at start-up every
        # label is new, so that start-up succeeds; once running, a label that MOVES is still checked, and the agent
        # never writes one that is not on an AVAILABLE version (docs/agent.md, transition rules 2 and 4).
        "--allow_version_labels_for_unavailable_models=true",
    ]
    if batching:
        flags += ["--enable_batching=true", f"--batching_parameters_file={BATCHING_CONFIG_PATH}"]
    return flags + list(extra)


def tfs_flags(args: BootstrapArgs) -> list[str]:
    """The VM's tensorflow_model_server flags, in order."""
    return tfs_server_flags(args.model_config_poll_seconds, args.enabled_batching is not None, args.extra_tfs_flags)


def _docker_run_lines(args: BootstrapArgs) -> list[list[str]]:
    lines = [
        # --init: tensorflow_model_server installs no SIGTERM handler, and as PID 1 of its container the kernel drops
        # `docker stop`'s SIGTERM (tensorflow/serving#1853); Docker's init (tini) forwards it: the server stops at once.
        ["/usr/bin/docker", "run", "--init", "--rm", "--name", TFS_CONTAINER, "--pull=missing"],
        ["--publish", f"{TFS_GRPC_PORT}:{TFS_GRPC_PORT}", "--publish", f"{TFS_REST_PORT}:{TFS_REST_PORT}"],
        ["--volume", f"{MODEL_ROOT}:{MODEL_ROOT}:ro"],
        ["--volume", f"{TFS_CONFIG_DIR}:{TFS_CONFIG_DIR}:ro"],
        [arg for key, value in TFS_LOG_OPTIONS.items() for arg in ("--log-opt", f"{key}={value}")],
    ]
    if args.gpu:
        lines.append(["--gpus", "all"])
    lines += [["--entrypoint", TFS_ENTRYPOINT], [args.tfs_image]]
    return lines + [[flag] for flag in tfs_flags(args)]


def agent_lines(
    store_uri: str,
    models: Sequence[str],
    role: str,
    *,
    poll_seconds: int = AGENT_POLL_SECONDS,
    store_timeout_seconds: int = AGENT_STORE_TIMEOUT_SECONDS,
    version_switch: str = DEFAULT_VERSION_SWITCH,
    drain_wait_seconds: int = DEFAULT_DRAIN_WAIT_SECONDS,
    fleet_size: int = 1,
    max_draining_percent: int = DEFAULT_MAX_DRAINING_PERCENT,
) -> list[list[str]]:
    """The long-running agent's command, grouped as the units print it: a VM's (``_agent_lines``) and the local
    compose file's (``infra.local``), so the two never drift. The boot step appends ``--startup-config``."""
    return [
        [AGENT_BIN, "agent"],
        ["--store", store_uri],
        ["--models", ",".join(models)],
        ["--root", MODEL_ROOT],
        ["--role", role],
        ["--poll", str(poll_seconds)],
        ["--store-timeout", str(store_timeout_seconds)],
        ["--tfs-url", LOCAL_TFS_URL],
        ["--listen", f"0.0.0.0:{AGENT_PORT}"],  # the load balancer health-checks the agent
        ["--switch", version_switch, "--drain-wait-seconds", str(drain_wait_seconds)],
        ["--fleet-size", str(fleet_size), "--max-draining-percent", str(max_draining_percent)],
    ]


def _agent_lines(args: BootstrapArgs) -> list[list[str]]:
    return agent_lines(
        args.store_uri,
        args.models,
        args.role,
        poll_seconds=args.agent_poll_seconds,
        store_timeout_seconds=args.agent_store_timeout_seconds,
        version_switch=args.version_switch,
        drain_wait_seconds=args.drain_wait_seconds,
        fleet_size=args.fleet_size,
        max_draining_percent=args.max_draining_percent,
    )


def _login_lines(host: str) -> list[list[str]]:
    """Docker's login to the stack's own registry with the VM's identity (templates/registry_login.py)."""
    return [[f"{AGENT_HOME}/venv/bin/python", REGISTRY_LOGIN, host]]


def _livez_lines() -> list[list[str]]:
    """The liveness report's command: URL, lifecycle hook, seconds between probes, failures before Unhealthy."""
    return [
        [f"{AGENT_HOME}/venv/bin/python", LIVEZ_REPORT],
        [f"http://127.0.0.1:{AGENT_PORT}{LIVE_PATH}", READY_HOOK],
        [str(LIVENESS_INTERVAL_SECONDS), str(LIVENESS_FAILURES)],
    ]


def _exec_line(lines: list[list[str]]) -> str:
    """An ExecStart= value: one group of arguments a line, joined by backslash continuations."""
    for arg in (arg for line in lines for arg in line):
        if not _SAFE_ARG.match(arg):  # validated above; this guards the unit syntax itself
            raise ValueError(f"argument {arg!r} is not safe in a systemd command line")
    return " \\\n    ".join(" ".join(line) for line in lines)


def template(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def _fill(name: str, **values: str) -> str:
    text = template(name)
    used = set(re.findall(r"\{\{(\w+)\}\}", text))
    if used != set(values):
        raise ValueError(f"template {name}: placeholders {sorted(used)} but values for {sorted(values)}")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)


def units(args: BootstrapArgs) -> dict[str, str]:
    """The systemd units by file name: three, plus the liveness report on AWS."""
    agent_service = template("agent-service.conf")
    command = _exec_line(_agent_lines(args))
    gpu_check = "ExecStartPre=/usr/bin/nvidia-smi --list-gpus\n" if args.gpu else ""
    login_host = registry_login_host(args.tfs_image)
    # '-': a failed login must not keep TF Serving down when its image is already on disk (--pull=missing).
    login = f"ExecStartPre=-{_exec_line(_login_lines(login_host))}\n" if login_host else ""
    aws: dict[str, str] = {}
    if args.cloud == "aws":
        aws[LIVEZ_UNIT] = _fill(LIVEZ_UNIT, agent_service=agent_service, report_command=_exec_line(_livez_lines()))
    return {
        TFS_UNIT: _fill(
            TFS_UNIT,
            container=TFS_CONTAINER,
            gpu_check=gpu_check,
            registry_login=login,
            docker_run=_exec_line(_docker_run_lines(args)),
        ),
        SYNC_UNIT: _fill(SYNC_UNIT, agent_service=agent_service, agent_command=command),
        AGENT_UNIT: _fill(AGENT_UNIT, agent_service=agent_service, agent_command=command),
        **aws,
    }


def agent_env(args: BootstrapArgs) -> str:
    """The agent units' EnvironmentFile (also read by install-agent.sh: the bundle's URI and sha256)."""
    env = {
        "MODELFLEET_WHEEL_URI": args.agent_wheel.uri,
        "MODELFLEET_WHEEL_SHA256": args.agent_wheel.sha256,
        "PYTHONUNBUFFERED": "1",
    }
    if args.aws_region is not None:
        env["AWS_DEFAULT_REGION"] = args.aws_region
    return "".join(f"{key}={value}\n" for key, value in env.items())


# --- the document ------------------------------------------------------------------------------------------------


def _file(path: str, content: str, permissions: str = "0644") -> dict[str, str]:
    return {"path": path, "owner": "root:root", "permissions": permissions, "content": content}


def cloud_config(args: BootstrapArgs) -> dict[str, Any]:
    """The cloud-config as data (``render_user_data`` serialises it)."""
    files = [
        _file(f"{AGENT_HOME}/install-agent.sh", template("install-agent.sh"), "0755"),
        # Fetches the agent bundle before anything is installed; the bundle brings the rest (LIVEZ_REPORT too).
        _file(FETCH_OBJECT, template(FETCHERS[args.cloud]), "0755"),
        _file(AGENT_ENV_FILE, agent_env(args)),
        _file(MONITORING_CONFIG_PATH, monitoring_config()),
        # The agent owns this file from its first sync on; write_files runs on the first boot only.
        _file(MODEL_CONFIG_PATH, initial_model_config()),
    ]
    if args.enabled_batching is not None:
        files.append(_file(BATCHING_CONFIG_PATH, batching_config(args.enabled_batching)))
    files += [_file(f"{UNIT_DIR}/{name}", text) for name, text in units(args).items()]
    started = [TFS_UNIT, AGENT_UNIT] + ([LIVEZ_UNIT] if args.cloud == "aws" else [])
    # GPU images ship Docker (docker-ce) with the NVIDIA toolkit; Ubuntu's docker.io would conflict with it.
    packages = ["python3-venv"] if args.gpu else ["docker.io", "python3-venv"]
    return {
        "package_update": True,
        "packages": packages,
        "users": [
            "default",
            {"name": "modelfleet", "system": True, "no_create_home": True, "shell": "/usr/sbin/nologin"},
        ],
        "write_files": files,
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", SYNC_UNIT, *started],
            # --no-block: cloud-init must not wait for the boot step (it installs the agent on the first boot).
            ["systemctl", "start", "--no-block", *started],
        ],
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so the user-data reads like the files it writes."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render_user_data(args: BootstrapArgs) -> str:
    """The ``#cloud-config`` document for ``args``; raises ``BadInput`` if it outgrows AWS's 16 KB limit."""
    body = yaml.dump(cloud_config(args), Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=False)
    text = "#cloud-config\n" + body
    size = len(text.encode("utf-8"))
    if size > USER_DATA_LIMIT_BYTES:
        raise BadInput(f"bootstrap user-data is {size} bytes, over AWS's {USER_DATA_LIMIT_BYTES}-byte limit")
    return text
