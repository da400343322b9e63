"""Ring-by-ring promotion with health gates and automatic rollback, resumable after a kill at any point.

For each ring: record the intent, set the ring's desired version (skipped when the hub already has it, so a
resumed run never deploys twice), wait for adoption, soak, and judge the gate. Every transition is saved to
the hub before the next action, so a restarted engine continues from the saved state and no gate is skipped.
A soak counts only watched time: devices report just their latest window, so a ring left unobserved for
longer than `max_unobserved_seconds` (a long kill, a suspended laptop) starts its soak over, and that gap
does not count against the ring's deadline either; a short kill keeps the soak's start time. A ring over a group with
maintenance windows orders each swap only while a window is open (its first deployment, and its serve phase after a
shadow soak), and its deadline pauses while the window is closed and its devices are still to swap: those devices wait
for the next opening, so a closed window is no reason to fail a good ring. Once adopted, a ring soaks on wall-clock
time, window or not: swapped devices keep serving (windows.earliest_schedule plans by the same rules). A succeeded
rollout whose plan gains rings reopens for them. When a gate fails, every ring touched so far is set back
to the last good version under a signed rollback order, the engine waits for devices to report it, and the
rollout ends with a report naming the gate, the devices (failing, and offending by their own metrics) and
the measured values. Later rings never receive the failed version.

A ring whose gate declares `shadow_soak_seconds` first shadows the candidate: its desired state is the version it
ran before (the rollback target) with the candidate as `shadow`, judged on the shadow criteria for the shadow soak;
then it serves the candidate and soaks as any ring. The phase is in the ring's record. A rollout stopped while its
rings only shadowed the candidate never served it: those rings go back to what they ran, without the candidate and
without a rollback order (nothing was served that needs undoing), and the version is not burned (decide.py).
A first rollout (nothing to shadow beside) and a declared rollback (back to a version served before) skip the shadow
phase, and compare with no previous version; the ring's events and verdict say so.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

from components.rollout.gate import evaluate, measure
from components.rollout.hub import Clock, FleetHub
from components.rollout.progress import (
    FAILED,
    TERMINAL,
    Progress,
    RingPhase,
    RingRecord,
    RingState,
    RollbackRecord,
    RolloutStatus,
    as_progress,
    last_good,
    phase_of,
    ring_record,
    rollout_id,
)
from components.rollout.quality import QualityContext, needs_control
from components.rollout.spec import GateConfig
from components.rollout.types import RingTarget
from components.rollout.windows import Windows, open_seconds
from edgefleet_agent.contract.capture import CaptureSpec
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.state import DesiredModel

__all__ = ["FAILED", "TERMINAL", "RingPlan", "RolloutEngine", "RolloutPlan", "last_good", "rollout_id"]

SAMPLE_EVERY = 0.5
PAUSED_SAMPLE_EVERY = 300.0  # while a closed window pauses a ring (for hours, or days): a sample and a save every 5 min
MAX_DUTY = 0.01  # the share of its time the controller spends on its own work while it waits for devices (a poll
# of a 10,000-device ring then waits ~2 s, well inside the bound past which a ring counts as unobserved)
MIN_UNOBSERVED = 10.0  # floor of the default gap bound: a busy 2-core box must not reset soaks


@dataclass(frozen=True)
class RingPlan:
    target: RingTarget
    gate: GateConfig
    control: tuple[RingTarget, ...] = ()  # where devices still on the previous version are: its quality's control group
    capture: CaptureSpec | None = None  # opt-in sample capture on the ring's devices, carried by its desired state
    window: Windows | None = None  # its group's maintenance windows: the ring deploys only while one is open
    download_cap: int | None = None  # bytes a second its devices download at most (its own setting, else its group's)

    @property
    def name(self) -> str:
        return self.target.ring

    def capped(self, desired: DesiredModel | None) -> DesiredModel | None:
        """`desired` as this ring's devices get it: with exactly the ring's download cap (none when it has none, even
        if `desired` was read from another ring), on the candidate it shadows too (a shadow candidate is downloaded as
        well). Every desired state the ring is set to (a phase's, a rollback's) goes through here, so comparing the
        ring's desired state with what it should be never sees a cap-only difference."""
        if desired is None:
            return None
        cap = self.download_cap
        shadow = desired.shadow
        if shadow is not None and shadow.max_download_bytes_per_second != cap:
            shadow = replace(shadow, max_download_bytes_per_second=cap)
        if desired.max_download_bytes_per_second == cap and shadow is desired.shadow:
            return desired
        return replace(desired, max_download_bytes_per_second=cap, shadow=shadow)


