"""`edgefleet demo`: the whole story in one command, on a scratch copy of the project.

1. roll out detector 1.0.0 to a fresh fleet (every ring);
2. `edgefleet model add --dataset` 1.1.0: its accuracy measured on the pinned evaluation set
   (models/datasets/), better than 1.0.0's; roll it through canary → early → broad, killing one real agent
   process mid-rollout to show it recovers from disk;
3. 1.2.0, a valid ONNX model whose outputs are all NaN: `--dataset` refuses to measure it, so it is added
   with a declared (typed-in) accuracy, which the local sandbox stack allows; the canary gate fails on
   invalid outputs, the canary is rolled back to 1.1.0 under a signed rollback order, and no device
   outside the canary ever receives 1.2.0;
4. 1.3.0, a valid, fast model that ignores its input (always one class), added with a typed-in accuracy of 0.99:
   health gates would pass it; the canary shadows it on the cameras' frames (edgefleet:local.traffic), its answers
   agree with 1.1.0's on about a third of them, and no device ever serves it.
Then prints the timeline and writes a picture of it.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import yaml

from components.local.signer import create_key_file
from components.stack import SigningConfig, TrustConfig
from edgefleet.cli import console
from edgefleet_agent.contract.errors import EdgefleetError

NEEDS = (
    "Pulumi.yaml",
    "stacks/Pulumi.local.yaml",
    "models/detector/model.yaml",
    "models/samples/metrics.json",
    "models/datasets/channel-dominance-eval.yaml",
    "models/datasets/channel-dominance-live.yaml",
)
EVAL_SET = "models/datasets/channel-dominance-eval.yaml"
MARKER = ".edgefleet-demo"  # written into every workdir the demo creates: only those does it delete


def find_project(given: Path | None = None) -> Path:
    """The project the demo copies: `--project`, else the current directory when it is one, else the checkout
    this package was loaded from; so `edgefleet demo` works from any directory."""
    if given is not None:
        candidates = [Path(given)]
    else:
        candidates = [Path.cwd(), Path(__file__).resolve().parents[2]]
    for c in candidates:
        if all((c / n).is_file() for n in NEEDS):
            return c.resolve()
    where = candidates[0]
    missing = [n for n in NEEDS if not (where / n).is_file()]
    raise EdgefleetError(
        str(where),
        f"not an edgefleet project: the demo copies {', '.join(NEEDS)} from it, and {', '.join(missing)} "
        + ("is" if len(missing) == 1 else "are")
        + " missing"
        + ("" if given is not None else f" (nor is {candidates[1]} one: edgefleet is not running from a checkout)"),
        "run it from the project's root, or pass `--project PATH` (a clone of the edgefleet repository)",
    )


def check_workdir(work: Path, legacy: bool = False) -> None:
    """The demo recreates its workdir, so it deletes only a directory it made (its marker inside) or an empty one:
    `--workdir ~` must never cost a home directory. `legacy`: the default workdir under the project's own
    `.edgefleet/`, which demos from before the marker left without one."""
    if not work.exists() or legacy:
        return
    if not work.is_dir():
        raise EdgefleetError(
            str(work), "the demo's --workdir is a file, and the demo needs a directory there", "pass `--workdir` a new or empty directory"
        )
    if not (work / MARKER).is_file() and any(work.iterdir()):
        raise EdgefleetError(
            str(work),
            f"--workdir is a directory the demo did not create (it is not empty and has no {MARKER} "
            "marker), and the demo deletes and recreates its workdir",
            "pass `--workdir` a new or empty directory (e.g. `--workdir /tmp/edgefleet-demo`), or leave it out "
            "for the default <project>/.edgefleet/demo",
        )


def _prepare(src: Path, work: Path, devices: int, legacy: bool = False) -> None:
    check_workdir(work, legacy)
    if work.exists():
        shutil.rmtree(work)
    (work / "stacks").mkdir(parents=True)
    (work / MARKER).write_text("a scratch copy made by `edgefleet demo`; the next demo in this directory deletes it\n")
    shutil.copy2(src / "Pulumi.yaml", work / "Pulumi.yaml")
    shutil.copytree(src / "models", work / "models")
    doc = yaml.safe_load((src / "stacks" / "Pulumi.local.yaml").read_text())
    batch = doc["config"]["edgefleet:local"]["devices"][0]
    batch["count"] = devices
    batch["offline"] = min(batch.get("offline", 0), max(0, devices // 100))
    batch["reconnect_after_seconds"] = 6
    (work / "stacks" / "Pulumi.local.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    key = work / doc["config"].get("edgefleet:signing", {}).get("key_file", SigningConfig().key_file)
    create_key_file(key)  # the first-run step a new stack takes: `edgefleet keys create`
    console.print(f"created the demo stack's signing key {key.relative_to(work)} (as `edgefleet keys create` would)", highlight=False)
    for rel in doc["config"].get("edgefleet:trust", {}).get("root_keys", TrustConfig().root_keys):
        create_key_file(work / rel)  # and its TUF root key: `edgefleet keys create --role root`
        console.print(f"created the demo stack's TUF root key {rel} (as `edgefleet keys create --role root` would)", highlight=False)


def _kill_one_agent_later(fleet, delay: float, log: list[str]) -> None:
    def kill() -> None:
        procs = fleet.processes()
        if not procs:
            return
        (device, model) = sorted(procs)[0]
        fleet.kill_process(device, model)
        log.append(f"killed agent process {device} (SIGKILL) mid-rollout")
        fleet.start_process(device, model)
        log.append(f"restarted {device}: it re-verifies its model from disk before serving")

    timer = threading.Timer(delay, kill)
    timer.daemon = True
    timer.start()


def containment(work: Path, model: str, version: str, canary: str) -> dict:
    """Which devices ever served `version`, and which of those were outside the canary ring."""
    from components.local.hub import LocalHub

    hub = LocalHub(work / ".edgefleet" / "local" / "hub.sqlite")
    served = set(hub.ever_served(model, version))
    canary_devices = {d for s in hub.ring_states() if s["ring"] == canary for d in s["devices"]}
    return {"ever_served": len(served), "outside_canary": sorted(served - canary_devices)}


def run_demo(src: Path, work: Path, devices: int) -> None:
    from components.local.fleet import exclusive

    src, work = Path(src).resolve(), Path(work).expanduser().resolve()
    if src == work or src.is_relative_to(work):
        raise EdgefleetError(
            "--workdir", f"{work} holds the project itself, and the demo recreates its workdir", "pick a scratch directory"
        )
    legacy = work == src / ".edgefleet" / "demo"
    check_workdir(work, legacy)  # before the lock file, which goes beside the workdir
    lock = work.with_name(f"{work.name}.lock")  # beside the workdir, which the demo deletes and recreates
    with exclusive(
        lock,
        f"another `edgefleet demo` is running in {work}",
        "wait for it to finish or stop it (`kill {pid}`), or give this one its own `--workdir`",
    ):
        _run_demo(src, work, devices, legacy)


def _run_demo(src: Path, work: Path, devices: int, legacy: bool = False) -> None:
    from edgefleet.cli.fleet import outcome_line, run_up
    from edgefleet.model_add import add_version, parse_metric
    from edgefleet.timeline import picture, text

    samples = src / "models" / "samples"
    metrics = json.loads((samples / "metrics.json").read_text())
    _prepare(src, work, devices, legacy)
    console.rule(f"[bold]1/4 roll out detector 1.0.0 to {devices} devices")
    notes: list[str] = []
    results = run_up(work, "local", as_json=False)
    console.rule("[bold]2/4 edgefleet model add detector 1.1.0 --dataset (accuracy measured) and roll it out")
    m = metrics["1.1.0"]
    added = add_version(work / "models" / "detector", samples / m["file"], "1.1.0", dataset=work / EVAL_SET)
    ev = added.manifest.evaluation
    assert ev is not None
    console.print(
        f"  accuracy {ev.metrics[0].value} measured on {ev.label}, {ev.samples} frames (1.0.0 declared "
        f"{metrics['1.0.0']['accuracy']} on another set); min agent {added.manifest.min_agent_version}",
        highlight=False,
    )
    results += run_up(work, "local", as_json=False, on_fleet=lambda fleet: _kill_one_agent_later(fleet, 3.0, notes))
    for n in notes:
        console.print(f"  fault: {n}")
    console.rule("[bold]3/4 edgefleet model add detector 1.2.0 (NaN outputs) and try to roll it out")
    m = metrics["1.2.0"]
    try:
        add_version(work / "models" / "detector", samples / m["file"], "1.2.0", dataset=work / EVAL_SET)
    except EdgefleetError as exc:
        console.print(f"  --dataset refuses it: {exc.problem}", highlight=False, markup=False)
    else:
        raise EdgefleetError("edgefleet demo", "1.2.0's NaN outputs were measured as if they were a model", "see edgefleet/evaluate.py")
    console.print("  added with a declared accuracy instead: the local stack is a sandbox, its gates judge the model", highlight=False)
    add_version(
        work / "models" / "detector",
        samples / m["file"],
        "1.2.0",
        metrics=[parse_metric(f"accuracy={metrics['1.1.0']['accuracy']}@{m['dataset']}", set())],
    )
    results += run_up(work, "local", as_json=False)
    console.rule("[bold]4/4 edgefleet model add detector 1.3.0 (ignores its input, accuracy typed in as 0.99) and try to roll it out")
    m = metrics["1.3.0"]
    add_version(work / "models" / "detector", samples / m["file"], "1.3.0", metrics=[parse_metric(f"accuracy=0.99@{m['dataset']}", set())])
    console.print(
        f"  measured on the pinned set it would score {m['accuracy']}; declared, only what it answers on the cameras' frames can stop it",
        highlight=False,
    )
    results += run_up(work, "local", as_json=False)
    console.rule("[bold]outcome")
    for o in results:
        console.print(outcome_line(o), highlight=False)
    records = [o.progress for o in results if o.progress]
    console.rule("[bold]timeline")
    for line in text(records):
        print(line)
    png = picture(records, work / "timeline.png", title=f"edgefleet demo: {devices} devices, rings × time")
    contained = containment(work, "detector", "1.2.0", canary="canary")
    console.print(
        f"\n1.2.0 was ever served by {contained['ever_served']} device(s), all in the canary: {contained['outside_canary'] == []}"
    )
    blind = containment(work, "detector", "1.3.0", canary="canary")
    console.print(f"1.3.0 was ever served by {blind['ever_served']} device(s)")
    console.print(f"picture: {png}")
    expected = ["succeeded", "succeeded", "rolled_back", "rolled_back"]
    if [o.status for o in results] != expected or contained["outside_canary"] or blind["ever_served"]:
        raise EdgefleetError(
            "edgefleet demo",
            f"the story did not go as expected: {[o.status for o in results]} (expected {expected})",
            f"see the timeline above and the hub at {work}/.edgefleet/local/hub.sqlite",
        )
