"""Quality gates: what a ring's model says on real traffic, compared with the model it replaces. Pure.

A gate reads bounded summaries (edgefleet_agent/contract/telemetry.py) summed over devices: `Summary` is one side of
a comparison (a ring's devices on the new version, or the control group still on the previous one), whatever the
platform it came from. The criteria (GateConfig, QUALITY_CRITERIA) and how each is judged:

- shadow agreement (`min_agreement`, shadow phase): agree / compared of the candidate run beside the served model
  on the same requests; fails below the bound. The point estimate is judged once at least `min_quality_samples`
  requests were compared.
- latency ratio (`max_latency_ratio`): in the shadow phase the candidate's p50 over the served model's on the same
  requests; in the serve phase the ring's p50 over the control group's. Fails above the bound.
- prediction shift (`max_distribution_shift`, serve phase): the total variation distance (TVD, half the L1 distance)
  between the ring's and the control's top-1 class distributions. It fails only when the TVD is above the bound AND a
  chi-square test of homogeneity on the 2 x K table of class counts rejects equality at ALPHA: a shift must be both
  large enough to matter and too large to be noise.
- confidence drop (`max_confidence_drop`, serve phase): the control's mean top-1 confidence minus the ring's (bin
  centres of the confidence histogram). It fails only when the drop is above the bound AND a one-sided two-sample
  z-test on the two means (variances from the histograms) rejects "no drop" at ALPHA.
- live accuracy (`min_live_accuracy`, serve phase): right answers among requests whose application sent the true class.

Every criterion needs `min_quality_samples` on each side it reads (predictions, compared requests, timed requests,
labelled requests). Below that it judges nothing, and a ring still short at its deadline fails: a quality gate never
passes on silence. Comparisons with a previous version (all but live accuracy) are not applicable when there is none
(a first rollout) or when the rollout returns to a version served before (a declared rollback); the verdict says so.

Class counts are bounded on the wire (the top TOP_K classes of each device plus "other"), so two sides are compared
on the TOP_K classes most frequent over both, everything else folded into "other": exact for models with at most
TOP_K classes, coarser beyond.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from components.rollout.spec import GateConfig
from edgefleet_agent.contract.telemetry import CONFIDENCE_BINS, LATENCY_BOUNDS_MS, OTHER, TOP_K, Labelled, Latency, Predictions, Shadow

ALPHA = 0.01  # significance of the shift and confidence tests


# -- distributions ------------------------------------------------------------------------------------------------
def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X ~ chi-square with `dof` degrees of freedom: the regularized upper incomplete gamma function
    Q(dof/2, x/2), by its power series below a+1 and Lentz's continued fraction above (Numerical Recipes, 6.2)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom must be at least 1, not {dof}")
    if x != x:
        return float("nan")
    if x <= 0:
        return 1.0
    if math.isinf(x):
        return 0.0
    a, z = dof / 2.0, x / 2.0
    if z <= 0:  # x below the smallest double's double
        return 1.0
    log_front = -z + a * math.log(z) - math.lgamma(a)
    if z < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1.0
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return min(1.0, max(0.0, 1.0 - total * math.exp(log_front)))
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return min(1.0, max(0.0, math.exp(log_front) * h))


def normal_sf(z: float) -> float:
    """P(Z >= z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def aligned(a: Mapping[str, int], b: Mapping[str, int], top_k: int = TOP_K) -> tuple[dict[str, int], dict[str, int]]:
    """Both sides' class counts over the same categories: the `top_k` classes most frequent over both sides, the rest
    (and each side's own "other") folded into "other". Sides bounded differently become comparable."""
    both: dict[str, int] = {}
    for side in (a, b):
        for k, v in side.items():
            if k != OTHER:
                both[k] = both.get(k, 0) + v
    kept = {k for k, _ in sorted(both.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]}
    folded = len(both) > len(kept) or OTHER in a or OTHER in b

    def fold(side: Mapping[str, int]) -> dict[str, int]:
        out = {k: side.get(k, 0) for k in sorted(kept)}
        if folded:
            out[OTHER] = sum(v for k, v in side.items() if k not in kept)
        return out

    return fold(a), fold(b)


def shares(counts: Mapping[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()} if total else {}


def total_variation(a: Mapping[str, int], b: Mapping[str, int]) -> float:
    """Half the L1 distance between the two count vectors' distributions: 0 when equal, 1 when disjoint."""
    p, q = shares(a), shares(b)
    if not p or not q:
        return 0.0
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def chi2_homogeneity(a: Mapping[str, int], b: Mapping[str, int]) -> tuple[float, int, float]:
    """Pearson's chi-square test that two samples of class counts come from one distribution (a 2 x K contingency
    table, categories empty on both sides dropped): (statistic, degrees of freedom, p-value). Fewer than two
    categories or an empty side: nothing to test, p = 1."""
    keys = sorted(k for k in set(a) | set(b) if a.get(k, 0) + b.get(k, 0) > 0)
    na, nb = sum(a.get(k, 0) for k in keys), sum(b.get(k, 0) for k in keys)
    if len(keys) < 2 or na == 0 or nb == 0:
        return 0.0, max(len(keys) - 1, 0), 1.0
    n = na + nb
    stat = 0.0
    for k in keys:
        col = a.get(k, 0) + b.get(k, 0)
        for observed, row in ((a.get(k, 0), na), (b.get(k, 0), nb)):
            expected = row * col / n
            stat += (observed - expected) ** 2 / expected
    dof = len(keys) - 1
    return stat, dof, chi2_sf(stat, dof)


def bin_moments(bins: Iterable[int]) -> tuple[int, float | None, float | None]:
    """(n, mean, variance) of a confidence histogram, each bin at its centre."""
    counts = list(bins)
    n = sum(counts)
    if not n:
        return 0, None, None
    width = 1.0 / len(counts)
    mean = sum((i + 0.5) * width * c for i, c in enumerate(counts)) / n
    var = sum(((i + 0.5) * width - mean) ** 2 * c for i, c in enumerate(counts)) / n
    return n, mean, var


def confidence_drop_test(ring: Iterable[int], control: Iterable[int]) -> tuple[float | None, float]:
    """(control mean - ring mean, one-sided p-value of "the ring's mean is not lower") by a two-sample z-test on the
    histograms' means; a variance of zero on both sides gives p 0 for any drop and 1 for none."""
    nr, mr, vr = bin_moments(ring)
    nc, mc, vc = bin_moments(control)
    if mr is None or mc is None or vr is None or vc is None:
        return None, 1.0
    drop = mc - mr
    se = math.sqrt(vr / nr + vc / nc)
    if se == 0:
        return drop, 0.0 if drop > 0 else 1.0
    return drop, normal_sf(drop / se)


# -- summaries -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowSummary:
    """The candidate a side shadows, summed: its requests against the served model's, on the same traffic."""

    version: str
    sha256: str
    compared: int = 0
    agree: int = 0
    errors: int = 0
    invalid: int = 0
    p50_ms: float | None = None  # the candidate's median latency
    served_p50_ms: float | None = None  # the served model's, on the same requests

    @property
    def requests(self) -> int:
        """Requests the candidate was given: compared, failed or answered with NaN/Inf."""
        return self.compared + self.errors + self.invalid

    def agreement(self) -> float | None:
        return self.agree / self.compared if self.compared else None

    def latency_ratio(self) -> float | None:
        if self.p50_ms is None or not self.served_p50_ms:
            return None
        return self.p50_ms / self.served_p50_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "compared": self.compared,
            "agree": self.agree,
            "errors": self.errors,
            "invalid": self.invalid,
            "p50_ms": self.p50_ms,
            "served_p50_ms": self.served_p50_ms,
        }


@dataclass(frozen=True)
class Summary:
    """One side of a comparison: what devices on one version said and how fast, summed over their windows (the latest,
    or every window of the phase where the platform sums them: observe.SoakWindows).

    Platforms fill it from what they can read: exact merged histograms (local, AWS), or per-device medians averaged
    (Azure, whose twin queries sum and average but cannot merge histograms); `p50_ms` is the side's median either way."""

    devices: int = 0  # devices whose reports it sums
    predictions: int = 0  # classified requests
    classes: Mapping[str, int] = field(default_factory=dict)  # top-1 class counts (bounded: top-K and "other")
    confidence: tuple[int, ...] = ()  # top-1 confidence histogram, CONFIDENCE_BINS bins
    latency_n: int = 0  # timed requests
    p50_ms: float | None = None
    shadow: ShadowSummary | None = None
    labelled: int = 0
    correct: int = 0

    def mean_confidence(self) -> float | None:
        return bin_moments(self.confidence)[1]

    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def class_counts(self) -> dict[str, int]:
        """The class counts with any predictions the platform could not attribute to a class counted as "other"."""
        out = dict(self.classes)
        missing = self.predictions - sum(out.values())
        if missing > 0:
            out[OTHER] = out.get(OTHER, 0) + missing
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "predictions": self.predictions,
            "classes": {k: round(v, 4) for k, v in shares(self.class_counts()).items()},
            "mean_confidence": _r(self.mean_confidence()),
            "p50_ms": _r(self.p50_ms, 3),
            "timed": self.latency_n,
            **({"shadow": self.shadow.to_json()} if self.shadow else {}),
            **({"labelled": self.labelled, "accuracy": _r(self.accuracy())} if self.labelled else {}),
        }

    @classmethod
    def of(
        cls,
        devices: int,
        predictions: Predictions | None = None,
        latency: Latency | None = None,
        shadow: Shadow | None = None,
        labelled: Labelled | None = None,
    ) -> Summary:
        """From the contract's telemetry, summed: medians read off the merged latency histograms."""
        preds = predictions if predictions is not None and predictions.kind == "classes" else None
        return cls(
            devices=devices,
            predictions=preds.n if preds else 0,
            classes=dict(preds.classes) if preds else {},
            confidence=tuple(preds.confidence) if preds and preds.confidence else (),
            latency_n=latency.n if latency else 0,
            p50_ms=latency.quantile(0.5) if latency else None,
            shadow=None
            if shadow is None
            else ShadowSummary(
                shadow.version,
                shadow.sha256,
                shadow.compared,
                shadow.agree,
                shadow.errors,
                shadow.invalid,
                shadow.latency.quantile(0.5),
                shadow.served_latency.quantile(0.5),
            ),
            labelled=labelled.n if labelled else 0,
            correct=labelled.correct if labelled else 0,
        )


