"""The pure part of benchmarks/serving_bench.py's wrk comparison: how rounds are ordered and what `added` means."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serving_bench", BENCHMARKS / "serving_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["serving_bench"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["serving_bench"]


def test_rounds_alternate_and_added_is_the_median_of_each_rounds_difference(bench):
    """The machine slows down for rounds 4 and 5 (both sides) and for the wrk side of round 3: four rounds of five
    say wrk adds 0.3 ms, and so does the median of the rounds' differences, where the difference of the two sides'
    medians would say 8.3."""
    calls: list[str] = []
    base_p50 = iter([1.0, 1.0, 1.0, 9.0, 9.0])
    side_p50 = iter([1.3, 1.3, 9.3, 9.3, 9.3])

    def side(name: str, p50s):
        def run() -> dict:
            calls.append(name)
            p50 = next(p50s)
            return {"p50_ms": p50, "p99_ms": 2 * p50, "throughput_per_s": 1000.0 / p50, "requests": 10}

        return run

    out = bench.by_rounds({"in_process": side("base", base_p50), "wrk": side("wrk", side_p50)}, 5)
    assert calls == ["base", "wrk", "wrk", "base", "base", "wrk", "wrk", "base", "base", "wrk"]
    assert out["wrk"]["added_p50_ms"] == pytest.approx(0.3)
    assert out["wrk"]["added_p99_ms"] == pytest.approx(0.6)
    assert out["wrk"]["p50_ms"] - out["in_process"]["p50_ms"] == pytest.approx(8.3)
    assert out["wrk"]["requests"] == 50 and out["wrk"]["rounds"] == 5 and "added_p50_ms" not in out["in_process"]
    assert out["wrk"]["throughput_ratio"] == pytest.approx(1.0 / 1.3)
