"""Quality gates over the local hub, as `edgefleet up` runs them: the shipped stack's rollout (its rings, their gates and
its control holdback) on a registry of devices whose reports a script writes from each device's desired state, with
the telemetry an agent would send. The agent's own traffic generator is not needed for the engine's side."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from components.local.hub import LocalHub
from components.local.plan import decide, ring_plans
from components.local.signer import LocalKeySigner, create_key_file
from components.rollout.decide import plan_for
from components.rollout.engine import RolloutEngine
from components.rollout.rollback import rollback_authorizer
from components.rollout.spec import CONTROL_RING, DeviceGroupConfig, RolloutConfig, follower_gate
from edgefleet_agent.contract.state import DeviceReport
from edgefleet_agent.contract.telemetry import Labelled, Latency, Predictions, Shadow
from tests.rollout.fakes import FakeClock, desired

ROOT = Path(__file__).resolve().parents[2]
V1, V2 = desired("1.0.0"), desired("1.1.0")
N = 24  # requests per device per window: 240 a window on the 10-device canary, over the gate's 200


def stack() -> tuple[RolloutConfig, dict[str, DeviceGroupConfig]]:
    cfg = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())["config"]
    rollout = RolloutConfig.model_validate(cfg["edgefleet:rollouts"][0], strict=False)
    groups = {g["name"]: DeviceGroupConfig.model_validate(g, strict=False) for g in cfg["edgefleet:groups"]}
    return rollout, groups


class ScriptedFleet:
    """Devices that adopt their desired state at once and report N requests a window: `answers` says, per version, the
    top-1 class of request i (the served model's and a shadowed candidate's on the same requests)."""

    def __init__(self, hub: LocalHub, devices: list[str], answers: dict[str, list[int]]) -> None:
        self.hub, self.devices, self.answers = hub, devices, answers

    def step(self) -> None:
        desired = self.hub.desired_for_devices(self.devices, "detector")
        reports = []
        for dev in self.devices:
            d = desired.get(dev)
            if d is None:
                continue
            served = self.answers[d.version]
            preds, lat = Predictions("classes", "scores"), Latency()
            for i in range(N):
                preds.add_class(served[i % len(served)], 0.8)
                lat.add(2.0)
            extra = {}
            if d.shadow is not None:
                cand = self.answers[d.shadow.version]
                agree = sum(cand[i % len(cand)] == served[i % len(served)] for i in range(N))
                extra["shadow"] = Shadow(d.shadow.version, d.shadow.sha256, N, agree, 0, 0, lat, lat).to_json()
            reports.append(
                DeviceReport(
                    dev,
                    "detector",
                    d.version,
                    d.sha256,
                    "ok",
                    inferences=N,
                    p99_latency_ms=3.0,
                    predictions=preds.to_json(),
                    latency=lat.to_json(),
                    labelled=Labelled(N, N - 2).to_json(),  # the applications sent the true class with every request
                    **extra,
                )
            )
        self.hub.put_reports(reports)


class Clock(FakeClock):
    def __init__(self, fleet: list[ScriptedFleet]) -> None:
        super().__init__()
        self.fleet = fleet

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        for f in self.fleet:
            f.step()


def setup(tmp_path: Path, answers: dict[str, list[int]], devices: int = 200):
    rollout, groups = stack()
    fleet: list[ScriptedFleet] = []
    clock = Clock(fleet)
    hub = LocalHub(tmp_path / "hub.sqlite", clock=clock.now)
    ids = [f"cam-{i:04d}" for i in range(devices)]
    hub.register_devices((d, {"site": "plant-a"}, "amd64", ["CPUExecutionProvider"], "sim") for d in ids)
    fleet.append(ScriptedFleet(hub, ids, answers))
    signer = LocalKeySigner(create_key_file(tmp_path / "key.pem"))
    return rollout, groups, hub, clock, signer


def roll(rollout, groups, hub, clock, signer, version):
    decision = decide(hub, rollout, groups, version)
    assert decision.action == "run", decision
    plan = plan_for(rollout.name, decision, version, signer)
    engine = RolloutEngine(hub, clock, rollback_authorizer(signer), poll_seconds=0.5)
    return engine.run(plan), plan


GOOD = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
CLOSE = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1]  # agrees on 11 of 12
BLIND = [0] * 12


def test_the_stacks_rings_hold_back_a_control_group_that_each_ring_compares_with_and_that_follows_last(tmp_path):
    rollout, groups, hub, clock, signer = setup(tmp_path, {"1.0.0": GOOD, "1.1.0": CLOSE})
    plans = ring_plans(hub, rollout, groups)
    assert [p.name for p in plans] == ["canary", "early", "broad", CONTROL_RING]
    held = set(plans[-1].target.selector)
    assert len(held) == 10 and not held & {d for p in plans[:-1] for d in p.target.selector}
    assert set(plans[2].control[0].selector) == held, "the last ring compares with the holdback"
    assert set(plans[0].control[0].selector) == {d for p in plans[1:] for d in p.target.selector}
    assert not plans[-1].gate.quality, "the holdback follows under the last ring's health criteria"

    first, _ = roll(rollout, groups, hub, clock, signer, V1)
    assert first["status"] == "succeeded" and [e["ring"] for e in first["events"] if e["event"] == "shadow-skipped"] == ["canary"]
    progress, plan = roll(rollout, groups, hub, clock, signer, V2)
    assert progress["status"] == "succeeded", progress["report"]
    rings = {r["name"]: r for r in progress["rings"]}
    assert rings["canary"]["shadow_verdict"]["measured"]["quality"]["agreement"] == round(11 / 12, 4)
    early = rings["early"]["verdict"]["measured"]["quality"]
    assert early["control"]["devices"] == len(plans[2].target.selector) + len(held), "the later ring and the holdback, on 1.0.0"
    assert rings["broad"]["verdict"]["measured"]["quality"]["control"]["devices"] == len(held)
    passed = {e["ring"]: e["t"] for e in progress["events"] if e["event"] == "gate-passed"}
    deployed = {e["ring"]: e["t"] for e in progress["events"] if e["event"] == "deployed" and e.get("shadow") is None}
    assert deployed[CONTROL_RING] >= passed["broad"], "the holdback stays on the previous version until the last gate passes"
    assert {r.version for r in hub.reports("detector").values()} == {"1.1.0"}


def test_a_blind_candidate_stops_in_the_canarys_shadow_and_applying_it_again_runs_a_new_attempt(tmp_path):
    rollout, groups, hub, clock, signer = setup(tmp_path, {"1.0.0": GOOD, "1.1.0": BLIND})
    roll(rollout, groups, hub, clock, signer, V1)
    progress, plan = roll(rollout, groups, hub, clock, signer, V2)
    assert progress["status"] == "rolled_back" and progress["report"]["served"] is False
    assert "shadow agreement 33.3% < min 70.0%" in progress["report"]["reasons"][0]
    assert hub.ever_served("detector", "1.1.0") == []
    canary = hub.desired(plan.rings[0].target)
    assert (canary.version, canary.shadow, canary.is_rollback) == ("1.0.0", None, False)
    again = decide(hub, rollout, groups, replace(V2, rollout=""))
    assert again.action == "run" and again.rollout_id.endswith("#2"), "a version only ever shadowed is not burned"


def test_a_stack_deployed_before_the_holdback_reopens_its_rollout_for_the_control_ring_only(tmp_path):
    """What the stack's change does to a local stack already deployed: its succeeded rollout reopens for ring 'control'
    (devices that already run the version, now held back), and nothing else is deployed."""
    rollout, groups, hub, clock, signer = setup(tmp_path, {"1.0.0": GOOD})
    before = RolloutConfig(
        name=rollout.name, model=rollout.model, rings=[r.model_copy(update={"gate": follower_gate(r.gate)}) for r in rollout.rings]
    )
    roll(before, groups, hub, clock, signer, V1)
    decision = decide(hub, rollout, groups, V1)
    assert decision.action == "resume" and decision.appended == (CONTROL_RING,)
    progress = RolloutEngine(hub, clock, rollback_authorizer(signer), poll_seconds=0.5).run(plan_for(rollout.name, decision, V1, signer))
    assert progress["status"] == "succeeded"
    reopened = next(i for i, e in enumerate(progress["events"]) if e["event"] == "reopened")
    after = progress["events"][reopened:]
    assert [e["ring"] for e in after if e["event"] in ("deployed", "already-deployed")] == [CONTROL_RING]


def test_under_pulumi_a_shadow_rings_deployment_sets_the_candidate_beside_the_running_version_never_to_serve(project, monkeypatch):
    """The RingDeployment resource runs before the ring's gate: for a ring that shadows first it must set the version
    the ring runs with the candidate beside it, not the candidate alone."""
    from components.local import providers
    from components.local.fleet import local_devices, register
    from components.local.plan import ring_plans as plans_of
    from edgefleet.config import load_stack
    from edgefleet.model_add import add_version
    from edgefleet.synth import synth
    from edgefleet_agent.contract.state import DesiredModel

    p = project(devices=20, processes=0)
    path = p / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["edgefleet:rollouts"][0]["rings"][0]["gate"].update(shadow_soak_seconds=1, min_agreement=0.7)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.chdir(p)

    def publish(graph: dict) -> tuple[dict, DesiredModel]:
        art_inputs = next(r["inputs"] for r in graph["resources"] if r["name"] == "detector-local-artifact")
        art = providers.ArtifactProvider().create(art_inputs)
        keys = ("model", "version", "sha256", "size", "manifest")
        return art.outs, DesiredModel(**{k: art_inputs[k] for k in keys}, uri=art.outs["uri"], signature=art.outs["signature"])

    cfg, _ = load_stack(p, "local")
    hub = LocalHub(p / cfg.local.hub)
    register(hub, local_devices(cfg))
    _, v1 = publish(synth(p, "local"))
    rollout = cfg.rollouts[0]
    groups = {g.name: g for g in cfg.groups}
    rid = f"detector@1.0.0+{v1.sha256[:12]}"
    v1 = replace(v1, rollout=rid)
    for plan in plans_of(hub, rollout, groups):  # 1.0.0 rolled out and succeeded
        hub.set_desired(plan.target, v1)
    record = {"rollout_id": rid, "rollout": "detector", "model": "detector", "version": "1.0.0", "sha256": v1.sha256}
    record.update(status="succeeded", started_at=1.0, previous_version=None, desired=v1.to_json(), events=[], samples=[])
    record.update(rings=[{"name": r.name, "index": i, "state": "passed"} for i, r in enumerate(rollout.rings)])
    hub.save_progress(rid, record)

    add_version(p / "models" / "detector", SAMPLES / "detector-1.1.0.onnx", "1.1.0", keep_metrics=True)
    graph = synth(p, "local")
    outs, _ = publish(graph)
    props = dict(next(r["inputs"] for r in graph["resources"] if r["name"] == "detector-canary-deployment"))
    props.update(uri=outs["uri"], signature=outs["signature"])
    props.pop("after", None)
    canary = providers.RingDeploymentProvider().create(props).outs["devices"]
    set_to = hub.desired_for_devices(canary, "detector")
    assert {(d.version, d.shadow.version if d.shadow else None, d.is_rollback) for d in set_to.values()} == {("1.0.0", "1.1.0", False)}


SAMPLES = ROOT / "models" / "samples"
