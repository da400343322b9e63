"""A ring's gate verdict from one observation. Pure: same inputs, same verdict.

Order of judgement: failures first (a bad canary must stop at once, not after its soak), then the
deadline, then adoption, then the soak. Offline devices are pending, never failures, until the deadline.
Quality criteria (components/rollout/quality.py) are failures too once they have their samples; a ring whose
soak is done but whose quality criteria are still short of samples keeps soaking, and fails at its deadline.
A ring that shadows first is judged in two phases: the shadow phase soaks `shadow_soak_seconds` on the shadow
criteria, the serve phase `soak_seconds` on the others (`QualityContext.phase`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from components.rollout.quality import QualityContext, judge, quality_offenders
from components.rollout.spec import GateConfig
from components.rollout.types import Measured, RingObservation, Verdict


def measure(obs: RingObservation) -> Measured:
    n = max(obs.devices, 1)
    inf = obs.inferences
    return {
        "devices": obs.devices,
        "adopted": obs.adopted,
        "failed": obs.failed,
        "pending": obs.pending_count,
        "reporting": obs.reporting,
        "adopted_share": round(obs.adopted / n, 4),
        "failure_share": round(obs.failed / n, 4),
        "reporting_share": round(obs.reporting / n, 4),
        "error_rate": round(obs.errors / inf, 6) if inf else None,
        "invalid_output_share": round(obs.invalid_outputs / inf, 6) if inf else None,
        "p99_latency_ms": round(obs.p99_latency_ms, 3) if obs.p99_latency_ms is not None else None,
        "inferences": inf,
    }


THRESHOLDS = {"error_rate": "max_error_rate", "invalid_output_share": "max_invalid_output_share", "p99_latency_ms": "max_p99_latency_ms"}
MAX_OFFENDERS = 20


def _breached(gate: GateConfig, m: Measured) -> list[tuple[str, str]]:
    """(measure key, reason) per breached condition, so a failure can name the devices behind each metric."""
    out = []
    if m["devices"] and m["failure_share"] > gate.max_failure_share:
        out.append(
            (
                "failure_share",
                f"failure share {m['failure_share']:.1%} > max {gate.max_failure_share:.1%} ({m['failed']} of {m['devices']} devices)",
            )
        )
    if gate.max_error_rate is not None and m["error_rate"] is not None and m["error_rate"] > gate.max_error_rate:
        out.append(("error_rate", f"error rate {m['error_rate']:.2%} > max {gate.max_error_rate:.2%}"))
    if (
        gate.max_invalid_output_share is not None
        and m["invalid_output_share"] is not None
        and m["invalid_output_share"] > gate.max_invalid_output_share
    ):
        out.append(
            ("invalid_output_share", f"invalid (NaN/Inf) outputs {m['invalid_output_share']:.2%} > max {gate.max_invalid_output_share:.2%}")
        )
    if gate.max_p99_latency_ms is not None and m["p99_latency_ms"] is not None and m["p99_latency_ms"] > gate.max_p99_latency_ms:
        out.append(("p99_latency_ms", f"p99 latency {m['p99_latency_ms']:.2f} ms > max {gate.max_p99_latency_ms:.2f} ms"))
    return out


def breaches(gate: GateConfig, m: Measured) -> list[str]:
    """Conditions that fail the ring whatever the soak: failures and metric thresholds."""
    return [why for _, why in _breached(gate, m)]


def offenders(gate: GateConfig, obs: RingObservation, metrics: list[str], limit: int = MAX_OFFENDERS) -> list[dict[str, Any]]:
    """The devices whose own window is over a breached metric's threshold, worst first, shared fairly between
    the breached metrics and bounded so a report stays readable."""
    metrics = [k for k in metrics if k in THRESHOLDS]
    out: list[dict[str, Any]] = []
    for metric in metrics:
        bound = getattr(gate, THRESHOLDS[metric])
        over = sorted((o for o in obs.offenders if o[1] == metric and o[2] > bound), key=lambda o: (-o[2], o[0]))
        out += [{"device": d, "metric": metric, "value": v, "max": bound} for d, _, v in over[: max(1, limit // len(metrics))]]
    return out[:limit]


def adoption_met(gate: GateConfig, m: Measured) -> bool:
    return m["devices"] > 0 and m["adopted_share"] >= gate.success_share and m["reporting_share"] >= gate.min_reporting_share


def quality_text(q: dict[str, Any]) -> str:
    """The quality values a verdict passed on, in one line."""
    parts = []
    if "agreement" in q:
        parts.append(f"shadow agreement {q['agreement']:.1%} on {q['shadow']['compared']:,} requests")
    if "distribution_shift" in q:
        parts.append(f"prediction shift {q['distribution_shift']:.3f} (chi-square p={q['chi2_p']:.2g})")
    if "confidence_drop" in q:
        parts.append(f"confidence drop {q['confidence_drop']:+.3f}")
    if "latency_ratio" in q:
        parts.append(f"latency ratio {q['latency_ratio']:.2f}x")
    if "live_accuracy" in q:
        parts.append(f"live accuracy {q['live_accuracy']:.1%}")
    return ", ".join(parts)


def for_variant(ctx: QualityContext, kind: str) -> QualityContext:
    """The context one build's devices are judged in: compared with the control devices of the same build, where the
    control group has any (else with the whole control group)."""
    control = dict(ctx.variant_controls).get(kind)
    return ctx if control is None else replace(ctx, control=control)


def evaluate(
    gate: GateConfig, obs: RingObservation, since_deploy: float, soak_started: float | None, now: float, ctx: QualityContext | None = None
) -> Verdict:
    """The ring's verdict, judging each build's devices on their own: a bad int8 build cannot hide behind good fp32
    devices. `soak_started` is when the ring's adoption was first met (None: not yet). Times in seconds on the hub's
    clock. `ctx`: the phase and what quality is compared with (None: the serve phase, no control group).

    Where the devices that adopted or failed the version report more than one build (`obs.variants`), the ring's gate
    is applied to the ring as a whole and to every build's devices (each compared with the control devices of its
    own build, `for_variant`); the ring fails as soon as one of them fails, naming the build and its measured values,
    and passes only once all of them pass. A ring of one build is judged as one, against that build's control."""
    ctx = ctx or QualityContext()
    if len(obs.variants) == 1:
        return _evaluate_one(gate, obs, since_deploy, soak_started, now, for_variant(ctx, obs.variants[0][0]))
    whole = _evaluate_one(gate, obs, since_deploy, soak_started, now, ctx)
    if not obs.variants:
        return whole
    judged = [(kind, _evaluate_one(gate, o, since_deploy, soak_started, now, for_variant(ctx, kind))) for kind, o in obs.variants]
    whole.measured["variants"] = {kind: v.measured for kind, v in judged}
    failed = [(kind, v) for kind, v in judged if v.outcome == "fail"]
    if failed:
        counted = {kind: o.own_counts for kind, o in obs.variants}
        label = {kind: f"variant {kind} ({v.measured['devices']} devices)" if counted[kind] else f"variant {kind}" for kind, v in failed}
        reasons = [f"{label[kind]}: {why}" for kind, v in failed for why in v.reasons]
        if whole.outcome == "fail":
            reasons += [f"whole ring: {why}" for why in whole.reasons]
        named = [{**o, "variant": kind} for kind, v in failed for o in v.offenders] + (whole.offenders if whole.outcome == "fail" else [])
        notes = list(dict.fromkeys(whole.notes + [n for _, v in failed for n in v.notes]))
        return Verdict("fail", reasons, whole.measured, named[:MAX_OFFENDERS], notes)
    if whole.outcome != "pass":
        return whole
    waiting = [(kind, v) for kind, v in judged if v.outcome != "pass"]
    if waiting:
        return Verdict("soak", [f"variant {kind}: {why}" for kind, v in waiting for why in v.reasons], whole.measured, notes=whole.notes)
    return Verdict(
        "pass", whole.reasons + [f"variant {kind}: {v.reasons[0]}" for kind, v in judged if v.reasons], whole.measured, notes=whole.notes
    )