Parts = tuple[Predictions | None, Latency | None, Shadow | None, Labelled | None]
PartArrays = tuple[np.ndarray | None, ...]


def part_arrays(parts: Parts) -> PartArrays:
    """One device's histograms as the int64 arrays RunningTelemetry sums: confidence, latency, the shadow's counts
    (compared, agree, errors, invalid), its latency and the served model's beside it, labelled (n, correct); None where
    the report carries none (a classifier's confidence, a latency of no requests)."""
    predictions, latency, shadow, labelled = parts

    def ints(values: Any) -> np.ndarray:
        return np.asarray(values, np.int64)

    return (
        ints(predictions.confidence) if predictions is not None and predictions.kind == "classes" and predictions.confidence else None,
        ints(latency.counts) if latency is not None and latency.n else None,
        ints([shadow.compared, shadow.agree, shadow.errors, shadow.invalid]) if shadow is not None else None,
        ints(shadow.latency.counts) if shadow is not None else None,
        ints(shadow.served_latency.counts) if shadow is not None else None,
        ints([labelled.n, labelled.correct]) if labelled is not None else None,
    )


class RunningTelemetry:
    """Telemetry's sums kept across polls: a device's telemetry is added when its report arrives and taken out when
    a newer one replaces it, so a poll of a 10,000-device ring costs the reports that changed, not the ring. Every
    figure a Summary reads is a count, so taking out is exact; summary() equals Telemetry's over the same parts."""

    def __init__(self) -> None:
        self.devices = 0
        self._pred_output: str | None = None
        self._pred_n = 0
        self._classes: Counter[str] = Counter()
        self._confidence = np.zeros(CONFIDENCE_BINS, np.int64)
        self._latency = np.zeros(len(LATENCY_BOUNDS_MS) + 1, np.int64)
        self._shadow_key: tuple[str, str] | None = None
        self._shadows = 0
        self._shadow_counts = np.zeros(4, np.int64)  # compared, agree, errors, invalid
        self._shadow_latency = np.zeros(len(LATENCY_BOUNDS_MS) + 1, np.int64)
        self._served_latency = np.zeros(len(LATENCY_BOUNDS_MS) + 1, np.int64)
        self._labelled = np.zeros(2, np.int64)  # n, correct

    def add(self, parts: Parts, sign: int = 1, arrays: PartArrays | None = None) -> None:
        """Adds one device's telemetry (`sign` -1: takes out what an earlier add put in). `arrays`: part_arrays(parts),
        where the caller keeps them: a device's report is added to its ring's sum and its build's, then taken out of
        both when a newer one replaces it, and converts its histograms once for the four."""
        predictions, latency, shadow, labelled = parts
        confidence, latency_counts, shadow_counts, shadow_latency, served_latency, labelled_counts = (
            arrays if arrays is not None else part_arrays(parts)
        )
        add = np.add if sign > 0 else np.subtract
        self.devices += sign
        if predictions is not None and predictions.kind == "classes":
            if self._pred_output is None:
                self._pred_output = predictions.output
            if predictions.output == self._pred_output:
                self._pred_n += sign * predictions.n
                for k, v in predictions.classes.items():
                    self._classes[k] += sign * v
                if confidence is not None:
                    add(self._confidence, confidence, out=self._confidence)
        if latency_counts is not None:
            add(self._latency, latency_counts, out=self._latency)
        if shadow is not None:
            if self._shadow_key is None:
                self._shadow_key = (shadow.version, shadow.sha256)
            if (shadow.version, shadow.sha256) == self._shadow_key:
                assert shadow_counts is not None and shadow_latency is not None and served_latency is not None
                self._shadows += sign
                add(self._shadow_counts, shadow_counts, out=self._shadow_counts)
                add(self._shadow_latency, shadow_latency, out=self._shadow_latency)
                add(self._served_latency, served_latency, out=self._served_latency)
        if labelled_counts is not None:
            add(self._labelled, labelled_counts, out=self._labelled)

    def summary(self) -> Summary:
        latency = Latency([int(x) for x in self._latency])
        shadow = None
        if self._shadows > 0 and self._shadow_key is not None:
            compared, agree, errors, invalid = (int(x) for x in self._shadow_counts)
            shadow = ShadowSummary(
                self._shadow_key[0],
                self._shadow_key[1],
                compared,
                agree,
                errors,
                invalid,
                Latency([int(x) for x in self._shadow_latency]).quantile(0.5),
                Latency([int(x) for x in self._served_latency]).quantile(0.5),
            )
        return Summary(
            devices=self.devices,
            predictions=self._pred_n,
            classes={k: v for k, v in self._classes.items() if v},
            confidence=tuple(int(x) for x in self._confidence) if self._pred_n else (),
            latency_n=latency.n,
            p50_ms=latency.quantile(0.5),
            shadow=shadow,
            labelled=int(self._labelled[0]),
            correct=int(self._labelled[1]),
        )