@dataclass(frozen=True)
class RolloutPlan:
    rollout: str
    desired: DesiredModel
    previous: DesiredModel | None  # last good version: what a failed rollout goes back to
    rings: tuple[RingPlan, ...]
    attempt_id: str = ""  # a retry or a declared rollback of an artifact records under its own id

    @property
    def rollout_id(self) -> str:
        return self.attempt_id or rollout_id(self.rollout, self.desired)

    @property
    def no_baseline(self) -> str | None:
        """Why this rollout compares with no previous version (None: it does)."""
        if self.previous is None:
            return "a first rollout: no previous version to compare with"
        if self.desired.is_rollback:
            return "a declared rollback returns to a version served before"
        if (self.previous.version, self.previous.sha256) == (self.desired.version, self.desired.sha256):
            return "the previous version is this very artifact"
        return None

    def shadows(self, ring: RingPlan) -> bool:
        return ring.gate.shadow_soak_seconds is not None and self.no_baseline is None

    def shadow_desired(self) -> DesiredModel:
        """A shadow phase's desired state: the last good version, served as before, with the candidate beside it."""
        assert self.previous is not None, "only a rollout with a previous version shadows"
        return replace(
            self.previous, rollout=self.rollout_id, rollback_order=None, rollback_signature=None, shadow=replace(self.desired, shadow=None)
        )

    def phase_desired(self, phase: RingPhase) -> DesiredModel:
        return self.shadow_desired() if phase == RingPhase.SHADOW else self.desired

    def ring_phase_desired(self, ring: RingPlan, phase: RingPhase) -> DesiredModel:
        """A ring's desired state in `phase`: the phase's, with the ring's capture setting and download cap when it
        declares them (a ring with neither gets exactly the phase's desired state)."""
        desired = self.phase_desired(phase)
        desired = desired if ring.capture is None else replace(desired, capture=ring.capture.to_json())
        capped = ring.capped(desired)
        assert capped is not None
        return capped

    def ring_desired(self, ring: RingPlan, record: RingRecord | None) -> DesiredModel:
        """What `ring` is set to in its current phase, or in its first one while its record is still pending: a
        platform that sets rings itself (a Pulumi ring deployment) must never serve a candidate the ring shadows first."""
        if record is None or record["state"] == RingState.PENDING:
            return self.ring_phase_desired(ring, RingPhase.SHADOW if self.shadows(ring) else RingPhase.SERVE)
        return self.ring_phase_desired(ring, phase_of(record))


RollbackAuthorizer = Callable[[DesiredModel, DesiredModel, str], DesiredModel]  # (last good, failed, reason) -> signed rollback


def new_progress(plan: RolloutPlan, now: float) -> Progress:
    return {
        "rollout_id": plan.rollout_id,
        "rollout": plan.rollout,
        "model": plan.desired.model,
        "version": plan.desired.version,
        "sha256": plan.desired.sha256,
        "previous_version": plan.previous.version if plan.previous else None,
        "status": RolloutStatus.RUNNING,
        "started_at": now,
        "finished_at": None,
        "desired": plan.desired.to_json(),
        "rings": [ring_record(r.name, i) for i, r in enumerate(plan.rings)],
        "rollback": None,
        "report": None,
        "events": [],
        "samples": [],
    }


