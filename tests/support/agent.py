"""Helpers shared by the agent tests: an agent wired to a store and a TF Serving stand-in, waits, probes."""

from __future__ import annotations

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
from tests.support.tfserving_standin import TFServingStandIn

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

    def download_file(self, key: str, path: Path) -> None:
        self.calls["download_file"] += 1
        self.inner.download_file(key, path)

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
