"""Rollout timelines: a text log and a picture (rings × time, versions, adoption, gate results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PALETTE = ["#4C78A8", "#59A14F", "#E15759", "#B07AA1", "#F28E2B", "#76B7B2", "#EDC948"]


def text(records: list[dict[str, Any]], t0: float | None = None) -> list[str]:
    """One line per event, times relative to the first rollout's start."""
    if not records:
        return []
    t0 = t0 if t0 is not None else min(r["started_at"] for r in records)
    lines = []
    for r in records:
        for e in r["events"]:
            details = {k: v for k, v in e.items() if k not in ("t", "ring", "event")}
            counts = ""
            if "adopted" in details:
                counts = f" {details['adopted']}/{details['devices']} adopted, {details.get('failed', 0)} failed, {details.get('pending', 0)} pending"
            reasons = "; ".join(details["reasons"]) if details.get("reasons") else ""
            extra = f"  {reasons}" if reasons else ""
            version = (
                f" {details['version']}" if "version" in details else (f" → {details['to_version']}" if "to_version" in details else "")
            )
            if details.get("shadow"):
                version += f" (shadowing {details['shadow']})"
            lines.append(
                f"+{e['t'] - t0:7.1f}s  {r['model']} {r['version']:<8} {(e['ring'] or '-'):<8} {e['event']}{version}{counts}{extra}"
            )
    return lines


def picture(records: list[dict[str, Any]], path: Path, title: str = "edgefleet rollout timeline") -> Path:
    """Writes a PNG: one row per ring, a band per version deployed there, the adoption curve inside it,
    ✓/✗ where gates passed or failed, dotted bands where a ring shadowed a version without serving it, and hatched
    bands where a rollback restored the previous version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t0 = min(r["started_at"] for r in records)
    rings: list[str] = []
    for r in records:
        for ring in r["rings"]:
            if ring["name"] not in rings:
                rings.append(ring["name"])
    versions: list[str] = []
    for r in records:
        for v in (r.get("previous_version"), r["version"]):
            if v and v not in versions:
                versions.append(v)
    color = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(versions)}
    row = {name: len(rings) - 1 - i for i, name in enumerate(rings)}
    end = max((r.get("finished_at") or max((e["t"] for e in r["events"]), default=r["started_at"])) for r in records) - t0
    fig, ax = plt.subplots(figsize=(max(9, min(18, 4 + end / 6)), 1.3 + 1.1 * len(rings)), dpi=110)
    h = 0.7
    shadowed = False
    for r in records:
        rb = r.get("rollback") or {}
        rb_start = rb.get("started_at")
        for ring in r["rings"]:
            if ring["deployed_at"] is None:
                continue
            y = row[ring["name"]] - h / 2
            start = ring["deployed_at"] - t0
            stop = (ring["finished_at"] or r.get("finished_at") or (t0 + end)) - t0
            only_shadowed = ring.get("phase") == "shadow"
            if only_shadowed or ring.get("shadow_verdict"):  # the candidate ran beside the served version, answering nobody
                shadow_start = (ring.get("started_at") or ring["deployed_at"]) - t0
                shadow_stop = stop if only_shadowed else start
                ax.broken_barh(
                    [(shadow_start, max(shadow_stop - shadow_start, 0.05))],
                    (y, h),
                    facecolors="none",
                    edgecolor=color[r["version"]],
                    hatch="...",
                    lw=1.0,
                )
                shadowed = True
            if not only_shadowed:
                ax.broken_barh(
                    [(start, max(stop - start, 0.05))], (y, h), facecolors=color[r["version"]], alpha=0.35, edgecolor=color[r["version"]]
                )
            pts = [
                (s["t"] - t0, s["adopted"] / max(s["devices"], 1))
                for s in r["samples"]
                if s["ring"] == ring["name"] and s["t"] - t0 <= stop + 0.01
            ]
            if pts:
                ax.plot([p[0] for p in pts], [y + p[1] * h for p in pts], color=color[r["version"]], lw=1.6)
            verdict = (ring.get("verdict") or {}).get("outcome")
            if verdict == "pass":
                ax.text(stop, row[ring["name"]], " ✓", va="center", ha="left", color="#2E7D32", fontsize=13, fontweight="bold")
            elif verdict == "fail":
                ax.text(
                    stop,
                    row[ring["name"]] + h / 2 + 0.04,
                    "✗ gate failed",
                    va="bottom",
                    ha="center",
                    color="#C62828",
                    fontsize=9,
                    fontweight="bold",
                )
            if rb_start and ring["name"] in rb.get("rings", []):
                rb_end = (r.get("finished_at") or t0 + end) - t0
                prev = r.get("previous_version")
                ax.broken_barh(
                    [(rb_start - t0, max(rb_end - (rb_start - t0), 0.05))],
                    (y, h),
                    facecolors="none",
                    edgecolor=color.get(prev, "#555555"),
                    hatch="////",
                    lw=1.0,
                )
                ax.text(
                    rb_end,
                    row[ring["name"]] - h / 2 - 0.08,
                    f"rolled back → {prev or 'no model'}",
                    fontsize=7,
                    va="top",
                    ha="right",
                    color="#555555",
                )
        ax.axvline(r["started_at"] - t0, color="#999999", lw=0.8, ls=":")
        ax.text(r["started_at"] - t0, len(rings) - 0.35, f" {r['version']}", fontsize=8, color=color[r["version"]], va="bottom")
    ax.set_yticks([row[n] for n in rings], rings)
    ax.set_ylim(-0.7, len(rings) - 0.1)
    ax.set_xlim(0, end * 1.04 + 1)
    ax.set_xlabel("seconds since the first rollout started")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", alpha=0.25)
    handles = [Patch(facecolor=color[v], alpha=0.5, label=v) for v in versions]
    if shadowed:
        handles.append(Patch(facecolor="none", edgecolor="#555555", hatch="...", label="shadow (not served)"))
    handles.append(Patch(facecolor="none", edgecolor="#555555", hatch="////", label="rollback"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, title="version", title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