def _r(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


class Telemetry:
    """Sums the contract's telemetry of many reports (histograms merge exactly), then summarizes it once."""

    def __init__(self) -> None:
        self.devices = 0
        self.predictions: Predictions | None = None
        self.latency: Latency | None = None
        self.shadow: Shadow | None = None
        self.labelled: Labelled | None = None

    def add(
        self,
        predictions: Predictions | None,
        latency: Latency | None,
        shadow: Shadow | None,
        labelled: Labelled | None,
    ) -> None:
        self.devices += 1
        if predictions is not None and predictions.kind == "classes":
            if self.predictions is None:
                self.predictions = predictions
            elif (predictions.kind, predictions.output) == (self.predictions.kind, self.predictions.output):
                self.predictions = self.predictions.merged(predictions)
        if latency is not None and latency.n:
            self.latency = latency if self.latency is None else self.latency.merged(latency)
        if shadow is not None:
            self.shadow = shadow if self.shadow is None else self.shadow.merged(shadow)
        if labelled is not None:
            self.labelled = labelled if self.labelled is None else self.labelled.merged(labelled)

    def summary(self) -> Summary:
        return Summary.of(self.devices, self.predictions, self.latency, self.shadow, self.labelled)


# -- judging -------------------------------------------------------------------------------------------------------
CONTROL_CRITERIA = ("max_distribution_shift", "max_confidence_drop", "max_latency_ratio")


@dataclass(frozen=True)
class QualityContext:
    """What a ring's quality is judged against. `phase`: shadow (the candidate beside the served model) or serve.
    `control`: the devices still on the previous version over the same window (None: the ring has none).
    `no_baseline`: why comparisons with a previous version do not apply (None: they do). `shadowed`: the ring judged
    the candidate's latency in its shadow phase, so without a control group the serve phase need not.
    `variant_controls`: the control group per build its devices report (kind, summary); the devices of one build in
    the ring are compared with the control devices of the same build where there are any (gate.evaluate)."""

    phase: str = "serve"  # progress.RingPhase
    control: Summary | None = None
    no_baseline: str | None = None
    shadowed: bool = False
    variant_controls: tuple[tuple[str, Summary], ...] = ()


@dataclass
class Judgement:
    """Quality criteria judged: breaches (key, reason), criteria still short of samples (reasons), notes on criteria
    that do not apply, and the measured values (JSON) for the record and the report."""

    breaches: list[tuple[str, str]] = field(default_factory=list)
    short: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)


