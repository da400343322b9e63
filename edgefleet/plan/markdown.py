"""The plan as a pull-request comment: Markdown that one sticky comment (found by COMMENT_MARKER) keeps up to date.

Pure over the plan's data; imports diff (the action order) and policies/ (the share format).
"""

from __future__ import annotations

from typing import Any, Mapping

from edgefleet.plan.diff import ACTIONS
from policies.rollouts import fmt_share

COMMENT_MARKER = "<!-- edgefleet-plan -->"


def _num(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,} B"


def _signed(n: float, unit: str = "") -> str:
    return f"{n:+,}{unit}" if isinstance(n, int) else f"{n:+.4g}{unit}"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _value(value: float | None, how: str | None) -> str:
    """A metric's value and how it is known: measured on a pinned set, or declared (typed in)."""
    return "—" if value is None else f"{value} ({how})"


def _evaluation_md(m: dict[str, Any]) -> list[str]:
    ev, base = m["evaluation"]["new"], m["evaluation"]["old"]
    if m["status"] == "removed" or not (ev or m["metrics"]):
        return []
    if ev is None:
        text = "**Evaluation:** none measured; every metric above is declared (typed in with `edgefleet model add --metric`)"
        return ["", text + (f", while the base was measured on `{_md(base['dataset'])}`." if base else ".")]
    sha = str(ev["dataset_sha256"] or "")
    text = (
        f"**Evaluation:** {', '.join(ev['metrics'])} measured with {_md(ev['measured_with'])} on `{_md(ev['dataset'])}` "
        f"({ev['samples']} samples, sha256 `{sha[:16]}…`), output `{_md(ev['output'])}`"
    )
    if base is None and any(r["old_how"] == "declared" for r in m["metrics"]):
        text += "; the base's metrics were declared"
    elif base is not None and base["dataset_sha256"] != ev["dataset_sha256"]:
        text += f"; the base was measured on `{_md(base['dataset'])}` (sha256 `{str(base['dataset_sha256'])[:16]}…`)"
    return ["", text + "."]


def _model_md(m: dict[str, Any]) -> list[str]:
    old, new = m["old"], m["new"]
    if m["status"] == "added":
        head = f"#### `{m['name']}` — new model {new['version']}"
    elif m["status"] == "removed":
        return [f"#### `{m['name']}` — removed (was {old['version']})", ""]
    else:
        head = f"#### `{m['name']}` {old['version']} → {new['version']}"
    lines = [head, "", "| | base | this change |", "|---|---|---|"]
    for key, label in (
        ("version", "version"),
        ("sha256", "sha256"),
        ("size", "size"),
        ("opset", "opset"),
        ("min_agent_version", "min agent"),
    ):
        a, b = (old or {}).get(key), new.get(key)
        if key == "sha256":
            a, b = (f"`{a[:16]}…`" if a else "—"), f"`{b[:16]}…`"
        elif key == "size":
            delta = f" ({_signed(m['size_delta'])} B, {m['size_delta'] / old['size'] * 100:+.1f}%)" if old and m["size_delta"] else ""
            a, b = (_bytes(a) if old else "—"), _bytes(b) + delta
        else:
            a = a if old else "—"
        lines.append(f"| {label} | {a} | {b}{' ✱' if old and (old or {}).get(key) != new.get(key) else ''} |")
    io = m["io"]
    badge = {"unchanged": "✅ unchanged", "compatible": "✅ compatible", "breaking": "⛔ **breaking**", "new": "new"}.get(
        io["verdict"], io["verdict"]
    )
    lines += ["", f"**I/O signature: {badge}**", ""]
    lines += [f"- input `{_md(s)}`" for s in io["inputs"]] + [f"- output `{_md(s)}`" for s in io["outputs"]]
    for c in io["changes"]:
        lines.append(f"- {'⛔' if c['breaking'] else '➕'} {c['kind']} `{c['name']}`: {_md(c['detail'])}")
    if m["metrics"]:
        lines += ["", "| metric | dataset | base | this change | change |", "|---|---|---|---|---|"]
        for r in m["metrics"]:
            arrow = "↑" if r["higher_is_better"] else "↓"
            delta = "" if r["delta"] is None else _signed(r["delta"])
            dataset = _md(r["dataset"]) + (f" (base: {_md(r['old_dataset'])})" if r.get("old_dataset") else "")
            lines.append(
                f"| {r['name']} {arrow} | {dataset} | {_value(r['old'], r['old_how'])} | "
                f"{_value(r['new'], r['new_how'])} | {delta} {r['verdict']} |"
            )
    lines += _evaluation_md(m)
    t = m["targets"]
    lines += ["", "**Targets:** " + "; ".join(t["all"])]
    for kind in ("added", "removed", "changed"):
        if t[kind]:
            lines.append(f"- target {kind}: " + "; ".join(t[kind]))
    return lines + [""]


