"""infra/bootstrap.py: the user-data is checked by the tools that will read it (cloud-init's schema, systemd's unit
verifier, shellcheck, TF Serving's protos), and the commands it runs carry what the arguments asked for."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from google.protobuf.message import Message
from tensorflow_serving.config import model_server_config_pb2

from infra import agent_package, bootstrap
from infra.bootstrap import AgentWheel, BootstrapArgs, render_user_data
from infra.config import Batching, check_region
from model_export.constants import (
    AGENT_PORT,
    CANARY,
    DEFAULT_DRAIN_WAIT_SECONDS,
    LIVE_PATH,
    STABLE,
    TFS_GRPC_PORT,
    TFS_METRICS_PATH,
    TFS_REST_PORT,
)
from model_export.errors import BadInput

SHA = "3f" * 32
WHEEL_NAME = "modelfleet-0.2.0-agent-cp312-manylinux_2_39_x86_64.zip"  # the agent bundle (infra.agent_package)
DIGEST = "sha256:" + "5e" * 32
AR_IMAGE = f"europe-west1-docker.pkg.dev/acme-ml/mf-prod-dockerhub/tensorflow/serving:2.20.0@{DIGEST}"
ECR_IMAGE = f"123456789012.dkr.ecr.eu-west-1.amazonaws.com/mf-prod-dockerhub/tensorflow/serving:2.20.0-gpu@{DIGEST}"


def wheel(scheme: str) -> AgentWheel:
    return AgentWheel(f"{scheme}://mf-store/prod/_agent/{SHA}/{WHEEL_NAME}", SHA)


def batching(**overrides: Any) -> Batching:
    fields: dict[str, Any] = {
        "enabled": True,
        "max_batch_size": 32,
        "batch_timeout_micros": 1000,
        "num_batch_threads": 4,
        "max_enqueued_batches": 100,
    }
    fields.update(overrides)
    return Batching(**fields)


def make_args(**overrides: Any) -> BootstrapArgs:
    fields: dict[str, Any] = {
        "cloud": "gcp",
        "store_uri": "gs://mf-store/prod",
        "models": ("digits",),
        "role": STABLE,
        "agent_wheel": wheel("gs"),
    }
    fields.update(overrides)
    return BootstrapArgs(**fields)


AWS: dict[str, Any] = {"cloud": "aws", "store_uri": "s3://mf-store/prod", "agent_wheel": wheel("s3")}
AWS_REGION = {"aws_region": "eu-west-1"}
THREE = ("digits", "iris", "wine.v2")
GPU = {"gpu": True, "tfs_image": "tensorflow/serving:2.20.0-gpu"}
CASES: dict[str, dict[str, Any]] = {
    "gcp-cpu-batching-stable-1": {
        "batching": batching(max_batch_size=64, batch_timeout_micros=2000),
        "tfs_image": AR_IMAGE,  # the stack's Artifact Registry remote repository, pinned by digest
    },
    "gcp-gpu-batching-canary-3": {
        **GPU,
        "role": CANARY,
        "models": THREE,
        "batching": batching(max_batch_size=16, num_batch_threads=2, max_enqueued_batches=8),
        "model_config_poll_seconds": 10,
        "version_switch": "drain",
        "fleet_size": 8,
        "max_draining_percent": 50,
        "drain_wait_seconds": 10,
    },
    "aws-gpu-nobatch-canary-3": {
        **AWS,
        **AWS_REGION,
        **GPU,
        "tfs_image": ECR_IMAGE,  # the stack's ECR pull-through cache
        "role": CANARY,
        "models": THREE,
        "agent_poll_seconds": 5,
        "agent_store_timeout_seconds": 20,
        "version_switch": "overlap",
        "fleet_size": 3,
    },
    "aws-cpu-batching-stable-3-extra-flags": {
        **AWS,
        **AWS_REGION,
        "models": THREE,
        "batching": batching(batch_timeout_micros=0),
        "extra_tfs_flags": ("--enable_serialization_as_tensor_content=true", "--rest_api_timeout_in_ms=5000"),
        "tfs_image": ECR_IMAGE.replace("-gpu@", "@"),  # the longest image reference a stack writes
    },
    "aws-cpu-nobatch-stable-1": {
        **AWS,
        **AWS_REGION,
        "tfs_image": "registry.example.com:5000/tfs/serving:2.20.0",
        "batching": batching(enabled=False),
    },
}


class Rendered:
    def __init__(self, args: BootstrapArgs) -> None:
        self.args = args
        self.text = render_user_data(args)
        self.doc: dict[str, Any] = yaml.safe_load(self.text)
        self.files: dict[str, str] = {f["path"]: f["content"] for f in self.doc["write_files"]}

    def unit(self, name: str) -> dict[str, list[tuple[str, str]]]:
        return parse_unit(self.files[f"/etc/systemd/system/{name}"])

    def exec_start(self, name: str) -> list[str]:
        (line,) = values(self.unit(name), "Service", "ExecStart")
        return shlex.split(line)


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit as ordered (key, value) lists, backslash continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        else:
            key, value = line.split("=", 1)
            sections[current].append((key, value))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit[section] if k == key]


def words(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> set[str]:
    return {w for v in values(unit, section, key) for w in v.split()}


@pytest.fixture(params=list(CASES), scope="module")
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return Rendered(make_args(**CASES[request.param]))


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


# --- the tools that read the artefacts ---------------------------------------------------------------------------


def test_cloud_init_schema_accepts_the_document(rendered: Rendered, tmp_path: Path) -> None:
    assert rendered.text.startswith("#cloud-config\n")
    path = tmp_path / "user-data"
    path.write_text(rendered.text)
    proc = run(["cloud-init", "schema", "--config-file", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout


def test_cloud_init_schema_rejects_a_broken_document(tmp_path: Path) -> None:
    """Proves the schema check above is really checking: wrong types and a bad enum must fail it."""
    doc = Rendered(make_args()).doc
    doc["package_update"] = "sometimes"
    doc["write_files"][0]["encoding"] = "rot13"
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + yaml.safe_dump(doc))
    proc = run(["cloud-init", "schema", "--config-file", str(path)])
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "package_update" in out and "encoding" in out


def test_every_template_script_passes_shellcheck() -> None:
    scripts = sorted(bootstrap.TEMPLATES.glob("*.sh"))
    assert scripts, "no shell templates found"
    proc = run(["shellcheck", *map(str, scripts)])
    assert proc.returncode == 0, proc.stdout


def test_embedded_script_is_the_template_and_passes_shellcheck(rendered: Rendered, tmp_path: Path) -> None:
    script = rendered.files["/opt/modelfleet/install-agent.sh"]
    assert script == (bootstrap.TEMPLATES / "install-agent.sh").read_text()
    path = tmp_path / "install-agent.sh"
    path.write_text(script)
    proc = run(["shellcheck", str(path)])
    assert proc.returncode == 0, proc.stdout
    (file_entry,) = [f for f in rendered.doc["write_files"] if f["path"] == "/opt/modelfleet/install-agent.sh"]
    assert file_entry["permissions"] == "0755"


def test_shellcheck_catches_a_bad_script(tmp_path: Path) -> None:
    path = tmp_path / "bad.sh"
    path.write_text('#!/bin/bash\nrm -rf $1/*\nif [ $x == "" ]; then echo; fi\n')
    assert run(["shellcheck", str(path)]).returncode != 0


def _verify_units(files: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` in a scratch root holding the units, the host's stock units and stub binaries."""
    root = tmp_path / "root"
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (unit_dir / "docker.service").write_text("[Service]\nExecStart=/usr/bin/docker\n")
    stubs = ("usr/bin/docker", "usr/bin/nvidia-smi", "opt/modelfleet/install-agent.sh", bootstrap.AGENT_BIN[1:])
    for stub in (*stubs, f"{bootstrap.AGENT_HOME[1:]}/venv/bin/python"):
        (root / stub).parent.mkdir(parents=True, exist_ok=True)
        (root / stub).write_text("#!/bin/sh\n")
        (root / stub).chmod(0o755)
    names = []
    for path, text in files.items():
        if path.startswith("/etc/systemd/system/"):
            (root / path[1:]).write_text(text)
            names.append(str(root / path[1:]))
    assert len(names) == (4 if f"{bootstrap.UNIT_DIR}/{bootstrap.LIVEZ_UNIT}" in files else 3)
    return run(["systemd-analyze", "verify", f"--root={root}", *names])


