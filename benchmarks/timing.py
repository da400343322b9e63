"""Timing helpers shared by the serving benchmarks (serving_bench.py, mlserver_bench.py): sequential requests on
several sides interleaved in rounds (ABBA, so background load hits every side alike), and the statistics they
report: p50/p99 latency, throughput of one sequential client, and each side against a baseline side. Standard
library only."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from time import perf_counter


def pct(values: list[float], q: float) -> float:
    """The q-quantile of values (nearest rank, as every benchmark here reports it)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(
    sides: Mapping[str, Callable[[], object]], rounds: int, counts: Mapping[str, int], warmup: Mapping[str, int]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Calls each side counts[side] times per round, rounds times, sides in order on even rounds and reversed on odd
    ones, after warmup[side] untimed calls each. Returns every latency in ms and each side's busy seconds."""
    for side, call in sides.items():
        for _ in range(warmup.get(side, 0)):
            call()
    lat: dict[str, list[float]] = {k: [] for k in sides}
    busy: dict[str, float] = dict.fromkeys(sides, 0.0)
    for r in range(rounds):
        for side in list(sides) if r % 2 == 0 else list(reversed(list(sides))):
            values, seconds = timed(sides[side], counts[side])
            lat[side] += values
            busy[side] += seconds
    return lat, busy


def timed(call: Callable[[], object], n: int) -> tuple[list[float], float]:
    """`n` calls: each one's latency in ms, and the seconds they took together."""
    lat = []
    start = perf_counter()
    for _ in range(n):
        t = perf_counter()
        call()
        lat.append((perf_counter() - t) * 1000.0)
    return lat, perf_counter() - start


def summarize(values: list[float], busy_s: float) -> dict[str, float]:
    """p50 and p99 in ms, and requests per second of one sequential client."""
    return {"p50_ms": statistics.median(values), "p99_ms": pct(values, 0.99), "throughput_per_s": len(values) / busy_s}


def against(side: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    """What a side adds to the baseline: p50 and p99 in ms, and its throughput as a share of the baseline's."""
    return {
        "added_p50_ms": side["p50_ms"] - base["p50_ms"],
        "added_p99_ms": side["p99_ms"] - base["p99_ms"],
        "throughput_ratio": side["throughput_per_s"] / base["throughput_per_s"],
    }