def needs_control(gate: GateConfig, shadowed: bool = False) -> bool:
    """Whether a ring's serve phase compares with a control group."""
    return (
        gate.max_distribution_shift is not None
        or gate.max_confidence_drop is not None
        or (gate.max_latency_ratio is not None and not shadowed)
    )


def _enough(n: int, need: int, what: str, side: str, out: list[str]) -> bool:
    if n >= need:
        return True
    out.append(f"{what}: {side} has {n:,} (needs {need:,})")
    return False


def judge(gate: GateConfig, ring: Summary | None, ctx: QualityContext) -> Judgement:
    """The ring's quality criteria for its phase. Pure; `ring` is the ring's side (None: nothing reported)."""
    out = Judgement()
    if ctx.phase == "shadow":
        _judge_shadow(gate, ring, out)
    elif gate.quality:
        _judge_serve(gate, ring or Summary(), ctx, out)
    return out


def _judge_shadow(gate: GateConfig, ring: Summary | None, out: Judgement) -> None:
    need = gate.min_quality_samples
    sh = ring.shadow if ring is not None else None
    sh = sh or ShadowSummary("", "")
    out.measured = {"phase": "shadow", "shadow": sh.to_json(), "devices": ring.devices if ring else 0}
    requests = sh.requests
    # the candidate's health on the same requests: judged on any request, as the served model's is
    if requests:
        error_rate, invalid_share = sh.errors / requests, sh.invalid / requests
        out.measured.update(candidate_error_rate=round(error_rate, 6), candidate_invalid_share=round(invalid_share, 6))
        if gate.max_error_rate is not None and error_rate > gate.max_error_rate:
            out.breaches.append(
                ("candidate_error_rate", f"shadowed candidate's error rate {error_rate:.2%} > max {gate.max_error_rate:.2%}")
            )
        if gate.max_invalid_output_share is not None and invalid_share > gate.max_invalid_output_share:
            out.breaches.append(
                (
                    "candidate_invalid_share",
                    f"shadowed candidate's invalid (NaN/Inf) outputs {invalid_share:.2%} > max {gate.max_invalid_output_share:.2%}",
                )
            )
    if gate.min_agreement is not None and _enough(sh.compared, need, "shadow agreement", "compared requests", out.short):
        agreement = sh.agreement() or 0.0
        out.measured["agreement"] = round(agreement, 4)
        if agreement < gate.min_agreement:
            out.breaches.append(
                (
                    "agreement",
                    f"shadow agreement {agreement:.1%} < min {gate.min_agreement:.1%} (the candidate's top-1 class matched the "
                    f"served model's on {sh.agree:,} of {sh.compared:,} requests)",
                )
            )
    if gate.max_latency_ratio is not None and _enough(sh.compared, need, "shadow latency ratio", "compared requests", out.short):
        ratio = sh.latency_ratio()
        if ratio is None:
            out.short.append("shadow latency ratio: no latency of both models reported")
        else:
            out.measured["latency_ratio"] = round(ratio, 4)
            if ratio > gate.max_latency_ratio:
                out.breaches.append(
                    (
                        "latency_ratio",
                        f"shadowed candidate's p50 latency {sh.p50_ms:.3g} ms is {ratio:.2f}x the served model's "
                        f"{sh.served_p50_ms:.3g} ms > max {gate.max_latency_ratio:g}x",
                    )
                )


