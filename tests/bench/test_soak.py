"""The soak's pure helpers (bench/soak.py): windows, the memory verdict, percentiles, the
per-minute latency table. The soak itself is a benchmark (`make soak`), not a test."""

from __future__ import annotations

import math

from bench.soak import MIB, Answer, per_minute, percentile, verdicts, windows


def samples(
    values_mib: list[float], every: float = 10.0, name: str = "gateway"
) -> list[tuple[float, dict[str, int]]]:
    return [(i * every, {name: int(v * MIB)}) for i, v in enumerate(values_mib)]


def test_windows_are_the_second_and_last_minute_or_thirds_of_a_short_run():
    assert windows(600) == ((60, 120), (540, 600))
    assert windows(60) == ((20, 40), (40, 60))


def test_noise_is_flat_and_a_steady_climb_is_not():
    # Ten minutes sampled every 10 s: a process that wobbles by a couple of MiB ...
    wobble = [60 + (2 if i % 3 == 0 else 0) for i in range(61)]
    (flat,) = verdicts(samples(wobble), 600, 250, growth_mib=8, growth_pct=10, processes=["gateway"])
    assert flat.flat
    # ... and one that keeps 200 bytes of every exchange at 250/s: 30 MiB over ten minutes.
    leak = [60 + 200 * 250 * i * 10 / MIB for i in range(61)]
    (grows,) = verdicts(samples(leak), 600, 250, growth_mib=8, growth_pct=10, processes=["gateway"])
    assert not grows.flat
    assert math.isclose(grows.per_exchange, 200, rel_tol=0.01)
    assert grows.growth_pct > 10


def test_growth_must_pass_both_thresholds():
    # 20 MiB on a 1 GiB process: past the MiB threshold, within 10%.
    big = [1024] * 13 + [1044] * 48
    (v,) = verdicts(samples(big), 600, 250, growth_mib=8, growth_pct=10, processes=["gateway"])
    assert v.flat
    # 50% of a 10 MiB process is 5 MiB: within the MiB threshold.
    small = [10] * 13 + [15] * 48
    (v,) = verdicts(samples(small), 600, 250, growth_mib=8, growth_pct=10, processes=["gateway"])
    assert v.flat


def test_a_process_without_samples_in_a_window_gets_no_verdict():
    assert verdicts(samples([60, 60]), 600, 250, growth_mib=8, growth_pct=10, processes=["gateway"]) == []


def test_percentiles_by_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50, 99, 100)
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))


def test_latency_per_minute_counts_answers_by_scheduled_time():
    answers = [Answer(at=s, latency=0.010, status=200, code="") for s in range(60)]
    answers += [Answer(at=60 + s, latency=0.020, status=200, code="") for s in range(59)]
    answers.append(Answer(at=119.5, latency=5.0, status=503, code="unavailable"))
    answers.append(Answer(at=119.9, latency=30.0, status=0, code="TimeoutError"))
    rows = per_minute(answers)
    assert rows[0] == {"from_s": 0, "answers": 60, "errors": 0, "p50_ms": 10.0, "p99_ms": 10.0}
    # The 503 counts in latency (it was answered); the client's timeout does not.
    assert rows[1] == {"from_s": 60, "answers": 61, "errors": 2, "p50_ms": 20.0, "p99_ms": 5000.0}
