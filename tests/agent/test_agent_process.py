"""The agent as a real process: SIGKILLed at each stage of a swap, stopped by signal, kept free of Pulumi.

The kill test runs twice per stage: as `python -m agent` against a LocalHub (the fleet's contract), and as a
small driver with a file transport (tests/agent/file_agent.py), so the guarantee rests on the agent's
own store, not on how a particular transport behaves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from agent_testkit import MODEL, REPO, FakeTransport, oip_infer

from components.local.hub import LocalHub
from components.rollout.types import RingTarget
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.core import DeviceAgent
from edgefleet_agent.store import PAUSE_ENV, STAGES

pytestmark = pytest.mark.slow


class Device:
    """One device process and the fleet side it talks to."""

    def __init__(self, tmp_path: Path, key: Path) -> None:
        self.tmp_path, self.key, self.state = tmp_path, key, tmp_path / "state"
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def set_desired(self, desired: DesiredModel) -> None:
        raise NotImplementedError

    def last_report(self) -> DeviceReport | None:
        raise NotImplementedError

    def start(self, name: str, pause_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != PAUSE_ENV}
        if pause_at:
            env[PAUSE_ENV] = pause_at
        self.log = self.tmp_path / f"{name}.log"
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"))

    def wait_for(self, predicate, what: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"agent exited with {self.proc.returncode} before {what}:\n{self.log.read_text()}")
            time.sleep(0.02)
        pytest.fail(f"timed out waiting for {what}:\n{self.log.read_text()}")

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(15)

    def request(self) -> int | None:
        """One request from an application, through the endpoint <state>/endpoint.json names: its HTTP status, or None
        while there is no endpoint yet."""
        try:
            url = json.loads((self.state / "endpoint.json").read_text())["url"]
            return oip_infer(url, MODEL, np.zeros((1, 3, 224, 224), np.float32), timeout=5)[0]
        except (OSError, ValueError, KeyError):
            return None

    def kill_if_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class HubDevice(Device):
    def __init__(self, tmp_path: Path, key: Path) -> None:
        super().__init__(tmp_path, key)
        self.hub = LocalHub(tmp_path / "hub.db")

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "agent",
            "--hub",
            str(self.hub.path),
            "--device-id",
            "dev-1",
            "--model",
            MODEL,
            "--state-dir",
            str(self.state),
            "--public-key",
            str(self.key),
            "--sync-seconds",
            "0.05",
            "--report-seconds",
            "0.05",
        ]

    def set_desired(self, desired: DesiredModel) -> None:
        self.hub.set_desired(RingTarget("detector-rollout", "canary", 0, ["dev-1"]), desired)

    def last_report(self) -> DeviceReport | None:
        return self.hub.reports(MODEL, ["dev-1"]).get("dev-1")


class FileDevice(Device):
    def command(self) -> list[str]:
        return [
            sys.executable,
            str(REPO / "tests" / "agent" / "file_agent.py"),
            str(self.state),
            str(self.key),
            str(self.tmp_path / "desired.json"),
            str(self.tmp_path / "report.json"),
        ]

    def set_desired(self, desired: DesiredModel) -> None:
        (self.tmp_path / "desired.json").write_text(desired.to_json())

    def last_report(self) -> DeviceReport | None:
        path = self.tmp_path / "report.json"
        return DeviceReport.from_json(path.read_text()) if path.exists() else None


@pytest.fixture(params=["hub", "file"])
def device(request, tmp_path, keys, v100, v110):
    """A device whose state directory serves 1.0.0 and whose fleet wants 1.1.0."""
    dev = (HubDevice if request.param == "hub" else FileDevice)(tmp_path, keys.pem_path)
    seed = DeviceAgent("dev-1", MODEL, dev.state, keys.pem, FakeTransport(v100))
    seed.sync()
    assert seed.current_version == "1.0.0"
    seed.close()
    dev.set_desired(v110)
    yield dev
    dev.kill_if_running()


@pytest.mark.parametrize("stage", STAGES)
def test_kill_during_swap_restarts_on_a_verified_model(device, keys, v100, v110, stage):
    device.start("paused", pause_at=stage)
    device.wait_for(lambda: f"paused at {stage}" in device.log.read_text(), f"the agent to reach {stage}")
    assert device.signal(signal.SIGKILL) == -signal.SIGKILL
    expected = v110 if stage == "pointer-renamed" else v100

    recovered = DeviceAgent("dev-1", MODEL, device.state, keys.pem, FakeTransport())
    recovered.start()
    assert (recovered.current_version, recovered.current_sha256, recovered.status) == (expected.version, expected.sha256, "ok")
    assert recovered.build_report().error is None
    assert recovered.infer() is True
    leftovers = [p for p in device.state.rglob("*") if p.name.endswith((".part", ".tmp")) or p.name.startswith(".tmp-")]
    assert leftovers == []
    recovered.close()

    restarted_at = time.time()
    device.start("restarted")

    def served_and_counted() -> DeviceReport | None:
        """An application's request (503 while nothing is loaded yet), then the report of the window that counted it.
        Each report replaces the last every 0.05 s and the next windows are empty, so it is looked for over a few
        report periods after the answer: read once, it was often gone when requests were slow (a loaded machine)."""
        if device.request() not in (200, 503, None):
            return None
        for _ in range(20):
            r = device.last_report()
            if r and r.reported_at >= restarted_at and r.version == "1.1.0" and r.inferences > 0:
                return r
            time.sleep(0.01)
        return None

    report = device.wait_for(served_and_counted, "a report of 1.1.0 in service")
    assert (report.sha256, report.status, report.errors, report.invalid_outputs) == (v110.sha256, "ok", 0, 0)
    assert device.signal(signal.SIGTERM) == 0, device.log.read_text()


def test_sigint_stops_the_agent_cleanly(tmp_path, keys, v110):
    device = HubDevice(tmp_path, keys.pem_path)
    device.set_desired(v110)
    try:
        device.start("agent")
        device.wait_for(lambda: (r := device.last_report()) and r.version == "1.1.0", "1.1.0 in service")
        assert device.signal(signal.SIGINT) == 0, device.log.read_text()
    finally:
        device.kill_if_running()
    assert "SIGINT received, stopping" in device.log.read_text()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_bad_public_key_exits_with_a_clear_error(tmp_path):
    bad = tmp_path / "key.pem"
    bad.write_text("not a key")
    proc = run_cli(
        "--hub",
        str(tmp_path / "hub.db"),
        "--device-id",
        "d",
        "--model",
        MODEL,
        "--state-dir",
        str(tmp_path / "s"),
        "--public-key",
        str(bad),
    )
    assert proc.returncode == 2
    assert f"{bad}: trusted public key: not a PEM public key" in proc.stderr


def test_missing_hub_exits_with_a_clear_error(tmp_path, keys):
    proc = run_cli(
        "--hub",
        str(tmp_path / "nope.db"),
        "--device-id",
        "d",
        "--model",
        MODEL,
        "--state-dir",
        str(tmp_path / "s"),
        "--public-key",
        str(keys.pem_path),
    )
    assert proc.returncode == 2
    assert "no local hub database here" in proc.stderr
    assert not (tmp_path / "nope.db").exists()