def test_systemd_accepts_the_units(rendered: Rendered, tmp_path: Path) -> None:
    proc = _verify_units(rendered.files, tmp_path)
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), proc.stdout + proc.stderr


def test_systemd_verify_flags_an_unknown_key(tmp_path: Path) -> None:
    files = dict(Rendered(make_args()).files)
    path = "/etc/systemd/system/tfserving.service"
    files[path] = files[path].replace("Restart=always", "Restart=always\nRestartForever=yes")
    proc = _verify_units(files, tmp_path)
    assert "RestartForever" in proc.stdout + proc.stderr


# --- TF Serving config texts, parsed with TF Serving's protos ------------------------------------------------------


def upstream_messages() -> tuple[type[Message], type[Message]]:
    """MonitoringConfig and BatchingParameters classes.

    The tensorflow-serving-api wheel ships neither monitoring_config_pb2 nor session_bundle_config_pb2, so unless a
    later wheel does, they are built here from tensorflow/serving's definitions (field names, numbers and types of
    tensorflow_serving/config/monitoring_config.proto and of BatchingParameters fields 1-7 in
    tensorflow_serving/servables/tensorflow/session_bundle_config.proto).
    """
    try:
        from tensorflow_serving.config import monitoring_config_pb2
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
    except ImportError:
        pass
    else:
        return monitoring_config_pb2.MonitoringConfig, session_bundle_config_pb2.BatchingParameters
    field = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    monitoring.message_type.add(name="MonitoringConfig").field.add(
        name="prometheus_config",
        number=1,
        type=field.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=field.LABEL_OPTIONAL,
    )
    pool.Add(monitoring)

    session = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = session.message_type.add(name="BatchingParameters")
    wrapped = [
        ("max_batch_size", 1),
        ("batch_timeout_micros", 2),
        ("max_enqueued_batches", 3),
        ("num_batch_threads", 4),
    ]
    for name, number in wrapped:
        message.field.add(
            name=name,
            number=number,
            type=field.TYPE_MESSAGE,
            type_name=".google.protobuf.Int64Value",
            label=field.LABEL_OPTIONAL,
        )
    message.field.add(
        name="thread_pool_name",
        number=5,
        type=field.TYPE_MESSAGE,
        type_name=".google.protobuf.StringValue",
        label=field.LABEL_OPTIONAL,
    )
    message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64, label=field.LABEL_REPEATED)
    message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    pool.Add(session)

    def cls(name: str) -> type[Message]:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))

    return cls("MonitoringConfig"), cls("BatchingParameters")


