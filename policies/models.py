"""The model rules: every ModelVersion is signed by the stack's key, pins the digest its publications carry, meets
the stack's metric floors, does not regress from the version it replaces, ships measured metrics on a production
stack, names an agent the fleet runs for its I/O signature, and goes only to hardware that can run it.

A manifest's metrics are declared (`metrics:`, typed in with `edgefleet model add --metric`) or measured
(`evaluation:`, by `edgefleet model evaluate` on an evaluation set pinned by its digest); metrics_of() is the one view
of both that the rules and `edgefleet plan` read.

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


def metrics_of(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every metric of a manifest by name: name, value, higher_is_better, dataset (a label), dataset_sha256 (None when
    declared) and measured. A manifest never names a metric both ways (the contract refuses it); if a hand-made one
    does, the measured value is the one that counts."""
    out: dict[str, dict[str, Any]] = {}
    for m in manifest.get("metrics") or []:
        if isinstance(m, Mapping) and "name" in m:
            out[m["name"]] = {
                "name": m["name"],
                "value": m.get("value"),
                "higher_is_better": m.get("higher_is_better", True),
                "dataset": m.get("dataset"),
                "dataset_sha256": None,
                "measured": False,
            }
    ev = manifest.get("evaluation")
    if isinstance(ev, Mapping):
        sha = str(ev.get("dataset_sha256") or "")
        for m in ev.get("metrics") or []:
            if isinstance(m, Mapping) and "name" in m:
                out[m["name"]] = {
                    "name": m["name"],
                    "value": m.get("value"),
                    "higher_is_better": m.get("higher_is_better", True),
                    "dataset": f"{ev.get('dataset')} (sha256 {sha[:12]})",
                    "dataset_sha256": sha,
                    "measured": True,
                }
    return out


def how(metric: Mapping[str, Any]) -> str:
    return "measured" if metric.get("measured") else "declared"


