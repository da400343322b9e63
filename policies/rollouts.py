"""The rollout rules: a production rollout starts with a small canary ring that soaks long enough, and judges what
its model says, not only whether it runs.

Standard library only; imports graph, engine and settings, as `policies.x` or, in the CrossGuard pack's own
virtualenv, as `x`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

if __package__:
    from .engine import Finding, NotApplicable
    from .graph import ROLLOUT, Graph, dig, ring_name
    from .platforms import membership_at_load
    from .settings import Settings
else:
    from engine import Finding, NotApplicable  # type: ignore[no-redef]
    from graph import ROLLOUT, Graph, dig, ring_name  # type: ignore[no-redef]
    from platforms import membership_at_load  # type: ignore[no-redef]
    from settings import Settings  # type: ignore[no-redef]


def fmt_share(share: float) -> str:
    """A share of devices as the canary rule and `edgefleet plan` print it: 0.05 -> 5%, 0.125 -> 12.5%."""
    return f"{share * 100:.1f}%".replace(".0%", "%")


def first_ring_share(g: Graph, s: Settings, rollout: Mapping[str, Any], rings: list[dict]) -> tuple[float | None, str]:
    """The first ring's share of the rollout's devices, and how it was known (None: not computable offline)."""
    name, first = rollout["name"], rings[0]
    counts, total = s.ring_devices.get(name) or {}, s.rollout_devices.get(name)
    if total and ring_name(first) in counts:
        return counts[ring_name(first)] / total, f"{counts[ring_name(first)]} of {total} devices"
    platforms = {str(dig(r, "inputs", "platform")) for r in rings}
    declared = (s.declared_ring_devices.get(next(iter(platforms))) or {}) if len(platforms) == 1 else {}
    if declared and all(ring_name(r) in declared for r in rings):
        # Rings are disjoint (a device belongs to the first ring that selects it), so their sizes add up.
        count, total = declared[ring_name(first)], sum(declared[ring_name(r)] for r in rings)
        return count / total, f"{count} of {total} devices, as declared in edgefleet:{next(iter(platforms))}.rings.<ring>.devices"
    groups = {dig(r, "inputs", "group") for r in rings}
    percent, labels = dig(first, "inputs", "percent"), dig(first, "inputs", "labels") or {}
    if len(groups) == 1 and isinstance(percent, (int, float)):
        return percent / 100, f"{percent:g}% of group {next(iter(groups))}"
    if len(groups) == 1 and not labels:
        return 1.0, f"all of group {next(iter(groups))}"
    return None, f"ring selects by labels {labels or '(its group)'}; device counts are only known at deploy"


def check_production_canary(g: Graph, s: Settings) -> Iterator[Finding]:
    if not s.production:
        raise NotApplicable("not a production stack (edgefleet:policy.production is false)")
    rollouts = g.of_type(ROLLOUT)
    if not rollouts:
        raise NotApplicable("the stack declares no rollouts")
    for ro in rollouts:
        rings = g.rings(ro)
        if not rings:
            yield Finding(f"rollout {ro['name']!r} has no rings", ro["urn"])
            continue
        first = rings[0]
        soak = dig(first, "inputs", "gate", "soak_seconds")
        if isinstance(soak, (int, float)) and soak < s.min_canary_soak_seconds:
            yield Finding(
                f"rollout {ro['name']!r}: first ring {ring_name(first)!r} soaks {soak:g}s, under the production minimum "
                f"{s.min_canary_soak_seconds:g}s (edgefleet:policy.min_canary_soak_seconds)",
                first["urn"],
            )
        share, how = first_ring_share(g, s, ro, rings)
        if share is None:
            yield Finding(
                f"rollout {ro['name']!r}: cannot verify that ring {ring_name(first)!r} is a canary: {how}", first["urn"], unverified=True
            )
        elif share > s.canary_max_share + 1e-12:
            yield Finding(
                f"rollout {ro['name']!r} starts with ring {ring_name(first)!r} covering {fmt_share(share)} ({how}); a production "
                f"canary may cover at most {fmt_share(s.canary_max_share)} (edgefleet:policy.canary_max_share)",
                first["urn"],
            )


def check_rings_select_devices(g: Graph, s: Settings) -> Iterator[Finding]:
    """A ring of no devices would wait out its deadline and fail a version nobody ran. Known counts: the local fleet's
    membership (computed offline) and cloud rings' declared sizes."""
    rollouts = g.of_type(ROLLOUT)
    if not rollouts:
        raise NotApplicable("the stack declares no rollouts")
    for ro in rollouts:
        counts = s.ring_devices.get(ro["name"])
        for ring in g.rings(ro):
            platform = str(dig(ring, "inputs", "platform"))
            declared = (s.declared_ring_devices.get(platform) or {}).get(ring_name(ring))
            known = counts.get(ring_name(ring)) if counts is not None else declared
            if known == 0:
                yield Finding(f"rollout {ro['name']!r}: ring {ring_name(ring)!r} selects no devices", ring["urn"])