MonitoringConfig, BatchingParameters = upstream_messages()


def test_initial_models_config_is_an_empty_model_config_list(rendered: Rendered) -> None:
    config = text_format.Parse(rendered.files[bootstrap.MODEL_CONFIG_PATH], model_server_config_pb2.ModelServerConfig())
    # An explicit, empty list: TF Serving starts with nothing to wait for or fail on, and a later list is accepted.
    assert config.WhichOneof("config") == "model_config_list"
    assert len(config.model_config_list.config) == 0


def test_monitoring_config_enables_prometheus(rendered: Rendered) -> None:
    config: Any = text_format.Parse(rendered.files[bootstrap.MONITORING_CONFIG_PATH], MonitoringConfig())
    assert config.prometheus_config.enable is True
    assert config.prometheus_config.path == TFS_METRICS_PATH


def test_batching_parameters_carry_the_arguments(rendered: Rendered) -> None:
    wanted = rendered.args.enabled_batching
    if wanted is None:
        assert bootstrap.BATCHING_CONFIG_PATH not in rendered.files
        assert "--enable_batching=true" not in rendered.exec_start(bootstrap.TFS_UNIT)
        return
    params: Any = text_format.Parse(rendered.files[bootstrap.BATCHING_CONFIG_PATH], BatchingParameters())
    assert params.max_batch_size.value == wanted.max_batch_size
    assert params.batch_timeout_micros.value == wanted.batch_timeout_micros
    assert params.num_batch_threads.value == wanted.num_batch_threads
    assert params.max_enqueued_batches.value == wanted.max_enqueued_batches
    assert params.HasField("batch_timeout_micros")  # written even when 0


def test_the_protos_reject_a_wrong_field() -> None:
    """Proves the parsing above checks field names: a misspelt field must not parse."""
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sizes { value: 1 }", BatchingParameters())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus { enable: true }", MonitoringConfig())


# --- the commands ------------------------------------------------------------------------------------------------


def test_docker_run_pins_the_image_and_mounts_the_model_root_read_only(rendered: Rendered) -> None:
    args = rendered.args
    argv = rendered.exec_start(bootstrap.TFS_UNIT)
    assert argv[:2] == ["/usr/bin/docker", "run"]
    image_at = argv.index(args.tfs_image)
    docker_opts, server_flags = argv[2:image_at], argv[image_at + 1 :]
    assert "--rm" in docker_opts
    # Docker's init as PID 1 passes `docker stop`'s SIGTERM on: TF Serving as PID 1 ignores it (tensorflow/serving#1853)
    assert docker_opts[:1] == ["--init"]
    assert docker_opts[docker_opts.index("--name") + 1] == bootstrap.TFS_CONTAINER
    assert docker_opts[docker_opts.index("--entrypoint") + 1] == "/usr/bin/tensorflow_model_server"
    mounts = [docker_opts[i + 1] for i, opt in enumerate(docker_opts) if opt == "--volume"]
    assert f"{bootstrap.MODEL_ROOT}:{bootstrap.MODEL_ROOT}:ro" in mounts
    assert all(m.endswith(":ro") for m in mounts)
    published = {docker_opts[i + 1] for i, opt in enumerate(docker_opts) if opt == "--publish"}
    assert published == {f"{TFS_GRPC_PORT}:{TFS_GRPC_PORT}", f"{TFS_REST_PORT}:{TFS_REST_PORT}"}
    assert (docker_opts[docker_opts.index("--gpus") + 1] == "all") if args.gpu else ("--gpus" not in docker_opts)

    expected = {
        f"--port={TFS_GRPC_PORT}",
        f"--rest_api_port={TFS_REST_PORT}",
        f"--model_config_file={bootstrap.MODEL_CONFIG_PATH}",
        f"--model_config_file_poll_wait_seconds={args.model_config_poll_seconds}",
        f"--monitoring_config_file={bootstrap.MONITORING_CONFIG_PATH}",
        "--enable_grpc_healthcheck_service=true",
        "--max_num_load_retries=2",
        "--load_retry_interval_micros=5000000",
        "--allow_version_labels_for_unavailable_models=true",
        *args.extra_tfs_flags,
    }
    if args.enabled_batching is not None:
        expected |= {"--enable_batching=true", f"--batching_parameters_file={bootstrap.BATCHING_CONFIG_PATH}"}
    assert set(server_flags) == expected and len(server_flags) == len(expected)
    # Every file a flag names is written by the user-data and visible inside the container.
    for flag in server_flags:
        if flag.endswith(".config"):
            path = flag.split("=", 1)[1]
            assert path in rendered.files
            assert any(path.startswith(m.split(":")[1] + "/") for m in mounts)


def test_tfserving_unit_restarts_and_checks_the_gpu(rendered: Rendered) -> None:
    unit = rendered.unit(bootstrap.TFS_UNIT)
    assert values(unit, "Service", "Restart") == ["always"]
    assert values(unit, "Unit", "StartLimitIntervalSec") == ["0"]
    pre = values(unit, "Service", "ExecStartPre")
    assert ("/usr/bin/nvidia-smi --list-gpus" in pre) is rendered.args.gpu
    assert f"-/usr/bin/docker rm --force {bootstrap.TFS_CONTAINER}" in pre


