"""What changes between two graphs: models (versions, I/O signature, metrics measured or declared and the evaluation set
they were measured on, targets), rollouts (rings in order,
devices and cumulative share per step, gates) and resources (create / update / replace / delete by URN).

Pure over the graphs; imports policies/ (graph views, I/O compatibility, share format), membership and replace.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Mapping

from components.rollout.windows import MaintenanceWindow, Windows
from edgefleet.plan.membership import Membership
from edgefleet.plan.replace import follow_moved_providers, replace_keys, top_key
from edgefleet.plan.variants import Hardware, parse_manifest, ring_variants
from edgefleet_agent.contract.manifest import ModelManifest
from policies.compatibility import compare_io, signature_text
from policies.graph import ROLLOUT, Graph, dig, manifest_of, ring_name
from policies.models import how, metrics_of, same_dataset
from policies.rollouts import fmt_share

ACTIONS = ("create", "replace", "update", "delete")


# -- models -----------------------------------------------------------------------------------------------------------
def _metric_rows(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per metric: base and new value, each `measured` or `declared` (old_how / new_how), and the verdict."""
    olds, news = metrics_of(old or {}), metrics_of(new or {})
    rows = []
    for name in list(olds) + [n for n in news if n not in olds]:
        a, b = olds.get(name), news.get(name)
        higher = (b or a)["higher_is_better"]
        row = {
            "name": name,
            "dataset": (b or a)["dataset"],
            "higher_is_better": higher,
            "old": a["value"] if a else None,
            "new": b["value"] if b else None,
            "old_how": how(a) if a else None,
            "new_how": how(b) if b else None,
            "delta": None,
        }
        if a and b:
            row["delta"] = round(b["value"] - a["value"], 10)
            if not same_dataset(a, b):
                row["verdict"] = "not comparable (dataset changed)"
                row["old_dataset"] = a.get("dataset")
            elif row["delta"] == 0:
                row["verdict"] = "same"
            else:
                row["verdict"] = "improved" if (row["delta"] > 0) == higher else "regressed"
        else:
            row["verdict"] = "added" if b else "removed"
        rows.append(row)
    return rows


def _target_text(t: Mapping[str, Any]) -> str:
    return f"{t['name']} ({t['arch']}, {'/'.join(e.removesuffix('ExecutionProvider') for e in t['execution_providers'])}, {t['memory_mb']} MB RAM, {t['storage_mb']} MB disk)"