def _rollout_md(r: dict[str, Any]) -> list[str]:
    if r["status"] == "removed":
        return [
            f"#### Rollout `{r['name']}` — removed (devices keep {r['model']} {r['from_version']}; rings {', '.join(r['removed_rings'])} go away)",
            "",
        ]
    what = (
        f"{r['model']} {r['from_version']} → {r['to_version']}"
        if r["status"] == "changed" and r["version_changed"]
        else f"{r['model']} {r['to_version']}"
    )
    lines = [f"#### Rollout `{r['name']}`: {what}" + (" (new rollout)" if r["status"] == "new" else ""), ""]
    cap_only = (
        not r.get("removed_rings")
        and any(row["changes"] for row in r["rings"])
        and all(row["status"] != "new" and set(row["changes"]) <= {"download cap"} for row in r["rings"])
    )
    if not r["version_changed"] and cap_only and r["status"] == "changed":
        lines += [
            f"The model and the ring layout do not change; download caps do. Nothing is downloaded now (the devices already "
            f"run {r['model']} {r['to_version']}): the caps ride in the rings' desired states from the next version rolled out.",
            "",
        ]
    elif not r["version_changed"]:
        lines += [
            f"The model does not change; the ring layout does. Devices that land in a new or changed ring are "
            f"(re)targeted with {r['model']} {r['to_version']}.",
            "",
        ]
    declared = r.get("counted") == "declared"
    if declared:
        platform = (r["rings"][0]["platform"] if r["rings"] else None) or "aws"
        fleet = (
            f"{r['devices']:,} devices as declared in `edgefleet:{platform}.rings.<ring>.devices`: rings select devices by "
            f"thing attributes / twin tags, so the devices that register decide the real counts at deploy"
        )
        whole = "of the rollout's declared devices"
    elif r["devices"] is not None:
        fleet = f"{r['devices']:,} devices in its groups" + (f", {r['fleet']:,} in the stack's fleet" if r["fleet"] else "")
        whole = "of the fleet" if r["fleet"] else "of its groups' devices"
    else:
        fleet = "device counts are known at deploy: rings select devices by thing attributes / twin tags"
        whole = ""
    builds = any(set(row.get("variants") or {}) - {"fp32"} or row.get("no_variant_fits") for row in r["rings"])
    lines += [
        f"Rings run in this order, each after the previous one's gate passes ({fleet}):",
        "",
        "| step | ring | selects | devices | cumulative devices | cumulative share | gate |"
        + (" builds (devices, bytes) |" if builds else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if builds else ""),
    ]
    for row in r["rings"]:
        mark = {"new": " 🆕", "changed": " ✱"}.get(row["status"], "")
        devices = _num(row["devices"]) if row["devices"] is not None else "known at deploy"
        if row["counted"] == "declared":
            devices += " (declared)"
        if row["base_devices"] is not None and row["devices"] is not None and row["base_devices"] != row["devices"]:
            devices += f" (was {row['base_devices']:,})"
        lines.append(
            f"| {row['index'] + 1} | `{row['name']}`{mark} | {_md(row['selector'])} | {devices} | {_num(row['cumulative'])} | "
            f"{_share(row)} | {_md(row['gate_summary'])} |" + (f" {_builds(row)} |" if builds else "")
        )
    if r.get("control_holdback"):
        held = f"{r['control_devices']:,} devices, " if r.get("control_devices") is not None else ""
        lines += [
            "",
            f"Control holdback: {held}{fmt_share(r['control_holdback'])} of each group, stays on the previous version as the "
            "control group the rings' quality is compared with, then follows once the last gate passes.",
            "",
        ]
    lines += _transfer_md(r)
    for row in r["rings"]:
        if row["changes"]:
            lines.append(f"- ring `{row['name']}` changed: {', '.join(row['changes'])}")
        if row.get("windows"):
            opens = f"next opens {row['next_window']}" if row.get("next_window") else "**opens within no year**"
            lines.append(f"- ring `{row['name']}` deploys only in its group's maintenance windows ({_md(row['windows'])}): {opens}")
        if row.get("download_cap"):
            where = "set on the ring" if row.get("download_cap_from") == "ring" else f"set on group {row['group']}"
            line = f"- ring `{row['name']}`: each device downloads at most {_rate(row['download_cap'])} ({where})"
            if row.get("download_seconds") is not None:
                line += f"; a full download of {r['model']} {r['to_version']} takes at least {row['download_seconds']:,.1f}s"
                soak, deadline = row["gate"].get("soak_seconds") or 0, row["gate"].get("deadline_seconds")
                if deadline is not None and row["download_seconds"] + soak > deadline:
                    line += (
                        f", which with the {soak:g}s soak exceeds the gate's deadline_seconds ({deadline:g}): **the gate would time "
                        "out** unless the devices hold the version already or take a patch; raise the deadline or the cap"
                    )
            lines.append(line)
    if r["removed_rings"]:
        lines.append(f"- rings removed: {', '.join(r['removed_rings'])}")
    first = r["rings"][0] if r["rings"] else None
    if first and first["devices"] is not None:
        share = f" ({_share(first)} {whole})" if first["share"] is not None else ""
        lines += [
            "",
            f"Blast radius of step 1: **{first['devices']:,} device(s){' (declared)' if declared else ''}**{share} "
            f"for at least {first['soak_seconds']:g}s before ring `{r['rings'][1]['name'] if len(r['rings']) > 1 else '—'}` sees it.",
        ]
    return lines + [""]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:,} B"


