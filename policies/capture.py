"""The sample-capture rule: a stack whose rings capture samples (a ring's `capture`) declares where captured data may
go, for how long and why (`edgefleet:capture: {store, retention_days, purpose}`), and that is not the model store.

Mandatory by default: captured samples are the devices' real inputs (camera frames, sensor readings), and once a
device has written them they have left it; a destination, retention and purpose must be decided before the first one
is taken, not reviewed afterwards. A stack may lower it to advisory in `edgefleet:policy.enforcement` (say, a lab
stack with synthetic traffic), which shows in every policy report.

Standard library only; imports graph, engine and settings, as `policies.x` or, in the CrossGuard pack's own
virtualenv, as `x`.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

if __package__:
    from .engine import Finding, NotApplicable
    from .graph import RING, STORE, Graph, dig, ring_name
    from .settings import Settings
else:
    from engine import Finding, NotApplicable  # type: ignore[no-redef]
    from graph import RING, STORE, Graph, dig, ring_name  # type: ignore[no-redef]
    from settings import Settings  # type: ignore[no-redef]

CAPTURE_RULE = "capture-destination-declared"


def _missing(dest: Mapping[str, Any] | None) -> list[str]:
    if not isinstance(dest, Mapping):
        return ["store", "retention_days", "purpose"]
    out = [k for k in ("store", "purpose") if not isinstance(dest.get(k), str) or not dest.get(k, "").strip()]
    days = dest.get("retention_days")
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        out.append("retention_days")
    return out


def _model_store_locations(g: Graph) -> set[str]:
    """What the graph says the model stores are (their uri/path inputs or outputs), to keep captures out of them."""
    out = set()
    for rec in g.of_type(STORE):
        for where in ("inputs", "outputs"):
            for key in ("uri", "path", "url", "bucket", "container"):
                value = dig(rec, where, key)
                if isinstance(value, str) and value:
                    out.add(value.rstrip("/"))
    return out


def check_capture_destination(g: Graph, s: Settings) -> Iterator[Finding]:
    capturing = [r for r in g.of_type(RING) if isinstance(dig(r, "inputs", "capture"), Mapping)]
    if not capturing:
        raise NotApplicable("no ring captures samples (no ring declares capture)")
    dest = s.capture_destination
    missing = _missing(dest)
    if missing:
        for ring in capturing:
            yield Finding(
                f"ring {ring_name(ring)!r} of rollout {dig(ring, 'inputs', 'rollout')!r} captures samples, but the stack does not "
                f"declare where captured data may go: edgefleet:capture lacks {', '.join(missing)} "
                "(declare edgefleet:capture: {store, retention_days, purpose}; docs/capture.md)",
                ring["urn"],
            )
        return
    assert dest is not None
    store = str(dest["store"]).rstrip("/")
    for location in _model_store_locations(g):
        if store == location or store.startswith(location + "/") or location.startswith(store + "/"):
            yield Finding(
                f"edgefleet:capture.store {dest['store']!r} overlaps the model store {location!r}: the model store is the "
                "devices' read-only update repository; captured data goes to a store of its own",
                None,
            )
