"""The agent's heartbeat (issue 11): what it writes, when, where, and what it reads from TF Serving's counters.
An in-process agent and a faithful TF Serving stand-in; the store is a file store wrapped to count or fail writes."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from model_export import layout
from model_export.constants import STABLE
from model_export.errors import StoreError
from model_export.heartbeat import Heartbeat
from model_export.heartbeat import ModelReport as HbModel
from model_export.publish import publish
from model_export.store import Store, open_store
from modelfleet.agent import Agent, identity
from modelfleet.agent.heartbeat import COUNTERS_NAME, HeartbeatOptions, HeartbeatWriter
from modelfleet.agent.tfs import TfsClient
from modelfleet.agent.tfs_metrics import Scrape, parse, scrape, without_own
from tests.support.agent import MODEL, CountingStore, http_get, make_agent, metrics, serving, wait_until
from tests.support.servers import free_port
from tests.support.tfserving_standin import TFServingStandIn

WAIT = 30.0
KEY = layout.heartbeat_key(STABLE, "vm-1")


class FlakyStore(CountingStore):
    """Counts calls; while ``down``, every write fails as a store outage would."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.down = False
        self.keys: list[str] = []

    def write(self, key: str, data: bytes, *, if_token: str | None = None, if_absent: bool = False) -> str:
        self.keys.append(key)
        if self.down:
            self.calls["write_failed"] += 1
            raise StoreError(f"{self.uri}/{key}: 503 Slow Down (the test's outage)")
        return super().write(key, data, if_token=if_token, if_absent=if_absent)


@contextmanager
def machine(
    tmp_path: Path, store: Store, interval: float, config_poll: float = 0.05, **options: Any
) -> Iterator[tuple[Agent, TFServingStandIn, str]]:
    port = free_port()
    agent = make_agent(
        store,
        tmp_path / "models",
        STABLE,
        tfs=TfsClient(f"http://127.0.0.1:{port}", timeout=1.0),
        listen=("127.0.0.1", free_port()),
        poll_seconds=0.1,
        heartbeat_seconds=interval,
        instance_id="vm-1",
        **options,
    )
    with agent:
        agent.run_once()
        tfs = TFServingStandIn(
            faithful=True, grpc=False, rest_api_port=port, model_config_file=agent.config_path,
            model_config_file_poll_wait_seconds=config_poll, load_seconds=0.05, unload_seconds=0.05,
            max_num_load_retries=0, load_retry_interval_micros=1000, file_system_poll_wait_seconds=0.1,
        )  # fmt: skip
        tfs.start()
        try:
            with serving(agent) as base:
                yield agent, tfs, base
        finally:
            tfs.stop()


def beat(store: Store) -> Heartbeat:
    return Heartbeat.loads(store.read(KEY).data, KEY)


def serving_version(store: Store) -> int | None:
    try:
        report = beat(store).models.get(MODEL)
    except Exception:
        return None
    return None if report is None else report.serving


def predict(url: str) -> int:
    body = json.dumps({"instances": [[0.1, 0.2, 0.3, 0.4]]}).encode()
    request = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict", body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


@pytest.fixture
def file_store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


def test_heartbeats_go_to_one_key_one_put_each_and_a_change_is_reported_at_once(
    tmp_path: Path, file_store: str, savedmodels: dict[str, Path]
) -> None:
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    store = FlakyStore(open_store(file_store))
    # An interval no test waits for: every heartbeat after the first is one the change of state asked for.
    with machine(tmp_path, store, interval=3600.0) as (_, tfs, _):
        wait_until("the heartbeat says v1 serves", lambda: serving_version(store) == 1, WAIT)
        publish(savedmodels["v2"], file_store, MODEL, label=STABLE)
        wait_until("the heartbeat says v2 serves", lambda: serving_version(store) == 2, WAIT)
        assert tfs.labels(MODEL)[STABLE] == 2  # what the heartbeat says is what TF Serving serves
        report = beat(store).models[MODEL]
        assert (report.desired, report.target, report.states.get(2)) == (2, 2, "AVAILABLE")
        assert report.cache_bytes is not None and report.cache_bytes > 0
    # every write of the agent was a heartbeat, the last one its "stopped"
    assert set(store.keys) == {KEY} and store.calls["write"] == len(store.keys)
    assert beat(store).stopping
    assert store.calls["list"] == 0 and store.calls["delete"] == 0


