"""Helpers shared by the agent tests: an agent wired to a store and a TF Serving stand-in, waits, probes."""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model_export.manifest import VersionEntry
from model_export.store.base import Blob, DelegatingStore, ObjectInfo, ProgressFn, Store, StoredFile
from model_export.transfer import sha256_file
from modelfleet.agent import Agent, AgentOptions
from modelfleet.agent.tfs import TfsClient
from tests.support.servers import free_port
from tests.support.tfserving_standin import EXIT_STARTUP_FAILED, FAIL_LOAD, StandInProcess, TFServingStandIn

MODEL = "digits"


def dead_tfs() -> TfsClient:
    """A TF Serving URL nobody listens on (as at boot, before TF Serving starts)."""
    return TfsClient(f"http://127.0.0.1:{free_port()}", timeout=0.5)


def make_agent(
    store: str | Store,
    root: Path,
    role: str,
    *,
    models: Sequence[str] = (MODEL,),
    tfs: TfsClient | None = None,
    **options: Any,
) -> Agent:
    uri = store if isinstance(store, str) else store.uri
    options.setdefault("listen", None)
    opts = AgentOptions(store=uri, models=tuple(models), root=root, role=role, **options)
    return Agent(opts, store=None if isinstance(store, str) else store, tfs=tfs or dead_tfs())


def served(config: Path) -> dict[str, tuple[list[int], dict[str, int]]]:
    """Parse the config with TF Serving's own protos: ``{model: (versions, labels)}``."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    msg = text_format.Parse(config.read_text(), model_server_config_pb2.ModelServerConfig())
    return {
        c.name: (list(c.model_version_policy.specific.versions), dict(c.version_labels))
        for c in msg.model_config_list.config
    }


def versions_in(config: Path) -> dict[str, list[int]]:
    return {name: versions for name, (versions, _) in served(config).items()}


class Fleet:
    """One serving VM: an agent and its TF Serving (the stand-in), which applies each config the agent writes."""

    def __init__(self, agent: Agent, tfs: TFServingStandIn) -> None:
        self.agent = agent
        self.tfs = tfs

    def settle(self, rounds: int = 4) -> bool:
        """Sync once, then alternate TF Serving's config poll and the agent's reconcile until the config stops
        changing. TF Serving must accept every config, and never newly load a version above the target."""
        ok = self.agent.run_once()
        for _ in range(rounds):
            before = {m: set(self._available(m)) for m in self.agent.states}
            self.tfs.load_config(self.agent.config_path)  # ConfigError if TF Serving would refuse it
            for m, st in self.agent.states.items():
                new = set(self._available(m)) - before[m]
                assert st.target is not None and all(v <= st.target for v in new), (m, new, st.target)
            config = self.agent.config_path.read_bytes()
            self.agent.tick(poll_store=False)
            if self.agent.config_path.read_bytes() == config:
                return ok
        raise AssertionError(f"config did not settle in {rounds} rounds")

    def _available(self, model: str) -> list[int]:
        return [v for v, s in self.tfs.versions(model).items() if s == "AVAILABLE"]


def assert_verified(version_dir: Path, entry: VersionEntry) -> None:
    """Every file of the manifest entry is on disk with its sha256 and size, and nothing else is."""
    on_disk = {p.relative_to(version_dir).as_posix() for p in version_dir.rglob("*") if p.is_file()}
    assert on_disk == set(entry.files)
    for rel, want in entry.files.items():
        assert sha256_file(version_dir / rel) == want, rel


def leftovers(root: Path) -> list[str]:
    """Names in the model root that are neither versions nor the agent's own files."""
    return sorted(p.name for p in root.rglob(".tmp-*")) + sorted(p.name for p in root.rglob(".trash-*"))


