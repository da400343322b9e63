"""A bad Azure stack fails before anything is declared, naming the stack file and the key, with a fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pulumi
import pytest
import yaml

from edgefleet.synth import synth
from edgefleet_agent.contract.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path) -> Path:
    shutil.copy(REPO / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    shutil.copytree(REPO / "models", tmp_path / "models")
    shutil.copytree(REPO / "stacks", tmp_path / "stacks")
    return tmp_path


def edit(project: Path, change) -> None:
    path = project / "stacks" / "Pulumi.azure-dev.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc["config"])
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.fixture
def registrations(monkeypatch) -> list[str]:
    """Every resource the program tries to declare."""
    seen: list[str] = []
    original = pulumi.Resource.__init__

    def record(self, t, name, *args, **kwargs):
        if t != "pulumi:pulumi:Stack":  # the runtime's root, registered before the program runs
            seen.append(f"{t}::{name}")
        return original(self, t, name, *args, **kwargs)

    monkeypatch.setattr(pulumi.Resource, "__init__", record)
    return seen


CASES = [
    (
        lambda c: c["edgefleet:rollouts"][0]["rings"][0]["gate"].update(deadline_seconds=120, soak_seconds=60),
        "edgefleet:rollouts[0].rings[0].gate.deadline_seconds",
        "at least 600",
    ),
    (lambda c: c["edgefleet:azure"].update(location="West Europe"), "edgefleet:azure.location", "westeurope"),
    (lambda c: c["edgefleet:azure"].pop("device_sas_expiry"), "edgefleet:azure.device_sas_expiry", "required"),
    (lambda c: c["edgefleet:azure"].update(device_sas_expiry="2027-02-30"), "edgefleet:azure.device_sas_expiry", "calendar date"),
    (lambda c: c["edgefleet:azure"].update(device_sas_expiry="2020-01-01"), "edgefleet:azure.device_sas_expiry", "is in the past"),
    (
        lambda c: c["edgefleet:groups"][0]["labels"].update({"hw-rev": "b"}),
        "edgefleet:groups[0].labels.hw-rev",
        "letters, digits and underscores",
    ),
    (
        lambda c: c["edgefleet:rollouts"][0]["rings"][1].update(labels={"ring": "canary"}),
        "edgefleet:rollouts[0].rings[1].labels",
        "already took",
    ),
    (lambda c: c["edgefleet:rollouts"][0]["rings"][0].update(percent=5), "edgefleet:rollouts[0].rings[0].percent", "twin tag"),
    (
        lambda c: c["edgefleet:rollouts"][0]["rings"][0]["gate"].update(shadow_soak_seconds=600, min_agreement=0.8),
        "edgefleet:rollouts[0].rings[0].gate.shadow_soak_seconds",
        "serves the candidate itself",
    ),
    (lambda c: c["edgefleet:rollouts"][0].update(control_holdback=0.05), "edgefleet:rollouts[0].control_holdback", "only the local"),
    (lambda c: c.pop("edgefleet:azure"), "edgefleet:azure", "edgefleet:azure"),
]


@pytest.mark.parametrize("change,key,fix", CASES, ids=[c[1] for c in CASES])
def test_bad_config_names_the_stack_file_and_key_and_declares_nothing(project, registrations, change, key, fix):
    edit(project, change)
    with pytest.raises(ConfigError) as e:
        synth(project, "azure-dev")
    text = str(e.value)
    assert "stacks/Pulumi.azure-dev.yaml" in text and key in text and fix in text, text
    assert registrations == [], registrations


def test_the_unchanged_copy_synthesizes(project):
    graph = synth(project, "azure-dev")
    assert any(r["type"] == "pulumi-python:dynamic/edgefleet-azure:RingGate" for r in graph["resources"])


def test_an_expired_device_sas_is_refused_and_a_close_one_left_to_the_advisory_policy():
    """Refusing a SAS that is merely close would block the urgent fix or rollback that has to ship now."""
    import datetime

    from components.azure.checks import MIN_SAS_DAYS, sas_expiry_problems

    today = datetime.date(2026, 11, 25)
    assert sas_expiry_problems("2026-11-26", today) == []  # tomorrow: the policy warns
    ((key, problem, fix),) = sas_expiry_problems("2026-11-25", today)
    assert key == "azure.device_sas_expiry" and "is today" in problem
    assert f"at least {MIN_SAS_DAYS} days ahead (on or after 2026-12-25)" in fix
    ((_, problem, _),) = sas_expiry_problems("2020-01-01", today)
    assert "in the past" in problem and "already-expired" in problem


def test_a_manifest_the_vendor_schema_refuses_stops_the_stack_before_anything_is_declared(project, registrations, monkeypatch):
    from components.azure import manifest as mf

    spec = mf.AgentModule.spec
    monkeypatch.setattr(mf.AgentModule, "spec", lambda self, schema: {**spec(self, schema), "restartPolicy": "sometimes"})
    with pytest.raises(ConfigError) as e:
        synth(project, "azure-dev")
    text = str(e.value)
    assert "stacks/Pulumi.azure-dev.yaml" in text and "edgefleet:groups[0]" in text
    assert "azure-iot-edgeagent-deployment-1.1.json" in text
    assert "$['$edgeAgent']['properties.desired']['modules']['edgefleet-agent']['restartPolicy']" in text
    assert "fix:" in text and "edge_agent_schema" in text
    assert registrations == [], registrations


def test_a_model_manifest_over_4_kb_is_deployed_in_chunks(project):
    from components.azure import manifest as mf

    path = project / "models" / "detector" / "model.yaml"
    path.write_text(path.read_text() + "# " + "notes " * 1200 + "\n")
    graph = synth(project, "azure-dev")
    twins = [
        r["inputs"]["content"]["modulesContent"][mf.AGENT_MODULE]
        for r in graph["resources"]
        if r["type"].endswith("edgefleet-azure:Configuration")
    ]
    layers = [t["properties.desired.models.detector"] for t in twins if "properties.desired.models.detector" in t]
    assert len(layers) == 3
    for model in layers:
        assert model["manifestChunks"] == 2 and len(model["manifest"].encode()) == mf.TWIN_STRING_LIMIT
        assert mf.desired_from_agent(model).manifest.encode() == path.read_bytes()


def test_a_model_manifest_too_long_for_the_agent_twin_stops_the_stack(project, registrations):
    path = project / "models" / "detector" / "model.yaml"
    path.write_text(path.read_text() + "# " + "notes " * 5600 + "\n")  # over the twin's 32 KB of desired properties
    with pytest.raises(ConfigError) as e:
        synth(project, "azure-dev")
    text = str(e.value)
    assert "stacks/Pulumi.azure-dev.yaml" in text and "edgefleet:rollouts[0].rings[0]" in text
    assert "a module twin holds at most 32768" in text and f"the {path.stat().st_size}-byte model.yaml of detector" in text
    assert "shorten the largest model.yaml" in text
    assert registrations == [], registrations


def test_a_stack_whose_group_has_maintenance_windows_synthesizes_with_them_in_layers_and_gates(project):
    """The contract check once refused the layers' `maintenanceWindows`, so no Azure stack could declare windows."""
    import json

    from components.azure import manifest as mf
    from components.rollout.windows import Windows

    window = {"cron": "0 2 * * *", "minutes": 120}
    edit(project, lambda c: c["edgefleet:groups"][0].update(timezone="Europe/Berlin", maintenance_windows=[window]))
    graph = synth(project, "azure-dev")
    layers = [
        r["inputs"]["content"]["modulesContent"][mf.AGENT_MODULE]["properties.desired.models.detector"]
        for r in graph["resources"]
        if r["type"].endswith("edgefleet-azure:Configuration")
        and "properties.desired.models.detector" in r["inputs"]["content"]["modulesContent"].get(mf.AGENT_MODULE, {})
    ]
    gates = [r["inputs"] for r in graph["resources"] if r["type"].endswith("edgefleet-azure:RingGate")]
    assert layers and gates
    for doc in [m["maintenanceWindows"] for m in layers] + [s["windows"] for g in gates for s in g["ring_specs"]]:
        assert json.loads(doc)["windows"] == [window] and Windows.from_document(doc) is not None