def test_serving_is_what_tf_serving_resolves_the_label_to_not_the_config_written(
    tmp_path: Path, file_store: str, savedmodels: dict[str, Path]
) -> None:
    """TF Serving applies a config at its next poll of the file (here every 2 s, the fleets' is 5): the heartbeat
    says v2 serves only once TF Serving's label answers v2, so --wait never returns while the label still serves v1."""
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    store = FlakyStore(open_store(file_store))
    with machine(tmp_path, store, interval=3600.0, config_poll=2.0) as (agent, tfs, _):
        wait_until("the heartbeat says v1 serves", lambda: serving_version(store) == 1, WAIT)
        publish(savedmodels["v2"], file_store, MODEL, label=STABLE)
        seen: list[tuple[int | None, int | None]] = []

        def reported_v2() -> bool:
            got = serving_version(store)
            seen.append((got, tfs.labels(MODEL).get(STABLE)))  # the heartbeat's word, then TF Serving's
            return got == 2

        wait_until("the heartbeat says v2 serves", reported_v2, WAIT)
        assert all(truth == 2 for said, truth in seen if said == 2), seen
        # the agent wrote the label's move before TF Serving took it: the heartbeat did not say so then
        assert agent.entries[MODEL].labels[STABLE] == 2


def test_heartbeats_keep_their_interval_when_nothing_changes(
    tmp_path: Path, file_store: str, savedmodels: dict[str, Path]
) -> None:
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    store = FlakyStore(open_store(file_store))
    with machine(tmp_path, store, interval=0.3) as (_, _, _):
        wait_until("the heartbeat says v1 serves", lambda: serving_version(store) == 1, WAIT)
        first = beat(store).at
        wait_until("a newer heartbeat with nothing changed", lambda: beat(store).at > first + 0.25, WAIT)
        later = beat(store)
        assert later.interval == 0.3 and len(later.models[MODEL].samples) >= 2


def test_a_store_outage_costs_heartbeats_only_and_they_resume(
    tmp_path: Path, file_store: str, savedmodels: dict[str, Path]
) -> None:
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    store = FlakyStore(open_store(file_store))
    with machine(tmp_path, store, interval=0.2) as (_, tfs, base):
        wait_until("v1 reported", lambda: serving_version(store) == 1, WAIT)
        store.down = True
        wait_until("heartbeats failing", lambda: store.calls["write_failed"] >= 3, WAIT)
        # the VM goes on serving and says so; the failures are counted where operators look
        assert http_get(base + "/healthz")[0] == 200 and predict(tfs.rest_url) == 200
        seen = metrics(http_get(base + "/metrics")[1])
        assert seen['modelfleet_agent_heartbeats_total{result="failed"}'] >= 3
        stuck = beat(store).at
        store.down = False
        wait_until("heartbeats again", lambda: beat(store).at > stuck, WAIT)
        seen = metrics(http_get(base + "/metrics")[1])
        assert seen["modelfleet_agent_last_heartbeat_timestamp_seconds"] >= beat(store).at - 1


def test_counters_are_tf_servings_own_minus_the_agents_status_polls(
    tmp_path: Path, file_store: str, savedmodels: dict[str, Path]
) -> None:
    publish(savedmodels["v1"], file_store, MODEL, label=STABLE)
    store = FlakyStore(open_store(file_store))
    with machine(tmp_path, store, interval=0.2) as (_, tfs, _):
        wait_until("v1 reported", lambda: serving_version(store) == 1, WAIT)
        tfs.degrade(predict_failure_share=0.25)
        codes = [predict(tfs.rest_url) for _ in range(40)]
        assert codes.count(500) == 10
        # a client's status request for an unknown model fails NOT_FOUND: an error like any other
        assert http_get(f"{tfs.rest_url}/v1/models/{MODEL}/versions/99")[0] == 404
        page = scrape(tfs.rest_url)
        assert page is not None and page.models[MODEL].ok == 30
        wait_until("the counters reported", lambda: beat(store).models[MODEL].samples[-1].ok == 30, WAIT)
        last = beat(store).models[MODEL].samples[-1]
        assert last.errors == {"INTERNAL": 10, "NOT_FOUND": 1}
        assert sum(last.latency) == 30  # one latency per successful predict, none for errors or status GETs