def _transfer_md(r: dict[str, Any]) -> list[str]:
    """Bytes each ring ships, full and with the delta patch (edgefleet/plan/transfer.py)."""
    d = r.get("delta")
    if not d:
        return []
    why = {
        "published": f"the store's published patch from {d['from_version']}, {_size(d['patch_bytes'] or 0)}",
        "publishable": f"a patch from {d['from_version']} that `edgefleet up` will publish, {_size(d['patch_bytes'] or 0)}",
        "too large": f"the patch from {d['from_version']} ({_size(d['patch_bytes'] or 0)}) is over edgefleet:delta.max_share "
        f"({fmt_share(d['max_share'])}), so devices download the full artifact",
        "unavailable": f"no patch: the artifact of {d['from_version']} is not in the local store or at the base ref",
        "disabled": "deltas are off (edgefleet:delta.enabled)",
    }[d["state"]]
    rings = "; ".join(
        f"`{row['name']}` {_size(row['bytes_full'])} full, {_size(row['bytes_delta'])} with deltas"
        for row in r["rings"]
        if "bytes_full" in row
    )
    return [
        "",
        f"Bytes to ship, each device assumed on {d['from_version']} ({_size(d['artifact_bytes'])} artifact; {why}): {rings}. "
        f"In all: **{_size(d['bytes_full'])} full, {_size(d['bytes_delta'])} with deltas**.",
    ]


def _builds(row: Mapping[str, Any]) -> str:
    """Which build how many of the ring's devices get and their bytes, short: `fp32 8 (2.1 MB) · int8 2 (140 kB)`."""
    parts = []
    for kind, b in (row.get("variants") or {}).items():
        parts.append(f"{kind} {b['devices']:,} ({_size(b['bytes'])})" if b["devices"] is not None else f"{kind} ({_size(b['size'])} each)")
    unfit = row.get("no_variant_fits")
    if unfit:
        parts.append(f"⛔ fits none: {unfit['devices'] if unfit['devices'] is not None else 'all'}")
    return " · ".join(parts) or "—"


def _share(row: Mapping[str, Any]) -> str:
    """The cumulative share after this step: of the stack's fleet when known, else of the rollout's devices."""
    if row["share"] is None:
        return "n/a"
    return fmt_share(row["stack_share"] if row["stack_share"] is not None else row["share"])


