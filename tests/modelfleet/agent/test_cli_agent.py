"""``modelfleet agent`` at the edge: exit codes, one-line errors, SIGTERM, and no TensorFlow or Pulumi import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_export.constants import HEALTH_PATH, STABLE
from model_export.manifest import load_manifest
from model_export.publish import publish
from model_export.store import open_store
from modelfleet.agent.main import STATE_NAME
from modelfleet.cli import main
from tests.support import REPO_ROOT
from tests.support.agent import MODEL, assert_verified, http_get, served, wait_until
from tests.support.servers import free_port
from tests.support.tfserving_standin import TFServingStandIn


@pytest.fixture
def published(savedmodels: dict[str, Path], tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    uri = f"file://{tmp_path / 'store'}"
    publish(savedmodels["v1"], uri, MODEL, label=STABLE)
    return uri


def agent_argv(store: str, root: Path, *extra: str) -> list[str]:
    dead = f"http://127.0.0.1:{free_port()}"
    return [
        "agent",
        "--store",
        store,
        "--models",
        MODEL,
        "--root",
        str(root),
        "--role",
        STABLE,
        "--tfs-url",
        dead,
        *extra,
    ]


def saved_state(root: Path, model: str = MODEL) -> dict[str, object]:
    return dict(json.loads((root / STATE_NAME).read_text())["models"][model])


def test_once_syncs_and_exits_0(published: str, tmp_path: Path) -> None:
    """``--once`` is the bootstrap's first sync (modelfleet-sync.service), ordered before TF Serving: ready (exit 0)
    once the desired version is on disk, verified, and the agent's target, whether TF Serving runs yet or not."""
    root = tmp_path / "root"
    assert main([*agent_argv(published, root), "--once"]) == 0
    assert_verified(root / MODEL / "1", load_manifest(open_store(published), MODEL)[0].get(1))
    state = saved_state(root)
    assert (state["target"], state["desired"], state["proven"]) == (1, 1, [])
    # TF Serving is not running (as at boot): the file will be its first config, where a version it has never loaded
    # could fail and make it exit. On a new VM nothing is proven yet: an empty model list, which TF Serving starts
    # with; the long-running agent then adds version 1 by a reload.
    assert served(root / "models.config") == {}

    # Once TF Serving has loaded version 1 on this VM (the state file remembers it) ...
    with TFServingStandIn(grpc=False) as tfs:
        tfs.set_model(MODEL, versions={1: "AVAILABLE"})
        assert main([*with_flag(agent_argv(published, root), "--tfs-url", tfs.rest_url), "--once"]) == 0
        assert served(root / "models.config") == {MODEL: ([1], {STABLE: 1})}
    assert saved_state(root)["proven"] == [1]
    # ... the first sync after a reboot, TF Serving not running yet, writes that version, without a label (at
    # start-up no version is AVAILABLE yet: TF Serving without --allow_version_labels_for_unavailable_models exits).
    assert main([*agent_argv(published, root), "--once"]) == 0
    assert served(root / "models.config") == {MODEL: ([1], {})}


