"""Bytes to ship per ring of a local rollout that changes its model version: the full artifact to every device, and
with delta updates (docs/deltas.md), the patch to each device that runs the version the rollout moves devices off.

Before deploy the plan cannot know what each device runs, so it assumes what the base declared: every device of the
rollout's rings on the base's version. The patch is the one the local store has published for that pair, else one
built here from the two artifacts (the base's from the local store or from git at the base ref, the head's from the
working tree): "publishable". A patch over `edgefleet:delta.max_share` of the artifact is not published, so it
counts as the full download, as do deltas turned off (`edgefleet:delta.enabled: false`).
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping

from edgefleet_agent.contract.digest import sha256_file
from policies.graph import Graph

ARTIFACT = "pulumi-python:dynamic/edgefleet-local:Artifact"


def _artifact(graph: Mapping[str, Any], model: str, sha256: str | None) -> Mapping[str, Any] | None:
    for r in Graph(graph.get("resources") or []).of_type(ARTIFACT):
        inputs = r.get("inputs") or {}
        if inputs.get("model") == model and inputs.get("sha256") == sha256:
            return inputs
    return None


def _matches(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and sha256_file(path)[0] == sha256
    except OSError:
        return False


def _from_git(project_dir: Path, ref: str, source: str, sha256: str, dest: Path) -> Path | None:
    """The base's artifact as committed at `ref` (None when git has no such file, or holds an LFS pointer)."""
    try:
        out = subprocess.run(["git", "show", f"{ref}:./{source}"], cwd=project_dir, capture_output=True, check=False, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dest.write_bytes(out.stdout)
    return dest if _matches(dest, sha256) else None


def patch_estimate(
    project_dir: Path, base: Mapping[str, Any], head: Mapping[str, Any], base_ref: str, model: str, from_sha: str, to_sha: str
) -> dict[str, Any] | None:
    """{"state": published|publishable|too large|unavailable|disabled, "patch_bytes", "artifact_bytes", "max_share"},
    or None when the head's artifact is not a local one."""
    from components.stack import StackConfig

    art = _artifact(head, model, to_sha)
    if art is None or not head.get("config"):
        return None
    size = int(art.get("size") or 0)
    try:
        cfg = StackConfig.model_validate(head["config"])
    except ValueError:
        return None
    out: dict[str, Any] = {"state": "disabled", "patch_bytes": None, "artifact_bytes": size, "max_share": cfg.delta.max_share}
    if not cfg.delta.enabled:
        return out
    from components.delta import make_patch
    from components.local.deltas import too_large
    from edgefleet_agent.contract.tuf import patch_path
    from edgefleet_agent.delta import METHOD

    store = Path(project_dir) / str(art.get("store") or "")
    published = store / patch_path(model, from_sha, to_sha, METHOD)
    known = too_large(published)
    if published.is_file():
        out.update(state="published", patch_bytes=published.stat().st_size)
    elif known is not None:
        out.update(state="publishable", patch_bytes=known)  # built before and found over the share (checked below)
    else:
        with tempfile.TemporaryDirectory(prefix="edgefleet-plan-") as tmp:
            old = store / model / f"{from_sha}.onnx"
            if not _matches(old, from_sha):
                base_art = _artifact(base, model, from_sha)
                old_source = str(base_art.get("source") or "") if base_art else ""
                old = (
                    _from_git(Path(project_dir), base_ref, old_source, from_sha, Path(tmp) / "old.onnx")
                    if old_source and base_ref
                    else None
                )
            new = Path(project_dir) / str(art.get("source") or "")
            if not _matches(new, to_sha):
                new = store / model / f"{to_sha}.onnx"
            if old is None or not _matches(new, to_sha):
                out.update(state="unavailable")
                return out
            out.update(state="publishable", patch_bytes=make_patch(old, new, Path(tmp) / "patch").size)
    if out["patch_bytes"] > cfg.delta.max_share * size:
        out["state"] = "too large"
    return out


def add_transfer(
    base: Mapping[str, Any], head: Mapping[str, Any], rollouts: list[dict[str, Any]], project_dir: Path, base_ref: str
) -> None:
    """Adds `delta` to each local rollout that changes its version, and `bytes_full` / `bytes_delta` to its rings."""
    for r in rollouts:
        if r["status"] != "changed" or not r["version_changed"] or not r.get("from_sha256") or r.get("counted") != "local":
            continue
        if any(row.get("platform") not in (None, "local") or row.get("devices") is None for row in r["rings"]):
            continue
        est = patch_estimate(project_dir, base, head, base_ref, r["model"], r["from_sha256"], r["to_sha256"])
        if est is None:
            continue
        usable = est["state"] in ("published", "publishable")
        each = est["patch_bytes"] if usable else est["artifact_bytes"]
        for row in r["rings"]:
            row["bytes_full"] = row["devices"] * est["artifact_bytes"]
            row["bytes_delta"] = row["devices"] * each
        r["delta"] = {
            **est,
            "from_version": r["from_version"],
            "bytes_full": sum(row["bytes_full"] for row in r["rings"]),
            "bytes_delta": sum(row["bytes_delta"] for row in r["rings"]),
        }