def check_ring_sizes_declared(g: Graph, s: Settings) -> Iterator[Finding]:
    """Where rings select by attributes (clouds), how many devices a ring reaches is only known at deploy unless the
    stack declares it; an undeclared size hides an empty ring until its deadline."""
    cloud = [
        ring
        for ro in g.of_type(ROLLOUT)
        if s.ring_devices.get(ro["name"]) is None
        for ring in g.rings(ro)
        if not membership_at_load(str(dig(ring, "inputs", "platform")))
    ]
    if not cloud:
        raise NotApplicable("every ring's devices are computed when the stack loads (local fleet)")
    unknown = [r for r in cloud if ring_name(r) not in (s.declared_ring_devices.get(str(dig(r, "inputs", "platform"))) or {})]
    for ring in unknown:
        yield Finding(
            f"ring {ring_name(ring)!r} ({dig(ring, 'inputs', 'platform')}) does not declare how many devices it reaches: an empty ring "
            "would only show at its deadline",
            ring["urn"],
        )


def selectors_may_overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two device groups (platform, labels, device ids) can select one device: on one platform, shared ids, or
    labels no key of which differs. Restated from components/rollout/membership.py for the standard library (a parity
    test keeps them equal)."""
    if a.get("platform") != b.get("platform"):
        return False
    if set(a.get("devices") or ()) & set(b.get("devices") or ()):
        return True
    la, lb = a.get("labels") or {}, b.get("labels") or {}
    return bool(la) and bool(lb) and all(la[k] == lb[k] for k in la.keys() & lb.keys())


def check_one_rollout_per_device(g: Graph, s: Settings) -> Iterator[Finding]:
    """Two rollouts of one model on devices both reach would each set versions the other's gates never judged."""
    rollouts = g.of_type(ROLLOUT)
    if len(rollouts) < 2:
        raise NotApplicable("fewer than two rollouts")
    groups = g.groups()
    seen: list[tuple[dict, list[Mapping[str, Any]]]] = []
    for ro in rollouts:
        mine = [dig(groups.get(str(dig(r, "inputs", "group"))), "inputs") or {} for r in g.rings(ro)]
        for other, theirs in seen:
            if dig(other, "inputs", "model") != dig(ro, "inputs", "model"):
                continue
            if any(a is b or selectors_may_overlap(a, b) for a in mine for b in theirs):
                yield Finding(
                    f"rollouts {other['name']!r} and {ro['name']!r} both ship model {dig(ro, 'inputs', 'model')!r} to groups that can "
                    "hold the same devices: give each rollout of a model its own devices, or make them one rollout",
                    ro["urn"],
                )
        seen.append((ro, mine))


# GateConfig's quality criteria (components/rollout/spec.py QUALITY_CRITERIA; a test keeps the two lists equal)
QUALITY_CRITERIA = ("min_agreement", "max_latency_ratio", "max_distribution_shift", "max_confidence_drop", "min_live_accuracy")


def check_production_quality(g: Graph, s: Settings) -> Iterator[Finding]:
    """A production rollout whose gates set no quality criterion: they would pass a model that runs fast and clean
    and answers wrong (a broken export that always says one class, two classes swapped)."""
    if not s.production:
        raise NotApplicable("not a production stack (edgefleet:policy.production is false)")
    rollouts = g.of_type(ROLLOUT)
    if not rollouts:
        raise NotApplicable("the stack declares no rollouts")
    for ro in rollouts:
        rings = g.rings(ro)
        if any(dig(r, "inputs", "gate", c) is not None for r in rings for c in QUALITY_CRITERIA):
            continue
        yield Finding(
            f"rollout {ro['name']!r} ships to production with gates that judge only health (failures, errors, NaN/Inf, "
            f"latency): no ring sets a quality criterion ({', '.join(QUALITY_CRITERIA)}), so a model that answers wrong, "
            "fast and without errors passes every gate; shadow the candidate on the canary (shadow_soak_seconds, "
            "min_agreement) or compare a ring with the devices still on the previous version (max_distribution_shift)",
            ro["urn"],
        )
