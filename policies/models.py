"""The model rules: every ModelVersion is signed by the stack's key, pins the digest its publications carry, meets
the stack's metric floors, does not regress from the version it replaces, names an agent the fleet runs for its
I/O signature, and goes only to hardware that can run it.

Standard library only; imports graph, engine, settings and compatibility, as `policies.x` or, in the CrossGuard
pack's own virtualenv, as `x`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

if __package__:
    from .compatibility import compare_io, hardware_problems, version_lt
    from .engine import Finding, NotApplicable
    from .graph import KEY, MODEL, RING, ROLLOUT, UNKNOWN, Graph, dig, is_unknown, manifest_of, model_name, ring_name
    from .settings import Settings
else:
    from compatibility import compare_io, hardware_problems, version_lt  # type: ignore[no-redef]
    from engine import Finding, NotApplicable  # type: ignore[no-redef]
    from graph import KEY, MODEL, RING, ROLLOUT, UNKNOWN, Graph, dig, is_unknown, manifest_of, model_name, ring_name  # type: ignore[no-redef]
    from settings import Settings  # type: ignore[no-redef]

MIB = 1024 * 1024


def declared_models(g: Graph) -> list[dict]:
    """The ModelVersion records the model rules judge; a stack without models makes them not applicable."""
    models = g.of_type(MODEL)
    if not models:
        raise NotApplicable("the stack declares no models")
    return models


def check_model_signed(g: Graph, s: Settings) -> Iterator[Finding]:
    """Every ModelVersion names signing keys of this stack, and something under it actually uses each key."""
    models = declared_models(g)
    stack_keys = {r["urn"]: r for r in g.of_type(KEY)}
    for m in models:
        name = model_name(m)
        keys = dig(m, "inputs", "signingKeys")
        if keys is None:
            yield Finding(
                f"model {name!r}: its signingKeys input is not visible, so its signer cannot be checked", m["urn"], unverified=True
            )
            continue
        if not keys:
            yield Finding(f"model {name!r} names no signing key: devices would refuse it", m["urn"])
            continue
        stores = dig(m, "inputs", "stores") or []
        if len(stores) != len(keys):
            yield Finding(
                f"model {name!r} is published to {len(stores)} store(s) but signed with {len(keys)} key(s): every publication needs the stack's key",
                m["urn"],
            )
        publishers = [r for r in g.descendants(m["urn"]) if r.get("custom")]
        for key_urn in keys:
            if is_unknown(key_urn):
                yield Finding(f"model {name!r}: a signing key reference is unknown before deploy", m["urn"], unverified=True)
                continue
            if key_urn not in stack_keys:
                yield Finding(
                    f"model {name!r} is signed with {key_urn}, which is not a signing key declared by this stack ({len(stack_keys)} declared)",
                    m["urn"],
                )
                continue
            key_tree = g.subtree(key_urn)
            if publishers and not any(key_tree & set(p.get("dependencies") or []) for p in publishers):
                yield Finding(
                    f"model {name!r} names key {stack_keys[key_urn]['name']!r} but none of its published resources "
                    f"({', '.join(p['name'] for p in publishers)}) depends on that key",
                    m["urn"],
                )
        signature = dig(m, "outputs", "signature", default=UNKNOWN)
        if signature in ("", None) and "signature" in (m.get("outputs") or {}):
            yield Finding(f"model {name!r} has an empty signature output", m["urn"])


_MANIFEST_SHA = re.compile(r"^sha256:\s*['\"]?([0-9a-f]{64})['\"]?\s*$", re.M)


def _sha256_file(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _source_path(value: Any) -> str | None:
    """A local file a resource uploads: a path string, or a file asset as synth records it ({"path": …})."""
    if isinstance(value, Mapping):
        value = value.get("path")
    return value if isinstance(value, str) and value and not is_unknown(value) else None


def check_model_digest(g: Graph, s: Settings) -> Iterator[Finding]:
    """The digest the manifest pins is the one every publication, ring and (offline) the artifact file carries."""
    models = declared_models(g)
    for m in models:
        name = model_name(m)
        manifest = manifest_of(m)
        if manifest is None:
            yield Finding(f"model {name!r}: its manifest input is not visible, so its digest cannot be checked", m["urn"], unverified=True)
            continue
        pinned, size = manifest.get("sha256"), manifest.get("size")
        for key, want in (("sha256", pinned), ("size", size), ("version", manifest.get("version"))):
            got = dig(m, "inputs", key)
            if got is not None and not is_unknown(got) and got != want:
                yield Finding(f"model {name!r}: {key} {got!r} differs from the manifest's {want!r}", m["urn"])
        digest = dig(m, "outputs", "digest")
        if digest is not None and not is_unknown(digest) and digest != pinned:
            yield Finding(f"model {name!r}: output digest {digest} differs from the manifest's {pinned}", m["urn"])
        carriers = g.descendants(m["urn"]) + [r for r in g.of_type(RING, ROLLOUT) if dig(r, "inputs", "model") == name]
        carriers += [d for r in g.of_type(RING) if dig(r, "inputs", "model") == name for d in g.descendants(r["urn"])]
        for r in carriers:
            got = dig(r, "inputs", "sha256")
            if isinstance(got, str) and not is_unknown(got) and got != pinned:
                yield Finding(f"model {name!r}: {r['name']} ships sha256 {got[:12]}…, the manifest pins {str(pinned)[:12]}…", r["urn"])
            text = dig(r, "inputs", "manifest")
            if isinstance(text, str):
                found = _MANIFEST_SHA.search(text)
                if found and found.group(1) != pinned:
                    yield Finding(
                        f"model {name!r}: {r['name']} carries a manifest pinning {found.group(1)[:12]}…, not {str(pinned)[:12]}…", r["urn"]
                    )
            source = _source_path(dig(r, "inputs", "source"))
            if s.project_dir and source:
                path = Path(s.project_dir) / source
                if not path.is_file():
                    yield Finding(f"model {name!r}: artifact {source} does not exist", r["urn"])
                    continue
                digest_on_disk, size_on_disk = _sha256_file(path)
                if digest_on_disk != pinned or size_on_disk != size:
                    yield Finding(
                        f"model {name!r}: {source} has sha256 {digest_on_disk[:12]}… ({size_on_disk} bytes), the manifest pins "
                        f"{str(pinned)[:12]}… ({size} bytes): run `edgefleet model add` to record the new file, or restore it",
                        r["urn"],
                    )


def check_metric_floor(g: Graph, s: Settings) -> Iterator[Finding]:
    if not s.metric_floors:
        raise NotApplicable("no floors set (edgefleet:policy.metric_floors)")
    for m in g.of_type(MODEL):
        manifest = manifest_of(m)
        if manifest is None:
            yield Finding(f"model {model_name(m)!r}: manifest not visible", m["urn"], unverified=True)
            continue
        metrics = {x["name"]: x for x in manifest.get("metrics") or []}
        for metric, floor in sorted(s.metric_floors.items()):
            got = metrics.get(metric)
            where = f"model {manifest.get('name')} {manifest.get('version')}"
            if got is None:
                yield Finding(f"{where} declares no {metric!r} evaluation; the stack requires {metric} >= {floor}", m["urn"])
            elif got.get("higher_is_better", True) and got["value"] < floor:
                yield Finding(f"{where}: {metric} {got['value']} is below the stack's floor {floor} (on {got.get('dataset')})", m["urn"])
            elif not got.get("higher_is_better", True) and got["value"] > floor:
                yield Finding(
                    f"{where}: {metric} {got['value']} is above the stack's limit {floor} (lower is better; on {got.get('dataset')})",
                    m["urn"],
                )


def check_metric_regression(g: Graph, s: Settings) -> Iterator[Finding]:
    if s.base_models is None:
        raise NotApplicable(
            "needs the version each model replaces: run `edgefleet policy --base REF` "
            "(under CrossGuard, pass base_models in the pack config, see docs/plan-and-policy.md)"
        )
    for m in g.of_type(MODEL):
        new = manifest_of(m)
        old = s.base_models.get(model_name(m))
        if new is None or old is None or (old.get("sha256") == new.get("sha256") and old.get("version") == new.get("version")):
            continue
        news = {x["name"]: x for x in new.get("metrics") or []}
        for before in old.get("metrics") or []:
            after = news.get(before["name"])
            label = f"model {new.get('name')} {old.get('version')} -> {new.get('version')}: {before['name']}"
            if after is None:
                yield Finding(
                    f"{label} was evaluated at {before['value']} and the new version drops it: re-evaluate on {before.get('dataset')}",
                    m["urn"],
                )
                continue
            if after.get("dataset") != before.get("dataset"):
                yield Finding(
                    f"{label} measured on {after.get('dataset')!r}, the old one on {before.get('dataset')!r}: not comparable",
                    m["urn"],
                    unverified=True,
                )
                continue
            worse = (before["value"] - after["value"]) if before.get("higher_is_better", True) else (after["value"] - before["value"])
            if worse > s.max_metric_regression + 1e-12:
                yield Finding(
                    f"{label} regresses {before['value']} -> {after['value']} ({worse:+.4g} worse; the stack allows "
                    f"{s.max_metric_regression})",
                    m["urn"],
                )


def _model_platforms(g: Graph, m: Mapping[str, Any]) -> list[str]:
    out = []
    for urn in dig(m, "inputs", "signingKeys") or []:
        platform = dig(g.by_urn.get(urn, {}), "inputs", "platform")
        if platform and platform not in out:
            out.append(platform)
    return out


def check_breaking_io(g: Graph, s: Settings) -> Iterator[Finding]:
    """A model may need a newer agent only if the fleet runs one; a breaking I/O change must raise min_agent_version."""
    models = declared_models(g)
    for m in models:
        new = manifest_of(m)
        if new is None:
            yield Finding(f"model {model_name(m)!r}: manifest not visible", m["urn"], unverified=True)
            continue
        label = f"model {new.get('name')} {new.get('version')}"
        need = new.get("min_agent_version")
        for platform in _model_platforms(g, m):
            have = s.agent_versions.get(platform)
            if have and need and version_lt(have, need):
                yield Finding(
                    f"{label} needs agent >= {need}; the {platform} fleet runs {have} and would refuse it: "
                    f"roll out the agent first (edgefleet:{platform}.agent_version)",
                    m["urn"],
                )
        old = (s.base_models or {}).get(new.get("name"))
        if old is None:
            continue
        verdict = compare_io(old, new)
        if verdict.verdict == "breaking" and not version_lt(old.get("min_agent_version", "0.0.0"), need or "0.0.0"):
            yield Finding(
                f"{label} changes its I/O incompatibly ({'; '.join(verdict.reasons)}) but min_agent_version stays {need} "
                f"(was {old.get('min_agent_version')}): declare the agent version that supports the new signature "
                f"(`edgefleet model add … --min-agent-version X.Y.Z`)",
                m["urn"],
            )


def check_hardware(g: Graph, s: Settings) -> Iterator[Finding]:
    rings = g.of_type(RING)
    if not rings:
        raise NotApplicable("the stack declares no rollouts")
    models, groups = g.models(), g.groups()
    for ring in rings:
        model, group = models.get(str(dig(ring, "inputs", "model"))), groups.get(str(dig(ring, "inputs", "group")))
        manifest, hardware = manifest_of(model or {}), dig(group or {}, "inputs", "hardware")
        if manifest is None or not isinstance(hardware, Mapping):
            yield Finding(f"ring {ring['name']}: model or group facts not visible", ring["urn"], unverified=True)
            continue
        label = f"ring {ring_name(ring)!r} sends {manifest.get('name')} {manifest.get('version')} to group {group['name']!r} ({hardware.get('name')})"
        targets = manifest.get("targets") or []
        why = {t.get("name"): hardware_problems(t, hardware) for t in targets}
        if not any(not p for p in why.values()):
            reasons = "; ".join(f"{n}: {', '.join(p)}" for n, p in why.items())
            yield Finding(f"{label}, which can run none of its targets ({reasons})", ring["urn"])
        size = manifest.get("size") or 0
        for budget in ("storage_mb", "memory_mb"):
            if hardware.get(budget) and size > hardware[budget] * MIB:
                yield Finding(
                    f"{label}: the model is {size / MIB:.1f} MB, over the group's {budget} budget of {hardware[budget]} MB", ring["urn"]
                )