def _evaluate_one(
    gate: GateConfig, obs: RingObservation, since_deploy: float, soak_started: float | None, now: float, ctx: QualityContext
) -> Verdict:
    """One set of devices (a ring, or one build's devices in it) judged by the ring's gate."""
    m = measure(obs)
    shadow = ctx.phase == "shadow"
    q = judge(gate, obs.summary, ctx) if gate.quality or shadow else None
    if gate.shadow_soak_seconds is not None or shadow:
        m["phase"] = ctx.phase
    if q is not None:
        m["quality"] = q.measured
    notes = q.notes if q is not None else []
    bad = _breached(gate, m) + (q.breaches if q is not None else [])
    if bad:
        health = [k for k, _ in bad if k in THRESHOLDS]
        quality = [k for k, _ in bad if k not in THRESHOLDS and k != "failure_share"]
        share = max(1, MAX_OFFENDERS // max(1, len(health) + len(quality)))
        named = offenders(gate, obs, health, share * len(health)) if health else []
        if quality:
            named += quality_offenders(gate, obs.device_summaries, quality, ctx.control, share * len(quality))
        return Verdict("fail", [why for _, why in bad], m, named[:MAX_OFFENDERS], notes)
    if m["devices"] == 0:
        return Verdict("fail", ["ring has no devices"], m)
    elapsed = now - since_deploy
    soak_for = (gate.shadow_soak_seconds or 0.0) if shadow else gate.soak_seconds
    what = "shadowing the candidate" if shadow else "on the new version"
    met = adoption_met(gate, m)
    soaked_for = now - soak_started if met and soak_started is not None else None
    soaked = soaked_for is not None and soaked_for >= soak_for
    served = (m["inferences"] or 0) >= gate.min_inferences
    short = q.short if q is not None else []
    if soaked and served and not short:
        extra = quality_text(q.measured) if q is not None else ""
        return Verdict(
            "pass",
            [
                f"{m['adopted']}/{m['devices']} {what} for {soaked_for:.1f}s {'shadow soak' if shadow else 'soak'}, "
                f"{m['inferences'] or 0} inferences" + (f"; {extra}" if extra else "")
            ]
            + notes,
            m,
            notes=notes,
        )
    if elapsed > gate.deadline_seconds:
        why = (
            f"deadline {gate.deadline_seconds:.0f}s passed with {m['adopted']}/{m['devices']} adopted "
            f"(needs {gate.success_share:.0%}), {m['reporting']}/{m['devices']} reporting (needs {gate.min_reporting_share:.0%})"
        )
        if soaked and not served:
            why = (
                f"deadline {gate.deadline_seconds:.0f}s passed with {m['inferences'] or 0} inferences on the new version in the "
                f"devices' latest report windows (needs {gate.min_inferences}): its health metrics were never measured"
            )
        elif soaked:
            why = (
                f"deadline {gate.deadline_seconds:.0f}s passed with quality criteria short of samples in what the devices "
                f"reported ({'; '.join(short)}): a quality gate never passes on silence"
            )
        elif met:
            why = f"deadline {gate.deadline_seconds:.0f}s passed before the {soak_for:.0f}s {'shadow soak' if shadow else 'soak'} completed"
        return Verdict("fail", [why], m, notes=notes)
    if soaked and not served:
        return Verdict(
            "soak",
            [
                f"soak done, waiting for {gate.min_inferences} inferences on the new version in the devices' "
                f"latest report windows (has {m['inferences'] or 0})"
            ],
            m,
        )
    if soaked:
        return Verdict("soak", [f"soak done, waiting for quality samples: {'; '.join(short)}"], m)
    if met:
        return Verdict(
            "soak", [f"{'shadow ' if shadow else ''}soaking {0 if soak_started is None else now - soak_started:.1f}/{soak_for:.0f}s"], m
        )
    return Verdict("wait", [f"{m['adopted']}/{m['devices']} adopted, {m['pending']} pending"], m)