def wait_until(what: str, check: Callable[[], bool], timeout: float = 15.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class CountingStore(DelegatingStore):
    """Delegates to a real store and counts the calls (and what ``read_if_changed`` answered)."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.calls: Counter[str] = Counter()
        self.unchanged = 0

    def reset(self) -> None:
        self.calls.clear()
        self.unchanged = 0

    def check(self) -> None:
        self.calls["check"] += 1
        self.inner.check()

    def read(self, key: str) -> Blob:
        self.calls["read"] += 1
        return self.inner.read(key)

    def read_if_changed(self, key: str, token: str | None) -> Blob | None:
        self.calls["read_if_changed"] += 1
        blob = self.inner.read_if_changed(key, token)
        self.unchanged += blob is None
        return blob

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        self.calls["write"] += 1
        return self.inner.write(key, data, if_token=if_token, if_absent=if_absent)

    def put_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> StoredFile:
        self.calls["put_file"] += 1
        return self.inner.put_file(key, path, progress=progress)

    def download_file(self, key: str, path: Path, *, progress: ProgressFn | None = None) -> None:
        self.calls["download_file"] += 1
        self.inner.download_file(key, path, progress=progress)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self.calls["list"] += 1
        return self.inner.list(prefix)

    def delete(self, keys: Sequence[str]) -> None:
        self.calls["delete"] += 1
        self.inner.delete(keys)


@contextmanager
def serving(agent: Agent) -> Iterator[str]:
    """Run the long-lived agent (loop + HTTP endpoint) in a thread; yield its base URL."""
    stop = threading.Event()
    thread = threading.Thread(target=agent.serve, args=(stop,), name="agent-under-test", daemon=True)
    thread.start()
    assert agent.options.listen is not None
    host, port = agent.options.listen
    base = f"http://{host}:{port}"
    wait_until("the agent's HTTP endpoint", lambda: _answers(base))
    try:
        yield base
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()


def _answers(base: str) -> bool:
    try:
        http_get(f"{base}/", timeout=0.5)
    except OSError:
        return False
    return True


def metrics(text: str) -> dict[str, float]:
    """Prometheus text as ``{'name{labels}': value}``."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


# --- TF Serving as a process under a supervisor, and what a VM's TF Serving looks like while it starts -------------


class Supervisor:
    """Restarts a ``StandInProcess`` whenever it exits, ``restart_seconds`` later, as systemd's ``Restart=always``
    with ``RestartSec`` does for the fleet's TF Serving unit; records every exit status (255: a failed start-up, -9:
    killed). ``start()`` launches it without waiting for its ports (a start-up that fails is just another exit)."""

    def __init__(self, server: StandInProcess, restart_seconds: float = 0.3) -> None:
        self.server = server
        self.restart_seconds = restart_seconds
        self.exits: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="supervisor", daemon=True)

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.server.start(wait=False)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.server.stop()

    @property
    def startup_failures(self) -> int:
        return self.exits.count(EXIT_STARTUP_FAILED)

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            code = self.server.returncode
            if code is None:
                continue
            self.exits.append(code)
            if self._stop.wait(self.restart_seconds):
                return
            self.server.start(wait=False)


@contextmanager
def accept_and_close(port: int) -> Iterator[None]:
    """A listener on ``port`` that accepts every connection and closes it at once, as Docker's proxy does for a
    container whose TF Serving is still loading its start-up config (its own ports open only after that)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)
    sock.settimeout(0.05)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    thread = threading.Thread(target=loop, name="accept-and-close", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        sock.close()


def failing_copy(savedmodel: Path, dest: Path, error: str = "INTERNAL: bad graph") -> Path:
    """A copy of ``savedmodel`` holding the stand-in's ``FAIL_LOAD`` file: published, downloaded by the agent and
    handed to the stand-in, it fails every load attempt with ``error`` (``CODE: message``), as a version TF Serving
    cannot load does."""
    shutil.copytree(savedmodel, dest)
    (dest / FAIL_LOAD).write_text(error)
    return dest


def served_version(rest_url: str, model: str = MODEL) -> int | None:
    """The version that answers an unversioned predict (the stand-in's default model answers version x sum(x)), or
    ``None`` when TF Serving does not answer it."""
    body = json.dumps({"instances": [[1.0, 2.0]]}).encode()
    request = urllib.request.Request(f"{rest_url}/v1/models/{model}:predict", body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return round(float(json.loads(answer.read())["predictions"][0]) / 3.0)
    except (OSError, ValueError, KeyError, http.client.HTTPException):
        return None