def _flags(argv: list[str]) -> dict[str, str]:
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def test_agent_command_carries_store_models_and_role(rendered: Rendered) -> None:
    args = rendered.args
    argv = rendered.exec_start(bootstrap.AGENT_UNIT)
    assert argv[:2] == [bootstrap.AGENT_BIN, "agent"]
    assert "--once" not in argv
    assert _flags(argv) == {
        "--store": args.store_uri,
        "--models": ",".join(args.models),
        "--root": bootstrap.MODEL_ROOT,
        "--role": args.role,
        "--poll": str(args.agent_poll_seconds),
        "--store-timeout": str(args.agent_store_timeout_seconds),
        "--tfs-url": f"http://127.0.0.1:{TFS_REST_PORT}",
        "--listen": f"0.0.0.0:{AGENT_PORT}",
        "--switch": args.version_switch,
        "--drain-wait-seconds": str(args.drain_wait_seconds),
        "--fleet-size": str(args.fleet_size),
        "--max-draining-percent": str(args.max_draining_percent),
    }
    # The boot step is the same command, writing the start-up config from local state (no store request).
    assert rendered.exec_start(bootstrap.SYNC_UNIT) == [*argv, "--startup-config"]
    assert bootstrap.MODEL_CONFIG_PATH.startswith(bootstrap.MODEL_ROOT + "/")


def test_start_ordering_sync_before_tf_serving_and_agent(rendered: Rendered) -> None:
    sync, tfs, agent = (rendered.unit(n) for n in (bootstrap.SYNC_UNIT, bootstrap.TFS_UNIT, bootstrap.AGENT_UNIT))
    assert values(sync, "Service", "Type") == ["oneshot"]
    assert values(sync, "Service", "RemainAfterExit") == ["yes"]
    assert {bootstrap.TFS_UNIT, bootstrap.AGENT_UNIT} <= words(sync, "Unit", "Before")
    assert {bootstrap.SYNC_UNIT, "docker.service"} <= words(tfs, "Unit", "After")
    assert bootstrap.SYNC_UNIT in words(tfs, "Unit", "Wants")
    assert bootstrap.SYNC_UNIT not in words(tfs, "Unit", "Requires")  # a failed sync must not keep TF Serving down
    assert bootstrap.SYNC_UNIT in words(agent, "Unit", "After")  # never two agents writing the model root
    assert values(agent, "Service", "Restart") == ["always"]
    for unit in (sync, agent):
        assert values(unit, "Service", "ExecStartPre") == ["+/opt/modelfleet/install-agent.sh"]
        assert values(unit, "Service", "User") == ["modelfleet"]
        assert values(unit, "Service", "EnvironmentFile") == [bootstrap.AGENT_ENV_FILE]
        assert values(unit, "Service", "StateDirectory") == ["modelfleet/models"]
    for unit in (sync, tfs, agent):
        assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    started = [bootstrap.TFS_UNIT, bootstrap.AGENT_UNIT]
    if rendered.args.cloud == "aws":
        started.append(bootstrap.LIVEZ_UNIT)
    assert rendered.doc["runcmd"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", bootstrap.SYNC_UNIT, *started],
        ["systemctl", "start", "--no-block", *started],
    ]


def test_aws_vms_report_their_liveness_to_their_group_and_gcp_vms_do_not(rendered: Rendered) -> None:
    path = f"/etc/systemd/system/{bootstrap.LIVEZ_UNIT}"
    # The report travels in the agent bundle (AWS's 16 KB user-data limit), installed beside the venv.
    assert bootstrap.LIVEZ_REPORT not in rendered.files
    assert bootstrap.LIVEZ_REPORT.rsplit("/", 1)[1] in agent_package.BUNDLED_SCRIPTS
    if rendered.args.cloud == "gcp":  # GCP's autohealing probes LIVE_PATH from outside
        assert path not in rendered.files
        return
    unit = rendered.unit(bootstrap.LIVEZ_UNIT)
    assert bootstrap.AGENT_UNIT in words(unit, "Unit", "After")
    assert values(unit, "Service", "Restart") == ["always"]
    assert values(unit, "Service", "User") == ["modelfleet"]
    assert values(unit, "Service", "EnvironmentFile") == [bootstrap.AGENT_ENV_FILE]  # AWS_DEFAULT_REGION
    # its venv and boto3, and the report itself, come from the bundle this step installs
    assert values(unit, "Service", "ExecStartPre") == ["+/opt/modelfleet/install-agent.sh"]
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    argv = rendered.exec_start(bootstrap.LIVEZ_UNIT)
    assert argv[:2] == [f"{bootstrap.AGENT_HOME}/venv/bin/python", bootstrap.LIVEZ_REPORT]
    # URL, lifecycle hook, seconds between probes, failures in a row before Unhealthy (GCP autohealing's numbers)
    assert argv[2:] == [f"http://127.0.0.1:{AGENT_PORT}{LIVE_PATH}", bootstrap.READY_HOOK, "10", "6"]


def test_tf_serving_gives_up_on_a_version_that_cannot_load_within_seconds(rendered: Rendered) -> None:
    """TF Serving's defaults (5 retries, 60 s apart) hold its one load thread for five minutes per bad version, and
    every other load and unload waits, a rollback included."""
    flags = dict(f.split("=", 1) for f in rendered.exec_start(bootstrap.TFS_UNIT) if f.startswith("--") and "=" in f)
    retries, interval = int(flags["--max_num_load_retries"]), int(flags["--load_retry_interval_micros"])
    assert (retries, interval) == (bootstrap.TFS_MAX_LOAD_RETRIES, bootstrap.TFS_LOAD_RETRY_INTERVAL_SECONDS * 10**6)
    assert retries * interval / 10**6 <= 10
    for flag in ("--max_num_load_retries=5", "--load_retry_interval_micros=60000000"):
        with pytest.raises(BadInput, match="is set by the bootstrap itself"):
            make_args(extra_tfs_flags=(flag,))