def _resources_md(res: dict[str, Any]) -> list[str]:
    counts = res["counts"]
    lines = ["### Resources", "", " · ".join(f"**{counts[a]}** {a}" for a in ACTIONS), ""]
    replaced = [e for e in res["changes"] if e["action"] == "replace"]
    for e in replaced:
        lines.append(f"- ⚠️ **replace** `{e['type']}` **{e['name']}**: {_md(e['why'])}")
    if replaced:
        lines.append("")
    for action in ACTIONS:
        entries = [e for e in res["changes"] if e["action"] == action]
        if not entries:
            continue
        by_type: dict[str, list[dict]] = {}
        for e in entries:
            by_type.setdefault(e["type"], []).append(e)
        lines += [f"<details><summary>{action}: {len(entries)}</summary>", "", "| type | resources |", "|---|---|"]
        for type_, es in by_type.items():
            names = ", ".join(f"{e['name']}" + (f" ({', '.join(e['changed'])})" if e["changed"] else "") for e in es)
            lines.append(f"| `{type_}` | {_md(names)} |")
        lines += ["", "</details>", ""]
    return lines


def policy_md(policy: dict[str, Any]) -> list[str]:
    icon = {"passed": "✅", "failed": "❌", "not-applicable": "➖", "disabled": "⏸"}
    status = "❌ **blocked**: " + ", ".join(f"`{n}`" for n in policy["blocking"]) if policy["blocking"] else "✅ passed"
    lines = [
        "### Policy",
        "",
        f"{status}"
        + ("" if policy["has_base"] else " (no base graph: regression checks not run)")
        + (" · judged by the base's rules and settings" if policy.get("judged_by") == "base" else ""),
        "",
        "| rule | level | result | details |",
        "|---|---|---|---|",
    ]
    for r in policy["rules"]:
        result = icon.get(r["status"], "") + " " + r["status"]
        if r["status"] == "failed" and r["level"] == "advisory":
            result = "⚠️ advisory"
        details = "<br>".join(_md(("(unverified) " if f["unverified"] else "") + f["message"]) for f in r["findings"]) or _md(r["note"])
        lines.append(f"| `{r['name']}` | {r['level']} | {result} | {details} |")
    return lines + [""]


def render_markdown(plan: dict[str, Any]) -> str:
    base = f"`{plan['base_ref']}`" if plan["base_ref"] else "nothing"
    lines = [COMMENT_MARKER, f"## edgefleet plan · stack `{plan['stack']}` · {base} → this change", ""]
    if plan.get("weakens_policy"):
        lines += ["> [!WARNING]", "> **This change weakens policy.** The base's policy judged it; once merged, these judge what follows:"]
        lines += [f"> - {_md(w)}" for w in plan["weakens_policy"]]
        lines += ["> Changes to policy settings, `policies/` and `.github/workflows/` need a code owner's review (CODEOWNERS).", ""]
    if plan.get("base_note"):
        lines += [f"_{plan['base_note']}: everything below is new._", ""]
    if not plan["changed"]:
        lines += ["**No changes.** This change leaves every model, rollout and resource of this stack as it is; no device is affected.", ""]
        return "\n".join(lines + policy_md(plan["policy"]))
    counts = plan["resources"]["counts"]
    shipping = [r for r in plan["rollouts"] if r["status"] != "removed"]
    summary = [
        f"{len(plan['models'])} model(s) changed" if plan["models"] else "no model changes",
        f"{len(shipping)} rollout(s) ship" if shipping else "no rollout ships",
        ", ".join(f"{counts[a]} {a}" for a in ACTIONS if counts[a]) or "no resource changes",
    ]
    lines += ["**Summary:** " + "; ".join(summary) + ".", ""]
    if plan["models"]:
        lines += ["### Models", ""]
        for m in plan["models"]:
            lines += _model_md(m)
    if plan["rollouts"]:
        lines += ["### Rollouts", ""]
        for r in plan["rollouts"]:
            lines += _rollout_md(r)
    lines += _resources_md(plan["resources"])
    lines += policy_md(plan["policy"])
    return "\n".join(lines)


def _rate(bytes_per_second: int) -> str:
    """A download cap as a reader checks it: bytes a second, and the link speed that is (decimal units, as links are sold)."""
    bits = bytes_per_second * 8
    if bits >= 1e9:
        speed = f"{bits / 1e9:g} Gbit/s"
    elif bits >= 1e6:
        speed = f"{bits / 1e6:g} Mbit/s"
    else:
        speed = f"{bits / 1e3:g} kbit/s" if bits >= 1e3 else f"{bits:g} bit/s"
    return f"{bytes_per_second:,} B/s ({speed})"