def test_parse_reads_tf_serving_page_and_own_polls_come_off_not_found_first() -> None:
    page = "\n".join(
        [
            "# TYPE :tensorflow:serving:request_count counter",
            ':tensorflow:serving:request_count{model_name="m",status="OK"} 120',
            ':tensorflow:serving:request_count{model_name="m",status="NOT_FOUND"} 4',
            ':tensorflow:serving:request_count{model_name="m",status="INTERNAL"} 2',
            ':tensorflow:serving:request_count{model_name="q\\"x",status="OK"} 1',
            "# TYPE :tensorflow:serving:request_latency histogram",
            ':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",entrypoint="REST",le="10"} 1',
            ':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",entrypoint="REST",le="18"} 5',
            ':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",entrypoint="REST",le="+Inf"} 7',
            ':tensorflow:serving:request_latency_count{model_name="m",API="predict",entrypoint="REST"} 7',
            ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="10"} 2',
            ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="18"} 2',
            ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="+Inf"} 2',
            ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 2',
            ':tensorflow:serving:request_latency_count{model_name="m",API="",entrypoint="REST"} 100',
        ]
    )
    got = parse(page)
    m = got.models["m"]
    assert m.ok == 9  # the status GETs (API "") are not inference
    assert m.errors == {"NOT_FOUND": 4, "INTERNAL": 2}
    assert m.latency(got.bounds) == (3, 4, 2) and got.bounds == (10.0, 18.0)
    assert 'q"x' in got.models
    # the agent's own error answers come off their own code, never another's
    assert without_own({"NOT_FOUND": 4, "INTERNAL": 2}, {"NOT_FOUND": 5}) == {"INTERNAL": 2}
    assert without_own({"INVALID_ARGUMENT": 3, "INTERNAL": 2}, {"INVALID_ARGUMENT": 1}) == {
        "INVALID_ARGUMENT": 2,
        "INTERNAL": 2,
    }
    # a line TF Serving would not write is skipped, not the page
    odd = parse(
        page + '\n:tensorflow:serving:request_count{model_name="m",status="ABORTED"} +Inf\n'
        ':tensorflow:serving:request_latency_bucket{model_name="m",API="predict",entrypoint="REST",le="x"} 1\n'
    )
    assert odd.models["m"].errors == m.errors and odd.models["m"].ok == 9