def test_tf_serving_restarted_on_the_agents_labeled_config_starts(tmp_path: Path) -> None:
    """The agent's steady config labels the version that serves. TF Serving restarted (a crash, an OOM kill) reads it
    as its first config, where nothing is AVAILABLE yet: without --allow_version_labels_for_unavailable_models it
    exits 255 (until the agent has seen it down and rewritten the file); with the bootstrap's flags it starts and
    answers the label. The flag admits only new or unchanged labels: once running, a label moved to a version that is
    not AVAILABLE is still refused (the agent never writes one; tests/modelfleet/agent/test_plan.py)."""
    from modelfleet.agent.tfs_config import ModelEntry, render
    from tests.support.agent import wait_until
    from tests.support.tfserving_standin import EXIT_STARTUP_FAILED, StandInExited, StandInProcess

    (flag,) = [f for f in bootstrap.tfs_flags(make_args()) if f.startswith("--allow_version_labels_")]
    assert flag == "--allow_version_labels_for_unavailable_models=true"
    with pytest.raises(BadInput, match="is set by the bootstrap itself"):
        make_args(extra_tfs_flags=("--allow_version_labels_for_unavailable_models=false",))

    base = tmp_path / "digits"
    for version in (1, 2):
        (base / str(version)).mkdir(parents=True)
        (base / str(version) / "saved_model.pb").write_bytes(b"x" * 100)
    config = tmp_path / "models.config"
    config.write_text(render([ModelEntry("digits", str(base), (1,), {STABLE: 1})]))  # the steady config

    with pytest.raises(StandInExited) as exited:
        StandInProcess(config).start()
    assert exited.value.returncode == EXIT_STARTUP_FAILED
    assert "Request to assign label to version 1 of model digits" in exited.value.output

    with StandInProcess(config, poll_seconds=0.05, extra_args=[flag]) as server:
        status, body = _get(f"{server.rest_url}/v1/models/digits")
        assert status == 200 and '"AVAILABLE"' in body
        assert _predict(f"{server.rest_url}/v1/models/digits/labels/{STABLE}:predict") == 1 * 3.0  # v1: y = 1 * sum(x)

        # Running: the label moved to version 2 (loaded by this same config) is refused as a whole, as without the
        # flag, and the label stays on version 1.
        config.write_text(render([ModelEntry("digits", str(base), (1, 2), {STABLE: 2})]))
        wait_until("the refusal", lambda: "Request to assign label to version 2 of model digits" in server.output)
        assert _predict(f"{server.rest_url}/v1/models/digits/labels/{STABLE}:predict") == 1 * 3.0