def _judge_serve(gate: GateConfig, ring: Summary, ctx: QualityContext, out: Judgement) -> None:
    need = gate.min_quality_samples
    out.measured = {"phase": "serve", "ring": ring.to_json()}
    if gate.min_live_accuracy is not None and _enough(ring.labelled, need, "live accuracy", "labelled requests on the ring", out.short):
        acc = ring.accuracy() or 0.0
        out.measured["live_accuracy"] = round(acc, 4)
        if acc < gate.min_live_accuracy:
            out.breaches.append(
                (
                    "live_accuracy",
                    f"live accuracy {acc:.1%} < min {gate.min_live_accuracy:.1%} ({ring.correct:,} of {ring.labelled:,} labelled requests right)",
                )
            )
    if not needs_control(gate, ctx.shadowed) and not (gate.max_latency_ratio is not None and ctx.control is not None):
        return
    if ctx.no_baseline is not None:
        out.notes.append(f"comparisons with the previous version not judged: {ctx.no_baseline}")
        return
    control = ctx.control
    if control is None:
        if needs_control(gate, ctx.shadowed):
            out.short.append("control group: the ring has none (no devices still on the previous version to compare with)")
        return
    out.measured["control"] = control.to_json()
    if gate.max_distribution_shift is not None or gate.max_confidence_drop is not None:
        ok_ring = _enough(ring.predictions, need, "prediction comparison", "the ring's predictions", out.short)
        ok_control = _enough(control.predictions, need, "prediction comparison", "the control group's predictions", out.short)
        if ok_ring and ok_control:
            _compare_predictions(gate, ring, control, out)
    if gate.max_latency_ratio is not None:
        ok_ring = _enough(ring.latency_n, need, "latency ratio", "the ring's timed requests", out.short)
        ok_control = _enough(control.latency_n, need, "latency ratio", "the control group's timed requests", out.short)
        if ok_ring and ok_control:
            if ring.p50_ms is None or not control.p50_ms:
                out.short.append("latency ratio: no median latency on both sides")
            else:
                ratio = ring.p50_ms / control.p50_ms
                out.measured["latency_ratio"] = round(ratio, 4)
                if ratio > gate.max_latency_ratio:
                    out.breaches.append(
                        (
                            "latency_ratio",
                            f"p50 latency {ring.p50_ms:.3g} ms is {ratio:.2f}x the control group's {control.p50_ms:.3g} ms "
                            f"> max {gate.max_latency_ratio:g}x",
                        )
                    )


