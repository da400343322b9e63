"""`edgefleet samples pull` end to end on the local capture store: a ring that captures, its desired state as the
engine sets it, a device agent serving real requests in-process, and the pull that gathers the samples for labelling."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.local.captures import store_root
from components.local.signer import LocalKeySigner
from components.local.store import publish
from components.rollout.engine import RingPlan, RolloutPlan
from components.rollout.types import RingTarget
from edgefleet.config import load_stack
from edgefleet_agent.capture import LocalCaptureSink
from edgefleet_agent.contract.capture import CaptureRecord
from edgefleet_agent.core import DeviceAgent

ROOT = Path(__file__).resolve().parents[2]
DESTINATION = {"store": ".edgefleet/local/captures", "retention_days": 30, "purpose": "labelling and retraining of detector"}


class OneDesired:
    def __init__(self, desired) -> None:
        self.desired_model = desired
        self.reports: list = []

    def desired(self, device_id: str, model: str):
        return self.desired_model

    def report(self, report) -> None:
        self.reports.append(report)


def capturing_stack(project, capture: dict | None = None, destination: dict | None = DESTINATION) -> Path:
    root = project()
    path = root / "stacks" / "Pulumi.local.yaml"
    doc = yaml.safe_load(path.read_text())
    if capture is not None:
        doc["config"]["edgefleet:rollouts"][0]["rings"][0]["capture"] = capture
    if destination is not None:
        doc["config"]["edgefleet:capture"] = destination
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return root


def serve_requests(root: Path, devices: list[str], requests: int) -> list:
    """Each device serves `requests` real requests on the canary's desired state, as the engine would set it."""
    cfg, _ = load_stack(root, "local")
    ring = cfg.rollouts[0].rings[0]
    published = publish(
        root / cfg.local.store,
        (root / "models" / "detector" / "model.yaml").read_text(),
        root / "models" / "detector" / "detector.onnx",
        LocalKeySigner(root / cfg.signing.key_file),
        "models/detector/model.yaml",
    )
    declared = published.desired("detector")
    plan_ring = RingPlan(
        RingTarget("detector", ring.name, 0, tuple(devices)), ring.gate, capture=ring.capture.spec() if ring.capture else None
    )
    desired = RolloutPlan("detector", declared, None, (plan_ring,)).ring_desired(plan_ring, None)
    pem = LocalKeySigner(root / cfg.signing.key_file).public_key_pem()
    captures = store_root(cfg, root)
    rng = np.random.default_rng(7)
    reports = []
    for device in devices:
        sink = LocalCaptureSink(captures, "detector", device) if captures is not None else None
        agent = DeviceAgent(
            device, "detector", root / ".edgefleet" / "local" / "devices" / device, pem, OneDesired(desired), capture_sink=sink
        )
        try:
            agent.sync()
            for _ in range(requests):
                agent.predict({"image": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)})
            reports.append(agent.build_report())
        finally:
            agent.close()
    return reports


@pytest.fixture
def run_cli(capfd, monkeypatch):
    from edgefleet.cli import main

    def run(*args, cwd: Path):
        monkeypatch.chdir(cwd)
        capfd.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capfd.readouterr()
        return code, " ".join(out.out.split()), " ".join(out.err.split())

    return run


def test_samples_captured_on_devices_are_pulled_with_an_index_for_labelling(project, run_cli, tmp_path):
    root = capturing_stack(project, {"low_confidence_below": 1.0, "min_seconds_between": 0, "max_per_device_per_day": 3})
    reports = serve_requests(root, ["cam-0001", "cam-0002"], requests=5)
    assert [r.captured for r in reports] == [3, 3], "the per-day cap bounds each device"
    out = tmp_path / "labelling"
    code, stdout, err = run_cli("samples", "pull", "--stack", "local", "--model", "detector", "--out", out, cwd=root)
    assert code == 0, err
    assert "pulled 6 new sample(s)" in stdout
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {line["device"] for line in lines} == {"cam-0001", "cam-0002"}
    assert all(line["reason"] == "low-confidence" and line["model"] == "detector" for line in lines)
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and all(row["label"] == "" for row in rows)
    for row in rows:
        with np.load(out / row["npz"], allow_pickle=False) as data:
            assert data["input/image"].shape == (1, 3, 224, 224) and data["output/scores"].shape == (1, 3)
    # A second pull copies nothing new and keeps the index whole.
    code, stdout, _ = run_cli("samples", "pull", "--stack", "local", "--model", "detector", "--out", out, cwd=root)
    assert code == 0 and "pulled 0 new sample(s) of detector (6 already there)" in stdout


