"""Maintenance windows and application deferral on Greengrass: forward ring deployments go out with componentUpdatePolicy
NOTIFY_COMPONENTS and the group's windows merged into the model component's configuration; the agent component answers
the nucleus's PreComponentUpdateEvent with DeferComponentUpdate (Greengrass IPC) while the window is closed or an
application holds a swap back. Rollback and removal deployments skip the notification: nothing on the device can hold
them back.

The IPC client is a stand-in with the keyword signatures of awsiot.greengrasscoreipc.clientv2.GreengrassCoreIPCClientV2
(awsiotsdk) and events shaped like its model.ComponentUpdatePolicyEvents; the model component's Startup is the
generated script run with sh, as in test_agent_greengrass_handoff.py. No nucleus here: that it sleeps recheckAfterMs
and asks again, and goes ahead on recheckAfterMs 0, is the nucleus's contract (UpdateSystemPolicyService), not tested.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from agent_testkit import MODEL, Clock, artifact_bytes

from components.aws.hub import AwsHub, RingSite
from components.aws.plan import RingComponents, RingJobPolicy, components_spec
from components.aws.recipes import IPC_SOCKET_ENV, agent_recipe, model_recipe
from components.rollout.types import RingTarget
from edgefleet_agent.contract.greengrass import DEFER_RECHECK_MAX_SECONDS, WINDOWS_KEY
from edgefleet_agent.contract.manifest import parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.contract.windows import MaintenanceWindow, Windows
from edgefleet_agent.core import MAX_DEFER_SECONDS
from edgefleet_agent.transports.greengrass import GreengrassSupervisor, HandoffTransport, UpdateDeferrer, window_hold

AGENT_C = "edgefleet.aws-dev.Agent"
NIGHTLY = Windows("Europe/Berlin", (MaintenanceWindow(cron="0 2 * * *", minutes=120),))  # 01:00-03:00 UTC in December
CLOSED = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc).timestamp()
OPENS = datetime(2026, 12, 5, 1, 0, tzinfo=timezone.utc).timestamp()
OPEN = OPENS + 30 * 60


# -- Greengrass IPC, faked with the SDK's surface ---------------------------------------------------------------------
class FakeIPC:
    """GreengrassCoreIPCClientV2 as UpdateDeferrer uses it: subscribe_to_component_updates(*, stream_handler=None,
    on_stream_event=None, on_stream_error=None, on_stream_closed=None) -> (response, operation), and
    defer_component_update(*, deployment_id=None, message=None, recheck_after_ms=None) -> DeferComponentUpdateResponse."""

    def __init__(self) -> None:
        self.subscriptions: list[dict] = []
        self.deferrals: list[dict] = []

    def subscribe_to_component_updates(self, *, stream_handler=None, on_stream_event=None, on_stream_error=None, on_stream_closed=None):
        self.subscriptions.append(
            {"on_stream_event": on_stream_event, "on_stream_error": on_stream_error, "on_stream_closed": on_stream_closed}
        )
        return SimpleNamespace(), SimpleNamespace()

    def defer_component_update(self, *, deployment_id=None, message=None, recheck_after_ms=None):
        self.deferrals.append({"deployment_id": deployment_id, "message": message, "recheck_after_ms": recheck_after_ms})
        return SimpleNamespace()

    # the nucleus's side
    def pre_update(self, deployment_id: str) -> dict:
        """A PreComponentUpdateEvent on the stream; returns the DeferComponentUpdate the component answered with."""
        event = SimpleNamespace(
            pre_update_event=SimpleNamespace(deployment_id=deployment_id, is_ggc_restarting=False), post_update_event=None
        )
        before = len(self.deferrals)
        self.subscriptions[-1]["on_stream_event"](event)
        assert len(self.deferrals) == before + 1, "every PreComponentUpdateEvent is answered"
        return self.deferrals[-1]


def test_the_fake_has_the_sdks_keyword_signatures():
    """The request shapes the agent sends are the SDK's: keyword-only deployment_id, message, recheck_after_ms."""
    try:
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2 as Real
    except ImportError:  # awsiotsdk is the [greengrass] extra's, not installed here: the SDK's signatures, pinned
        real = {
            "defer_component_update": ["deployment_id", "message", "recheck_after_ms"],
            "subscribe_to_component_updates": ["stream_handler", "on_stream_event", "on_stream_error", "on_stream_closed"],
        }
    else:
        real = {
            n: [p for p in inspect.signature(getattr(Real, n)).parameters if p != "self"]
            for n in ("defer_component_update", "subscribe_to_component_updates")
        }
    for name, params in real.items():
        fake = inspect.signature(getattr(FakeIPC, name)).parameters
        assert [p for p in fake if p != "self"] == params
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in fake.items() if n != "self")


