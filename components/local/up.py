"""`edgefleet up --stack local`: apply the synthesized graph to the local platform.

Reads what the program declared (the same graph `edgefleet synth` writes), publishes each model version
to the local store signed by the stack's key, compares declared versions with the rollouts the hub
records, and runs the rollout engine for each change while the local fleet runs. Under the Pulumi CLI
the dynamic providers in providers.py do the same steps resource by resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgefleet.config import DeviceGroupConfig, RingConfig, RolloutConfig, StackConfig, load_stack
from edgefleet.errors import EdgefleetError
from edgefleet.signing import LocalKeySigner, create_key_file

from components.local.fleet import LocalFleet, local_devices, register
from components.local.hub import LocalHub
from components.local.plan import engine_for, ring_plans
from components.local.store import Published, publish
from components.rollout.engine import TERMINAL, RolloutPlan, last_good, rollout_id

ARTIFACT = "pulumi-python:dynamic/edgefleet-local:Artifact"


@dataclass(frozen=True)
class DeclaredRollout:
    config: RolloutConfig
    groups: dict[str, DeviceGroupConfig]
    model: str
    manifest_text: str
    source: str


@dataclass
class Outcome:
    rollout: str
    model: str
    from_version: str | None
    to_version: str
    status: str                     # up-to-date | succeeded | rolled_back | rollback_incomplete | previously-rolled-back
    progress: dict[str, Any] | None


def declared(graph: dict[str, Any]) -> list[DeclaredRollout]:
    """The local rollouts in a synthesized graph, with the exact manifest text each one ships."""
    by_urn = {r["urn"]: r for r in graph["resources"]}
    children: dict[str, list[dict]] = {}
    for r in graph["resources"]:
        children.setdefault(r["parent"], []).append(r)
    artifacts = {by_urn[r["parent"]]["name"]: r["inputs"] for r in graph["resources"] if r["type"] == ARTIFACT}
    groups = {r["name"]: DeviceGroupConfig.model_validate({"name": r["name"], **{k: r["inputs"][k] for k in ("hardware", "labels", "devices")},
                                                          "platform": r["inputs"]["platform"]}, strict=False)
              for r in graph["resources"] if r["type"] == "edgefleet:fleet:DeviceGroup"}
    out = []
    for r in graph["resources"]:
        if r["type"] != "edgefleet:rollout:Rollout":
            continue
        rings = sorted((c["inputs"] for c in children.get(r["urn"], []) if c["type"] == "edgefleet:rollout:Ring"), key=lambda i: i["index"])
        if not rings or any(ring["platform"] != "local" for ring in rings):
            continue
        cfg = RolloutConfig(name=r["name"], model=r["inputs"]["model"],
                            rings=[RingConfig.model_validate({k: ring[k] for k in ("group", "labels", "gate")} | {"name": ring["ring"], "percent": ring.get("percent")}, strict=False)
                                   for ring in rings])
        art = artifacts[r["inputs"]["model"]]
        out.append(DeclaredRollout(cfg, groups, r["inputs"]["model"], art["manifest"], art["source"]))
    return out


def signer_for(cfg: StackConfig, project_dir: Path) -> LocalKeySigner:
    path = project_dir / cfg.signing.key_file
    if not path.exists():
        create_key_file(path)
    return LocalKeySigner(path)


def _supersede(hub: LocalHub, rollout: str, keep: str) -> None:
    for p in hub.rollouts(rollout):
        if p["status"] not in TERMINAL and p["rollout_id"] != keep:
            p["status"] = "superseded"
            hub.save_progress(p["rollout_id"], p)


def up(project_dir: Path, stack: str, graph: dict[str, Any], on_update: Callable[[dict[str, Any]], None] | None = None,
       on_fleet: Callable[[LocalFleet], None] | None = None) -> list[Outcome]:
    project_dir = Path(project_dir).resolve()
    cfg, source = load_stack(project_dir, stack)
    if "local" not in cfg.platforms or cfg.local is None:
        raise EdgefleetError(source, f"edgefleet up drives the local platform; this stack targets {', '.join(cfg.platforms)}",
                             f"use `pulumi up --stack {stack}` with the Pulumi CLI, or preview offline with `edgefleet plan --stack {stack}`")
    signer = signer_for(cfg, project_dir)
    hub = LocalHub(project_dir / cfg.local.hub)
    devices = local_devices(cfg)
    register(hub, devices)
    work: list[tuple[DeclaredRollout, RolloutPlan]] = []
    outcomes: list[Outcome] = []
    for d in declared(graph):
        published: Published = publish(project_dir / cfg.local.store, d.manifest_text, project_dir / d.source, signer, d.source)
        desired = published.desired("")
        rid = rollout_id(d.config.name, desired)
        desired = published.desired(rid)
        previous = last_good(hub.rollouts(d.config.name), before=rid)
        existing = hub.load_progress(rid)
        if existing is not None and existing["status"] in TERMINAL:
            status = "up-to-date" if existing["status"] == "succeeded" else "previously-rolled-back"
            outcomes.append(Outcome(d.config.name, d.model, existing.get("previous_version"), desired.version, status, existing))
            continue
        _supersede(hub, d.config.name, keep=rid)
        plan = RolloutPlan(d.config.name, desired, previous, tuple(ring_plans(hub, d.config, d.groups, rid)))
        work.append((d, plan))
    if not work:
        return outcomes
    fleet = LocalFleet(cfg, project_dir / cfg.local.hub, project_dir / ".edgefleet" / "local" / "devices", signer.public_key_pem(),
                       sorted({d.model for d, _ in work}), sim_period=cfg.local.report_seconds)

    def watch(progress: dict[str, Any]) -> None:
        if fleet.error is not None:
            raise RuntimeError(f"the simulated fleet stopped: {fleet.error!r}") from fleet.error
        if on_update is not None:
            on_update(progress)

    with fleet:
        if on_fleet is not None:
            on_fleet(fleet)
        for d, plan in work:
            engine = engine_for(hub, str(project_dir / cfg.signing.key_file), cfg.local.poll_seconds, on_update=watch)
            progress = engine.run(plan)
            outcomes.append(Outcome(d.config.name, d.model, plan.previous.version if plan.previous else None,
                                    plan.desired.version, progress["status"], progress))
    return outcomes