def test_since_filters_by_capture_time(project, run_cli, tmp_path):
    root = capturing_stack(project, {"low_confidence_below": 1.0, "min_seconds_between": 0, "max_per_device_per_day": 2})
    serve_requests(root, ["cam-0001"], requests=2)
    code, stdout, _ = run_cli("samples", "pull", "-s", "local", "-m", "detector", "-o", tmp_path / "o", "--since", "2999-01-01", cwd=root)
    assert code == 0 and "nothing captured" in stdout


def test_nothing_captured_exits_0_with_a_message(project, run_cli, tmp_path):
    root = capturing_stack(project, capture=None)  # a destination, but no ring captures
    reports = serve_requests(root, ["cam-0001"], requests=3)
    assert reports[0].captured == 0
    code, stdout, _ = run_cli("samples", "pull", "--stack", "local", "--model", "detector", "--out", tmp_path / "o", cwd=root)
    assert code == 0 and "nothing captured for detector" in stdout


def test_without_a_declared_destination_devices_capture_nothing_and_pull_says_why(project, run_cli, tmp_path):
    root = capturing_stack(project, {"low_confidence_below": 1.0, "min_seconds_between": 0}, destination=None)
    assert serve_requests(root, ["cam-0001"], requests=3)[0].captured == 0
    assert not (root / ".edgefleet" / "local" / "captures").exists()
    code, _, err = run_cli("samples", "pull", "--stack", "local", "--model", "detector", cwd=root)
    assert code == 1 and "declares no capture destination" in err


def test_unknown_stack_or_model_is_a_clear_error(project, run_cli):
    root = capturing_stack(project, {"low_confidence_below": 0.5})
    code, _, err = run_cli("samples", "pull", "--stack", "nope", "--model", "detector", cwd=root)
    assert code == 1 and "nope" in err and "Traceback" not in err
    code, _, err = run_cli("samples", "pull", "--stack", "local", "--model", "classifier", cwd=root)
    assert code == 1 and "rolls out no model named 'classifier'" in err and "use one of: detector" in err


def test_a_cloud_store_is_not_read_from_here(project, run_cli):
    root = project()
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.aws-dev.yaml").read_text())
    doc["config"]["edgefleet:capture"] = {**DESTINATION, "store": "s3://captures-bucket/fleet"}
    (root / "stacks" / "Pulumi.aws-dev.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    code, _, err = run_cli("samples", "pull", "--stack", "aws-dev", "--model", "detector", cwd=root)
    assert code == 1 and "does not read from here" in err and "s3://captures-bucket/fleet/detector/<device>/" in err


def test_an_unreadable_store_exits_5(project, run_cli, tmp_path, monkeypatch):
    root = capturing_stack(project, {"low_confidence_below": 1.0, "min_seconds_between": 0})
    serve_requests(root, ["cam-0001"], requests=1)
    store = root / ".edgefleet" / "local" / "captures"
    real = Path.iterdir

    def denied(self):  # chmod 0 does not stop root, who runs these tests in some containers
        if self.is_relative_to(store / "detector"):
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", denied)
    code, _, err = run_cli("samples", "pull", "--stack", "local", "--model", "detector", "--out", tmp_path / "o", cwd=root)
    assert code == 5 and "cannot read the capture store" in err and "Permission denied" in err


def test_a_record_claiming_another_devices_identity_is_not_pulled(project, run_cli, tmp_path):
    """Attack: a device writes a record under its own prefix that claims to be another device's sample (to poison that
    device's labels). Refused: pull takes the device from the prefix, and skips a record that disagrees, saying so."""
    root = capturing_stack(project, {"low_confidence_below": 1.0, "min_seconds_between": 0, "max_per_device_per_day": 1})
    serve_requests(root, ["cam-0001"], requests=1)
    [rec_path] = (root / ".edgefleet" / "local" / "captures" / "detector" / "cam-0001").rglob("*.json")
    body = json.loads(rec_path.read_text())
    body["device"] = "cam-0002"
    rec_path.write_text(json.dumps(body))
    code, stdout, _ = run_cli("samples", "pull", "--stack", "local", "--model", "detector", "--out", tmp_path / "o", cwd=root)
    assert code == 0 and "skipped" in stdout and "sits under detector/cam-0001" in stdout
    assert not list((tmp_path / "o").rglob("*.npz"))
    assert CaptureRecord.from_json(rec_path.read_text()).device == "cam-0002"
