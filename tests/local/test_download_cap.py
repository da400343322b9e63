"""A download cap declared in the stack file (`max_download_bytes_per_second` on a group, overridable per ring) reaches
the desired state of every device it covers on the local hub, through the same graph `edgefleet up` reads; a value that
is not a positive whole number is refused naming the file and the field; a cap where devices would not keep it (AWS:
the Greengrass nucleus downloads) is refused rather than silently ignored."""

from __future__ import annotations

import pytest

from components.local.fleet import local_devices, register
from components.local.hub import LocalHub
from components.local.plan import ring_plans
from components.local.up import declared
from components.rollout.engine import RolloutPlan
from components.rollout.spec import CONTROL_RING
from edgefleet.config import load_stack
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import ConfigError
from tests.foundation.test_unworkable_declarations import stack_copy
from tests.rollout.test_engine import V1, V2

GROUP_CAP, CANARY_CAP = 250_000, 50_000


def capped(c: dict) -> None:
    c["edgefleet:groups"][0]["max_download_bytes_per_second"] = GROUP_CAP
    c["edgefleet:rollouts"][0]["rings"][0]["max_download_bytes_per_second"] = CANARY_CAP


def test_the_stack_files_cap_reaches_each_devices_desired_state_and_the_rings_own_beats_the_groups(tmp_path):
    project = stack_copy(tmp_path, "local", capped)
    cfg, source = load_stack(project, "local")
    graph = synth(project, "local")
    (rollout,) = declared(graph)  # what `edgefleet up` and the ring gates read: the graph's inputs
    assert rollout.groups["cameras"].max_download_bytes_per_second == GROUP_CAP
    assert [r.max_download_bytes_per_second for r in rollout.config.rings] == [CANARY_CAP, None, None]
    hub = LocalHub(tmp_path / "hub")
    register(hub, local_devices(cfg, source))
    plans = ring_plans(hub, rollout.config, rollout.groups)
    plan = RolloutPlan("detector", V2, V1, tuple(plans))
    for ring in plans:
        hub.set_desired(ring.target, plan.ring_desired(ring, None))
    want = {"canary": CANARY_CAP, "early": GROUP_CAP, "broad": GROUP_CAP, CONTROL_RING: GROUP_CAP}
    assert [r.name for r in plans] == list(want)
    for ring in plans:
        per_device = hub.desired_for_devices(list(ring.target.selector), "detector")
        assert len(per_device) == len(ring.target.selector) > 0
        assert {d.max_download_bytes_per_second for d in per_device.values() if d is not None} == {want[ring.name]}, ring.name
    assert sum(len(r.target.selector) for r in plans) == 1000


def test_a_stack_without_a_cap_declares_and_sets_none(tmp_path):
    project = stack_copy(tmp_path, "local", lambda c: None)
    graph = synth(project, "local")
    group = next(r for r in graph["resources"] if r["type"] == "edgefleet:fleet:DeviceGroup")
    ring = next(r for r in graph["resources"] if r["type"] == "edgefleet:rollout:Ring")
    assert "max_download_bytes_per_second" not in group["inputs"] and "max_download_bytes_per_second" not in ring["inputs"]


@pytest.mark.parametrize("bad", [0, -125_000, "1MB", 1.5, True])
@pytest.mark.parametrize(
    "where, put",
    [
        ("groups[0]", lambda c, v: c["edgefleet:groups"][0].update(max_download_bytes_per_second=v)),
        ("rollouts[0].rings[1]", lambda c, v: c["edgefleet:rollouts"][0]["rings"][1].update(max_download_bytes_per_second=v)),
    ],
)
def test_a_cap_that_is_not_a_positive_whole_number_is_refused_naming_the_file_and_field(tmp_path, bad, where, put):
    project = stack_copy(tmp_path, "local", lambda c: put(c, bad))
    with pytest.raises(ConfigError) as err:
        load_stack(project, "local")
    text = str(err.value)
    assert text.startswith(f"stacks/Pulumi.local.yaml: edgefleet:{where}.max_download_bytes_per_second: "), text
    assert f"{bad!r} is not a download cap: give a positive whole number of bytes a second" in text
    assert "or remove the key for no cap" in text


@pytest.mark.parametrize(
    "stack, says",
    [("aws-dev", "on Greengrass the nucleus downloads a component's artifacts itself")],  # Azure keeps it: tests/azure
)
def test_a_cap_where_devices_would_not_keep_it_is_refused(tmp_path, stack, says):
    project = stack_copy(tmp_path, stack, lambda c: c["edgefleet:groups"][0].update(max_download_bytes_per_second=GROUP_CAP))
    with pytest.raises(ConfigError) as err:
        load_stack(project, stack)
    text = str(err.value)
    assert f"stacks/Pulumi.{stack}.yaml: edgefleet:groups[0].max_download_bytes_per_second: a download cap on group" in text
    assert says in text


def test_up_reads_back_every_setting_a_group_or_ring_declares_only_when_set(tmp_path):
    """The graph holds windows, capture and the cap only when declared; `edgefleet up` reads the rollout from the graph,
    so it must read them back, or it would run the rollout without them (windows and capture once were dropped)."""

    def declare(c: dict) -> None:
        capped(c)
        c["edgefleet:groups"][0].update(timezone="Europe/Berlin", maintenance_windows=[{"cron": "0 2 * * *", "minutes": 60}])
        c["edgefleet:rollouts"][0]["rings"][0]["capture"] = {"low_confidence_below": 0.5}
        c["edgefleet:capture"] = {"store": ".edgefleet/local/captures", "retention_days": 30, "purpose": "labelling"}

    project = stack_copy(tmp_path, "local", declare)
    (rollout,) = declared(synth(project, "local"))
    group = rollout.groups["cameras"]
    assert (group.timezone, [w.cron for w in group.maintenance_windows]) == ("Europe/Berlin", ["0 2 * * *"])
    assert group.max_download_bytes_per_second == GROUP_CAP
    canary = rollout.config.rings[0]
    assert canary.capture is not None and canary.capture.low_confidence_below == 0.5
    assert canary.max_download_bytes_per_second == CANARY_CAP
