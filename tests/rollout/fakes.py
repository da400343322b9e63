"""A scripted fleet on a fake clock: devices react to desired state the way the behaviours say.

Reports are computed from each device's history at observation time and classified with the same
`observe_reports` the local hub uses, so the engine is tested against the real observation logic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from components.rollout.observe import control_summaries, control_summary, observe_reports
from components.rollout.quality import Summary
from components.rollout.types import RingObservation, RingTarget
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import Labelled, Latency, Predictions, Shadow

N = 100  # requests per report window
BALANCED = {"0": 34, "1": 33, "2": 33}


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Behaviour:
    adopt_after: float = 1.0  # seconds from desired change (or reconnect) to running it
    online_at: float = 0.0  # offline until this clock time
    refuse: dict[str, str] = field(default_factory=dict)  # version -> reason the device refuses it
    invalid: dict[str, float] = field(default_factory=dict)  # version -> share of outputs that are NaN
    errors: dict[str, float] = field(default_factory=dict)  # version -> error rate
    p99: dict[str, float] = field(default_factory=dict)  # version -> p99 latency ms (default 5)
    # what the applications' traffic shows (contract/telemetry.py), per window of N requests
    classes: dict[str, dict[str, int]] = field(default_factory=dict)  # version -> top-1 class counts (default BALANCED)
    confidence: dict[str, float] = field(default_factory=dict)  # version -> every request's top-1 confidence (default 0.85)
    p50: dict[str, float] = field(default_factory=dict)  # version -> every request's latency ms (default 2)
    agree: dict[str, float] = field(default_factory=dict)  # candidate version -> share of shadowed requests agreeing (default 0.9)
    accuracy: dict[str, float] = field(default_factory=dict)  # version -> share of labelled requests answered right
    shadow_invalid: dict[str, float] = field(default_factory=dict)  # candidate version -> share of shadowed answers NaN
    traffic: bool = True  # False: no application sends requests (reports carry no telemetry)


def desired(version: str, sha: str | None = None) -> DesiredModel:
    sha = sha or (version.replace(".", "") * 64)[:64]
    return DesiredModel(
        model="detector",
        version=version,
        sha256=sha,
        size=100,
        uri=f"file:///store/{sha}.onnx",
        manifest=f"version: {version}",
        signature="sig",
    )


class FakeHub:
    """Implements FleetHub over scripted devices. Records every mutating call for assertions."""

    def __init__(self, clock: FakeClock, behaviours: dict[str, Behaviour], running: DesiredModel | None = None) -> None:
        self.clock = clock
        self.behaviours = behaviours
        self.ring_desired: dict[tuple[str, str], DesiredModel | None] = {}
        self.history: dict[str, list[tuple[float, DesiredModel | None]]] = {d: [(-1e9, running)] for d in behaviours}
        self.progress: dict[str, dict] = {}
        self.calls: list[tuple] = []

    # FleetHub
    def desired(self, target: RingTarget) -> DesiredModel | None:
        return self.ring_desired.get((target.rollout, target.ring))

    def set_desired(self, target: RingTarget, d: DesiredModel | None) -> None:
        self.calls.append(("set_desired", target.ring, d.version if d else None, d.is_rollback if d else False, self.clock.now()))
        self.ring_desired[(target.rollout, target.ring)] = d
        for dev in target.selector:
            self.history[dev].append((self.clock.now(), d))

    def observe(self, target: RingTarget, d: DesiredModel | None, since: float) -> RingObservation:
        reports = {dev: r for dev in target.selector if (r := self.report(dev)) is not None}
        return observe_reports(list(target.selector), reports, d, since)

    def summarize(self, targets: tuple[RingTarget, ...], d: DesiredModel, since: float) -> Summary:
        devices = [dev for t in targets for dev in t.selector]
        reports = {dev: r for dev in devices if (r := self.report(dev)) is not None}
        return control_summary(devices, reports, d, since)

    def summarize_variants(self, targets: tuple[RingTarget, ...], d: DesiredModel, since: float) -> dict[str, Summary]:
        devices = [dev for t in targets for dev in t.selector]
        return control_summaries(devices, {dev: r for dev in devices if (r := self.report(dev)) is not None}, d, since)

    def load_progress(self, rollout_id: str) -> dict | None:
        p = self.progress.get(rollout_id)
        return copy.deepcopy(p) if p else None

    def save_progress(self, rollout_id: str, progress: dict) -> None:
        self.calls.append(("save_progress", progress["status"], self.clock.now()))
        self.progress[rollout_id] = copy.deepcopy(progress)

    # the scripted devices
    def running(self, dev: str) -> tuple[DesiredModel | None, str | None, str | None]:
        """(model served, refused version, refusal reason) at the current time."""
        b = self.behaviours[dev]
        now = self.clock.now()
        serving, refused, reason = None, None, None
        for set_at, d in self.history[dev]:
            effective = max(set_at, b.online_at) + (b.adopt_after if set_at > -1e8 else 0)
            if effective > now:
                break
            if d is not None and d.version in b.refuse:
                refused, reason = d.version, b.refuse[d.version]
                continue
            if d is not None and d.shadow is not None and d.shadow.version in b.refuse:
                serving, refused, reason = d, d.shadow.version, b.refuse[d.shadow.version]  # serves, cannot load the candidate
                continue
            serving, refused, reason = d, None, None
        return serving, refused, reason

    def report(self, dev: str) -> DeviceReport | None:
        b = self.behaviours[dev]
        now = self.clock.now()
        if now < b.online_at:
            return None
        serving, refused, reason = self.running(dev)
        v = serving.version if serving else None
        n = N
        shadow_refused = serving is not None and serving.shadow is not None and refused == serving.shadow.version
        return DeviceReport(
            device_id=dev,
            model="detector",
            version=v,
            sha256=serving.sha256 if serving else None,
            status="failed" if refused and not shadow_refused else ("ok" if serving else "idle"),
            error=reason,
            failed_version=refused,
            inferences=n if serving else 0,
            errors=int(n * b.errors.get(v, 0)),
            invalid_outputs=int(n * b.invalid.get(v, 0)),
            p99_latency_ms=b.p99.get(v, 5.0) if serving else None,
            agent_version="0.1.0",
            reported_at=now,
            **(self.telemetry(b, serving, shadow_refused) if serving and b.traffic else {}),
        )

    @staticmethod
    def telemetry(b: Behaviour, serving: DesiredModel, shadow_refused: bool) -> dict:
        v = serving.version

        def window(version: str) -> tuple[Predictions, Latency]:
            preds = Predictions("classes", "scores")
            for cls, count in b.classes.get(version, BALANCED).items():
                for _ in range(count):
                    preds.add_class(int(cls), b.confidence.get(version, 0.85))
            lat = Latency()
            for _ in range(N):
                lat.add(b.p50.get(version, 2.0))
            return preds, lat

        preds, lat = window(v)
        out: dict = {"predictions": preds.to_json(), "latency": lat.to_json(), "p50_latency_ms": lat.quantile(0.5)}
        if v in b.accuracy:
            out["labelled"] = Labelled(N, round(N * b.accuracy[v])).to_json()
        cand = serving.shadow
        if cand is not None and not shadow_refused:
            cpreds, clat = window(cand.version)
            invalid = round(N * b.shadow_invalid.get(cand.version, 0.0))
            compared = N - invalid
            out["shadow"] = Shadow(
                cand.version, cand.sha256, compared, round(compared * b.agree.get(cand.version, 0.9)), 0, invalid, clat, lat, cpreds
            ).to_json()
        return out