def same_dataset(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Comparable: the same declared data set name, or the same pinned evaluation set (by digest)."""
    return (a.get("dataset"), a.get("dataset_sha256")) == (b.get("dataset"), b.get("dataset_sha256"))


def check_metric_floor(g: Graph, s: Settings) -> Iterator[Finding]:
    if not s.metric_floors:
        raise NotApplicable("no floors set (edgefleet:policy.metric_floors)")
    for m in g.of_type(MODEL):
        manifest = manifest_of(m)
        if manifest is None:
            yield Finding(f"model {model_name(m)!r}: manifest not visible", m["urn"], unverified=True)
            continue
        metrics = metrics_of(manifest)
        for metric, floor in sorted(s.metric_floors.items()):
            got = metrics.get(metric)
            where = f"model {manifest.get('name')} {manifest.get('version')}"
            if got is None:
                yield Finding(
                    f"{where} declares no {metric!r} evaluation (neither measured nor declared); the stack requires {metric} >= {floor}",
                    m["urn"],
                )
            elif got["higher_is_better"] and got["value"] < floor:
                yield Finding(
                    f"{where}: {metric} {got['value']} is below the stack's floor {floor} ({how(got)} on {got['dataset']})", m["urn"]
                )
            elif not got["higher_is_better"] and got["value"] > floor:
                yield Finding(
                    f"{where}: {metric} {got['value']} is above the stack's limit {floor} (lower is better; {how(got)} on {got['dataset']})",
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
        news = metrics_of(new)
        for before in metrics_of(old).values():
            after = news.get(before["name"])
            label = f"model {new.get('name')} {old.get('version')} -> {new.get('version')}: {before['name']}"
            if after is None:
                yield Finding(
                    f"{label} was evaluated at {before['value']} ({how(before)}) and the new version drops it: "
                    f"re-evaluate on {before['dataset']}",
                    m["urn"],
                )
                continue
            if not same_dataset(before, after):
                yield Finding(
                    f"{label} is {how(after)} on {after['dataset']!r}, the old one was {how(before)} on {before['dataset']!r}: "
                    "not comparable",
                    m["urn"],
                    unverified=True,
                )
                continue
            worse = (before["value"] - after["value"]) if before["higher_is_better"] else (after["value"] - before["value"])
            if worse > s.max_metric_regression + 1e-12:
                yield Finding(
                    f"{label} regresses {before['value']} -> {after['value']} ({worse:+.4g} worse; the stack allows "
                    f"{s.max_metric_regression})",
                    m["urn"],
                )


def check_variant_quality(g: Graph, s: Settings) -> Iterator[Finding]:
    """Each variant (manifest format 3) measured no worse than the stack allows against its reference, on the same
    pinned evaluation set the version itself was measured on."""
    for m in declared_models(g):
        manifest = manifest_of(m)
        if manifest is None:
            continue
        where = f"model {manifest.get('name')} {manifest.get('version')}"
        ev = manifest.get("evaluation") or {}
        for v in manifest.get("variants") or []:
            c = v.get("comparison") or {}
            label = f"{where}: the {v.get('kind')} variant ({v.get('file')})"
            redo = f"`edgefleet model variant add models/{manifest.get('name')} --kind {v.get('kind')}`"
            if ev.get("dataset_sha256") != c.get("dataset_sha256"):
                yield Finding(
                    f"{label} was compared on {c.get('dataset')} (sha256 {str(c.get('dataset_sha256'))[:12]}), the version is measured "
                    f"on {ev.get('dataset')} (sha256 {str(ev.get('dataset_sha256'))[:12]}): not comparable; measure it again with {redo}",
                    m["urn"],
                )
                continue
            delta = float(c.get("delta", 0.0))
            drop = -delta if c.get("higher_is_better", True) else delta
            if drop > s.max_variant_drop + 1e-12:
                yield Finding(
                    f"{label} measures {c.get('metric')} {c.get('value')} against the reference's {c.get('reference')} "
                    f"({drop:.4g} worse; the stack allows policy.max_variant_drop {s.max_variant_drop}); calibrate it "
                    f"({redo} --calibration PATH), ship the reference alone, or raise max_variant_drop",
                    m["urn"],
                )
            agreement = float(c.get("top1_agreement", 1.0))
            if agreement < s.min_variant_agreement - 1e-12:
                yield Finding(
                    f"{label} picks the reference's top-1 class on {agreement:.2%} of {c.get('samples')} frames; the stack asks "
                    f"policy.min_variant_agreement {s.min_variant_agreement:.2%}; calibrate it or ship the reference alone",
                    m["urn"],
                )


def check_metrics_measured(g: Graph, s: Settings) -> Iterator[Finding]:
    """On a production stack every metric a model carries was measured on a pinned evaluation set; none is only
    declared. Sandbox stacks (production false, like the shipped `local`) allow declared metrics: their live gates
    judge the model."""
    if not s.production:
        raise NotApplicable(
            "not a production stack (edgefleet:policy.production is false): declared metrics are allowed, the rollout's gates judge the model"
        )
    for m in declared_models(g):
        manifest = manifest_of(m)
        if manifest is None:
            yield Finding(
                f"model {model_name(m)!r}: manifest not visible, so how its metrics were obtained is unknown", m["urn"], unverified=True
            )
            continue
        name, where = manifest.get("name"), f"model {manifest.get('name')} {manifest.get('version')}"
        metrics = metrics_of(manifest)
        declared = sorted(n for n, x in metrics.items() if not x["measured"])
        measure = (
            f"measure it on a pinned evaluation set (`edgefleet model evaluate models/{name} --dataset models/datasets/<set>.yaml`, "
            "format in models/datasets/README.md) and sign the manifest again"
        )
        if not any(x["measured"] for x in metrics.values()):
            what = f"only declared metrics ({', '.join(declared)}, typed in)" if declared else "no metrics"
            yield Finding(f"{where} has {what}; a production stack ships models whose metrics were measured: {measure}", m["urn"])
        elif declared:
            yield Finding(
                f"{where}: {', '.join(declared)} {'is' if len(declared) == 1 else 'are'} declared (typed in), not measured; "
                f"a production stack ships measured metrics only: {measure}, or remove {'it' if len(declared) == 1 else 'them'} "
                "from the manifest's metrics:",
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