def _evaluation(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What the manifest's measured metrics were measured on; None when it has none (every metric declared)."""
    ev = (m or {}).get("evaluation")
    if not isinstance(ev, Mapping):
        return None
    return {
        "dataset": ev.get("dataset"),
        "dataset_sha256": ev.get("dataset_sha256"),
        "samples": ev.get("samples"),
        "output": ev.get("output"),
        "measured_with": ev.get("measured_with"),
        "metrics": [x.get("name") for x in ev.get("metrics") or []],
    }


def _model_facts(m: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {k: m.get(k) for k in ("version", "sha256", "size", "opset", "min_agent_version")}


def diff_models(base: Mapping[str, dict], head: Mapping[str, dict]) -> list[dict[str, Any]]:
    out = []
    for name in sorted(set(base) | set(head)):
        old, new = manifest_of(base[name]) if name in base else None, manifest_of(head[name]) if name in head else None
        if old == new:
            continue
        status = "added" if old is None else "removed" if new is None else "changed"
        io = compare_io(old, new) if old and new else None
        olds_t = {t["name"]: t for t in (old or {}).get("targets") or []}
        news_t = {t["name"]: t for t in (new or {}).get("targets") or []}
        out.append(
            {
                "name": name,
                "status": status,
                "old": _model_facts(old),
                "new": _model_facts(new),
                "size_delta": (new["size"] - old["size"]) if old and new else None,
                "io": {
                    "verdict": io.verdict if io else ("new" if new else "removed"),
                    "changes": [
                        {"kind": c.kind, "name": c.name, "detail": c.detail, "breaking": c.breaking} for c in (io.changes if io else ())
                    ],
                    "inputs": [f"{t['name']}: {signature_text(t)}" for t in (new or old).get("inputs") or []],
                    "outputs": [f"{t['name']}: {signature_text(t)}" for t in (new or old).get("outputs") or []],
                },
                "metrics": _metric_rows(old, new),
                "evaluation": {"old": _evaluation(old), "new": _evaluation(new)},
                "targets": {
                    "added": [_target_text(t) for n, t in news_t.items() if n not in olds_t],
                    "removed": [_target_text(t) for n, t in olds_t.items() if n not in news_t],
                    "changed": [_target_text(t) for n, t in news_t.items() if n in olds_t and olds_t[n] != t],
                    "all": [_target_text(t) for t in news_t.values()],
                },
            }
        )
    return out


# -- rollouts ---------------------------------------------------------------------------------------------------------
GATE_KEYS = (
    "soak_seconds",
    "deadline_seconds",
    "min_reporting_share",
    "success_share",
    "max_failure_share",
    "max_error_rate",
    "max_invalid_output_share",
    "max_p99_latency_ms",
)


def gate_summary(gate: Mapping[str, Any]) -> str:
    parts = [
        f"soak {gate.get('soak_seconds', 0):g}s",
        f"deadline {gate.get('deadline_seconds', 0):g}s",
        f"reporting ≥ {fmt_share(gate.get('min_reporting_share', 0))}",
        f"healthy ≥ {fmt_share(gate.get('success_share', 0))}",
        f"failed ≤ {fmt_share(gate.get('max_failure_share', 0))}",
    ]
    if gate.get("max_error_rate") is not None:
        parts.append(f"error rate ≤ {fmt_share(gate['max_error_rate'])}")
    if gate.get("max_invalid_output_share") is not None:
        parts.append(f"NaN/Inf outputs ≤ {fmt_share(gate['max_invalid_output_share'])}")
    if gate.get("max_p99_latency_ms") is not None:
        parts.append(f"p99 ≤ {gate['max_p99_latency_ms']:g} ms")
    return ", ".join(parts + quality_summary(gate))


def quality_summary(gate: Mapping[str, Any]) -> list[str]:
    """The gate's quality criteria as the plan prints them (none when the gate declares none)."""
    out = []
    if gate.get("shadow_soak_seconds") is not None:
        out.append(f"shadows the candidate {gate['shadow_soak_seconds']:g}s first")
    if gate.get("min_agreement") is not None:
        out.append(f"shadow agreement ≥ {fmt_share(gate['min_agreement'])}")
    if gate.get("max_latency_ratio") is not None:
        vs = "the served model (shadow)" if gate.get("shadow_soak_seconds") is not None else "the control group"
        out.append(f"p50 latency ≤ {gate['max_latency_ratio']:g}x {vs}")
    if gate.get("max_distribution_shift") is not None:
        out.append(f"prediction shift vs control ≤ {gate['max_distribution_shift']:g} (TVD, chi-square p < 0.01)")
    if gate.get("max_confidence_drop") is not None:
        out.append(f"confidence drop vs control ≤ {gate['max_confidence_drop']:g}")
    if gate.get("min_live_accuracy") is not None:
        out.append(f"live accuracy ≥ {fmt_share(gate['min_live_accuracy'])}")
    if out:
        out.append(f"≥ {gate.get('min_quality_samples', 200):,} samples a side")
    return out


def _selector(ring: Mapping[str, Any], group: Mapping[str, Any] | None) -> str:
    inputs = ring.get("inputs") or {}
    what = f"group {inputs.get('group')}"
    if inputs.get("percent") is not None:
        what = f"{inputs['percent']:g}% of {what}"
    if inputs.get("labels"):
        what += " where " + ", ".join(f"{k}={v}" for k, v in sorted(inputs["labels"].items()))
    hw = dig(group or {}, "inputs", "hardware", "name")
    return what + (f" [{hw}]" if hw else "")


def _ring_rows(
    g: Graph,
    rollout: Mapping[str, Any],
    counts: Mapping[str, int] | None,
    fleet: int | None,
    stack_fleet: int | None,
    base_rings: Mapping[str, dict],
    base_counts: Mapping[str, int] | None,
    counted: str | None = None,
    manifest: ModelManifest | None = None,
    hardware: Mapping[str, Mapping[Hardware, int]] | None = None,
    base_groups: Mapping[str, Any] | None = None,
) -> list[dict]:
    groups = g.groups()
    base_groups = base_groups or {}
    rows, cumulative = [], 0
    for ring in g.rings(rollout):
        inputs = ring.get("inputs") or {}
        name = ring_name(ring)
        devices = counts[name] if counts is not None and name in counts else None
        old = base_rings.get(name)
        changes = []
        if old is None:
            status = "new"
        else:
            for key in ("index", "group", "percent", "labels", "gate", "platform"):
                if dig(old, "inputs", key) != inputs.get(key):
                    changes.append(key)
            if _download_cap(old, base_groups.get(dig(old, "inputs", "group"), {})) != _download_cap(
                ring, groups.get(inputs.get("group"), {})
            ):
                changes.append("download cap")
            status = "changed" if changes else "unchanged"
        base_devices = base_counts[name] if base_counts is not None and name in base_counts else None
        if old is not None and None not in (devices, base_devices) and devices != base_devices:
            changes.append("devices")
            status = "changed"
        if devices is not None:
            cumulative += devices
        builds = _builds(manifest, (hardware or {}).get(name), dig(groups.get(inputs.get("group"), {}), "inputs", "hardware"))
        rows.append(
            {
                "index": inputs.get("index"),
                "name": name,
                "group": inputs.get("group"),
                "platform": inputs.get("platform"),
                "hardware": dig(groups.get(inputs.get("group"), {}), "inputs", "hardware", "name"),
                "percent": inputs.get("percent"),
                "labels": inputs.get("labels") or {},
                "selector": _selector(ring, groups.get(inputs.get("group"))),
                "devices": devices,
                "counted": counted if devices is not None else None,
                "base_devices": base_devices,
                "cumulative": cumulative if devices is not None else None,
                "share": (cumulative / fleet) if devices is not None and fleet else None,
                "stack_share": (cumulative / stack_fleet) if devices is not None and stack_fleet else None,
                "soak_seconds": dig(inputs, "gate", "soak_seconds"),
                "gate": {k: dig(inputs, "gate", k) for k in GATE_KEYS},
                "gate_summary": gate_summary(inputs.get("gate") or {}),
                "status": status,
                "changes": changes,
                **_window(groups.get(inputs.get("group"), {})),
                **_download_cap(ring, groups.get(inputs.get("group"), {}), manifest),
                **builds,
            }
        )
    return rows


def _window(group: Mapping[str, Any]) -> dict[str, Any]:
    """A ring over a group with maintenance windows: them, and when the next one opens (UTC, from now)."""
    declared = dig(group, "inputs", "maintenance_windows")
    if not declared:
        return {}
    windows = Windows(dig(group, "inputs", "timezone") or "UTC", tuple(MaintenanceWindow.model_validate(w) for w in declared))
    opens = windows.next_open(time.time())
    when = datetime.fromtimestamp(opens, timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if opens is not None else None
    return {"windows": windows.describe(), "next_window": when}


def _download_cap(ring: Mapping[str, Any], group: Mapping[str, Any], manifest: ModelManifest | None = None) -> dict[str, Any]:
    """A ring whose devices download under a cap: bytes a second, whether the ring's own setting or its group's, and
    (the manifest known) how long a full download of the reference artifact takes at that rate at least."""
    own, of_group = dig(ring, "inputs", "max_download_bytes_per_second"), dig(group, "inputs", "max_download_bytes_per_second")
    if own is not None:
        out = {"download_cap": own, "download_cap_from": "ring"}
    elif of_group is not None:
        out = {"download_cap": of_group, "download_cap_from": "group"}
    else:
        return {}
    if manifest is not None:
        out["download_seconds"] = manifest.size / out["download_cap"]
    return out


def _builds(manifest: ModelManifest | None, counted: Mapping[Hardware, int] | None, profile: Any) -> dict[str, Any]:
    """The ring's `variants` ({kind: {devices, bytes, size}}: which build how many of its devices get, as each device
    chooses) and `no_variant_fits` (devices that fit none, with why), where the manifest and the devices' hardware
    are known: counted devices, else the group's hardware profile with counts unknown before deploy."""
    if manifest is None:
        return {}
    if counted is None:
        if not isinstance(profile, Mapping) or not {"arch", "execution_providers", "memory_mb"} <= set(profile):
            return {}
        counted = {(profile["arch"], tuple(profile["execution_providers"]), int(profile["memory_mb"])): None}  # type: ignore[dict-item]
    variants, unfit = ring_variants(manifest, counted)
    return {"variants": variants, **({"no_variant_fits": unfit} if unfit else {})}


def diff_rollouts(base_g: Graph, head_g: Graph, base_m: Membership, head_m: Membership) -> list[dict[str, Any]]:
    base_ro = {r["name"]: r for r in base_g.of_type(ROLLOUT)}
    out = []
    for ro in head_g.of_type(ROLLOUT):
        name, inputs = ro["name"], ro.get("inputs") or {}
        old = base_ro.get(name)
        base_rings = {ring_name(r): r for r in base_g.rings(old)} if old else {}
        counted = head_m.counted(name)
        stack_fleet = head_m.fleet if counted == "local" else None  # declared sizes are of this rollout's rings only
        model = head_g.models().get(inputs.get("model"))
        manifest = parse_manifest(manifest_of(model)) if model is not None else None
        if manifest is not None and (manifest.version, manifest.sha256) != (inputs.get("version"), inputs.get("sha256")):
            manifest = None  # the rollout ships another version than the model declares: no builds to show
        rows = _ring_rows(
            head_g,
            ro,
            head_m.rings.get(name),
            head_m.rollout_devices.get(name),
            stack_fleet,
            base_rings,
            base_m.rings.get(name),
            counted,
            manifest,
            (head_m.hardware or {}).get(name),
            base_groups=base_g.groups(),
        )
        removed = [n for n in base_rings if n not in {r["name"] for r in rows}]
        version_changed = (
            old is None or dig(old, "inputs", "sha256") != inputs.get("sha256") or dig(old, "inputs", "version") != inputs.get("version")
        )
        rings_changed = (
            bool(removed)
            or any(r["status"] != "unchanged" for r in rows)
            or (old is not None and dig(old, "inputs", "control_holdback") != inputs.get("control_holdback"))
        )
        if old is not None and not version_changed and not rings_changed:
            continue
        out.append(
            {
                "name": name,
                "model": inputs.get("model"),
                "status": "new" if old is None else "changed",
                "from_version": dig(old, "inputs", "version") if old else None,
                "to_version": inputs.get("version"),
                "from_sha256": dig(old, "inputs", "sha256") if old else None,
                "to_sha256": inputs.get("sha256"),
                "version_changed": version_changed,
                "rings": rows,
                "removed_rings": removed,
                "devices": head_m.rollout_devices.get(name),
                "fleet": stack_fleet,
                "counted": counted,
                **(
                    {"control_holdback": inputs["control_holdback"], "control_devices": (head_m.control or {}).get(name)}
                    if inputs.get("control_holdback")
                    else {}
                ),
            }
        )
    for name, old in sorted(base_ro.items()):
        if name not in {r["name"] for r in head_g.of_type(ROLLOUT)}:
            out.append(
                {
                    "name": name,
                    "model": dig(old, "inputs", "model"),
                    "status": "removed",
                    "from_version": dig(old, "inputs", "version"),
                    "to_version": None,
                    "from_sha256": dig(old, "inputs", "sha256"),
                    "to_sha256": None,
                    "version_changed": True,
                    "rings": [],
                    "removed_rings": [ring_name(r) for r in base_g.rings(old)],
                    "devices": base_m.rollout_devices.get(name),
                    "fleet": base_m.fleet if base_m.counted(name) == "local" else None,
                    "counted": base_m.counted(name),
                }
            )
    return out


# -- resources ---------------------------------------------------------------------------------------------------------
def diff_resources(base: list[Mapping[str, Any]], head: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Create / update / replace / delete by URN, the way the engine decides (a new name or parent type is a new URN)."""
    olds = {r["urn"]: r for r in base}
    news = {r["urn"]: r for r in head}
    aliased: dict[str, str] = {}
    for urn, r in news.items():
        for alias in (r.get("options") or {}).get("aliases") or []:
            for old_urn, o in olds.items():
                if old_urn not in news and (alias == old_urn or (alias == o["name"] and o["type"] == r["type"])):
                    aliased[old_urn] = urn
    out = []
    for urn, r in news.items():
        old = olds.get(urn) or next((olds[o] for o, n in aliased.items() if n == urn), None)
        entry = {
            "urn": urn,
            "type": r["type"],
            "name": r["name"],
            "custom": r.get("custom", True),
            "changed": [],
            "replace_keys": [],
            "why": "",
        }
        if old is None:
            out.append({**entry, "action": "create"})
            continue
        a, b = old.get("inputs") or {}, r.get("inputs") or {}
        ignored = {p for p in (r.get("options") or {}).get("ignore_changes") or [] if top_key(p) == p}  # as Pulumi: old value kept
        changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in ignored)
        if old.get("parent") != r.get("parent"):
            changed.append("(parent)")
        if old["urn"] != urn:
            entry["why"] = f"renamed from {old['name']} (alias)"
        if not changed:
            if old["urn"] != urn:
                out.append({**entry, "action": "update"})
            continue
        keys, how = replace_keys(r, a, b, changed) if r.get("custom", True) else ([], "")
        out.append(
            {
                **entry,
                "action": "replace" if keys else "update",
                "changed": changed,
                "replace_keys": keys,
                "why": entry["why"] or (f"{', '.join(keys)} changed ({how})" if keys else ""),
            }
        )
    for urn, o in olds.items():
        if urn not in news and urn not in aliased:
            out.append(
                {
                    "urn": urn,
                    "type": o["type"],
                    "name": o["name"],
                    "custom": o.get("custom", True),
                    "action": "delete",
                    "changed": [],
                    "replace_keys": [],
                    "why": "",
                }
            )
    out = follow_moved_providers(news, out)
    order = {a: i for i, a in enumerate(ACTIONS)}
    return sorted(out, key=lambda e: (order[e["action"]], e["type"], e["name"]))
