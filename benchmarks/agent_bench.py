"""Device agent benchmark: what the agent costs on top of onnxruntime, and how long a swap pauses inference.

Both measurements run in one process against baselines measured in the same run:
  1. throughput of the agent's infer() loop (metrics bookkeeping included) vs plain session.run on the same
     session and inputs, in interleaved rounds (ABBA order) so machine noise hits both sides alike;
  2. repeated swaps between 1.0.0 and 1.1.0 (downgrades carry a signed rollback order) while one thread
     infers continuously: the pause of a swap is the largest gap between consecutive inference completions
     around it, compared with the same gap statistic when no swap is running.

Exit status 2 if a target is missed (overhead <= 5%, pause p99 <= 20 ms, 0 failed inferences).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from time import perf_counter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnxruntime  # noqa: E402

from components.local.signer import LocalKeySigner, create_key_file, public_key_path  # noqa: E402
from edgefleet.model_add import add_version  # noqa: E402
from edgefleet.signing import sign_model_dir  # noqa: E402
from edgefleet_agent.contract.manifest import HardwareProfile, ModelDir  # noqa: E402
from edgefleet_agent.contract.signing import rollback_order, sign_bytes  # noqa: E402
from edgefleet_agent.contract.state import DesiredModel, DeviceReport  # noqa: E402
from edgefleet_agent.core import DeviceAgent  # noqa: E402

SAMPLES = REPO / "models" / "samples"
OUT = REPO / "benchmarks" / "out" / "agent.json"
TARGET = HardwareProfile(name="x86-gateway", arch="amd64", execution_providers=["CPUExecutionProvider"], memory_mb=256, storage_mb=64)


class Transport:
    def __init__(self) -> None:
        self.desired_model: DesiredModel | None = None
        self.last: DeviceReport | None = None

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return self.desired_model

    def report(self, report: DeviceReport) -> None:
        self.last = report


def publish(root: Path, signer: LocalKeySigner, version: str, onnx: str) -> DesiredModel:
    mdir = ModelDir(root / version / "detector")
    add_version(mdir.path, SAMPLES / onnx, version, metrics=[], targets=[TARGET])
    sign_model_dir(mdir, signer)
    m = mdir.load()
    return DesiredModel(
        model="detector",
        version=version,
        sha256=m.sha256,
        size=m.size,
        uri=mdir.artifact_path(m).as_uri(),
        manifest=mdir.manifest_bytes().decode(),
        signature=mdir.signature_path.read_text(),
    )


def with_rollback(desired: DesiredModel, off: DesiredModel, signer: LocalKeySigner) -> DesiredModel:
    order = rollback_order(desired.model, desired.version, desired.sha256, "benchmark", off.version, off.sha256)
    return DesiredModel(
        **{**desired.__dict__, "rollback_order": order.decode(), "rollback_signature": sign_bytes(signer, order).to_bytes().decode()}
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def throughput(agent: DeviceAgent, rounds: int, seconds: float) -> dict:
    loaded = agent._serving.loaded
    session, names, feeds = loaded.session, loaded.output_names, loaded.feeds
    nfeeds = len(feeds)

    def agent_loop() -> float:
        infer = agent.infer
        n, start = 0, perf_counter()
        end = start + seconds
        while perf_counter() < end:
            infer()
            n += 1
        rate = n / (perf_counter() - start)
        agent.build_report()
        return rate

    def plain_loop() -> float:
        run = session.run
        n, start = 0, perf_counter()
        end = start + seconds
        while perf_counter() < end:
            run(names, feeds[n % nfeeds])
            n += 1
        return n / (perf_counter() - start)

    agent_loop(), plain_loop()  # warm both paths
    agent_rates, plain_rates, ratios = [], [], []
    for r in range(rounds):
        if r % 2 == 0:
            a, p = agent_loop(), plain_loop()
        else:
            p, a = plain_loop(), agent_loop()
        agent_rates.append(a)
        plain_rates.append(p)
        ratios.append(a / p)
    ratio = statistics.median(ratios)
    return {
        "rounds": rounds,
        "seconds_per_side_per_round": seconds,
        "agent_inferences_per_s": statistics.median(agent_rates),
        "plain_inferences_per_s": statistics.median(plain_rates),
        "agent_over_plain_ratio_median": ratio,
        "overhead_pct_median": (1 - ratio) * 100,
        "ratios": ratios,
    }


def swaps(
    agent: DeviceAgent, transport: Transport, v100: DesiredModel, v110: DesiredModel, signer: LocalKeySigner, count: int, settle_s: float
) -> dict:
    rollback = with_rollback(v100, v110, signer)
    done: list[float] = []
    falses = [0]
    stop = threading.Event()

    def loop() -> None:
        infer, append = agent.infer, done.append
        while not stop.is_set():
            if infer():
                append(perf_counter())
            else:
                falses[0] += 1

    thread = threading.Thread(target=loop, name="bench-infer")
    thread.start()
    time.sleep(settle_s)
    windows, versions, errors = [], [], 0
    quiet: list[tuple[float, float]] = []
    for i in range(count):
        transport.desired_model = v110 if i % 2 == 0 else rollback
        t0 = perf_counter()
        changed = agent.sync()
        t1 = perf_counter()
        if not changed or agent.status != "ok":
            raise SystemExit(f"swap {i} did not happen: status {agent.status}, report {agent.build_report()}")
        windows.append((t0, t1))
        versions.append(agent.current_version)
        time.sleep(settle_s)
        q0 = perf_counter()  # a window as long as this swap, with no swap in it: the machine's noise floor
        time.sleep(t1 - t0)
        quiet.append((q0, perf_counter()))
        time.sleep(settle_s)
        errors += agent.build_report().errors
    stop.set()
    thread.join()

    def max_gap(t0: float, t1: float) -> float:
        from bisect import bisect_left, bisect_right

        lo, hi = max(bisect_left(done, t0) - 1, 0), min(bisect_right(done, t1) + 1, len(done))
        seq = done[lo:hi]
        return max((b - a for a, b in itertools.pairwise(seq)), default=float("nan")) * 1000

    pauses = [max_gap(a, b) for a, b in windows]
    quiet_gaps = [max_gap(a, b) for a, b in quiet]
    durations = [(b - a) * 1000 for a, b in windows]
    return {
        "swaps": count,
        "versions_served": sorted(set(versions)),
        "inferences_completed": len(done),
        "failed_inferences": errors + falses[0],
        "infer_returned_false": falses[0],
        "inference_errors": errors,
        "pause_ms_p50": pct(pauses, 0.5),
        "pause_ms_p99": pct(pauses, 0.99),
        "pause_ms_max": max(pauses),
        "no_swap_gap_ms_p50": pct(quiet_gaps, 0.5),
        "no_swap_gap_ms_p99": pct(quiet_gaps, 0.99),
        "swap_duration_ms_p50": pct(durations, 0.5),
        "swap_duration_ms_p99": pct(durations, 0.99),
        "pause_ms": pauses,
        "no_swap_gap_ms": quiet_gaps,
        "swap_duration_ms": durations,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=0.5, help="per side per throughput round")
    p.add_argument("--swaps", type=int, default=50)
    args = p.parse_args()
    logging.getLogger("edgefleet.agent").setLevel(logging.ERROR)  # the rollback notices would drown the table
    print(
        f"$ {Path(sys.executable).relative_to(REPO) if Path(sys.executable).is_relative_to(REPO) else sys.executable} "
        f"benchmarks/agent_bench.py --rounds {args.rounds} --seconds {args.seconds} --swaps {args.swaps}"
    )
    print(f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__}, {os.cpu_count()} CPUs, {platform.machine()}")

    with tempfile.TemporaryDirectory(prefix="edgefleet-agent-bench-") as tmp:
        root = Path(tmp)
        key = create_key_file(root / "stack.pem")
        signer = LocalKeySigner(key)
        v100 = publish(root / "store", signer, "1.0.0", "detector-1.0.0.onnx")
        v110 = publish(root / "store", signer, "1.1.0", "detector-1.1.0.onnx")
        transport = Transport()
        agent = DeviceAgent("bench-1", "detector", root / "state", public_key_path(key).read_bytes(), transport, durable=True)
        transport.desired_model = v100
        agent.sync()
        gc.freeze()  # as `python -m agent` does after start-up
        tp = throughput(agent, args.rounds, args.seconds)
        sw = swaps(agent, transport, v100, v110, signer, args.swaps, settle_s=0.04)
        agent.close()

    result = {
        "command": f"benchmarks/agent_bench.py --rounds {args.rounds} --seconds {args.seconds} --swaps {args.swaps}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "cpus": os.cpu_count(),
        "throughput": tp,
        "swaps": sw,
        "targets": {"overhead_pct_max": 5.0, "pause_ms_p99_max": 20.0, "failed_inferences": 0},
        "met": {"overhead": tp["overhead_pct_median"] <= 5.0, "pause": sw["pause_ms_p99"] <= 20.0, "failed": sw["failed_inferences"] == 0},
    }
    rows = [
        ("plain session.run", f"{tp['plain_inferences_per_s']:,.0f} inf/s", "baseline"),
        ("agent infer()", f"{tp['agent_inferences_per_s']:,.0f} inf/s", ""),
        (
            "agent / plain (median of rounds)",
            f"{tp['agent_over_plain_ratio_median']:.3f}",
            f"overhead {tp['overhead_pct_median']:.1f}% (target <= 5%)",
        ),
        (
            "swaps (1.0.0 <-> 1.1.0, durable)",
            f"{sw['swaps']}",
            f"{sw['inferences_completed']:,} inferences alongside; downgrades under a signed rollback order",
        ),
        (
            "swap duration p50 / p99",
            f"{sw['swap_duration_ms_p50']:.1f} / {sw['swap_duration_ms_p99']:.1f} ms",
            "verify + load + warm + fsync (kept slots: no download after the first two)",
        ),
        ("inference pause during swap p50 / p99", f"{sw['pause_ms_p50']:.2f} / {sw['pause_ms_p99']:.2f} ms", "target p99 <= 20 ms"),
        (
            "largest gap, same window, no swap p50 / p99",
            f"{sw['no_swap_gap_ms_p50']:.2f} / {sw['no_swap_gap_ms_p99']:.2f} ms",
            "noise floor",
        ),
        ("failed inferences", f"{sw['failed_inferences']}", "target 0"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>22}  {note}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {OUT.relative_to(REPO)}")
    return 0 if all(result["met"].values()) else 2


if __name__ == "__main__":
    sys.exit(main())
