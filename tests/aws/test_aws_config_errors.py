"""A broken aws-dev stack file fails before anything is declared, naming the stack file and the key."""

from __future__ import annotations

import pytest
from aws_testkit import project_copy

import edgefleet.synth as synth_module
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import ConfigError

STACK_FILE = "stacks/Pulumi.aws-dev.yaml"


def _rings(config):
    return config["edgefleet:rollouts"][0]["rings"]


CASES = {
    "unknown region": (lambda c: c["edgefleet:aws"].update(region="mars-east-1"), "edgefleet:aws.region", "mars-east-1"),
    "ring with no devices": (
        lambda c: c["edgefleet:aws"]["rings"]["canary"].update(devices=0),
        "edgefleet:aws.rings.canary.devices",
        "greater than or equal to 1",
    ),
    "ring missing its device count": (
        lambda c: c["edgefleet:aws"]["rings"].pop("early"),
        "edgefleet:aws.rings",
        "no entry for ring 'early'",
    ),
    "ring that selects nothing": (lambda c: _rings(c)[0].pop("labels"), "edgefleet:rollouts[0].rings[1]", "selects no devices"),
    "ring label against its group": (
        lambda c: _rings(c)[1].update(labels={"site": "plant-b"}),
        "edgefleet:rollouts[0].rings[1].labels",
        "selects no devices",
    ),
    "ring whose group an earlier ring's group already covers": (
        lambda c: (
            c["edgefleet:groups"].append({**c["edgefleet:groups"][0], "name": "gpu-cams", "labels": {"site": "plant-a", "hw": "gpu"}}),
            _rings(c)[0].pop("labels"),
            _rings(c)[1].update(group="gpu-cams", labels={"hw": "gpu"}),
        ),
        "edgefleet:rollouts[0].rings[1]",
        "selects no devices",
    ),
    "success share above 1": (
        lambda c: _rings(c)[0]["gate"].update(success_share=1.5),
        "edgefleet:rollouts[0].rings[0].gate.success_share",
        "less than or equal to 1",
    ),
    "abort threshold above 100%": (
        lambda c: c["edgefleet:aws"]["rings"]["early"].update(abort_failure_percent=150),
        "edgefleet:aws.rings.early.abort_failure_percent",
        "150",
    ),
    "abort threshold of 0%": (
        lambda c: c["edgefleet:aws"]["rings"]["early"].update(abort_failure_percent=0),
        "edgefleet:aws.rings.early.abort_failure_percent",
        "greater than 0",
    ),
    "job timeout beyond 7 days": (
        lambda c: c["edgefleet:aws"]["rings"]["broad"].update(timeout_minutes=20000),
        "edgefleet:aws.rings.broad.timeout_minutes",
        "10080",
    ),
    "abort that can never trigger": (
        lambda c: c["edgefleet:aws"]["rings"]["canary"].update(abort_min_executed=9),
        "edgefleet:aws.rings.canary.abort_min_executed",
        "exceeds the ring's 5 devices",
    ),
    "percent ring on AWS": (lambda c: _rings(c)[0].update(percent=5), "edgefleet:rollouts[0].rings[0].percent", "only the local platform"),
    "control holdback on AWS": (
        lambda c: c["edgefleet:rollouts"][0].update(control_holdback=0.05),
        "edgefleet:rollouts[0].control_holdback",
        "only the local platform keeps",
    ),
    "shadow phase on AWS": (
        lambda c: _rings(c)[0]["gate"].update(shadow_soak_seconds=600, min_agreement=0.8),
        "edgefleet:rollouts[0].rings[0].gate.shadow_soak_seconds",
        "serves the candidate itself",
    ),
    "a last ring that compares with nobody": (
        lambda c: _rings(c)[2]["gate"].update(max_distribution_shift=0.1),
        "edgefleet:rollouts[0]",
        "declare control_holdback",
    ),
    "agreement without a shadow phase": (
        lambda c: _rings(c)[0]["gate"].update(min_agreement=0.8),
        "edgefleet:rollouts[0].rings[0].gate",
        "set shadow_soak_seconds too",
    ),
    "model targets match no hardware": (
        lambda c: c["edgefleet:groups"][0]["hardware"].update(arch="armv7"),
        "edgefleet:rollouts[0].model",
        "match no hardware",
    ),
    "policy for a ring that does not exist": (
        lambda c: c["edgefleet:aws"]["rings"].update(canray={"devices": 1}),
        "edgefleet:aws.rings.canray",
        "no AWS ring is named 'canray'",
    ),
    "rollout spanning two platforms": (
        lambda c: (
            c.update({"edgefleet:platforms": ["aws", "local"], "edgefleet:local": {"devices": [{"count": 3}]}}),
            c["edgefleet:groups"][0].update(platform="aws"),
            c["edgefleet:groups"].append(
                {"name": "lab", "platform": "local", "labels": {"site": "lab"}, "hardware": c["edgefleet:groups"][0]["hardware"]}
            ),
            _rings(c)[2].update(group="lab"),
        ),
        "edgefleet:rollouts[0].rings[2].group",
        "mixes AWS rings with rings on local",
    ),
    "labels and device ids in one group": (
        lambda c: c["edgefleet:groups"][0].update(devices=["cam-1"]),
        "edgefleet:groups[0]",
        "both labels and devices",
    ),
    "device id that is no thing name": (
        lambda c: (c["edgefleet:groups"][0].pop("labels"), c["edgefleet:groups"][0].update(devices=["cam 1"])),
        "edgefleet:groups[0].devices",
        "not IoT thing names: 'cam 1'",
    ),
    "device id listed twice": (
        lambda c: (c["edgefleet:groups"][0].pop("labels"), c["edgefleet:groups"][0].update(devices=["cam-1", "cam-1"])),
        "edgefleet:groups[0].devices",
        "listed more than once: 'cam-1'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_fails_before_anything_is_declared(tmp_path, monkeypatch, case):
    edit, key, detail = CASES[case]
    project = project_copy(tmp_path, edit)
    monitors = []
    real = synth_module._monitor_and_mocks

    def recording(*args, **kwargs):
        monitor, mocks = real(*args, **kwargs)
        monitors.append(monitor)
        return monitor, mocks

    monkeypatch.setattr(synth_module, "_monitor_and_mocks", recording)
    with pytest.raises(ConfigError) as err:
        synth(project, "aws-dev")
    message = str(err.value)
    assert message.startswith(STACK_FILE), message
    assert key in message and detail in message, message
    assert err.value.fix, "every config error says how to fix it"
    assert all(not m.records for m in monitors), "nothing may be declared from a broken stack file"


def test_the_unedited_copy_synthesises(tmp_path):
    """The harness itself: an untouched copy of the project is a valid stack (so the cases above fail for their edit)."""
    graph = synth(project_copy(tmp_path), "aws-dev")
    assert len(graph["resources"]) > 40
