"""Rollout benchmark: the shipped local stack's rollout of detector 1.0.0 -> 1.1.0 over N devices, through `edgefleet up`.

    .venv/bin/python benchmarks/rollout_bench.py [--devices 1000] [--soak 20] [--runs 1] [--slow] [--out PATH]
    .venv/bin/python benchmarks/rollout_bench.py --devices 10000 --soak 20 --runs 3

Each run makes a scratch copy of the project whose local stack has N cameras (3 of them real agent processes), the
shipped stack's gates (health, shadow agreement and latency in the canary, control comparisons and live accuracy in the
wider rings, the 5% control holdback) with every soak set to --soak seconds, the stack's application traffic and its
TUF update metadata. It rolls out 1.0.0 (the boot rollout, timed but not measured), then adds 1.1.0 (or, with --slow,
1.1.0 made 10x slower: its gate must fail) and rolls it out, measuring:

  wall             first deployment to the rollout's end;
  soak floor       the soaks the gates waited for (each ring's soak, plus the canary's shadow soak): what no controller
                   can beat;
  controller       the engine's own work (hub reads and writes, gate evaluation, bookkeeping) as CPU time of its thread
                   (`controller_s`, the figure the target is on) and as wall time (`controller_wall_s`, which also
                   counts waiting for the GIL and the hub's lock while the simulator runs beside it);
  fleet memory     of the whole local fleet while it runs (from its start to the end of each `up`): this process
                   (controller and simulated devices) plus the agent processes, at its peak, as the sum of their
                   proportional sets (PSS) and, for reference, of their resident sets. The publisher's steps between
                   the two `up`s (`model add` of the candidate, which evaluates it on the evaluation set, and synth)
                   run in this process too but are a user's separate commands: their peak is reported on its own
                   (publisher_peak_rss_mib).

A run that does not end as expected (succeeded; rolled_back with --slow) is recorded with its reason, not raised.
Targets (issue 14): at 10,000 devices with --soak 20, 3 of 3 runs succeed, controller_ratio <= 0.05 in each, fleet
memory (PSS) <= 1 GiB; with --slow the rollout is rolled back at its gate.

Output fields (--out JSON, a list with one object per run; fields are only ever added):
  devices, soak_each_s       what was run;  expect: "succeeded" or "rolled_back";  ok: the run ended as expected
  status, reason             how the measured rollout ended, and the failing gate's reasons when it did not succeed
  boot_status, boot_wall_s   the boot rollout of 1.0.0
  wall_s, soak_floor_s       as above
  beyond_soak_s / _ratio     wall - floor, and over the floor
  controller_s / _ratio      the controller's CPU time, and over the floor (the target)
  controller_wall_s / _ratio the same work in wall time
  controller_steps           engine steps taken (polls and transitions)
  controller_gc_s            CPU time of cyclic garbage collections inside the controller's steps (part of
                             controller_s)
  gc_s                       the same in every thread of this process during the measured rollout
  rings                      per ring: devices, adopted at the verdict, adoption time (deployed -> soak started)
  peak_rss_mib               the fleet's peak resident memory: the sum of the processes' resident sets
  peak_pss_mib               the same as proportional sets (shared pages split between the processes): what the fleet
                             takes from the machine, and what the 1 GiB target is judged on
  publisher_peak_rss_mib     this process's peak resident memory while no fleet runs (model add, synth, and each `up`
                             before its fleet starts)
  sim_sweep_median_s         one simulator sweep over every simulated device (sync, request, report)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import onnx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.local.signer import create_key_file  # noqa: E402
from components.local.up import up  # noqa: E402
from components.rollout import engine as engine_module  # noqa: E402
from components.rollout.status import last_gate  # noqa: E402
from components.stack import SigningConfig, TrustConfig  # noqa: E402
from edgefleet.model_add import add_version  # noqa: E402
from edgefleet.synth import synth  # noqa: E402

SAMPLES = ROOT / "models" / "samples"
PROCESSES = 3
EVAL_SET = Path("models") / "datasets" / "channel-dominance-eval.yaml"


def project(devices: int, soak: float, workdir: Path) -> Path:
    """A scratch project: the shipped local stack with `devices` cameras and every soak set to `soak`."""
    shutil.copy2(ROOT / "Pulumi.yaml", workdir / "Pulumi.yaml")
    shutil.copytree(ROOT / "models", workdir / "models")
    (workdir / "stacks").mkdir()
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())
    cfg = doc["config"]
    batch = cfg["edgefleet:local"]["devices"][0]
    batch.update(count=devices, processes=PROCESSES, offline=0)
    batch.pop("reconnect_after_seconds", None)
    for rollout in cfg["edgefleet:rollouts"]:
        for ring in rollout["rings"]:
            gate = ring["gate"]
            gate["soak_seconds"] = soak
            if "shadow_soak_seconds" in gate:
                gate["shadow_soak_seconds"] = soak
            gate["deadline_seconds"] = max(gate.get("deadline_seconds", 0), 6 * soak)
    (workdir / "stacks" / "Pulumi.local.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    create_key_file(workdir / cfg.get("edgefleet:signing", {}).get("key_file", SigningConfig().key_file))
    for rel in cfg.get("edgefleet:trust", {}).get("root_keys", TrustConfig().root_keys):
        create_key_file(workdir / rel)
    return workdir


class ControllerClock:
    """Times every engine step (and start): CPU time of the controller's thread, and wall time; and the time the
    process spent in cyclic garbage collections, in all threads and inside the controller's steps (a collection runs in
    whichever thread allocates when a threshold is crossed, so the controller pays for the simulator's garbage too)."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0
        self.gc = self.controller_gc = 0.0
        self.steps = 0
        self._patched: list[tuple[str, Any]] = []
        self._in_step = threading.local()
        self._gc_started: dict[int, float] = {}

    def __enter__(self) -> ControllerClock:
        for name in ("step", "start"):
            original = getattr(engine_module.RolloutEngine, name)
            self._patched.append((name, original))
            setattr(engine_module.RolloutEngine, name, self._timed(original))
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)
        for name, original in self._patched:
            setattr(engine_module.RolloutEngine, name, original)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now, thread = time.thread_time(), threading.get_ident()
        if phase == "start":
            self._gc_started[thread] = now
            return
        took = now - self._gc_started.pop(thread, now)
        self.gc += took
        if getattr(self._in_step, "on", False):
            self.controller_gc += took

    def _timed(self, fn):
        def timed(*a, **kw):
            cpu, wall = time.thread_time(), time.perf_counter()
            self._in_step.on = True
            try:
                return fn(*a, **kw)
            finally:
                self._in_step.on = False
                self.cpu += time.thread_time() - cpu
                self.wall += time.perf_counter() - wall
                self.steps += 1

        return timed


