"""The heartbeat document and the counter arithmetic readers do on it (model_export.heartbeat), and the statistics of
the canary analysis (model_export.canary)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model_export.canary import (
    ABORT,
    INCONCLUSIVE,
    PROMOTE,
    CanaryOptions,
    difference_bounds,
    judge,
    min_sample,
    wilson,
)
from model_export.fleet_status import Seen
from model_export.heartbeat import (
    TFS_LATENCY_BOUNDS_US,
    Delta,
    Heartbeat,
    ModelReport,
    Sample,
    delta,
    quantile,
    sample_at,
)

BOUNDS = TFS_LATENCY_BOUNDS_US


def histogram(latencies_us: np.ndarray) -> list[int]:
    """Per-bucket counts as TF Serving's sampler keeps them: a value equal to a limit goes to the next bucket."""
    idx = np.searchsorted(np.asarray(BOUNDS), latencies_us, side="right")
    return np.bincount(idx, minlength=len(BOUNDS) + 1).tolist()  # type: ignore[no-any-return]


def test_bounds_are_tf_servings_exponential_buckets() -> None:
    assert len(BOUNDS) == 33 and BOUNDS[:3] == pytest.approx((10, 18, 32.4))
    assert BOUNDS[-1] == pytest.approx(10 * 1.8**32)


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    rng = np.random.default_rng(1)
    lat = rng.lognormal(mean=math.log(2000), sigma=0.5, size=200_000)  # about 2 ms
    counts = histogram(lat)
    for q in (0.5, 0.9, 0.99):
        exact = float(np.quantile(lat, q))
        got = quantile(q, BOUNDS, counts)
        assert got is not None
        # the bucket holding the quantile is at most 1.8x wide: interpolation lands inside it
        assert exact / 1.8 < got < exact * 1.8
        assert abs(got - exact) / exact < 0.15, (q, got, exact)
    assert quantile(0.99, BOUNDS, [0] * 34) is None
    # everything above the last bound: the quantile is that bound (nothing finer is known)
    assert quantile(0.5, BOUNDS, [0] * 33 + [5]) == BOUNDS[-1]


def test_delta_subtracts_and_restarts_from_zero_when_tf_serving_restarted() -> None:
    a = Sample(100.0, since=50.0, ok=10, errors={"INTERNAL": 2}, latency=(1, 9, 0))
    b = Sample(130.0, since=50.0, ok=25, errors={"INTERNAL": 3, "NOT_FOUND": 1}, latency=(4, 21, 0))
    d = delta(a, b)
    assert (d.ok, d.errors, d.latency, d.seconds) == (15, {"INTERNAL": 1, "NOT_FOUND": 1}, [3, 12, 0], 30.0)
    assert d.total == 17 and d.error_rate == pytest.approx(2 / 17) and d.rate == pytest.approx(17 / 30)
    # a new TF Serving (since changed): everything after counts, from its start
    c = Sample(160.0, since=150.0, ok=4, errors={}, latency=(4, 0, 0))
    d = delta(b, c)
    assert (d.ok, d.error_count, d.seconds) == (4, 0, 10.0)
    # a counter that went down with the same since (a restart the agent did not see): from zero as well
    e = Sample(190.0, since=50.0, ok=3, errors={}, latency=(3, 0, 0))
    assert delta(b, e).ok == 3


def test_sample_at_is_the_newest_at_or_before() -> None:
    samples = [Sample(float(t)) for t in (10, 20, 30)]
    assert sample_at(samples, 25).at == 20  # type: ignore[union-attr]
    assert sample_at(samples, 30).at == 30  # type: ignore[union-attr]
    assert sample_at(samples, 5) is None


def test_heartbeat_round_trips_and_bad_documents_are_one_line() -> None:
    beat = Heartbeat(
        "vm-1", "stable", 1.0, 2.0, 30.0, "europe-west1-b", "1.0",
        models={"digits": ModelReport(7, 7, 7, {7: "AVAILABLE"}, {8: "INTERNAL: x"}, samples=(Sample(2.0, 1.0, 3),))},
    )  # fmt: skip
    again = Heartbeat.loads(beat.dumps(), "k")
    assert again == beat
    # stale 3 intervals (+ 1 s of listing granularity) after the store took it, by the store's clock
    assert Seen(again, 2.0).fresh(2.0 + 91) and not Seen(again, 2.0).fresh(2.0 + 91.5)
    for doc, want in (
        (b"not json", "not a heartbeat"),
        (json.dumps({**beat.to_json(), "schema": 9}).encode(), "schema 9"),
        (json.dumps({**beat.to_json(), "fleet": "blue"}).encode(), "fleet 'blue'"),
        (json.dumps({**beat.to_json(), "interval": 0}).encode(), "interval"),
        (json.dumps({**beat.to_json(), "models": {"digits": {"states": {"x": "AVAILABLE"}}}}).encode(), "version"),
    ):
        with pytest.raises(ValueError, match=want) as err:
            Heartbeat.loads(doc, "k")
        assert "\n" not in str(err.value)