class RolloutEngine:
    def __init__(
        self,
        hub: FleetHub,
        clock: Clock,
        authorize_rollback: RollbackAuthorizer | None = None,
        poll_seconds: float = 0.5,
        on_update: Callable[[Progress], None] | None = None,
        max_unobserved_seconds: float | None = None,
    ) -> None:
        self.hub = hub
        self.clock = clock
        self.authorize_rollback = authorize_rollback
        self.poll_seconds = poll_seconds
        self.max_unobserved = max_unobserved_seconds if max_unobserved_seconds is not None else max(5 * poll_seconds, MIN_UNOBSERVED)
        self.on_update = on_update
        self._last_sample = 0.0

    # -- public ---------------------------------------------------------------------------------------
    def run(self, plan: RolloutPlan, until_ring: int | None = None) -> Progress:
        """Runs the rollout to a terminal state, or until ring `until_ring` has passed its gate (a Pulumi gate
        resource drives one ring at a time), and returns the progress record."""
        progress = self.start(plan)
        busy = 0.0
        while progress["status"] not in TERMINAL:
            if until_ring is not None and progress["rings"][until_ring]["state"] == RingState.PASSED:
                break
            started = time.perf_counter()
            changed = self.step(plan, progress)
            busy += time.perf_counter() - started
            if not changed:
                self.clock.sleep(self.pause_after(busy))
                busy = 0.0
        return progress

    def pause_after(self, busy: float) -> float:
        """The wait before the next poll, after `busy` seconds of the controller's own work since the last wait: at
        least poll_seconds, and long enough that polling takes at most MAX_DUTY of the time, so a ring of 10,000
        devices is polled less often rather than the controller taking a core; never so long that the ring would
        count as unobserved."""
        return min(max(self.poll_seconds, busy * (1 - MAX_DUTY) / MAX_DUTY), max(self.poll_seconds, self.max_unobserved / 3))

    def start(self, plan: RolloutPlan) -> Progress:
        stored = self.hub.load_progress(plan.rollout_id)
        progress = as_progress(stored) if stored is not None else None
        if progress is None:
            progress = new_progress(plan, self.clock.now())
            self._event(progress, None, "started", version=plan.desired.version, previous=progress["previous_version"])
            self._save(plan, progress)
        elif extends(progress, plan):
            added = [r.name for r in plan.rings[len(progress["rings"]) :]]
            for i, ring in enumerate(plan.rings[len(progress["rings"]) :], start=len(progress["rings"])):
                progress["rings"].append(ring_record(ring.name, i))
            progress["status"], progress["finished_at"], progress["report"] = RolloutStatus.RUNNING, None, None
            self._event(
                progress, None, "reopened", rings=added, passed=[r["name"] for r in progress["rings"] if r["state"] == RingState.PASSED]
            )
            self._save(plan, progress)
        elif progress["status"] not in TERMINAL:
            changed = rings_changed(progress, plan, whole=False)  # `edgefleet up` checks the whole plan first
            if changed is not None:
                raise changed
            known = [r["name"] for r in progress["rings"]]
            for i, ring in enumerate(plan.rings[len(known) :], start=len(known)):
                progress["rings"].append(ring_record(ring.name, i))
            # Devices report only their latest window, and whatever ran them may have stopped with this controller
            # (the local fleet does): nothing shows what happened while nobody watched, so a soak starts over.
            interrupted = [r["name"] for r in progress["rings"] if r["state"] == RingState.SOAKING]
            for r in progress["rings"]:
                if r["state"] == RingState.SOAKING:
                    r["state"], r["soak_started"] = RingState.WAITING, None
            self._event(progress, None, "resumed")
            for name in interrupted:
                self._event(
                    progress,
                    name,
                    "soak-reset",
                    reasons=[
                        "the controller restarted mid-soak: what devices did while nobody "
                        "watched is not in their latest reports, so the soak starts over"
                    ],
                )
            self._save(plan, progress)
        return progress

    def step(self, plan: RolloutPlan, progress: Progress) -> bool:
        """Advances by at most one transition. Returns True when something changed (poll again at once)."""
        if progress["status"] == RolloutStatus.RUNNING:
            return self._step_promote(plan, progress)
        if progress["status"] == RolloutStatus.ROLLING_BACK:
            return self._step_rollback(plan, progress)
        return False

    # -- promotion -------------------------------------------------------------------------------------
    def _step_promote(self, plan: RolloutPlan, progress: Progress) -> bool:
        ring_state = next((r for r in progress["rings"] if r["state"] != RingState.PASSED), None)
        if ring_state is None:
            progress["status"] = RolloutStatus.SUCCEEDED
            progress["finished_at"] = self.clock.now()
            progress["report"] = {"outcome": "succeeded", "rings": [r["name"] for r in progress["rings"]]}
            self._event(progress, None, "succeeded")
            self._save(plan, progress)
            return True
        ring = plan.rings[ring_state["index"]]
        now = self.clock.now()
        if ring_state["state"] == RingState.PENDING:
            if ring.window is not None and ring.window.open_until(now) is None:
                return self._wait_for_window(plan, progress, ring_state, ring.window, now)
            ring_state["state"] = RingState.DEPLOYING
            if plan.shadows(ring):
                ring_state["phase"] = RingPhase.SHADOW
            elif ring.gate.shadow_soak_seconds is not None:
                self._event(progress, ring.name, "shadow-skipped", reasons=[f"nothing to shadow beside: {plan.no_baseline}"])
            self._save(plan, progress)  # intent first: a kill after this point resumes into the check below
            return True
        phase = phase_of(ring_state)
        want = plan.ring_phase_desired(ring, phase)
        if ring_state["state"] == RingState.DEPLOYING:
            shadowing = {"shadow": plan.desired.version} if phase == RingPhase.SHADOW else {}
            current = self.hub.desired(ring.target)
            if current != want and ring.window is not None:
                if ring.window.open_until(now) is None:  # a swap (the serve phase's, after a shadow soak) waits too
                    return self._wait_for_window(plan, progress, ring_state, ring.window, now)
                if ring_state["observed_at"] is not None:  # the wait since the shadow phase's last look: deadline paused
                    self._pause_deadline(plan, progress, ring_state, ring.window, ring_state["observed_at"], now)
            if current != want:
                self.hub.set_desired(ring.target, want)
                self._event(progress, ring.name, "deployed", version=want.version, **shadowing)
            else:
                self._event(progress, ring.name, "already-deployed", version=want.version, **shadowing)
            ring_state["state"] = RingState.WAITING
            ring_state["deployed_at"] = ring_state["observed_at"] = now
            ring_state.setdefault("started_at", now)
            self._save(plan, progress)
            return True
        deployed_at = ring_state["deployed_at"]
        assert deployed_at is not None, "a ring past deploying has a deployment time"
        gap = now - (ring_state["observed_at"] or ring_state["soak_started"] or deployed_at)
        if gap > self.max_unobserved:
            return self._unobserved(plan, progress, ring_state, gap, now)
        paused = ring.window is not None and ring_state["state"] == RingState.WAITING
        if ring.window is not None and paused:
            paused = self._pause_deadline(plan, progress, ring_state, ring.window, ring_state["observed_at"] or deployed_at, now)
        every = PAUSED_SAMPLE_EVERY if paused else SAMPLE_EVERY
        obs = self.hub.observe(ring.target, want, since=deployed_at)
        ctx = self._quality_context(plan, ring, phase, since=deployed_at)
        ring_state["observed_at"] = self.clock.now()  # after the calls: a slow platform query is watched time
        started = ring_state.get("started_at", deployed_at) + ring_state["unobserved"] + ring_state.get("window_paused", 0.0)
        verdict = evaluate(ring.gate, obs, started, ring_state["soak_started"], now, ctx)
        ring_state["measured"] = verdict.measured
        self._sample(progress, ring.name, verdict.measured, now, force=verdict.outcome in ("pass", "fail"), every=every)
        if verdict.outcome == "soak" and ring_state["soak_started"] is None:
            ring_state["state"] = RingState.SOAKING
            ring_state["soak_started"] = now
            self._event(progress, ring.name, "soak-started", **_counts(verdict.measured), **_phase(verdict.measured))
            self._save(plan, progress)
            return True
        if verdict.outcome == "wait" and ring_state["soak_started"] is not None:
            ring_state["state"] = RingState.WAITING  # adoption fell back below the bar: the soak starts over
            ring_state["soak_started"] = None
            self._event(progress, ring.name, "soak-reset", reasons=verdict.reasons)
            self._save(plan, progress)
            return True
        if verdict.outcome == "pass" and phase == RingPhase.SHADOW:
            ring_state["shadow_verdict"] = {"outcome": "pass", "reasons": verdict.reasons, "measured": verdict.measured}
            ring_state["phase"] = RingPhase.SERVE  # the next step sets the ring to serve the candidate
            ring_state["state"] = RingState.DEPLOYING
            ring_state["soak_started"] = None
            self._event(progress, ring.name, "shadow-passed", reasons=verdict.reasons, **_counts(verdict.measured))
            self._save(plan, progress)
            return True
        if verdict.outcome == "pass":
            ring_state["state"] = RingState.PASSED
            ring_state["finished_at"] = now
            ring_state["verdict"] = {"outcome": "pass", "reasons": verdict.reasons, "measured": verdict.measured}
            self._event(progress, ring.name, "gate-passed", reasons=verdict.reasons, **_counts(verdict.measured))
            self._save(plan, progress)
            return True
        if verdict.outcome == "fail":
            ring_state["verdict"] = {
                "outcome": "fail",
                "reasons": verdict.reasons,
                "measured": verdict.measured,
                "failures": [list(f) for f in obs.failures],
                "offenders": verdict.offenders,
                "pending": list(obs.pending),
                **({"notes": verdict.notes} if verdict.notes else {}),
            }
            self._event(
                progress, ring.name, "gate-failed", reasons=verdict.reasons, **_counts(verdict.measured), **_phase(verdict.measured)
            )
            self._begin_rollback(plan, progress, ring_state, f"gate of ring {ring.name!r} failed: " + "; ".join(verdict.reasons))
            return True
        self._maybe_save_sample(plan, progress, now, every)
        return False

    def _wait_for_window(self, plan: RolloutPlan, progress: Progress, ring_state: RingRecord, window: Windows, now: float) -> bool:
        """A ring waits, undeployed, until its group's window opens: its deadline has not started. Said once."""
        opens = window.next_open(now)
        if ring_state.get("window_opens_at", -1.0) == opens:
            return False
        ring_state["window_opens_at"] = opens
        self._event(progress, ring_state["name"], "window-wait", opens_at=opens, windows=window.describe())
        self._save(plan, progress)
        return True

    def _pause_deadline(
        self, plan: RolloutPlan, progress: Progress, ring_state: RingRecord, window: Windows, since: float, now: float
    ) -> bool:
        """The ring's deadline does not run while its window is closed and its devices are still to swap (it waits for
        adoption, or to order its serve swap): they may not swap then, and a good ring must not fail for it. Counted
        per step over the time since the last look, so it survives a restart in the ring's record; said once a closure.
        Returns whether the window is closed now (the ring's timeline is then sampled every PAUSED_SAMPLE_EVERY)."""
        closed = max(0.0, now - since - open_seconds(window, since, now))
        if closed <= 0:
            return False
        ring_state["window_paused"] = ring_state.get("window_paused", 0.0) + closed
        opens = window.next_open(now)
        if ring_state["state"] == RingState.WAITING and ring_state.get("paused_until", -1.0) != opens:
            ring_state["paused_until"] = opens
            self._event(
                progress,
                ring_state["name"],
                "deadline-paused",
                opens_at=opens,
                reasons=["its window closed with devices still to swap: they wait for the next opening, and so does its deadline"],
                **_counts(ring_state["measured"] or {}),
            )
            self._save(plan, progress)
        return opens != now

    def _quality_context(self, plan: RolloutPlan, ring: RingPlan, phase: RingPhase, since: float) -> QualityContext:
        """What the ring's quality is compared with: in the serve phase of a rollout with a previous version, the
        devices of `ring.control` still on it, observed over the same window."""
        shadowed = plan.shadows(ring)
        if phase == RingPhase.SHADOW or not ring.gate.quality:
            return QualityContext(phase=phase, shadowed=shadowed)
        if plan.no_baseline is not None:
            return QualityContext(phase=phase, no_baseline=plan.no_baseline, shadowed=shadowed)
        control = None
        if ring.control and plan.previous is not None and (needs_control(ring.gate, shadowed) or ring.gate.max_latency_ratio is not None):
            control = self.hub.summarize(ring.control, plan.previous, since)
        per_build = getattr(self.hub, "summarize_variants", None)  # optional: hubs that see which build each device runs
        variant_controls = tuple(per_build(ring.control, plan.previous, since).items()) if control is not None and per_build else ()
        return QualityContext(phase=phase, control=control, shadowed=shadowed, variant_controls=variant_controls)

    def _begin_rollback(self, plan: RolloutPlan, progress: Progress, ring_state: RingRecord, reason: str) -> None:
        """Every ring touched so far goes back to the last good version, under a rollback order signed for `reason`;
        a ring that only shadowed the version goes back to what it ran, without the candidate and with no order."""
        now = self.clock.now()
        touched = [r for r in progress["rings"] if r["state"] != RingState.PENDING]  # an aborted ring may not be deployed yet
        shadow_only = [r["name"] for r in touched if phase_of(r) == RingPhase.SHADOW]
        ring_state["state"] = RingState.FAILED
        ring_state["finished_at"] = now
        rollback_to = self._rollback_desired(plan, reason) if len(shadow_only) < len(touched) else None
        progress["status"] = RolloutStatus.ROLLING_BACK
        to_version = plan.previous.version if plan.previous else None
        rb: RollbackRecord = {
            "started_at": now,
            "rings": [r["name"] for r in touched],
            "to_version": to_version,
            "reason": reason,
            "desired": rollback_to.to_json() if rollback_to else None,
            "set": [],
            "confirmed": {},
        }
        if shadow_only:
            rb["shadow_rings"] = shadow_only
            rb["shadow_desired"] = plan.previous.to_json() if plan.previous else None
        progress["rollback"] = rb
        self._event(
            progress,
            None,
            "rollback-started",
            rings=[r["name"] for r in touched],
            to_version=to_version,
            **({"shadow_only": shadow_only} if shadow_only else {}),
        )
        self._save(plan, progress)

    def abort(self, plan: RolloutPlan, reason: str) -> Progress:
        """An operator stops a rollout in flight: the rings it touched go back to the last good version, exactly as
        after a failed gate, and the rollout ends rolled back. The way out of a rollout nobody wants to finish."""
        progress = self.start(plan)
        if progress["status"] == RolloutStatus.RUNNING:
            ring_state = next((r for r in progress["rings"] if r["state"] != RingState.PASSED), progress["rings"][-1])
            why = f"aborted by the operator: {reason}"
            ring_state["verdict"] = {
                "outcome": "aborted",
                "reasons": [why],
                "measured": ring_state.get("measured"),
                "failures": [],
                "offenders": [],
                "pending": [],
            }
            self._event(progress, ring_state["name"], "aborted", reasons=[why])
            self._begin_rollback(plan, progress, ring_state, why)
        elif progress["status"] != RolloutStatus.ROLLING_BACK:
            raise EdgefleetError(f"rollout {plan.rollout_id}", f"is {progress['status']}: there is nothing in flight to abort")
        return self.run(plan)

    def _unobserved(self, plan: RolloutPlan, progress: Progress, ring_state: RingRecord, gap: float, now: float) -> bool:
        """Nobody watched the ring for `gap` seconds: breaches then are invisible now, so that time is not soak
        time (the soak starts over) and not deadline time (the ring's deadline moves out by the gap)."""
        ring_state["unobserved"] = round(ring_state["unobserved"] + gap, 3)
        ring_state["observed_at"] = now
        why = f"ring not observed for {gap:.1f}s (bound {self.max_unobserved:.1f}s); devices report only their latest window"
        if ring_state["soak_started"] is not None:
            ring_state["state"] = RingState.WAITING
            ring_state["soak_started"] = None
            self._event(progress, ring_state["name"], "soak-reset", reasons=[why + ", so the soak starts over"], unobserved=round(gap, 3))
        else:
            self._event(
                progress,
                ring_state["name"],
                "observation-gap",
                reasons=[why + ", so the deadline moves out by it"],
                unobserved=round(gap, 3),
            )
        self._save(plan, progress)
        return True

    # -- rollback --------------------------------------------------------------------------------------
    def _rollback_desired(self, plan: RolloutPlan, reason: str) -> DesiredModel | None:
        if plan.previous is None:
            return None
        if self.authorize_rollback is None:
            raise RuntimeError("rollback needs a signer for the rollback order, and none was given")
        return self.authorize_rollback(replace(plan.previous, rollout=plan.rollout_id), plan.desired, reason)

    def _step_rollback(self, plan: RolloutPlan, progress: Progress) -> bool:
        rb = progress["rollback"]
        assert rb is not None, "a rollout rolling back has a rollback record"
        now = self.clock.now()
        by_name = {r.name: r for r in plan.rings}
        served_target = DesiredModel.from_json(rb["desired"])
        shadow_target = DesiredModel.from_json(rb.get("shadow_desired"))

        def target_of(name: str) -> DesiredModel | None:
            return shadow_target if name in rb.get("shadow_rings", ()) else served_target

        for name in rb["rings"]:
            if name not in rb["set"]:
                ring = by_name[name]
                current = self.hub.desired(ring.target)
                target_desired = ring.capped(target_of(name))  # a rollback's download keeps to the ring's cap too
                if not _same_version(current, target_desired):
                    self.hub.set_desired(ring.target, target_desired)
                rb["set"].append(name)
                self._event(progress, name, "rolled-back-set", version=rb["to_version"])
                self._save(plan, progress)
                return True
        gap = now - (rb.get("observed_at") or rb["started_at"])
        if gap > self.max_unobserved:
            # as for a ring's deadline: time nobody watched (a killed controller) must not time the rollback out
            rb["unobserved"] = round(rb.get("unobserved", 0.0) + gap, 3)
            rb["observed_at"] = now
            self._event(
                progress,
                None,
                "observation-gap",
                unobserved=round(gap, 3),
                reasons=[f"rollback not observed for {gap:.1f}s (bound {self.max_unobserved:.1f}s), so its deadline moves out by it"],
            )
            self._save(plan, progress)
            return True
        pending = False
        for name in rb["rings"]:
            if name in rb["confirmed"]:
                continue
            ring = by_name[name]
            obs = self.hub.observe(ring.target, target_of(name), since=rb["started_at"])
            still_bad = self.hub.observe(ring.target, plan.desired, since=rb["started_at"]).adopted
            rb["observed_at"] = self.clock.now()
            m = measure(obs)
            confirmed = still_bad == 0 and m["reporting"] and m["adopted"] >= m["reporting"] * ring.gate.success_share
            self._sample(progress, name, m, now, force=bool(confirmed))
            if confirmed:
                rb["confirmed"][name] = True
                silent = m["devices"] - m["reporting"]
                if silent:
                    rb.setdefault("silent", {})[name] = silent  # offline throughout: they get the restored version on reconnect
                self._event(progress, name, "rollback-confirmed", silent=silent, **_counts(m))
                self._save(plan, progress)
                return True
            if now - rb["started_at"] - rb.get("unobserved", 0.0) > ring.gate.deadline_seconds:
                rb["confirmed"][name] = False
                rb.setdefault("unconfirmed", {})[name] = {
                    "pending": list(obs.pending),
                    "failures": [list(f) for f in obs.failures],
                    **_counts(m),
                }
                self._event(progress, name, "rollback-timeout", **_counts(m))
                self._save(plan, progress)
                return True
            pending = True
        if pending:
            self._maybe_save_sample(plan, progress, now)
            return False
        failed_ring = next(r for r in progress["rings"] if r["state"] == RingState.FAILED)
        failed_verdict = failed_ring["verdict"] or {}
        complete = all(rb["confirmed"].get(n) for n in rb["rings"])
        progress["status"] = RolloutStatus.ROLLED_BACK if complete else RolloutStatus.ROLLBACK_INCOMPLETE
        progress["finished_at"] = now
        shadowed = {
            "served": any(n not in rb.get("shadow_rings", ()) for n in rb["rings"]),
            "shadow_rings": rb.get("shadow_rings", []),
        }
        progress["report"] = {
            "outcome": progress["status"],
            "failed_ring": failed_ring["name"],
            "reasons": failed_verdict["reasons"],
            "measured": failed_verdict["measured"],
            "failures": failed_verdict["failures"],
            "offenders": failed_verdict.get("offenders", []),
            "rolled_back_rings": rb["rings"],
            "rolled_back_to": rb["to_version"],
            "never_deployed": [r["name"] for r in progress["rings"] if r["state"] == RingState.PENDING],
            "silent_devices": rb.get("silent", {}),
            "unconfirmed": rb.get("unconfirmed", {}),
            **(shadowed if rb.get("shadow_rings") else {}),
            **({"notes": failed_verdict["notes"]} if failed_verdict.get("notes") else {}),
        }
        self._event(progress, None, progress["status"], to_version=rb["to_version"])
        self._save(plan, progress)
        return True

    # -- bookkeeping -----------------------------------------------------------------------------------
    def _event(self, progress: Progress, ring: str | None, event: str, **details: Any) -> None:
        progress["events"].append({"t": self.clock.now(), "ring": ring, "event": event, **details})

    def _sample(
        self, progress: Progress, ring: str, m: Mapping[str, Any], now: float, force: bool = False, every: float = SAMPLE_EVERY
    ) -> None:
        """Thinned to one per `every` per ring, except at a verdict (`force`): the timeline must show what the
        gate saw when it decided, even when that came moments after the last sample."""
        samples = progress["samples"]
        last = samples[-1] if samples and samples[-1]["ring"] == ring else None
        if last is not None and now - last["t"] < every and not force:
            return
        if last is not None and last["t"] == now:
            samples.pop()
        samples.append(
            {"t": now, "ring": ring, "adopted": m["adopted"], "failed": m["failed"], "pending": m["pending"], "devices": m["devices"]}
        )

    def _maybe_save_sample(self, plan: RolloutPlan, progress: Progress, now: float, every: float = SAMPLE_EVERY) -> None:
        if now - self._last_sample >= every:
            self._save(plan, progress)

    def _save(self, plan: RolloutPlan, progress: Progress) -> None:
        self._last_sample = self.clock.now()
        self.hub.save_progress(plan.rollout_id, json.loads(json.dumps(progress)))  # a copy, JSON as every hub stores it
        if self.on_update is not None:
            self.on_update(progress)


