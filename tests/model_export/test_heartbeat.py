"""The heartbeat document and the counter arithmetic readers do on it (model_export.heartbeat), and the statistics of
the canary analysis (model_export.canary)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model_export.canary import ABORT, INCONCLUSIVE, PROMOTE, CanaryOptions, judge, min_sample, two_proportion_z
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
    assert again.fresh(2.0 + 90) and not again.fresh(2.0 + 91)  # stale after 3 intervals
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


def test_two_proportion_z_matches_the_textbook_value() -> None:
    # 30/1000 vs 20/1000: pooled p = 0.025, se = sqrt(0.025*0.975*0.002) = 0.006982, z = 1.4322
    z, p = two_proportion_z(30, 1000, 20, 1000)
    assert z == pytest.approx(1.4322, abs=1e-3) and p == pytest.approx(0.0760, abs=1e-3)
    assert two_proportion_z(0, 100, 0, 100) == (0.0, 1.0)


def test_min_sample_gives_the_promised_power_by_simulation() -> None:
    """The sample size the formula asks for detects the increase about 80 % of the time (one-sided, 5 %), and the
    test rejects a true null about 5 % of the time: a Monte Carlo check of the formula, not of its own arithmetic."""
    rng = np.random.default_rng(7)
    p_s, increase, ratio = 0.02, 0.02, 4.0
    n_c = min_sample(p_s, increase, ratio)
    n_s = int(n_c * ratio)
    trials = 4000
    canary_bad = rng.binomial(n_c, p_s + increase, trials)
    stable_bad = rng.binomial(n_s, p_s, trials)
    power = np.mean(
        [two_proportion_z(int(c), n_c, int(s), n_s)[1] < 0.05 for c, s in zip(canary_bad, stable_bad, strict=True)]
    )
    assert 0.75 < power < 0.86, (n_c, power)
    null_bad = rng.binomial(n_c, p_s, trials)
    alpha = np.mean(
        [two_proportion_z(int(c), n_c, int(s), n_s)[1] < 0.05 for c, s in zip(null_bad, stable_bad, strict=True)]
    )
    assert alpha < 0.07, alpha
    # more stable traffic per canary request needs fewer canary requests; a smaller increase needs more
    assert min_sample(p_s, increase, 10) < n_c < min_sample(p_s, increase, 1)
    assert min_sample(p_s, increase / 2, ratio) > 3 * n_c


def traffic(ok: int, errors: int, latency_us: float) -> Delta:
    return Delta(ok, {"INTERNAL": errors} if errors else {}, histogram(np.full(ok, latency_us)))


def test_judge_decides_on_significance_size_sample_and_latency() -> None:
    opts = CanaryOptions(bake_seconds=60, max_error_rate_increase=0.01, max_p99_ratio=1.5, min_requests=100)
    stable = traffic(20_000, 20, 2000)  # 0.1 %
    # 3 % errors on plenty of requests: significant and over the margin
    assert judge(traffic(2000, 60, 2000), stable, BOUNDS, opts)[0] == ABORT
    # 0.15 %: with 50000 requests the increase is significant, but under the margin: not a reason to abort
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