# -- the device: the model component hands the windows over, the agent answers the nucleus ----------------------------
def startup(desired: DesiredModel, work: Path, artifacts: Path, windows: Windows | None) -> subprocess.Popen:
    """The model component's Startup for the ring deployment of `desired`, with the group's windows merged."""
    manifest = parse_manifest_bytes(desired.manifest.encode(), "test")
    component = f"edgefleet.aws-dev.{desired.model}.Model"
    recipe = model_recipe(component, manifest, desired.manifest, desired.signature, f"s3://b/{desired.sha256}.onnx", AGENT_C, "0.4.0")
    config = dict(recipe["ComponentConfiguration"]["DefaultConfiguration"])
    ring = RingComponents(component, AGENT_C, "0.4.0", "detector-rollout", "canary", windows.to_document() if windows else "")
    config.update(json.loads(components_spec(ring, desired.version, "rid")[component]["configurationUpdate"]["merge"]))
    lifecycle = recipe["Manifests"][0]["Lifecycle"]
    env = {"PATH": "/usr/bin:/bin"} | {
        var: str(config[v.removeprefix("{configuration:/").rstrip("}")]) for var, v in lifecycle["Setenv"].items()
    }
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / f"{desired.sha256}.onnx").write_bytes(artifact_bytes(desired))
    script = lifecycle["Startup"]["Script"].replace(f"{{{AGENT_C}:work:path}}", str(work)).replace("{artifacts:path}", str(artifacts))
    return subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def device(tmp_path, keys):
    """A Greengrass device's agent (supervisor stepped by the test) with the IPC stand-in."""
    ipc, clock = FakeIPC(), Clock()
    made: list[GreengrassSupervisor] = []

    def make() -> tuple[GreengrassSupervisor, FakeIPC, Clock]:
        sup = GreengrassSupervisor(
            HandoffTransport(tmp_path / "work", ""),
            "thing-1",
            tmp_path / "work",
            keys.pem,
            threaded=False,
            deferrer=lambda hold: UpdateDeferrer(ipc, hold, clock),
        )
        made.append(sup)
        return sup, ipc, clock

    yield make
    for sup in made:
        sup.close()


def deploy(sup: GreengrassSupervisor, desired: DesiredModel, work: Path, artifacts: Path, windows: Windows | None) -> None:
    proc = startup(desired, work, artifacts, windows)
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        assert time.monotonic() < deadline
        sup.step()
        time.sleep(0.05)
    out, err = proc.communicate()
    assert proc.returncode == 0 and "installed and verified" in out, err


def test_the_model_component_hands_the_groups_windows_to_the_agent(device, tmp_path, v100):
    sup, ipc, _ = device()
    deploy(sup, v100, tmp_path / "work", tmp_path / "a1", NIGHTLY)
    handoff = sup.transport.handoff(MODEL)
    assert handoff is not None and Windows.from_document(handoff.windows) == NIGHTLY
    assert handoff.desired.windows is None, "on Greengrass the nucleus holds the deployment; the verdict never waits"
    assert len(ipc.subscriptions) == 1, "subscribed once, at the first step"


