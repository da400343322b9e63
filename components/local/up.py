"""`edgefleet up --stack local`: apply the synthesized graph to the local platform.

Reads what the program declared (the same graph `edgefleet synth` writes), publishes each model version
to the local store signed by the stack's key, compares each declared version with what the hub's rings
are set to (plan.decide), and runs the rollout engine for each change while the local fleet runs: a newer
version rolls forward, an older one is an intentional rollback under a signed rollback order. Under the
Pulumi CLI the dynamic providers in providers.py make the same decision resource by resource, while
`edgefleet fleet run` (serve) runs the devices.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from components.local.captures import store_root
from components.local.deltas import publish_patches
from components.local.fleet import LocalFleet, exclusive, local_devices, lock_path, register
from components.local.hub import LocalHub
from components.local.plan import decide, engine_for
from components.local.signer import LocalKeySigner, stack_signer
from components.local.store import Published, publish
from components.local.traffic import load_traffic
from components.local.trust import ensure_repository, expiry_of, first_root, identity, revoke_rejected
from components.rollout.decide import Decision, plan_for
from components.rollout.engine import TERMINAL, RolloutPlan, rings_changed
from components.rollout.spec import DeviceGroupConfig, RingConfig, RolloutConfig
from components.stack import StackConfig, parse_stack
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError, FaultError
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel

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
    status: str  # up-to-date | succeeded | rolled_back | rollback_incomplete | previously-rolled-back | refused
    progress: dict[str, Any] | None
    kind: str = "forward"  # forward | rollback (a declared older version)
    problem: str = ""  # refusals: why, and the fix
    fix: str = ""
    reopened: tuple[str, ...] = ()  # rings appended to a succeeded rollout, the only ones this run deployed and gated


REFUSED = ("previously-rolled-back", "refused")


# Settings a group's or ring's resource inputs hold only when the stack declares them (so graphs of stacks without them
# stay as they were): read back when present, or `edgefleet up` would run the rollout without them.
GROUP_DECLARED_WHEN_SET = ("timezone", "maintenance_windows", "max_download_bytes_per_second")
RING_DECLARED_WHEN_SET = ("capture", "max_download_bytes_per_second")


def declared(graph: dict[str, Any]) -> list[DeclaredRollout]:
    """The local rollouts in a synthesized graph, with the exact manifest text each one ships."""
    by_urn = {r["urn"]: r for r in graph["resources"]}
    children: dict[str, list[dict]] = {}
    for r in graph["resources"]:
        children.setdefault(r["parent"], []).append(r)
    artifacts = {by_urn[r["parent"]]["name"]: r["inputs"] for r in graph["resources"] if r["type"] == ARTIFACT}
    groups = {
        r["name"]: DeviceGroupConfig.model_validate(
            {
                "name": r["name"],
                **{k: r["inputs"][k] for k in ("hardware", "labels", "devices")},
                **{k: r["inputs"][k] for k in GROUP_DECLARED_WHEN_SET if k in r["inputs"]},
                "platform": r["inputs"]["platform"],
            },
            strict=False,
        )
        for r in graph["resources"]
        if r["type"] == "edgefleet:fleet:DeviceGroup"
    }
    out = []
    for r in graph["resources"]:
        if r["type"] != "edgefleet:rollout:Rollout":
            continue
        rings = sorted((c["inputs"] for c in children.get(r["urn"], []) if c["type"] == "edgefleet:rollout:Ring"), key=lambda i: i["index"])
        if not rings or any(ring["platform"] != "local" for ring in rings):
            continue
        cfg = RolloutConfig(
            name=r["name"],
            model=r["inputs"]["model"],
            rings=[
                RingConfig.model_validate(
                    {k: ring[k] for k in ("group", "labels", "gate")}
                    | {k: ring[k] for k in RING_DECLARED_WHEN_SET if k in ring}
                    | {"name": ring["ring"], "percent": ring.get("percent")},
                    strict=False,
                )
                for ring in rings
            ],
            control_holdback=float(r["inputs"].get("control_holdback") or 0.0),
        )
        art = artifacts[r["inputs"]["model"]]
        out.append(DeclaredRollout(cfg, groups, r["inputs"]["model"], art["manifest"], art["source"]))
    return out


def fleet_fault(error: BaseException) -> FaultError:
    """Why the simulated fleet stopped, as the fault it is (a full disk, a damaged hub), never a traceback."""
    if isinstance(error, FaultError):
        return error
    if isinstance(error, OSError):
        return FaultError(
            str(error.filename or "the local fleet's state"),
            f"the simulated fleet stopped: {error.strerror or error}",
            "free disk space (or fix the path's permissions) and run the command again: the rollout resumes where it stood",
        )
    return FaultError(
        "the local fleet",
        f"the simulated fleet stopped: {type(error).__name__}: {error}",
        "this is an edgefleet bug: report it with the simulated agents' log (.edgefleet/local/devices/simulated-agents.log)",
    )


def signer_for(cfg: StackConfig, project_dir: Path, stack: str = "local") -> LocalKeySigner:
    return stack_signer(project_dir / cfg.signing.key_file, stack)


def local_stack(cfg: Any, source: str, stack: str, verb: str) -> Any:
    """`cfg` if it has a local platform to drive; otherwise an error saying what to run instead."""
    if "local" not in cfg.platforms or cfg.local is None:
        raise EdgefleetError(
            source,
            f"{verb} drives the local platform; this stack targets {', '.join(cfg.platforms)}",
            f"use `pulumi up --stack {stack}` with the Pulumi CLI, or preview offline with `edgefleet plan --stack {stack}`",
        )
    return cfg


def graph_stack(graph: dict[str, Any], stack: str, verb: str) -> tuple[Any, str]:
    """The stack config a synthesized graph was declared from (synth validated it), checked to have a local platform."""
    source = graph.get("stack_file") or f"stacks/Pulumi.{stack}.yaml"
    return local_stack(parse_stack(graph["config"], source), source, stack, verb), source


def local_models(cfg: StackConfig) -> list[str]:
    """Models that local rollouts ship: the local fleet runs one agent per device and model."""
    return sorted({r.model for r in cfg.rollouts if all(cfg.group_platform(cfg.group(ring.group)) == "local" for ring in r.rings)})


def up(
    project_dir: Path,
    stack: str,
    graph: dict[str, Any],
    on_update: Callable[[dict[str, Any]], None] | None = None,
    on_fleet: Callable[[LocalFleet], None] | None = None,
    abort: str | None = None,
) -> list[Outcome]:
    """Makes the rings run what is declared. With `abort` (the reason), instead rolls back every rollout left in
    flight (a killed `up`, a version nobody wants to finish) to its previous version, whatever is declared."""
    project_dir = Path(project_dir).resolve()
    cfg, source = graph_stack(graph, stack, "edgefleet up")
    hub_path = project_dir / cfg.local.hub
    with exclusive(
        lock_path(hub_path, "up"),
        f"another `edgefleet up --stack {stack}` is rolling out on this hub",
        "wait for it to finish, or stop it (Ctrl-C in its terminal, or `kill {pid}`); "
        "a stopped rollout resumes where it stood on the next `edgefleet up`",
    ):
        return _up(project_dir, stack, cfg, source, hub_path, graph, on_update, on_fleet, abort)


def _model_dir(project_dir: Path, d: DeclaredRollout) -> Path:
    return (project_dir / d.source).parent


def _up(
    project_dir: Path,
    stack: str,
    cfg: StackConfig,
    source: str,
    hub_path: Path,
    graph: dict[str, Any],
    on_update: Callable[[dict[str, Any]], None] | None,
    on_fleet: Callable[[LocalFleet], None] | None,
    abort: str | None = None,
) -> list[Outcome]:
    devices = local_devices(cfg, source)
    traffic = load_traffic(cfg, project_dir, local_models(cfg), source)  # refused before the hub is touched
    signer = signer_for(cfg, project_dir, stack)
    hub = LocalHub(hub_path)
    hub.check_integrity()  # a damaged hub is named, with the command that rebuilds it, before anything acts on it
    register(hub, devices)
    # the store is the stack's TUF repository: made on first use with the stack's root key (docs/signing.md)
    repo = ensure_repository(project_dir, cfg, stack, signer, hub.rollouts())
    work: list[tuple[DeclaredRollout, Decision, RolloutPlan]] = []
    outcomes: list[Outcome] = []
    for d in declared(graph):
        if abort is not None:
            flight = [p for p in hub.rollouts(d.config.name) if p["status"] not in TERMINAL]
            if not flight:
                continue
            wanted = replace(DesiredModel.from_json(flight[-1]["desired"]), rollout="")  # decide() resumes exactly this one
        else:
            published: Published = publish(project_dir / cfg.local.store, d.manifest_text, project_dir / d.source, signer, d.source)
            wanted = published.desired("")
            repo.add_targets([identity(wanted)])  # never puts back a version a gate rejected: that stays revoked
        decision = decide(
            hub,
            d.config,
            d.groups,
            wanted,
            model_dir=str(_model_dir(project_dir, d)),
            apply=f"run `edgefleet up --stack {stack}`",
            stack=stack,
        )
        if decision.action == "up-to-date":
            outcomes.append(Outcome(d.config.name, d.model, None, wanted.version, "up-to-date", decision.record))
        elif decision.action == "refused":
            running = sorted({v for v in decision.ring_versions.values() if v})
            if decision.status == "previously-rolled-back" and decision.record is not None:
                # the rejected version's desired state was written into the rings again (replayed): the rollback stays
                # in force, and the version stays out of the signed targets, which devices check before any install
                revoke_rejected(repo, decision.record)
                restored = restore_rollback(hub, decision)
                if restored:
                    decision = replace(
                        decision,
                        problem=decision.problem
                        + f"; rings {', '.join(restored)} were set to it again and are back on the version they were rolled back to",
                    )
            outcomes.append(
                Outcome(
                    d.config.name,
                    d.model,
                    ", ".join(running) or None,
                    wanted.version,
                    decision.status,
                    decision.record,
                    problem=decision.problem,
                    fix=decision.fix,
                )
            )
        else:
            if abort is None and cfg.delta.enabled:
                publish_rollout_patches(hub, repo, project_dir / cfg.local.store, decision, wanted, cfg.delta.max_share)
            plan = plan_for(d.config.name, decision, wanted, signer)
            changed = rings_changed(decision.record, plan) if decision.action == "resume" and decision.record else None
            if changed is not None:  # before the fleet starts: nothing is touched
                raise ConfigError(source, f"edgefleet:rollouts ({d.config.name}).rings: {changed.problem}", changed.fix)
            work.append((d, decision, plan))
    if not work:
        return outcomes
    repo.refresh()  # a fresh timestamp before anything deploys: devices refuse installs on expired metadata
    fleet = LocalFleet(
        cfg,
        hub_path,
        project_dir / ".edgefleet" / "local" / "devices",
        signer.public_key_pem(),
        sorted({d.model for d, _, _ in work}),
        sim_period=cfg.local.report_seconds,
        devices=devices,
        trusted_root=first_root(repo),
        metadata_url=repo.storage.url,
        metadata_refresh_seconds=cfg.trust.device_refresh_seconds,
        traffic=traffic,
        captures_root=store_root(cfg, project_dir),
    )

    fresh_until = [time.time() + expiry_of(cfg).timestamp.total_seconds() / 2]

    def watch(progress: dict[str, Any]) -> None:
        if fleet.error is not None:
            raise fleet_fault(fleet.error) from fleet.error
        if time.time() >= fresh_until[0]:  # a rollout outlasting half the timestamp's life keeps it fresh as it deploys
            repo.refresh()
            fresh_until[0] = time.time() + expiry_of(cfg).timestamp.total_seconds() / 2
        if on_update is not None:
            on_update(progress)

    with fleet:
        if on_fleet is not None:
            on_fleet(fleet)
        for d, decision, plan in work:
            engine = engine_for(hub, str(project_dir / cfg.signing.key_file), cfg.local.poll_seconds, on_update=watch)
            with hub.lease(d.config.name, owner="edgefleet up"):  # a `pulumi up --stack local` gate may drive the same rings
                progress = engine.run(plan) if abort is None else engine.abort(plan, abort)
            revoke_rejected(repo, progress)  # a version a gate rejected after devices served it leaves the signed targets
            outcomes.append(
                Outcome(
                    d.config.name,
                    d.model,
                    progress.get("previous_version"),
                    plan.desired.version,
                    progress["status"],
                    progress,
                    kind=decision.kind,
                    reopened=decision.appended,
                )
            )
    return outcomes


def rollout_bases(hub: LocalHub, decision: Decision, wanted: DesiredModel) -> list[str]:
    """The artifacts a rollout moves devices off: the version its plan names as previous, and what its rings run now."""
    shas = [decision.previous.sha256] if decision.previous is not None else []
    for ring in decision.rings:
        now = hub.desired(ring.target)
        if now is not None and now.model == wanted.model:
            shas.append(now.sha256)
    return [s for s in dict.fromkeys(shas) if s != wanted.sha256]


def publish_rollout_patches(hub: LocalHub, repo: Any, store: Path, decision: Decision, wanted: DesiredModel, max_share: float) -> None:
    """A patch from each version the rollout moves devices off to the declared one (docs/deltas.md), signed as targets."""
    patches = publish_patches(store, wanted.model, wanted.sha256, rollout_bases(hub, decision, wanted), max_share)
    if patches:
        repo.add_patches(patches)


def restore_rollback(hub: LocalHub, decision: Decision) -> list[str]:
    """A finished rollback stays in force: rings it covered, and any ring set to the rejected version since (its desired
    state replayed), go back to the version it rolled back to."""
    record = decision.record or {}
    rb = record.get("rollback") or {}
    target = DesiredModel.from_json(rb.get("desired"))
    restored = []
    for ring in decision.rings:
        now = hub.desired(ring.target)
        rejected = now is not None and (now.version, now.sha256) == (record.get("version"), record.get("sha256"))
        if (ring.name in rb.get("rings", []) or rejected) and now != ring.capped(target):
            hub.set_desired(ring.target, ring.capped(target))
            restored.append(ring.name)
    return restored


def declared_state(project_dir: Path, stack: str, graph: dict[str, Any]) -> list[dict[str, Any]]:
    """Declared versus running, per rollout, and what `edgefleet up` would do about it; reads the hub, writes nothing."""
    project_dir = Path(project_dir).resolve()
    cfg, _ = graph_stack(graph, stack, "edgefleet status")
    hub = LocalHub(project_dir / cfg.local.hub)
    out = []
    for d in declared(graph):
        manifest = parse_manifest_bytes(d.manifest_text.encode(), d.source)
        wanted = DesiredModel(
            model=manifest.name,
            version=manifest.version,
            sha256=manifest.sha256,
            size=manifest.size,
            uri="",
            manifest=d.manifest_text,
            signature="",
        )
        decision = decide(
            hub,
            d.config,
            d.groups,
            wanted,
            model_dir=str(_model_dir(project_dir, d)),
            apply=f"run `edgefleet up --stack {stack}`",
            stack=stack,
        )
        devices = [dev for r in decision.rings for dev in r.target.selector]
        reports = hub.reports(d.model, devices)
        reported = Counter(r.version for r in reports.values())
        silent = len(devices) - len(reports)
        others = len(reports) - reported.get(wanted.version, 0)
        in_sync = decision.action == "up-to-date" and others == 0 and silent == 0
        set_to = sorted({v for v in decision.ring_versions.values() if v})
        if in_sync:
            next_step = f"in sync: every ring is set to {wanted.version} and all {len(devices)} devices run it"
        elif decision.action == "up-to-date":
            running = ", ".join(
                f"{v or 'nothing'}×{n}" for v, n in sorted(reported.items(), key=lambda kv: str(kv[0])) if v != wanted.version
            )
            next_step = (
                f"every ring is set to {wanted.version}, but not every device runs it: "
                + ", ".join(x for x in (f"{others} run {running}" if others else "", f"{silent} have not reported" if silent else "") if x)
                + f"; `edgefleet up` has nothing to set: their reports say why (`edgefleet status --stack {stack} --json`)"
            )
        elif decision.action == "resume" and decision.appended:
            next_step = (
                f"rollout {decision.rollout_id} succeeded and the stack appends rings {', '.join(decision.appended)}: "
                f"`edgefleet up --stack {stack}` reopens it and takes only those through their gates"
            )
        elif decision.action == "resume":
            next_step = f"rollout {decision.rollout_id} is in flight: `edgefleet up --stack {stack}` resumes it"
        elif decision.action == "refused":
            next_step = f"`edgefleet up` refuses: {decision.problem}; fix: {decision.fix}"
        elif decision.kind == "rollback":
            next_step = (
                f"declared {wanted.version} is older than the rings' {decision.downgrade_from.version}: `edgefleet up --stack {stack}` "
                "rolls back to it ring by ring, under a signed rollback order"
            )
        else:
            next_step = f"`edgefleet up --stack {stack}` rolls out {wanted.version} ring by ring"
        out.append(
            {
                "rollout": d.config.name,
                "model": d.model,
                "declared": wanted.version,
                "rings_set_to": decision.ring_versions,
                "running": dict(sorted(reported.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))),
                "in_sync": in_sync,
                "silent": silent,
                "action": decision.action,
                "kind": decision.kind,
                "next": next_step,
                "set_to": set_to,
            }
        )
    return out


def serve(
    project_dir: Path,
    stack: str,
    cfg: Any,
    source: str,
    stop: threading.Event,
    on_ready: Callable[[LocalFleet, LocalHub], None] | None = None,
    on_tick: Callable[[LocalFleet, LocalHub], None] | None = None,
    tick_seconds: float = 10.0,
) -> None:
    """`edgefleet fleet run`: registers the stack's devices and runs them until `stop` is set, so that the
    ring gates of `pulumi up --stack local` (another process) find devices that adopt and report."""
    project_dir = Path(project_dir).resolve()
    local_stack(cfg, source, stack, "edgefleet fleet run")
    devices = local_devices(cfg, source)
    models = local_models(cfg)
    if not models:
        raise EdgefleetError(
            source,
            f"no rollout of {stack} targets local device groups, so the fleet would have no model to run",
            "declare a rollout under edgefleet:rollouts whose rings use local groups",
        )
    traffic = load_traffic(cfg, project_dir, models, source)
    hub = LocalHub(project_dir / cfg.local.hub)
    register(hub, devices)
    signer = signer_for(cfg, project_dir, stack)
    repo = ensure_repository(project_dir, cfg, stack, signer, hub.rollouts())
    fleet = LocalFleet(
        cfg,
        project_dir / cfg.local.hub,
        project_dir / ".edgefleet" / "local" / "devices",
        signer.public_key_pem(),
        models,
        sim_period=cfg.local.report_seconds,
        devices=devices,
        trusted_root=first_root(repo),
        metadata_url=repo.storage.url,
        metadata_refresh_seconds=cfg.trust.device_refresh_seconds,
        traffic=traffic,
        captures_root=store_root(cfg, project_dir),
    )
    with fleet:
        if on_ready is not None:
            on_ready(fleet, hub)
        while not stop.wait(tick_seconds if on_tick else 0.5):
            if fleet.error is not None:
                raise fleet_fault(fleet.error) from fleet.error
            if on_tick is not None:
                on_tick(fleet, hub)