class _Metadata(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        answers = {
            "/gcp/name": ("Google", "mf-stable-x1z2"),
            "/gcp/zone": ("Google", "projects/123/zones/europe-west1-b"),
            "/aws/meta-data/instance-id": ("token", "i-0abc"),
            "/aws/meta-data/placement/availability-zone": ("token", "us-east-1a"),
        }
        header, body = answers.get(self.path, ("", ""))
        ok = body and (
            self.headers.get("Metadata-Flavor") == header or self.headers.get("X-aws-ec2-metadata-token") == header
        )
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(body.encode() if ok else b"")

    def do_PUT(self) -> None:
        ok = self.path == "/aws/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self.send_response(200 if ok else 400)
        self.end_headers()
        self.wfile.write(b"token" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


def test_identity_comes_from_the_clouds_metadata_and_only_on_a_cloud_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(identity, "_GCP_METADATA", f"{base}/gcp/")
    monkeypatch.setattr(identity, "_AWS_METADATA", f"{base}/aws/")
    try:
        gcp, aws, laptop = tmp_path / "gcp", tmp_path / "aws", tmp_path / "laptop"
        for d in (gcp, aws, laptop):
            d.mkdir()
        (gcp / "product_name").write_text("Google Compute Engine\n")
        (aws / "sys_vendor").write_text("Amazon EC2\n")
        (laptop / "product_name").write_text("ThinkPad X1\n")
        assert identity.cloud_identity(gcp) == ("mf-stable-x1z2", "europe-west1-b")
        assert identity.cloud_identity(aws) == ("i-0abc", "us-east-1a")
        assert identity.cloud_identity(laptop) == (None, None)
    finally:
        server.shutdown()


def test_bad_heartbeat_options_are_one_line(
    tmp_path: Path, file_store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelfleet.cli import main

    for bad, want in ((["--heartbeat", "-1"], "--heartbeat -1"), (["--instance-id", "vm/1"], "instance id 'vm/1'")):
        code = main(["agent", "--store", file_store, "--models", MODEL, "--root", str(tmp_path / "r"), "--role",
                     STABLE, "--listen", "127.0.0.1:0", *bad])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2 and want in err and len(err.strip().splitlines()) == 1, err


# --- the writer on its own: restarts of TF Serving and of the agent, what triggers a write, a failing store ------


class Page:
    """A TF Serving metrics page the test edits: ``ok`` successes and ``errors`` of model m."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.extra_models: list[str] = []

    def __call__(self) -> Scrape:
        lines = [
            f':tensorflow:serving:request_count{{model_name="m",status="{c}"}} {n}' for c, n in self.errors.items()
        ]
        lines.append(f':tensorflow:serving:request_count{{model_name="m",status="OK"}} {self.ok}')
        lines.append(
            f':tensorflow:serving:request_latency_count{{model_name="m",API="predict",entrypoint="REST"}} {self.ok}'
        )
        for name in self.extra_models:
            lines.append(f':tensorflow:serving:request_count{{model_name="{name}",status="NOT_FOUND"}} 1')
        return parse("\n".join(lines))


def writer(
    tmp_path: Path, store: Store, page: Page, own: dict[str, dict[str, int]], *, interval: float = 30.0
) -> HeartbeatWriter:
    return HeartbeatWriter(
        store, STABLE, HeartbeatOptions("vm-1", None, interval, "t"),
        snapshot=lambda: {"m": HbModel(desired=1, target=1, serving=1)},
        cache_bytes=lambda m: 1234, scrape=page, own_errors=lambda: own,
        counters_file=tmp_path / COUNTERS_NAME,
    )  # fmt: skip


def test_counters_survive_an_agent_restart_and_start_over_with_tf_serving(tmp_path: Path, file_store: str) -> None:
    store = open_store(file_store)
    page, own = Page(), {"m": {"NOT_FOUND": 3}}
    page.ok, page.errors = 100, {"NOT_FOUND": 5}  # 3 of them the agent's own status polls
    first = writer(tmp_path, store, page, own)
    first.tfs_restarted({})  # the agent saw TF Serving start
    assert first.write()
    s1 = beat(store).models["m"].samples[-1]
    assert (s1.ok, s1.errors) == (100, {"NOT_FOUND": 2})
    # The agent restarts; TF Serving runs on. The new agent's client has counted nothing yet: the earlier agent's
    # polls are still TF Serving's, and this is not a TF Serving restart.
    page.ok = 150
    second = writer(tmp_path, store, page, {})
    assert second.write()
    s2 = beat(store).models["m"].samples[-1]
    assert s2.since == s1.since and (s2.ok, s2.errors) == (150, {"NOT_FOUND": 2})
    # TF Serving restarts while nobody looks: its counters went down. Counting starts over, with no carry.
    page.ok, page.errors = 7, {"NOT_FOUND": 1}
    assert second.write()
    s3 = beat(store).models["m"].samples[-1]
    assert s3.since is not None and s3.since > (s2.since or 0) and (s3.ok, s3.errors) == (7, {"NOT_FOUND": 1})


def test_only_followed_models_are_sampled_and_the_cache_size_never_triggers_a_write(
    tmp_path: Path, file_store: str
) -> None:
    store = open_store(file_store)
    page = Page()
    page.extra_models = [f"probe-{i}" for i in range(50)]  # clients asking TF Serving for names it does not serve
    sizes = iter(range(10**6, 10**7, 4096))
    w = writer(tmp_path, store, page, {})
    w._cache_bytes = lambda m: next(sizes)  # a download in progress: the cache grows all the time
    assert w.write()
    assert set(beat(store).models) == {"m"} and set(w._samples) == {"m"}
    assert not w.changed()


def test_a_failing_store_backs_off_and_gets_no_last_word(tmp_path: Path, file_store: str) -> None:
    store = FlakyStore(open_store(file_store))
    store.down = True
    state = iter(range(10**6))
    w = HeartbeatWriter(
        store, STABLE, HeartbeatOptions("vm-1", None, 3600.0, "t"),
        snapshot=lambda: {"m": HbModel(desired=next(state))},  # changes at every look
        cache_bytes=lambda m: None, scrape=lambda: None, own_errors=dict,
    )  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=w.run, args=(stop,))
    thread.start()
    time.sleep(5.0)  # tries at 0, 2 (and 6) s
    stop.set()
    thread.join(timeout=30)
    # a state that changes at every look, and a store that refuses: 1 s, then 2 s apart, not every second
    assert 2 <= store.calls["write_failed"] <= 3, store.calls
    assert KEY not in [k for k in store.keys if not store.down]  # and no "stopped" write after the failures
    assert store.calls["write_failed"] == len(store.keys)