def test_outside_the_window_a_forward_deployment_is_deferred_with_the_reason_and_inside_it_goes(device, tmp_path, v100):
    sup, ipc, clock = device()
    deploy(sup, v100, tmp_path / "work", tmp_path / "a1", NIGHTLY)
    clock.now = CLOSED
    answer = ipc.pre_update("dep-1.1.0")
    assert answer["deployment_id"] == "dep-1.1.0"
    assert answer["recheck_after_ms"] == int(DEFER_RECHECK_MAX_SECONDS * 1000), "asked again within the hour, not in 15 h"
    assert (
        "outside the maintenance window (0 2 * * * for 120 min (Europe/Berlin)): the next opens 2026-12-05 01:00 UTC" in answer["message"]
    )
    assert sup.deferrer is not None and "outside the maintenance window" in (sup.deferrer.pending_reason or "")
    clock.now = OPENS - 600
    assert ipc.pre_update("dep-1.1.0")["recheck_after_ms"] == 600_000, "the last recheck lands when the window opens"
    clock.now = OPEN
    answer = ipc.pre_update("dep-1.1.0")
    assert answer == {"deployment_id": "dep-1.1.0", "message": "edgefleet-agent: ready", "recheck_after_ms": 0}
    assert sup.deferrer.pending_reason is None


def test_an_application_deferral_holds_a_deployment_at_most_max_defer_seconds(device, tmp_path, v100):
    """Attack: an application asks again and again to keep the device off the new version."""
    sup, ipc, clock = device()
    deploy(sup, v100, tmp_path / "work", tmp_path / "a1", None)
    agent = sup.agents[MODEL].agent
    agent.clock = clock
    clock.now = OPEN
    first = clock.now
    agent.defer(120)
    answer = ipc.pre_update("dep-2")
    assert answer["recheck_after_ms"] == 120_000 and "deferred by an application until" in answer["message"]
    while True:
        agent.defer(86400)
        answer = ipc.pre_update("dep-2")
        if answer["recheck_after_ms"] == 0:
            break
        clock.now += answer["recheck_after_ms"] / 1000
        assert clock.now - first <= MAX_DEFER_SECONDS
    assert clock.now - first <= MAX_DEFER_SECONDS


def test_a_device_serving_nothing_lets_its_first_deployment_through_and_post_update_events_need_no_answer(device):
    sup, ipc, clock = device()
    sup.step()
    clock.now = CLOSED
    assert ipc.pre_update("first")["recheck_after_ms"] == 0
    ipc.subscriptions[-1]["on_stream_event"](
        SimpleNamespace(pre_update_event=None, post_update_event=SimpleNamespace(deployment_id="first"))
    )
    assert len(ipc.deferrals) == 1


def test_a_closed_stream_is_subscribed_again(device):
    sup, ipc, _ = device()
    sup.step()
    ipc.subscriptions[-1]["on_stream_closed"]()
    sup.step()
    assert len(ipc.subscriptions) == 2


def test_windows_the_agent_cannot_read_hold_the_deployment_and_every_window_set_must_be_open():
    held = window_hold(['{"timezone":"UTC","windows":[{"cron":"nightly","minutes":60}]}'], CLOSED)
    assert held is not None and held.seconds == DEFER_RECHECK_MAX_SECONDS and "maintenance windows refused" in held.reason
    assert window_hold([NIGHTLY.to_document()], OPEN) is None
    other = Windows("UTC", (MaintenanceWindow(cron="0 12 * * *", minutes=60),))
    held = window_hold([NIGHTLY.to_document(), other.to_document()], OPEN)
    assert held is not None and "0 12 * * *" in held.reason


# -- the controller: what the deployments ask of the device -----------------------------------------------------------
POLICY = RingJobPolicy(devices=5, max_per_minute=5, abort_percent=0.01, abort_min_executed=1, timeout_minutes=30)


def hub(windows: dict[str, str]) -> AwsHub:
    return AwsHub(
        region="eu-west-1",
        stack="aws-dev",
        bucket="b",
        metric_namespace="Edgefleet/Agent",
        rollout="detector",
        model=MODEL,
        model_component="edgefleet.aws-dev.detector.Model",
        agent_component=AGENT_C,
        agent_version="0.4.0",
        sites={"canary": RingSite("arn:aws:iot:eu-west-1:123456789012:thinggroup/c", POLICY)},
        clients=object(),
        windows=windows,
    )