class PeakRss:
    """The peak of this process's memory plus its agent processes', sampled every half second: the sum of their
    resident sets (which counts onnxruntime's and Python's shared pages once per process) and the sum of their
    proportional sets (PSS: each shared page split between the processes mapping it, so the sum is what the fleet
    takes from the machine)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.fleet_running = False  # set from the fleet's start to the end of its `up`
        self.peak = 0
        self.peak_pss = 0
        self.publisher_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, ValueError, IndexError, StopIteration):
            return 0

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if not self.fleet_running:
                self.publisher_peak = max(self.publisher_peak, self.rss(os.getpid()))
                continue
            pids = [os.getpid(), *self.pids]
            self.peak = max(self.peak, sum(self.rss(p) for p in pids))
            self.peak_pss = max(self.peak_pss, sum(self.pss(p) for p in pids))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def soak_floor(progress: dict[str, Any], gates: list[dict[str, Any]]) -> float:
    """The soaks the gates waited for: each ring that reached a verdict, its soak, plus its shadow soak if it shadowed."""
    floor = 0.0
    for ring, gate in zip(progress["rings"], gates, strict=False):
        if ring.get("shadow_verdict"):
            floor += gate.get("shadow_soak_seconds") or 0.0
        if ring.get("verdict"):
            floor += gate["soak_seconds"]
    return floor


def run_once(devices: int, soak: float, slow: bool) -> dict[str, Any]:
    expect = "rolled_back" if slow else "succeeded"
    gc.collect()  # each run stands for one `edgefleet up` process: the last run's cyclic garbage is not its memory
    with tempfile.TemporaryDirectory(prefix="edgefleet-rollout-bench-") as tmp:
        p = project(devices, soak, Path(tmp))
        gates = [
            r["gate"] for r in yaml.safe_load((p / "stacks" / "Pulumi.local.yaml").read_text())["config"]["edgefleet:rollouts"][0]["rings"]
        ]
        rss = PeakRss()
        sweeps: list[float] = []

        def on_fleet(fleet) -> None:
            rss.pids[:] = [proc.pid for proc in fleet.processes().values()]
            rss.fleet_running = True
            sweeps.clear()
            fleet_ref[:] = [fleet]

        fleet_ref: list[Any] = []
        with rss:
            start = time.perf_counter()
            boot = up(p, "local", synth(p, "local"), on_fleet=on_fleet)[0]
            rss.fleet_running = False
            boot_wall = time.perf_counter() - start
            out: dict[str, Any] = {"devices": devices, "soak_each_s": soak, "expect": expect}
            out.update(boot_status=boot.status, boot_wall_s=round(boot_wall, 1))
            if boot.status != "succeeded":
                gate = last_gate(boot.progress)
                return {**out, "ok": False, "status": "not run", "reason": f"the boot rollout of 1.0.0 ended {boot.status}: {gate}"}
            candidate = SAMPLES / "detector-1.1.0.onnx"
            if slow:
                candidate = Path(tmp) / "detector-1.1.0-slow.onnx"
                onnx.save(samples_module().ten_times_slower(onnx.load(str(SAMPLES / "detector-1.1.0.onnx"))), str(candidate))
            add_version(p / "models" / "detector", candidate, "1.1.0", dataset=p / EVAL_SET)
            graph = synth(p, "local")
            with ControllerClock() as clock:
                start = time.perf_counter()
                result = up(p, "local", graph, on_fleet=on_fleet)[0]
                wall = time.perf_counter() - start
            rss.fleet_running = False
            fleet = fleet_ref[0] if fleet_ref else None
        progress = result.progress or {}
        floor = soak_floor(progress, gates) or sum(g["soak_seconds"] for g in gates)
        gate = last_gate(progress)
        reason = "" if result.status == "succeeded" else "; ".join((gate or {}).get("reasons") or []) or result.problem or result.status
        return {
            **out,
            "ok": result.status == expect,
            "status": result.status,
            "reason": reason,
            "wall_s": round(wall, 2),
            "soak_floor_s": floor,
            "beyond_soak_s": round(wall - floor, 2),
            "beyond_soak_ratio": round((wall - floor) / floor, 4),
            "controller_s": round(clock.cpu, 3),
            "controller_ratio": round(clock.cpu / floor, 4),
            "controller_wall_s": round(clock.wall, 3),
            "controller_wall_ratio": round(clock.wall / floor, 4),
            "controller_steps": clock.steps,
            "controller_gc_s": round(clock.controller_gc, 3),
            "gc_s": round(clock.gc, 3),
            "rings": [
                {
                    "ring": r["name"],
                    "devices": (r.get("measured") or {}).get("devices"),
                    "adopted": (r.get("measured") or {}).get("adopted"),
                    "adoption_s": round(r["soak_started"] - r["deployed_at"], 2)
                    if r.get("soak_started") and r.get("deployed_at")
                    else None,
                    "state": r["state"],
                }
                for r in progress.get("rings", [])
            ],
            "peak_rss_mib": round(rss.peak / 2**20),
            "peak_pss_mib": round(rss.peak_pss / 2**20),
            "publisher_peak_rss_mib": round(rss.publisher_peak / 2**20),
            "sim_sweep_median_s": round(statistics.median(fleet.sweep_seconds), 3) if fleet and fleet.sweep_seconds else None,
        }


def samples_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_samples", ROOT / "models" / "generate_samples.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--soak", type=float, default=20.0)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--slow", action="store_true", help="roll out 1.1.0 made 10x slower: its gate must fail")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "rollout.json")
    args = ap.parse_args()
    print(
        f"$ .venv/bin/python benchmarks/rollout_bench.py --devices {args.devices} --soak {args.soak} --runs {args.runs}"
        + (" --slow" if args.slow else ""),
        flush=True,
    )
    results = []
    for i in range(args.runs):
        r = run_once(args.devices, args.soak, args.slow)
        results.append(r)
        print(f"run {i + 1}: {r['devices']} devices, boot rollout {r['boot_status']} in {r['boot_wall_s']}s", flush=True)
        if "wall_s" not in r:
            print(f"  NOT RUN: {r['reason']}", flush=True)
            continue
        print(
            f"  1.0.0 -> 1.1.0{' (10x slower)' if args.slow else ''}: {r['status']} (expected {r['expect']})"
            + (f": {r['reason']}" if r["reason"] else "")
        )
        print(f"  wall {r['wall_s']}s over a soak floor of {r['soak_floor_s']}s: {r['beyond_soak_ratio']:.1%} beyond")
        print(
            f"    controller's own work: {r['controller_s']}s CPU = {r['controller_ratio']:.2%} of the floor "
            f"({r['controller_wall_s']}s wall = {r['controller_wall_ratio']:.2%}; {r['controller_steps']} steps; "
            f"{r['controller_gc_s']}s of it in garbage collections, {r['gc_s']}s in all threads)"
        )
        for ring in r["rings"]:
            print(
                f"    ring {ring['ring']}: {ring['adopted']}/{ring['devices']} adopted, soak began after {ring['adoption_s']}s, {ring['state']}"
            )
        print(
            f"  fleet memory at peak: {r['peak_pss_mib']} MiB PSS ({r['peak_rss_mib']} MiB as a sum of RSS); "
            f"simulator sweep median {r['sim_sweep_median_s']}s; between the ups (model add, synth) "
            f"{r['publisher_peak_rss_mib']} MiB RSS",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    ok = sum(r["ok"] for r in results)
    worst = max((r.get("controller_ratio", float("inf")) for r in results), default=float("inf"))
    peak = max((r.get("peak_pss_mib", 0) for r in results), default=0)
    peak_rss = max((r.get("peak_rss_mib", 0) for r in results), default=0)
    print(f"{ok}/{len(results)} runs ended as expected ({results[0]['expect']})")
    print(f"controller_ratio, worst run: {worst:.2%} (target <= 5%: {'met' if worst <= 0.05 else 'MISSED'})")
    print(f"fleet memory, worst run: {peak} MiB PSS (target <= 1024: {'met' if peak <= 1024 else 'MISSED'}); {peak_rss} MiB as RSS")
    print(f"wrote {args.out}")
    return 0 if ok == len(results) and worst <= 0.05 and peak <= 1024 else 2


if __name__ == "__main__":
    sys.exit(main())
