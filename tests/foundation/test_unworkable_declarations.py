"""Declarations that cannot work are refused before anything is deployed, at load (synth, plan, policy, up) and in policy.

- A second rollout of the same model over the same devices: during `up` it once set the rejected NaN version on every
  device 0.1 s after the canary had refused it.
- A ring that selects no devices: it waited out its deadline, ended rollback_incomplete and "burned" a version no device
  had run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from components.rollout.decide import decide, ever_served
from components.rollout.engine import RingPlan
from components.rollout.membership import selectors_may_overlap
from components.rollout.spec import DeviceGroupConfig, GateConfig
from components.rollout.types import RingTarget
from edgefleet.config import load_stack
from edgefleet_agent.contract.errors import ConfigError
from edgefleet_agent.contract.state import DesiredModel
from policies import rollouts

REPO = Path(__file__).resolve().parents[2]


def stack_copy(tmp_path: Path, name: str, edit) -> Path:
    shutil.copytree(REPO / "stacks", tmp_path / "stacks")
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copy2(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    path = tmp_path / "stacks" / f"Pulumi.{name}.yaml"
    doc = yaml.safe_load(path.read_text())
    edit(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return tmp_path


def test_a_second_rollout_of_the_model_over_the_same_local_devices_is_refused_at_load(tmp_path):
    def second(c):
        c["edgefleet:rollouts"].append(
            {"name": "hotfix", "model": "detector", "rings": [{"name": "all", "group": "cameras", "percent": 100}]}
        )

    p = stack_copy(tmp_path, "local", second)
    with pytest.raises(ConfigError) as err:
        load_stack(p, "local")
    text = str(err.value)
    assert text.startswith(
        "stacks/Pulumi.local.yaml: edgefleet:rollouts[1]: rollouts 'detector' (rollouts[0]) and 'hotfix' both ship model"
    )
    assert "to 1000 of the same devices (cam-0000, cam-0001, cam-0002…)" in text and "make them one rollout" in text


def test_a_local_ring_that_selects_no_device_is_refused_at_load(tmp_path):
    p = stack_copy(tmp_path, "local", lambda c: c["edgefleet:rollouts"][0]["rings"][1].update(labels={"line": "nowhere"}))
    with pytest.raises(ConfigError) as err:
        load_stack(p, "local")
    assert "edgefleet:rollouts[0].rings[1]: ring 'early' of rollout 'detector' selects no device of the local fleet" in str(err.value)


def test_a_second_cloud_rollout_of_the_model_over_the_same_group_is_refused_at_load(tmp_path):
    def second(c):
        c["edgefleet:rollouts"].append(
            {
                "name": "hotfix",
                "model": "detector",
                "rings": [{"name": "canary", "group": c["edgefleet:rollouts"][0]["rings"][0]["group"], "labels": {"ring": "canary"}}],
            }
        )

    p = stack_copy(tmp_path, "aws-dev", second)
    with pytest.raises(ConfigError, match=r"edgefleet:rollouts\[1\]: rollouts 'detector' \(rollouts\[0\]\) and 'hotfix' both ship"):
        load_stack(p, "aws-dev")


groups = st.builds(
    lambda platform, labels, devices: {"platform": platform, "labels": labels, "devices": devices},
    st.sampled_from(["aws", "azure"]),
    st.dictionaries(st.sampled_from(["site", "line", "ring"]), st.sampled_from(["a", "b"]), max_size=2),
    st.lists(st.sampled_from(["d1", "d2", "d3"]), max_size=2, unique=True),
)


@given(a=groups, b=groups)
def test_the_policy_and_the_engine_agree_on_which_groups_can_share_a_device(a, b):
    hw = {"name": "hw", "arch": "amd64", "execution_providers": ["CPUExecutionProvider"], "memory_mb": 1, "storage_mb": 1}
    if not (a["labels"] or a["devices"]) or not (b["labels"] or b["devices"]):
        return  # a group must select something
    ga = DeviceGroupConfig(name="a", hardware=hw, **a)
    gb = DeviceGroupConfig(name="b", hardware=hw, **b)
    assert rollouts.selectors_may_overlap(a, b) == selectors_may_overlap(ga, gb)


def declared(version: str) -> DesiredModel:
    sha = (version.replace(".", "") * 64)[:64]
    return DesiredModel(model="detector", version=version, sha256=sha, size=1, uri="u", manifest="m", signature="s")


def failed_record(version: str, adopted: int) -> dict:
    d = declared(version)
    rid = f"detector@{version}+{d.sha256[:12]}"
    return {
        "rollout_id": rid,
        "rollout": "detector",
        "model": "detector",
        "version": version,
        "sha256": d.sha256,
        "previous_version": None,
        "status": "rollback_incomplete",
        "desired": d.to_json(),
        "samples": [],
        "rings": [{"name": "canary", "index": 0, "state": "failed", "measured": {"adopted": adopted, "devices": 0}}],
        "report": {"failed_ring": "canary", "reasons": ["ring has no devices"]},
    }


def test_a_rejected_version_no_device_ever_ran_is_not_burned_but_one_that_ran_is():
    plans = (RingPlan(RingTarget("detector", "canary", 0, ()), GateConfig()),)
    never = failed_record("1.2.0", adopted=0)
    assert not ever_served(never)
    again = decide("detector", plans, [never], {"canary": None}, declared("1.2.0"))
    assert (again.action, again.rollout_id) == ("run", never["rollout_id"] + "#2")
    ran = failed_record("1.2.0", adopted=5)
    assert decide("detector", plans, [ran], {"canary": None}, declared("1.2.0")).status == "previously-rolled-back"


def test_policy_names_an_empty_ring_and_an_undeclared_cloud_ring_size():
    from policies.graph import Graph
    from policies.settings import Settings

    ro = {"urn": "ro", "type": "edgefleet:rollout:Rollout", "name": "detector", "parent": None, "inputs": {"model": "detector"}}
    ring = {
        "urn": "ring",
        "type": "edgefleet:rollout:Ring",
        "name": "detector-canary",
        "parent": "ro",
        "inputs": {"ring": "canary", "index": 0, "platform": "azure", "group": "cams"},
    }
    g = Graph([ro, ring])
    empty = list(
        rollouts.check_rings_select_devices(g, Settings(ring_devices={"detector": {"canary": 0}}, rollout_devices={"detector": 0}))
    )
    assert [f.message for f in empty] == ["rollout 'detector': ring 'canary' selects no devices"]
    unknown = list(rollouts.check_ring_sizes_declared(g, Settings()))
    assert "ring 'canary' (azure) does not declare how many devices it reaches" in unknown[0].message
    assert not list(rollouts.check_ring_sizes_declared(g, Settings(declared_ring_devices={"azure": {"canary": 5}})))


def test_the_shipped_stacks_declare_nothing_these_checks_refuse():
    for stack in ("local", "aws-dev", "azure-dev", "multi"):
        load_stack(REPO, stack)  # raises ConfigError naming the stack file otherwise