def _compare_predictions(gate: GateConfig, ring: Summary, control: Summary, out: Judgement) -> None:
    if gate.max_distribution_shift is not None:
        a, b = aligned(ring.class_counts(), control.class_counts())
        tvd = total_variation(a, b)
        stat, dof, p = chi2_homogeneity(a, b)
        out.measured.update(distribution_shift=round(tvd, 4), chi2=round(stat, 3), chi2_dof=dof, chi2_p=float(f"{p:.3g}"))
        if tvd > gate.max_distribution_shift and p < ALPHA:
            out.breaches.append(
                (
                    "distribution_shift",
                    f"prediction shift: total variation {tvd:.3f} > max {gate.max_distribution_shift:g} and chi-square "
                    f"{stat:.1f} ({dof} dof) p={p:.2g} < {ALPHA:g}; ring classes {_fmt_shares(a)} "
                    f"({ring.predictions:,} predictions) vs control {_fmt_shares(b)} ({control.predictions:,})",
                )
            )
    if gate.max_confidence_drop is not None:
        drop, p = confidence_drop_test(ring.confidence, control.confidence)
        if drop is None:
            out.short.append("confidence drop: no confidence histogram on both sides")
            return
        out.measured.update(confidence_drop=round(drop, 4), confidence_p=float(f"{p:.3g}"))
        if drop > gate.max_confidence_drop and p < ALPHA:
            out.breaches.append(
                (
                    "confidence_drop",
                    f"mean top-1 confidence {ring.mean_confidence():.3f} is {drop:.3f} below the control group's "
                    f"{control.mean_confidence():.3f} > max drop {gate.max_confidence_drop:g} (z-test p={p:.2g} < {ALPHA:g})",
                )
            )


def _fmt_shares(counts: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{k}: {v:.0%}" for k, v in sorted(shares(counts).items(), key=lambda kv: -kv[1])) + "}"


