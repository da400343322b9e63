"""Synth benchmark: `edgefleet synth` of a 1,000-device-group stack against bare Pulumi mock registration.

    python benchmarks/synth_bench.py                   # 1,000 groups, 5 timed runs of each, interleaved
    python benchmarks/synth_bench.py --groups 200 --runs 3 --profile
    python benchmarks/synth_bench.py --groups 10000 --runs 3 --plan   # issue 14's figures (10,017 resources)

The stack is a temporary copy of the project whose stack file is the local stack with its one group
(`cameras`, used by the three-ring rollout) plus 999 more of the same shape, so the program declares 1,000
DeviceGroup components next to the usual model, key, store, registry and rollout resources.

  edgefleet synth     edgefleet.synth.synth(project, stack) + dumps(): read and validate the stack file, load the
                      model manifests, evaluate the whole program under Pulumi's mock runtime with the recording
                      monitor, and serialise the graph JSON (what `edgefleet synth --out FILE` does, minus the write).
  bare Pulumi         in the same process, pulumi.runtime.set_mocks with a trivial Mocks, and the same number of
                      resources as the synth graph registered as a trivial ComponentResource (inputs {}, then
                      register_outputs({})), under pulumi.runtime.test. A second row registers the same count with
                      a DeviceGroup-sized input dict, to show what input serialisation alone costs.

  edgefleet plan      (--plan) what `edgefleet plan --stack bench --base HEAD` computes for a one-line change (the canary's
                      percent): synth of the working tree, the base synthesized from a temporary git worktree and
                      judged by its own policy rules, the diff, the Markdown. Its target (issue 14): within 2.5x of one
                      synth; it synthesizes twice, so 2x is its floor.

Every run starts a fresh root stack (as synth does). --profile adds a cProfile breakdown of one synth run.
Writes benchmarks/out/synth_bench.json.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out" / "synth_bench.json"
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402


def make_project(tmp: Path, groups: int) -> Path:
    """A copy of the project whose `bench` stack declares `groups` device groups."""
    for name in ("Pulumi.yaml", "__main__.py"):
        shutil.copy2(ROOT / name, tmp / name)
    shutil.copytree(ROOT / "models", tmp / "models")
    (tmp / "stacks").mkdir()
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())
    config = doc["config"]
    first = config["edgefleet:groups"][0]
    extra = []
    for i in range(1, groups):
        g = copy.deepcopy(first)
        g["name"] = f"group-{i:04d}"
        g["labels"] = {"site": f"site-{i % 50:02d}", "line": f"line-{i:04d}"}
        extra.append(g)
    config["edgefleet:groups"] = [first] + extra
    (tmp / "stacks" / "Pulumi.bench.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, width=200))
    return tmp


def run_synth(project: Path) -> tuple[float, dict, int]:
    from edgefleet.synth import dumps, synth

    start = time.perf_counter()
    graph = synth(project, "bench")
    text = dumps(graph)
    elapsed = time.perf_counter() - start
    return elapsed, graph, len(text)


def make_repo(project: Path) -> None:
    """Commits the project as the base, then changes the canary's percent in the working tree: a PR's plan."""
    import subprocess

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(project), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.email=bench@edgefleet", "-c", "user.name=bench", "commit", "-qm", "base")
    stack = project / "stacks" / "Pulumi.bench.yaml"
    doc = yaml.safe_load(stack.read_text())
    ring = doc["config"]["edgefleet:rollouts"][0]["rings"][0]
    ring["percent"] = max(1, ring["percent"] - 1)
    stack.write_text(yaml.safe_dump(doc, sort_keys=False, width=200))


def run_plan(project: Path) -> float:
    from edgefleet.plan import compute_plan, render_markdown
    from edgefleet.plan.base_policy import judge_with_base
    from edgefleet.synth import synth

    start = time.perf_counter()
    new = synth(project, "bench")
    judged = judge_with_base(project, "bench", "HEAD", new)
    plan = compute_plan(judged.graph, new, base_ref="HEAD", project_dir=project, policy=judged.report, weakens=judged.weakens)
    render_markdown(plan)
    json.dumps(plan, sort_keys=True)
    return time.perf_counter() - start


def run_bare(count: int, sized_inputs: bool) -> float:
    import pulumi
    from pulumi.runtime import settings

    hardware = {
        "name": "x86-camera",
        "arch": "amd64",
        "execution_providers": ["CPUExecutionProvider"],
        "memory_mb": 1024,
        "storage_mb": 4096,
    }

    class Trivial(pulumi.ComponentResource):
        def __init__(self, name: str, props: dict) -> None:
            super().__init__("bench:index:Trivial", name, props)
            self.register_outputs({})

    class TrivialMocks(pulumi.runtime.Mocks):
        def new_resource(self, args):
            return f"{args.name}-id", args.inputs

        def call(self, args):
            return {}

    def program():
        for i in range(count):
            props = (
                {"platform": "local", "hardware": hardware, "labels": {"site": f"site-{i % 50:02d}"}, "devices": []} if sized_inputs else {}
            )
            Trivial(f"r{i:04d}", props)

    start = time.perf_counter()
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(TrivialMocks(), project="bench", stack="bench", preview=False)
    pulumi.runtime.test(program)()
    return time.perf_counter() - start


def run_replay(graph: dict) -> float:
    """Bare Pulumi mock registration of exactly the resources synth recorded: each resource's type, name, parent,
    custom or component, its inputs as synth saw them resolved, and each component's registered outputs; no
    edgefleet code runs (no stack file, no validation, no component logic, no recording monitor, no JSON)."""
    import pulumi
    from pulumi.runtime import settings

    class Component(pulumi.ComponentResource):
        def __init__(self, t: str, name: str, props: dict, opts: pulumi.ResourceOptions) -> None:
            super().__init__(t, name, props, opts)

    class Replay(pulumi.runtime.Mocks):
        def new_resource(self, args):
            return f"{args.name}-id", args.inputs

        def call(self, args):
            return {}

    depth: dict[str, int] = {}
    by_urn = {r["urn"]: r for r in graph["resources"]}

    def level(urn: str) -> int:
        if urn not in depth:
            parent = by_urn[urn]["parent"]
            depth[urn] = 0 if parent is None else level(parent) + 1
        return depth[urn]

    ordered = sorted(graph["resources"], key=lambda r: level(r["urn"]))  # the graph lists by URN; parents come first

    def program():
        made: dict[str, pulumi.Resource] = {}
        for r in ordered:
            opts = pulumi.ResourceOptions(parent=made[r["parent"]]) if r["parent"] else None
            if r["custom"]:
                made[r["urn"]] = pulumi.CustomResource(r["type"], r["name"], dict(r["inputs"]), opts)
            else:
                made[r["urn"]] = c = Component(r["type"], r["name"], dict(r["inputs"]), opts)
                c.register_outputs(dict(r["outputs"]))

    start = time.perf_counter()
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(Replay(), project="bench", stack="bench", preview=False)
    pulumi.runtime.test(program)()
    return time.perf_counter() - start


def profile_synth(project: Path, top: int = 25) -> tuple[str, dict[str, float]]:
    """cProfile of one synth (main thread), plus the wall time the recording monitor spends in Pulumi's RPC
    worker threads, which cProfile does not see (timed by wrapping RegisterResource for this one run)."""
    import threading

    from edgefleet import synth as synth_mod

    monitor_s = [0.0]
    lock = threading.Lock()
    original = synth_mod._monitor_and_mocks

    def timed_monitor(*a, **k):
        monitor, mocks = original(*a, **k)
        cls = type(monitor)  # a class made per synth call: patching it touches nothing else
        register = cls.RegisterResource

        def RegisterResource(self, request):
            start = time.perf_counter()
            try:
                return register(self, request)
            finally:
                with lock:
                    monitor_s[0] += time.perf_counter() - start

        cls.RegisterResource = RegisterResource
        return monitor, mocks

    synth_mod._monitor_and_mocks = timed_monitor
    prof = cProfile.Profile()
    try:
        prof.enable()
        synth_mod.dumps(synth_mod.synth(project, "bench"))
        prof.disable()
    finally:
        synth_mod._monitor_and_mocks = original
    stats = pstats.Stats(prof)
    total = max(v[3] for v in stats.stats.values())  # cumulative time of the outermost frame

    def cum(file_part: str, func: str) -> float:
        return sum(v[3] for (f, _, fn), v in stats.stats.items() if file_part in f and fn == func)

    buckets = {
        "read_stack_file (YAML parse of the stack file)": cum("edgefleet/config.py", "read_stack_file"),
        "parse_stack_config (pydantic + check_stack)": cum("edgefleet/config.py", "parse_stack_config"),
        "pulumi runtime.test (program + awaiting registrations)": cum("pulumi/runtime/mocks.py", "wrapper"),
        "  program.declare (constructors, synchronous part)": cum("edgefleet/program.py", "declare"),
        "  DeviceGroup.__init__ (1 per group)": cum("components/device_group.py", "__init__"),
        "  pulumi _get_stack_trace (per resource, Pulumi's own)": cum("pulumi/runtime/resource.py", "_get_stack_trace"),
        "RecordingMonitor.RegisterResource (worker threads, wall)": monitor_s[0],
        "dumps (graph JSON)": cum("edgefleet/synth.py", "dumps"),
    }
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue(), {"profiled_total_s": total, **buckets}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print a cProfile breakdown of one synth run")
    ap.add_argument("--plan", action="store_true", help="also time `edgefleet plan` of a one-line change against one synth")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()

    reproduce = (
        "python benchmarks/synth_bench.py"
        + (f" --groups {args.groups}" if args.groups != 1000 else "")
        + (f" --runs {args.runs}" if args.runs != 5 else "")
        + (" --profile" if args.profile else "")
        + (" --plan" if args.plan else "")
    )
    print(f"reproduce: {reproduce}")
    load_before = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} at start "
        "(other work on the machine slows both sides; the runs are interleaved so the ratio stays fair)"
    )
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-synth-bench-"))
    try:
        project = make_project(tmp, args.groups)
        _, graph, graph_bytes = run_synth(project)  # warm-up: imports, caches (not counted)
        resources = len(graph["resources"])
        run_bare(resources, False)
        run_replay(graph)
        synth_s, bare_s, bare_sized_s, replay_s, plan_s = [], [], [], [], []
        if args.plan:
            make_repo(project)
        for i in range(args.runs):
            steps = [
                ("synth", lambda: synth_s.append(run_synth(project)[0])),
                ("bare", lambda: bare_s.append(run_bare(resources, False))),
                ("bare_sized", lambda: bare_sized_s.append(run_bare(resources, True))),
                ("replay", lambda: replay_s.append(run_replay(graph))),
            ]
            if args.plan:
                steps.append(("plan", lambda: plan_s.append(run_plan(project))))
            k = i % len(steps)
            for _, step in steps[k:] + steps[:k]:  # rotate the order between runs
                step()
        breakdown = None
        if args.profile:
            text, breakdown = profile_synth(project)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med_synth, med_bare, med_sized, med_replay = (statistics.median(x) for x in (synth_s, bare_s, bare_sized_s, replay_s))
    print(
        f"\n{args.groups} device groups -> {resources} resources in the graph ({graph_bytes / 1024:.0f} KiB of JSON); "
        f"{args.runs} interleaved runs each, medians; ratios against the replay of the same resources"
    )
    print(f"{'path':<66} {'seconds':>8} {'ms/resource':>12} {'ratio':>7}")
    print("-" * 96)
    for name, secs in (
        (f"bare Pulumi mocks: {resources} trivial ComponentResources", med_bare),
        (f"bare Pulumi mocks: {resources} with DeviceGroup-sized inputs", med_sized),
        ("bare Pulumi mocks: the graph's resources replayed (same resources)", med_replay),
        ("edgefleet synth (stack file -> graph JSON)", med_synth),
    ):
        print(f"{name:<66} {secs:8.3f} {secs / resources * 1000:12.3f} {secs / med_replay:6.2f}x")
    med_plan = statistics.median(plan_s) if plan_s else None
    if med_plan is not None:
        print(
            f"{'edgefleet plan (head synth + base worktree synth + policy + diff)':<66} {med_plan:8.3f} {'':>12} {med_plan / med_replay:6.2f}x"
        )
    print("-" * 96)
    print(f"ratio edgefleet synth / bare registration of the same resources {med_synth / med_replay:.2f} (target <= 1.3)")
    if med_plan is not None:
        print(f"ratio edgefleet plan / one edgefleet synth                      {med_plan / med_synth:.2f} (target <= 2.5)")
    print(f"ratio edgefleet synth / bare trivial components (no inputs)     {med_synth / med_bare:.2f}")
    if breakdown:
        total = breakdown["profiled_total_s"]
        print(f"\nwhere one synth run's time goes (cProfile, cumulative; overlapping buckets; profiled total {total:.2f} s):")
        for k, v in breakdown.items():
            if k != "profiled_total_s":
                print(f"  {k:<58} {v:7.3f} s  {v / total:6.1%}")
        print("\ntop functions by own time:")
        print("\n".join(text.strip().splitlines()[:40]))

    result = {
        "benchmark": "synth_bench",
        "reproduce": reproduce,
        "groups": args.groups,
        "resources": resources,
        "graph_json_bytes": graph_bytes,
        "runs": args.runs,
        "medians_s": {
            "edgefleet_synth": med_synth,
            "bare_trivial": med_bare,
            "bare_sized_inputs": med_sized,
            "edgefleet_plan": med_plan,
            "bare_replay": med_replay,
        },
        "samples_s": {
            "edgefleet_synth": synth_s,
            "bare_trivial": bare_s,
            "bare_sized_inputs": bare_sized_s,
            "edgefleet_plan": plan_s,
            "bare_replay": replay_s,
        },
        "ratios": {
            "synth_vs_bare": med_synth / med_bare,
            "synth_vs_bare_sized_inputs": med_synth / med_sized,
            "plan_vs_synth": med_plan / med_synth if med_plan is not None else None,
            "synth_vs_bare_replay": med_synth / med_replay,
        },
        "profile_breakdown_s": breakdown,
        "environment": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "loadavg_1min_start_end": [load_before[0], os.getloadavg()[0]],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