def _get(url: str) -> tuple[int, str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.status, answer.read().decode()


def _predict(url: str) -> float:
    import json
    import urllib.request

    request = urllib.request.Request(url, json.dumps({"instances": [[1.0, 2.0]]}).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as answer:
        return float(json.loads(answer.read())["predictions"][0])


def test_stack_config_becomes_the_fleets_switch_flags() -> None:
    from infra.config import load_config

    values = {"cloud": "gcp", "region": "europe-west1", "gcpProject": "acme-ml-prod", "models": ["digits"]}
    cfg = load_config(
        {**values, "versionSwitch": "drain", "maxDrainingPercent": 50, "stableMinReplicas": 4, "canaryMinReplicas": 0},
        "prod",
    )
    stable = bootstrap.fleet_bootstrap_args(cfg, STABLE, "gs://mf-store/prod", wheel("gs"), drain_wait_seconds=10)
    canary = bootstrap.fleet_bootstrap_args(cfg, CANARY, "gs://mf-store/prod", wheel("gs"))
    assert (stable.version_switch, stable.max_draining_percent, stable.fleet_size) == ("drain", 50, 4)
    assert stable.drain_wait_seconds == 10
    assert canary.fleet_size == 1  # a minimum of 0 still leaves the one slot every fleet has
    assert canary.drain_wait_seconds == DEFAULT_DRAIN_WAIT_SECONDS == 30


def test_drain_wait_is_the_slowest_routing_checks_interval_times_unhealthy_threshold() -> None:
    from infra.components import HealthCheck

    assert bootstrap.drain_wait_seconds(HealthCheck()) == 30
    fast = HealthCheck(interval_seconds=5, unhealthy_threshold=2)
    assert bootstrap.drain_wait_seconds(fast, HealthCheck(interval_seconds=5, unhealthy_threshold=3)) == 15


def test_packages_and_the_agent_user(rendered: Rendered) -> None:
    packages = rendered.doc["packages"]
    assert "python3-venv" in packages
    # GPU images bring docker-ce with the NVIDIA toolkit; Ubuntu's docker.io would conflict with it.
    assert ("docker.io" in packages) is not rendered.args.gpu
    assert rendered.doc["users"][0] == "default"
    assert rendered.doc["users"][1]["name"] == "modelfleet"


def test_agent_delivery_names_the_bundle_and_installs_with_no_index(rendered: Rendered) -> None:
    args = rendered.args
    env = dict(line.split("=", 1) for line in rendered.files[bootstrap.AGENT_ENV_FILE].splitlines())
    assert env["MODELFLEET_WHEEL_URI"] == args.agent_wheel.uri
    assert env["MODELFLEET_WHEEL_SHA256"] == args.agent_wheel.sha256
    assert env.get("AWS_DEFAULT_REGION") == args.aws_region  # the S3 fetcher signs for the bucket's region
    # No requirements list in the user-data any more: the hashed one is in the bundle, checked by its sha256.
    assert "/opt/modelfleet/requirements.txt" not in rendered.files
    fetcher = rendered.files[bootstrap.FETCH_OBJECT]
    assert fetcher == (bootstrap.TEMPLATES / bootstrap.FETCHERS[args.cloud]).read_text()
    (entry,) = [f for f in rendered.doc["write_files"] if f["path"] == bootstrap.FETCH_OBJECT]
    assert entry["permissions"] == "0755"
    compile(fetcher, bootstrap.FETCH_OBJECT, "exec")
    # Standard library only: it runs before anything is installed.
    imported = {line.split()[1].split(".")[0] for line in fetcher.splitlines() if line.startswith(("import ", "from "))}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)

    script = rendered.files["/opt/modelfleet/install-agent.sh"]
    installs = _pip_installs(script)
    assert len(installs) == 1, installs
    (install,) = installs
    for flag in ("--no-index", "--require-hashes", "--only-binary=:all:", "--isolated", "--no-cache-dir"):
        assert flag in install, flag
    assert "--find-links" in install and "--requirement" in install
    assert '"$python" "$home/fetch_object.py" "$MODELFLEET_WHEEL_URI" "$bundle"' in script
    assert "sha256sum --check" in script


def _pip_installs(script: str) -> list[list[str]]:
    """Every ``pip install`` command of a shell script, continuation lines joined, as words."""
    joined = script.replace("\\\n", " ")
    commands = [line for line in joined.splitlines() if not line.lstrip().startswith("#")]
    return [shlex.split(line) for line in commands if 'pip" install' in line or "pip install" in line]


PYPI = ("pypi", "pythonhosted", "index-url", "pip download")
# Docker Hub by name ("docker.io" alone is Ubuntu's Docker package, in `packages`).
DOCKER_HUB = ("docker.io/", "registry-1.docker.io", "index.docker.io", "hub.docker.com")


def boot_path_public_registries(rendered: Rendered) -> list[str]:
    """What of PyPI and Docker Hub the user-data names, the image TF Serving pulls included."""
    text = rendered.text.lower()
    found = [word for word in (*PYPI, *DOCKER_HUB) if word in text]
    argv = rendered.exec_start(bootstrap.TFS_UNIT)
    (image,) = [arg for arg in argv if arg == rendered.args.tfs_image]
    if bootstrap.parse_image(image).on_docker_hub:
        found.append(f"Docker Hub image {image}")
    return found


def test_the_boot_path_names_no_public_registry(rendered: Rendered) -> None:
    """No PyPI in any case; no Docker Hub unless the image itself is a Docker Hub reference (the stacks pass their
    own registry's: tests/infra/test_registry.py)."""
    found = boot_path_public_registries(rendered)
    if bootstrap.parse_image(rendered.args.tfs_image).on_docker_hub:
        assert found == [f"Docker Hub image {rendered.args.tfs_image}"]
    else:
        assert found == []


def test_the_public_registry_check_sees_docker_hub_and_pypi() -> None:
    """Proves the check above looks: a Docker Hub image and a PyPI install line are reported."""
    rendered = Rendered(make_args(tfs_image="docker.io/tensorflow/serving:2.20.0"))
    assert "docker.io/" in boot_path_public_registries(rendered)
    rendered.text += "\npip install --index-url https://pypi.org/simple agent\n"
    assert {"pypi", "index-url"} <= set(boot_path_public_registries(rendered))


def test_registry_login_before_the_pull_only_for_the_stacks_own_registry(rendered: Rendered) -> None:
    pre = values(rendered.unit(bootstrap.TFS_UNIT), "Service", "ExecStartPre")
    logins = [line for line in pre if bootstrap.REGISTRY_LOGIN in line]
    host = bootstrap.registry_login_host(rendered.args.tfs_image)
    if host is None:
        assert logins == []
        return
    # '-': a failed login must not keep TF Serving down when its image is already on disk.
    assert logins == [f"-{bootstrap.AGENT_HOME}/venv/bin/python {bootstrap.REGISTRY_LOGIN} {host}"]
    assert rendered.args.tfs_image.startswith(f"{host}/")
    assert bootstrap.REGISTRY_LOGIN.rsplit("/", 1)[1] in agent_package.BUNDLED_SCRIPTS


IMAGES: list[tuple[str, tuple[str | None, str, str | None, str | None], str | None]] = [
    # reference, (registry, path, tag, digest), the registry the VM logs in to
    ("tensorflow/serving:2.20.0", (None, "tensorflow/serving", "2.20.0", None), None),
    ("docker.io/tensorflow/serving:2.20.0", (None, "tensorflow/serving", "2.20.0", None), None),
    ("ubuntu:24.04", (None, "library/ubuntu", "24.04", None), None),
    (f"tensorflow/serving@{DIGEST}", (None, "tensorflow/serving", None, DIGEST), None),
    (
        "registry.example.com:5000/tfs/serving:2.20.0",
        ("registry.example.com:5000", "tfs/serving", "2.20.0", None),
        None,
    ),
    ("localhost/tfs:1.0", ("localhost", "tfs", "1.0", None), None),
    (
        AR_IMAGE,
        ("europe-west1-docker.pkg.dev", "acme-ml/mf-prod-dockerhub/tensorflow/serving", "2.20.0", DIGEST),
        "europe-west1-docker.pkg.dev",
    ),
    (
        ECR_IMAGE,
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "mf-prod-dockerhub/tensorflow/serving", "2.20.0-gpu", DIGEST),
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
    ),
]


