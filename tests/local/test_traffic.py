"""The local fleet's applications: what they send the devices' models (edgefleet:local.traffic), and that gates then
judge predictions on frames of the task, not random tensors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from components.datasets import load_set
from components.local.config import LocalTraffic
from components.local.traffic import Traffic, describe, load_traffic
from components.local.up import up
from edgefleet.config import load_stack
from edgefleet.model_add import add_version, parse_metric
from edgefleet.synth import synth
from edgefleet_agent.contract.errors import ConfigError
from tests.local.conftest import small_stack

ROOT = Path(__file__).resolve().parents[2]
LIVE = "models/datasets/channel-dominance-live.yaml"
SAMPLES = ROOT / "models" / "samples"


def traffic_of(share: float) -> Traffic:
    return Traffic("detector", load_set(ROOT / LIVE), share)


# -- what each device sends ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("share", [0.0, 0.25, 0.3, 1.0])
def test_the_declared_share_of_requests_carries_the_true_label(share):
    t = traffic_of(share)
    sent = [t.request("cam-0007", n) for n in range(1000)]
    labelled = [(inputs, label) for inputs, label in sent if label is not None]
    assert len(labelled) == round(1000 * share)
    by_frame = {t.frame(i).tobytes(): int(t.dataset.labels[i]) for i in range(t.dataset.samples)}
    assert all(by_frame[inputs["image"].tobytes()] == label for inputs, label in labelled), "a label sent with another frame"


def test_a_fleet_that_sent_few_requests_each_still_sends_the_declared_share_of_labels():
    t = traffic_of(0.25)
    firsts = [t.request(f"cam-{i:04d}", n)[1] for i in range(400) for n in range(2)]
    assert 0.2 < sum(label is not None for label in firsts) / len(firsts) < 0.3


def test_requests_are_the_sets_frames_as_the_model_takes_them_and_devices_start_apart():
    t = traffic_of(0.25)
    inputs, _ = t.request("cam-0000", 0)
    assert list(inputs) == ["image"] and inputs["image"].shape == (1, 3, 224, 224) and inputs["image"].dtype == np.float32
    frames = [t.request("cam-0000", n)[0]["image"].tobytes() for n in range(t.dataset.samples)]
    assert len(set(frames)) == t.dataset.samples, "one device's requests cycle through every frame"
    whole = t.dataset.feed(t.dataset.frames)  # as evaluation feeds the set: a frame converted alone is the same input
    assert set(frames) == {whole[i : i + 1].tobytes() for i in range(t.dataset.samples)}
    firsts = {t.request(f"cam-{i:04d}", 0)[0]["image"].tobytes() for i in range(20)}
    assert len(firsts) > 10, "devices should not all send the same frame at the same moment"


# -- what the stack may declare --------------------------------------------------------------------------------------
def stack_with(project: Path, traffic: dict) -> tuple[object, str]:
    doc = small_stack()
    doc["config"]["edgefleet:local"]["traffic"] = traffic
    (project / "stacks" / "Pulumi.local.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_stack(project, "local")


def refusal(project: Path, traffic: dict) -> ConfigError:
    cfg, source = stack_with(project, traffic)
    with pytest.raises(ConfigError) as err:
        load_traffic(cfg, project, ["detector"], source)
    assert err.value.where == source and err.value.fix
    return err.value


def test_traffic_for_a_model_the_fleet_does_not_run_is_refused(project):
    err = refusal(project(), {"detectr": {"dataset": LIVE}})
    assert err.problem.startswith("edgefleet:local.traffic.detectr: the local fleet runs no model 'detectr'")


def test_a_missing_or_altered_traffic_set_is_refused_naming_the_field(project):
    p = project()
    err = refusal(p, {"detector": {"dataset": "models/datasets/nope.yaml"}})
    assert err.problem.startswith("edgefleet:local.traffic.detector.dataset: models/datasets/nope.yaml cannot be read")
    npz = p / "models" / "datasets" / "channel-dominance-live.npz"
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    err = refusal(p, {"detector": {"dataset": LIVE}})
    assert "digest mismatch" in err.problem and "git checkout" in err.fix


def test_a_set_that_cannot_feed_the_model_is_refused_before_any_device_starts(project):
    p = project()
    manifest = p / "models" / "detector" / "model.yaml"
    manifest.write_text(manifest.read_text().replace("- name: image\n", "- name: frame\n", 1))
    err = refusal(p, {"detector": {"dataset": LIVE}})
    assert "cannot feed detector 1.0.0 (models/detector/model.yaml)" in err.problem and "'frame'" in err.problem


def test_labelled_share_is_a_share():
    with pytest.raises(ValueError, match="labelled_share"):
        LocalTraffic(dataset=LIVE, labelled_share=1.5)


def test_up_says_when_devices_send_random_inputs():
    assert "quality gates judge noise" in describe("detector", None)
    t = traffic_of(0.25)
    assert describe("detector", t) == "detector: applications send channel-dominance-live (96 frames, 25% with their label)"


# -- end to end: the gates judge what the models answer on those frames -----------------------------------------
def traffic_stack(project) -> Path:
    # quality gates wait for their samples (60 labelled requests from the early ring's 6 devices): 30 s was too short
    # for that on a loaded 2-core machine, and a good model was rolled back for want of samples
    p = project(devices=40, processes=2, soak=1.0, deadline=90)
    doc = yaml.safe_load((p / "stacks" / "Pulumi.local.yaml").read_text())
    rings = doc["config"]["edgefleet:rollouts"][0]["rings"]
    rings[0]["percent"] = 25  # 10 devices: enough requests for the quality gates within seconds
    rings[0]["gate"] = {**rings[0]["gate"], "shadow_soak_seconds": 1.0, "min_agreement": 0.7, "min_quality_samples": 100}
    rings[1]["gate"] = {**rings[1]["gate"], "min_live_accuracy": 0.75, "min_quality_samples": 60}
    doc["config"]["edgefleet:local"]["traffic"] = {"detector": {"dataset": LIVE, "labelled_share": 0.25}}
    (p / "stacks" / "Pulumi.local.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def rollout(p: Path, fleets: list | None = None):
    [outcome] = up(p, "local", synth(p, "local"), on_fleet=(fleets.append if fleets is not None else None))
    return outcome


@pytest.mark.slow
def test_a_model_that_ignores_its_input_is_stopped_at_the_canary_by_what_it_answers(project):
    """The attack: a valid, fast, finite model that always answers one class, added with a typed-in accuracy of 0.99.
    Health gates pass it; on the task's frames its answers agree with the served model's on about a third of them."""
    p = traffic_stack(project)
    fleets: list = []
    first = rollout(p, fleets)
    assert first.status == "succeeded", first.progress["report"]["reasons"]
    counts = fleets[0].traffic["detector"].counts
    assert counts.sent > 100 and counts.refused == 0
    assert 0.15 < counts.labelled / counts.sent < 0.35, "about a quarter of the requests carry their label"

    add_version(p / "models" / "detector", SAMPLES / "detector-1.1.0.onnx", "1.1.0", metrics=[parse_metric("accuracy=0.95@eval", set())])
    second = rollout(p)
    assert second.status == "succeeded", second.progress.get("report")
    early = next(r for r in second.progress["rings"] if r["name"] == "early")
    assert early["verdict"]["measured"]["quality"]["live_accuracy"] > 0.85, early["verdict"]

    add_version(
        p / "models" / "detector", SAMPLES / "detector-1.3.0-constant.onnx", "1.3.0", metrics=[parse_metric("accuracy=0.99@eval", set())]
    )
    third = rollout(p)
    report = third.progress["report"]
    assert report["failed_ring"] == "canary", report
    assert any("agree" in r for r in report["reasons"]), report["reasons"]
    from components.local.hub import LocalHub

    assert LocalHub(p / ".edgefleet" / "local" / "hub.sqlite").ever_served("detector", "1.3.0") == [], "it was only ever shadowed"