def test_once_exits_1_when_a_model_cannot_be_served(
    published: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    with TFServingStandIn(grpc=False) as tfs:
        argv = with_flag(agent_argv(published, root), "--tfs-url", tfs.rest_url)
        argv[argv.index(MODEL)] = f"{MODEL},nothere"
        assert main([*argv, "--once"]) == 1
        assert "nothere: no manifest at" in caplog.text
        # The model that exists is still served: TF Serving (running) is told to load it, labeled once AVAILABLE.
        assert saved_state(root)["target"] == 1
        assert served(root / "models.config") == {MODEL: ([1], {})}
        tfs.load_config(root / "models.config")
        assert tfs.versions(MODEL) == {1: "AVAILABLE"}


def with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--listen", "localhost", "--listen 'localhost' is not HOST:PORT (e.g. 0.0.0.0:8080)"),
        ("--listen", "h:99999", "--listen 'h:99999' is not HOST:PORT (e.g. 0.0.0.0:8080)"),
        (
            "--models",
            "a,,b",
            "--models model name '' is invalid; use 1-128 of [A-Za-z0-9_.-], starting alphanumeric",
        ),
        ("--models", " ", "--models list at least one model name"),
        ("--models", "a,a", "--models names a model twice: a,a"),
        (
            "--models",
            "bad/name",
            "--models model name 'bad/name' is invalid; use 1-128 of [A-Za-z0-9_.-], starting alphanumeric",
        ),
        (
            "--store",
            "ftp://host/x",
            "store URI 'ftp://host/x' has unknown scheme 'ftp'; "
            "use file:///absolute/path, gs://bucket/prefix or s3://bucket/prefix",
        ),
        ("--tfs-url", "127.0.0.1:8501", "--tfs-url '127.0.0.1:8501' must start with http:// or https://"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    flag: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = with_flag(agent_argv(f"file://{tmp_path}", tmp_path / "root", "--once"), flag, value)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"modelfleet: error: {message}\n"
    assert not (tmp_path / "root").exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--keep-local", "0", "argument --keep-local: '0' must be 1 or more"),
        ("--poll", "0", "argument --poll: '0' must be more than 0"),
        ("--poll", "soon", "argument --poll: 'soon' is not a number of seconds"),
        ("--role", "blue", "argument --role: invalid choice: 'blue'"),
    ],
)
def test_bad_arguments_exit_2(
    flag: str, value: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = with_flag(agent_argv(f"file://{tmp_path}", tmp_path / "root", "--once"), flag, value)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"modelfleet agent: error: {message}")


def test_unusable_root_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(agent_argv(f"file://{tmp_path}", afile / "root", "--once")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"modelfleet: error: --root '{afile / 'root'}' cannot be used:")


def test_sigterm_stops_the_agent_cleanly(published: str, tmp_path: Path) -> None:
    port = free_port()
    root = tmp_path / "root"
    argv = [
        sys.executable,
        "-m",
        "modelfleet",
        *agent_argv(published, root, "--poll", "0.2"),
        "--listen",
        f"127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until("the agent's config", lambda: (root / "models.config").exists(), timeout=20)
        # TF Serving is not running: the health check must say so (503), with the reason.
        health = f"http://127.0.0.1:{port}{HEALTH_PATH}"
        wait_until("the health check", lambda: "version 1 not confirmed" in http_get(health)[1])
        code, body = http_get(health)
        assert code == 503 and "not serving (stopped or starting)" in body
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "SIGTERM: stopping" in err


# Top-level packages a serving VM does not install; the agent must not import them, nor the predict client.
_NOT_ON_A_VM = ("tensorflow", "keras", "pulumi", "pulumi_gcp", "pulumi_aws", "numpy")


def test_the_agent_never_imports_tensorflow_or_pulumi(published: str, tmp_path: Path) -> None:
    argv = agent_argv(published, tmp_path / "root", "--once")
    code = (
        "import json, sys\n"
        "from modelfleet.cli import main\n"
        "import modelfleet.agent.health, modelfleet.agent.main, model_export.store.s3, model_export.store.gcs\n"
        f"rc = main({argv!r})\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {_NOT_ON_A_VM!r} or m == 'modelfleet.client'"
        " or m.startswith('modelfleet.client.'))\n"
        "print(json.dumps({'rc': rc, 'bad': bad}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": 0, "bad": []}
    assert time.monotonic() - started < 30


def test_agent_help_imports_nothing_a_serving_vm_lacks() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "modelfleet", "agent", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "--models" in out.stdout
    # Each line is "import time: self | cumulative | name", the name indented by its depth.
    lines = [line for line in out.stderr.splitlines() if line.startswith("import time:")]
    imported = [line.rsplit("|", 1)[1].strip() for line in lines]
    assert "modelfleet.agent.main" in imported  # the probe sees the agent's own imports
    bad = [m for m in imported if m.split(".")[0] in _NOT_ON_A_VM or (m + ".").startswith("modelfleet.client.")]
    assert bad == []