@pytest.mark.parametrize(("image", "parts", "login"), IMAGES, ids=[i for i, _, _ in IMAGES])
def test_image_references_are_parsed_by_dockers_rules(
    image: str, parts: tuple[str | None, str, str | None, str | None], login: str | None
) -> None:
    ref = bootstrap.parse_image(image)
    assert (ref.registry, ref.path, ref.tag, ref.digest) == parts
    assert bootstrap.registry_login_host(image) == login


@pytest.mark.parametrize(
    ("image", "mirrored"),
    [
        ("tensorflow/serving:2.20.0", "eu-docker.pkg.dev/p/r/tensorflow/serving:2.20.0"),
        (f"tensorflow/serving:2.20.0-gpu@{DIGEST}", f"eu-docker.pkg.dev/p/r/tensorflow/serving:2.20.0-gpu@{DIGEST}"),
        (f"docker.io/tensorflow/serving@{DIGEST}", f"eu-docker.pkg.dev/p/r/tensorflow/serving@{DIGEST}"),
        ("ubuntu:24.04", "eu-docker.pkg.dev/p/r/library/ubuntu:24.04"),  # official images: Docker Hub's library/
    ],
)
def test_a_docker_hub_image_through_the_stacks_mirror_keeps_its_path_tag_and_digest(image: str, mirrored: str) -> None:
    assert bootstrap.mirror_image(image, "eu-docker.pkg.dev/p/r/") == mirrored
    with pytest.raises(BadInput, match="only a Docker Hub image"):
        bootstrap.mirror_image("registry.example.com/tfs/serving:2.20.0", "eu-docker.pkg.dev/p/r")


@pytest.mark.parametrize(
    ("image", "gpu"),
    [
        (f"tensorflow/serving@{DIGEST}", False),  # a digest alone pins it; the variant cannot be told from the name
        (f"tensorflow/serving@{DIGEST}", True),
        (f"tensorflow/serving:2.20.0@{DIGEST}", False),
        (f"tensorflow/serving:latest@{DIGEST}", False),  # the digest pins what the floating tag would not
        (AR_IMAGE, False),
        (ECR_IMAGE, True),
    ],
)
def test_a_digest_pins_the_image(image: str, gpu: bool) -> None:
    args = make_args(tfs_image=image, gpu=gpu)
    assert image in Rendered(args).exec_start(bootstrap.TFS_UNIT)


def test_a_new_agent_wheel_changes_the_user_data() -> None:
    other = "4e" * 32
    changed = make_args(agent_wheel=AgentWheel(f"gs://mf-store/prod/_agent/{other}/{WHEEL_NAME}", other))
    assert render_user_data(changed) != render_user_data(make_args())


def test_realistic_user_data_fits_the_aws_limit() -> None:
    args = make_args(**CASES["aws-cpu-batching-stable-3-extra-flags"])
    size = len(render_user_data(args).encode())
    assert size <= 16 * 1024, size
    largest = max(len(render_user_data(make_args(**case)).encode()) for case in CASES.values())
    assert largest <= 16 * 1024, largest


def test_oversized_user_data_is_refused() -> None:
    models = tuple(f"model_{i:03d}_{'x' * 100}" for i in range(120))
    with pytest.raises(BadInput, match=r"over AWS's 16384-byte limit"):
        render_user_data(make_args(models=models))