class RingsChanged(EdgefleetError):
    """The stack's rings no longer match those of a rollout in flight; the caller names its stack file."""


def rings_changed(progress: Progress, plan: RolloutPlan, whole: bool = True) -> RingsChanged | None:
    """Rings may be appended to a rollout in flight, never removed, renamed or reordered: its record, its rollback
    and the devices it reached are all keyed by them. `whole=False` is for a plan that is a prefix by design: a
    Pulumi gate resource knows the rings up to its own, and an earlier one may run again after later ones."""
    known = [r["name"] for r in progress["rings"]]
    planned = [r.name for r in plan.rings]
    if planned[: len(known)] == known or (not whole and known[: len(planned)] == planned):
        return None
    return RingsChanged(
        f"edgefleet:rollouts ({plan.rollout})",
        f"rollout {plan.rollout_id} is in flight with rings {known}, and the stack now plans {planned}; "
        "rings cannot be removed, renamed or reordered while a rollout is in flight",
        f"restore the rings {known} (more may follow them) until it finishes, then change them",
    )


def passed_ring(progress: Progress, ring: str) -> RingRecord:
    """The record of ring `ring`, whose gate passed. A gate resource reports only what the engine judged: a ring
    missing from the record (added in the middle of a finished rollout) or not passed is an error, never a pass."""
    record = next((r for r in progress["rings"] if r.get("name") == ring), None)
    if record is None or record.get("state") != RingState.PASSED:
        raise RuntimeError(
            f"rollout {progress['rollout_id']} ({progress['status']}) did not pass ring {ring!r}: its record has rings "
            f"{[(r.get('name'), r.get('state')) for r in progress['rings']]}; rings can be appended to a finished "
            "rollout, not inserted: declare a new model version to take every ring through its gate"
        )
    return record


def extends(progress: Progress, plan: RolloutPlan) -> bool:
    """A succeeded rollout whose plan has since gained rings after the recorded ones: it reopens to take the
    new rings through their gates. Failed and rolled-back rollouts stay final; a changed ring order never reopens."""
    known = [r["name"] for r in progress["rings"]]
    planned = [r.name for r in plan.rings]
    return progress["status"] == RolloutStatus.SUCCEEDED and len(planned) > len(known) and planned[: len(known)] == known


def _same_version(a: DesiredModel | None, b: DesiredModel | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.version, a.sha256, a.is_rollback, _shadowed(a)) == (b.version, b.sha256, b.is_rollback, _shadowed(b))


def _shadowed(d: DesiredModel) -> tuple[str, str] | None:
    return (d.shadow.version, d.shadow.sha256) if d.shadow is not None else None


def _phase(m: Mapping[str, Any]) -> dict[str, Any]:
    return {"phase": m["phase"]} if "phase" in m else {}


def _counts(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("devices", "adopted", "failed", "pending") if k in m}