# -- offending devices -----------------------------------------------------------------------------------------------
def quality_offenders(
    gate: GateConfig,
    devices: Iterable[tuple[str, Summary]],
    breached: list[str],
    control: Summary | None,
    limit: int,
) -> list[dict[str, Any]]:
    """The devices whose own window is furthest past a breached quality criterion, worst first, from each device's own
    summary: agreement and candidate health (shadow), class distribution against the control's, confidence, latency
    and live accuracy. Shared fairly between the breached criteria and bounded by `limit`."""
    rows = list(devices)
    keys = [k for k in breached if k in _DEVICE_VALUES]
    out: list[dict[str, Any]] = []
    for key in keys:
        ranked = []
        for dev, s in rows:
            found = _DEVICE_VALUES[key](gate, s, control)
            if found is not None:
                ranked.append((dev, *found))
        ranked.sort(key=lambda r: (-r[1], r[0]))  # r[1]: badness
        for dev, _, entry in ranked[: max(1, limit // max(1, len(keys)))]:
            out.append({"device": dev, "metric": key, **entry})
    return out[:limit]


def _agreement(gate: GateConfig, s: Summary, control: Summary | None) -> tuple[float, dict[str, Any]] | None:
    sh = s.shadow
    if sh is None or not sh.compared or gate.min_agreement is None:
        return None
    a = sh.agree / sh.compared
    if a >= gate.min_agreement:
        return None
    return gate.min_agreement - a, {"value": round(a, 4), "min": gate.min_agreement, "compared": sh.compared}


def _candidate_rate(attr: str, bound: str) -> Any:
    def value(gate: GateConfig, s: Summary, control: Summary | None) -> tuple[float, dict[str, Any]] | None:
        sh = s.shadow
        limit = getattr(gate, bound)
        if sh is None or not sh.requests or limit is None:
            return None
        rate = getattr(sh, attr) / sh.requests
        return (rate, {"value": round(rate, 6), "max": limit}) if rate > limit else None

    return value


def _latency(gate: GateConfig, s: Summary, control: Summary | None) -> tuple[float, dict[str, Any]] | None:
    if gate.max_latency_ratio is None:
        return None
    if s.shadow is not None and control is None:
        ratio = s.shadow.latency_ratio()
    else:
        ratio = s.p50_ms / control.p50_ms if control is not None and control.p50_ms and s.p50_ms is not None else None
    if ratio is None or ratio <= gate.max_latency_ratio:
        return None
    return ratio, {"value": round(ratio, 3), "max": gate.max_latency_ratio}


def _shift(gate: GateConfig, s: Summary, control: Summary | None) -> tuple[float, dict[str, Any]] | None:
    if control is None or not s.predictions or gate.max_distribution_shift is None:
        return None
    a, b = aligned(s.class_counts(), control.class_counts())
    tvd = total_variation(a, b)
    if tvd <= gate.max_distribution_shift:
        return None
    return tvd, {
        "value": round(tvd, 4),
        "max": gate.max_distribution_shift,
        "predictions": s.predictions,
        "classes": {k: round(v, 4) for k, v in shares(a).items()},
    }


def _confidence(gate: GateConfig, s: Summary, control: Summary | None) -> tuple[float, dict[str, Any]] | None:
    mine, theirs = s.mean_confidence(), control.mean_confidence() if control is not None else None
    if mine is None or theirs is None or gate.max_confidence_drop is None:
        return None
    drop = theirs - mine
    if drop <= gate.max_confidence_drop:
        return None
    return drop, {"value": round(drop, 4), "max": gate.max_confidence_drop, "confidence": round(mine, 4)}


def _accuracy(gate: GateConfig, s: Summary, control: Summary | None) -> tuple[float, dict[str, Any]] | None:
    acc = s.accuracy()
    if acc is None or gate.min_live_accuracy is None or acc >= gate.min_live_accuracy:
        return None
    return gate.min_live_accuracy - acc, {"value": round(acc, 4), "min": gate.min_live_accuracy, "labelled": s.labelled}


_DEVICE_VALUES: dict[str, Any] = {
    "agreement": _agreement,
    "candidate_error_rate": _candidate_rate("errors", "max_error_rate"),
    "candidate_invalid_share": _candidate_rate("invalid", "max_invalid_output_share"),
    "latency_ratio": _latency,
    "distribution_shift": _shift,
    "confidence_drop": _confidence,
    "live_accuracy": _accuracy,
}
QUALITY_KEYS = tuple(_DEVICE_VALUES)