def test_wilson_bounds_match_the_published_values() -> None:
    z = 1.959964  # two-sided 95 %: the values in Newcombe (1998), Table I
    assert wilson(0, 10, z) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10, z) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(0, 0, z) == (0.0, 1.0)


def test_difference_bounds_cover_the_true_difference_at_least_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(3)
    for p_c, p_s, n_c, n_s in ((0.02, 0.02, 400, 4000), (0.05, 0.01, 300, 3000), (0.0, 0.0, 500, 500)):
        c = rng.binomial(n_c, p_c, 3000)
        s_ = rng.binomial(n_s, p_s, 3000)
        bounds = [difference_bounds(int(a), n_c, int(b), n_s) for a, b in zip(c, s_, strict=True)]
        true = p_c - p_s
        assert np.mean([lo <= true for _, lo, _ in bounds]) >= 0.94
        assert np.mean([hi >= true for _, _, hi in bounds]) >= 0.94


def test_the_minimum_sample_gives_the_decisions_it_promises_by_simulation() -> None:
    """At the minimum sample judge() promotes a canary as good as stable about 80 % of the time, almost never one
    exactly F worse, and aborts one 3F worse: a Monte Carlo check of the rule and its sample size together."""
    rng = np.random.default_rng(7)
    margin, p_s, ratio = 0.02, 0.02, 4.0
    opts = CanaryOptions(bake_seconds=60, max_error_rate_increase=margin, min_requests=1)
    n_c = min_sample(p_s, margin, ratio)
    n_s = int(n_c * ratio)
    latency = histogram(np.full(10, 2000.0))

    def decisions(p_c: float, trials: int = 1500) -> dict[str, float]:
        out = {PROMOTE: 0, ABORT: 0, INCONCLUSIVE: 0}
        for c, s_ in zip(rng.binomial(n_c, p_c, trials), rng.binomial(n_s, p_s, trials), strict=True):
            canary = Delta(n_c - int(c), {"INTERNAL": int(c)}, latency)
            stable = Delta(n_s - int(s_), {"INTERNAL": int(s_)}, latency)
            out[judge(canary, stable, BOUNDS, opts)[0]] += 1
        return {k: v / trials for k, v in out.items()}

    same = decisions(p_s)
    assert same[PROMOTE] > 0.74 and same[ABORT] < 0.06, (n_c, same)
    assert decisions(p_s + margin)[PROMOTE] < 0.07
    assert decisions(p_s + 3 * margin)[ABORT] > 0.8
    # more stable traffic per canary request needs fewer canary requests; a smaller margin needs more
    assert min_sample(p_s, margin, 10) < n_c < min_sample(p_s, margin, 1)
    assert min_sample(p_s, margin / 2, ratio) > 3 * n_c


def traffic(ok: int, errors: int, latency_us: float) -> Delta:
    return Delta(ok, {"INTERNAL": errors} if errors else {}, histogram(np.full(ok, latency_us)))


def test_judge_decides_on_significance_size_sample_and_latency() -> None:
    opts = CanaryOptions(bake_seconds=60, max_error_rate_increase=0.01, max_p99_ratio=1.5, min_requests=100)
    stable = traffic(20_000, 20, 2000)  # 0.1 %
    # 3 % errors on plenty of requests: significantly worse, and by more than the margin
    assert judge(traffic(2000, 60, 2000), stable, BOUNDS, opts)[0] == ABORT
    # 0.15 %: worse, but surely by less than the margin: promoted
    big_stable = traffic(500_000, 500, 2000)
    assert judge(traffic(50_000, 75, 2000), big_stable, BOUNDS, opts)[0] == PROMOTE
    # slower: p99 4 ms vs 2 ms
    decision, reason, ev = judge(traffic(2000, 2, 4000), stable, BOUNDS, opts)
    assert decision == ABORT and "p99" in reason and ev["p99_ratio"] > 1.5  # type: ignore[operator]
    # too few canary requests for the test (it needs about 200 here, above --min-requests): inconclusive, even clean
    decision, reason, ev = judge(traffic(150, 0, 2000), stable, BOUNDS, opts)
    assert decision == INCONCLUSIVE and "150 requests" in reason
    assert int(ev["min_sample"]) > 150 > opts.min_requests  # type: ignore[arg-type]
    # no stable traffic: nothing to compare with
    assert judge(traffic(5000, 0, 2000), Delta(), BOUNDS, opts)[0] == INCONCLUSIVE
    # worse, but whether by more than the margin the data cannot tell: inconclusive, not a promote
    decision, reason, ev = judge(traffic(3000, 27, 2000), stable, BOUNDS, opts)
    assert decision == INCONCLUSIVE and "cannot tell" in reason
    assert float(ev["increase_lower_95"]) > 0 and float(ev["increase_upper_95"]) > 0.01  # type: ignore[arg-type]