def test_forward_deployments_notify_and_carry_the_windows_rollbacks_and_removals_skip_the_notification(publisher, v100, v110):
    target = RingTarget("detector", "canary", 0, "arn:aws:iot:eu-west-1:123456789012:thinggroup/c")
    h = hub({"canary": NIGHTLY.to_document()})
    forward = h.deployment_request(target, v110)
    assert forward["deploymentPolicies"]["componentUpdatePolicy"]["action"] == "NOTIFY_COMPONENTS"
    merge = json.loads(forward["components"]["edgefleet.aws-dev.detector.Model"]["configurationUpdate"]["merge"])
    assert merge[WINDOWS_KEY] == NIGHTLY.to_document()
    rollback = h.deployment_request(target, publisher.rollback(v100, v110))
    assert rollback["deploymentPolicies"]["componentUpdatePolicy"]["action"] == "SKIP_NOTIFY_COMPONENTS"
    assert h.deployment_request(target, None)["deploymentPolicies"]["componentUpdatePolicy"]["action"] == "SKIP_NOTIFY_COMPONENTS"
    plain = json.loads(
        hub({}).deployment_request(target, v110)["components"]["edgefleet.aws-dev.detector.Model"]["configurationUpdate"]["merge"]
    )
    assert WINDOWS_KEY not in plain, "a group without windows deploys exactly as before"


def test_the_recipes_give_the_agent_ipc_and_the_model_component_a_windows_default(v100):
    run = agent_recipe(AGENT_C, "0.4.0", "img", "Edgefleet/Agent", "pem")["Manifests"][0]["Lifecycle"]["Run"]["Script"]
    assert "-e SVCUID" in run and f"-e {IPC_SOCKET_ENV}" in run and f'-v "${IPC_SOCKET_ENV}:${IPC_SOCKET_ENV}"' in run
    manifest = parse_manifest_bytes(v100.manifest.encode(), "test")
    recipe = model_recipe("c", manifest, v100.manifest, v100.signature, "s3://b/x.onnx", AGENT_C, "0.4.0")
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"][WINDOWS_KEY] == "", "Setenv interpolates a key that exists"


# -- what `edgefleet status` sees: the status shadow's `deferred` -------------------------------------------------------
class Shadows:
    """iot-data's UpdateThingShadow as StatusShadow calls it: each payload sent, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict] = []

    def update_thing_shadow(self, *, thingName: str, shadowName: str, payload: bytes) -> object:
        self.sent.append(json.loads(payload)["state"]["reported"])
        return {}


def test_a_held_deployment_shows_in_the_status_shadow_with_its_reason_written_once_and_cleared_when_it_goes(tmp_path, keys, v100):
    ipc, clock, shadows = FakeIPC(), Clock(), Shadows()
    sup = GreengrassSupervisor(
        HandoffTransport(tmp_path / "work", "", shadow_client=shadows),
        "thing-1",
        tmp_path / "work",
        keys.pem,
        threaded=False,
        deferrer=lambda hold: UpdateDeferrer(ipc, hold, clock),
    )
    try:
        deploy(sup, v100, tmp_path / "work", tmp_path / "a1", NIGHTLY)
        sup.agents[MODEL].agent.report()
        assert shadows.sent[-1]["version"] == "1.0.0" and shadows.sent[-1]["deferred"] is None
        clock.now = CLOSED
        ipc.pre_update("dep-1.1.0")
        for _ in range(3):
            sup.step()
        window = "outside the maintenance window (0 2 * * * for 120 min (Europe/Berlin))"
        assert [s["deferred"] for s in shadows.sent] == [None, window], "written once when the reason changes, not every step"
        assert shadows.sent[-1]["version"] == "1.0.0", "the rest of the state is the last report's"
        ipc.pre_update("dep-1.1.0")
        sup.agents[MODEL].agent.report()
        assert len(shadows.sent) == 2, "asked again for the same reason: nothing new to write"

        clock.now = OPEN
        ipc.pre_update("dep-1.1.0")
        sup.step()
        assert shadows.sent[-1]["deferred"] is None and len(shadows.sent) == 3, "let go: null, which the shadow drops"

        agent = sup.agents[MODEL].agent
        agent.clock = clock
        agent.defer(120)
        ipc.pre_update("dep-2")
        sup.step()
        assert shadows.sent[-1]["deferred"] == "deferred by an application", "no time in it: held devices group by it"
        ipc.subscriptions[-1]["on_stream_event"](
            SimpleNamespace(pre_update_event=None, post_update_event=SimpleNamespace(deployment_id="dep-2"))
        )
        sup.step()
        assert shadows.sent[-1]["deferred"] is None, "applied: nothing waits"
    finally:
        sup.close()