# --- invalid input -------------------------------------------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str]] = [
    # the bootstrap's own rules: errors name the bootstrap field
    (
        {"tfs_image": "tensorflow/serving:latest"},
        r"^bootstrap tfs_image = 'tensorflow/serving:latest'.*'latest' floats",
    ),
    ({"tfs_image": "tensorflow/serving"}, r"^bootstrap tfs_image = 'tensorflow/serving'.*pin a version tag or a dig"),
    ({"tfs_image": "tensorflow/serving@sha256:abc"}, r"^bootstrap tfs_image = .*use a Docker reference"),
    ({"tfs_image": f"tensorflow/serving:2.20.0@{DIGEST.upper()}"}, r"^bootstrap tfs_image = .*use a Docker reference"),
    ({"tfs_image": f"tensorflow/serving:2.20.0-gpu@{DIGEST}"}, r"^bootstrap tfs_image = .*needs gpu=True"),
    ({"tfs_image": "tensorflow/serving:latest-gpu", "gpu": True}, r"^bootstrap tfs_image = .*'latest-gpu' floats"),
    ({"tfs_image": "tensorflow/serving:2.20.0", "gpu": True}, r"^bootstrap tfs_image = .*gpu=True needs the -gpu"),
    ({"tfs_image": "tensorflow/serving:2.20.0-gpu"}, r"^bootstrap tfs_image = .*needs gpu=True"),
    ({"tfs_image": "Tensorflow/Serving:2.20.0"}, r"^bootstrap tfs_image = 'Tensorflow/Serving:2.20.0'"),
    ({"role": "blue"}, r"^bootstrap role = 'blue'.*stable, canary"),
    (
        {"store_uri": "http://mf-store/prod"},
        r"^bootstrap store_uri = 'http://mf-store/prod'.*gs://bucket/prefix on gcp",
    ),
    ({"store_uri": "file:///srv/store"}, r"^bootstrap store_uri = 'file:///srv/store'.*gs://"),
    ({"store_uri": "s3://mf-store/prod"}, r"^bootstrap store_uri = 's3://mf-store/prod'.*gs://bucket/prefix on gcp"),
    ({"store_uri": "gs://mf-store/my models"}, r"^bootstrap store_uri = 'gs://mf-store/my models'"),
    ({"aws_region": "us-east-1"}, r"^bootstrap aws_region = 'us-east-1'.*unset on gcp"),
    ({**AWS}, r"^bootstrap aws_region = None.*region"),
    (
        {"agent_wheel": AgentWheel(f"s3://mf-store/_agent/{SHA}/{WHEEL_NAME}", SHA)},
        r"^bootstrap agent_wheel.uri = 's3://.*gs://",
    ),
    ({"agent_wheel": AgentWheel("gs://mf-store/_agent/x.whl", SHA)}, r"^bootstrap agent_wheel.uri = .*agent bundle"),
    (
        {"agent_wheel": AgentWheel(f"gs://mf-store/_agent/{SHA}/modelfleet-0.2.0-py3-none-any.whl", SHA)},
        r"^bootstrap agent_wheel.uri = .*modelfleet-<version>-agent-<python>-<platform>\.zip",
    ),
    ({"agent_wheel": AgentWheel(f"gs://mf-store/{WHEEL_NAME}", "abc")}, r"^bootstrap agent_wheel.sha256 = 'abc'.*64"),
    ({"extra_tfs_flags": ("--port=9000",)}, r"^bootstrap extra_tfs_flags = '--port=9000'.*set by the bootstrap"),
    ({"extra_tfs_flags": ("--flag=$(reboot)",)}, r"^bootstrap extra_tfs_flags = '--flag=\$\(reboot\)'"),
    ({"extra_tfs_flags": ("verbose",)}, r"^bootstrap extra_tfs_flags = 'verbose'"),
    ({"batching": "on"}, r"^bootstrap batching = 'on'.*Batching"),
    ({"fleet_size": 0}, r"^bootstrap fleet_size = 0 is invalid; must be between 1 and 1000$"),
    ({"fleet_size": "3"}, r"^bootstrap fleet_size = '3' is invalid; expected an integer$"),
    ({"drain_wait_seconds": -1}, r"^bootstrap drain_wait_seconds = -1 is invalid; must be between 0 and 3600$"),
    ({"drain_wait_seconds": 2.5}, r"^bootstrap drain_wait_seconds = 2.5 is invalid; expected an integer$"),
    # the list of models: model_export.manifest.check_model_names, the one rule for it
    ({"models": ()}, r"^bootstrap models = \(\) is invalid; list at least one model name$"),
    ({"models": "digits,iris"}, r"^bootstrap models = 'digits,iris' is invalid; expected a list of model names"),
    ({"models": ("digits", "digits")}, r"^bootstrap models = .* is invalid; names a model twice: digits,digits$"),
    ({"models": ("_agent",)}, r"^bootstrap models = \('_agent',\) is invalid; model name '_agent' is invalid"),
    # values from a stack key: that key's own rule in infra.config, and the error names the key
    ({"cloud": "azure"}, r"^modelfleet:cloud = 'azure' is invalid; use one of: gcp, aws$"),
    ({"model_config_poll_seconds": 0}, r"^modelfleet:modelConfigPollSeconds = 0 is invalid; must be between 1 and"),
    ({"agent_poll_seconds": -5}, r"^modelfleet:agentPollSeconds = -5 is invalid; must be between 1 and 3600$"),
    ({"agent_poll_seconds": 7200}, r"^modelfleet:agentPollSeconds = 7200 is invalid; must be between 1 and 3600$"),
    ({"agent_poll_seconds": True}, r"^modelfleet:agentPollSeconds = True is invalid; expected an integer$"),
    (
        {"agent_store_timeout_seconds": 0},
        r"^modelfleet:agentStoreTimeoutSeconds = 0 is invalid; must be between 1 and 3600$",
    ),
    ({**AWS, "aws_region": "Europe"}, r"^modelfleet:region = 'Europe' is invalid; expected a aws region"),
    ({"version_switch": "swap"}, r"^modelfleet:versionSwitch = 'swap' is invalid; use one of: overlap, drain, auto$"),
    ({"max_draining_percent": 0}, r"^modelfleet:maxDrainingPercent = 0 is invalid; must be between 1 and 100$"),
    ({"batching": batching(max_batch_size=0)}, r"^modelfleet:maxBatchSize = 0 is invalid; must be 1 or more$"),
    ({"batching": batching(num_batch_threads=-1)}, r"^modelfleet:numBatchThreads = -1 is invalid"),
    ({"batching": batching(max_enqueued_batches=2.5)}, r"^modelfleet:maxEnqueuedBatches = 2.5 is invalid; expected"),
    ({"batching": batching(batch_timeout_micros=-1)}, r"^modelfleet:batchTimeoutMicros = -1 is invalid; must be 0 or"),
]


@pytest.mark.parametrize(("overrides", "message"), INVALID, ids=[m.split(" = ")[0].strip("^") for _, m in INVALID])
def test_invalid_arguments_are_refused_with_the_field_and_value(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        make_args(**overrides)


def test_errors_are_one_line() -> None:
    for overrides, _ in INVALID:
        with pytest.raises(BadInput) as info:
            make_args(**overrides)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("region", ["eu-west-1", "us-gov-west-1", "us-isob-east-1"])
def test_aws_region_follows_the_stack_keys_rule(region: str) -> None:
    """One rule for an AWS region: what `modelfleet:region` admits on aws, the bootstrap admits too."""
    check_region("aws", region)
    assert make_args(**AWS, aws_region=region).aws_region == region
