"""Whether a model fits what runs it: its I/O signature against the one apps were written for, the agent version
it needs against the one a fleet runs, its targets against a device's hardware.

Pure functions, shared by the model rules (models.py) and `edgefleet plan`. Standard library only; imports nothing
of this package, so it loads as `policies.compatibility` or, in the CrossGuard pack's own virtualenv, as `compatibility`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping


def parse_version(text: str) -> tuple:
    """Semantic version as a sortable key (pre-releases sort before their release). Raises ValueError."""
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?", str(text).strip())
    if not m:
        raise ValueError(f"{text!r} is not a semantic version such as 1.4.0")
    pre = m.group(4)
    pre_key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")) if pre else ()
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), 0 if pre else 1, pre_key


def version_lt(a: str, b: str) -> bool:
    return parse_version(a) < parse_version(b)


@dataclass(frozen=True)
class IoChange:
    kind: str  # "input" | "output"
    name: str
    detail: str
    breaking: bool


@dataclass(frozen=True)
class IoVerdict:
    verdict: str  # "unchanged" | "compatible" | "breaking"
    changes: tuple[IoChange, ...]

    @property
    def reasons(self) -> list[str]:
        return [f"{c.kind} {c.name!r}: {c.detail}" for c in self.changes if c.breaking]


def signature_text(spec: Mapping[str, Any]) -> str:
    return f"{spec.get('element_type')}[{', '.join(str(d) for d in spec.get('shape') or [])}]"


def _shape_changes(kind: str, name: str, old: list, new: list) -> list[IoChange]:
    if len(old) != len(new):
        return [IoChange(kind, name, f"rank changed: [{', '.join(map(str, old))}] -> [{', '.join(map(str, new))}]", True)]
    out = []
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a == b:
            continue
        fixed_a, fixed_b = isinstance(a, int), isinstance(b, int)
        if fixed_a and fixed_b:
            out.append(IoChange(kind, name, f"fixed dim {i} changed {a} -> {b}", True))
        elif fixed_a:  # fixed -> symbolic: an input accepts more; an output may now vary in size
            out.append(IoChange(kind, name, f"dim {i} {a} -> symbolic {b!r}", kind == "output"))
        elif fixed_b:  # symbolic -> fixed: an input accepts less; an output only narrows
            out.append(IoChange(kind, name, f"dim {i} symbolic {a!r} -> fixed {b}", kind == "input"))
        else:
            out.append(IoChange(kind, name, f"symbolic dim {i} renamed {a!r} -> {b!r}", False))
    return out


def compare_io(old: Mapping[str, Any], new: Mapping[str, Any]) -> IoVerdict:
    """Whether an app written for `old`'s I/O signature still works with `new`'s, and why not.

    Inputs: removing, renaming or adding one breaks callers (ONNX inputs have no defaults), as do dtype
    and fixed-dim changes. Outputs: removing, renaming or retyping one breaks readers; adding one does not.
    """
    changes: list[IoChange] = []
    for kind in ("input", "output"):
        olds = {t["name"]: t for t in old.get(kind + "s") or []}
        news = {t["name"]: t for t in new.get(kind + "s") or []}
        removed = [n for n in olds if n not in news]
        added = [n for n in news if n not in olds]
        if len(removed) == 1 and len(added) == 1 and signature_text(olds[removed[0]]) == signature_text(news[added[0]]):
            changes.append(IoChange(kind, removed[0], f"renamed to {added[0]!r} ({signature_text(news[added[0]])})", True))
            removed, added = [], []
        for n in removed:
            changes.append(IoChange(kind, n, f"removed (was {signature_text(olds[n])})", True))
        for n in added:
            if kind == "input":
                changes.append(IoChange(kind, n, f"added ({signature_text(news[n])}): callers do not feed it", True))
            else:
                changes.append(IoChange(kind, n, f"added ({signature_text(news[n])}): existing readers ignore it", False))
        for n in olds:
            if n not in news:
                continue
            a, b = olds[n], news[n]
            if a.get("element_type") != b.get("element_type"):
                changes.append(IoChange(kind, n, f"dtype changed {a.get('element_type')} -> {b.get('element_type')}", True))
            changes.extend(_shape_changes(kind, n, list(a.get("shape") or []), list(b.get("shape") or [])))
    verdict = "unchanged" if not changes else ("breaking" if any(c.breaking for c in changes) else "compatible")
    return IoVerdict(verdict, tuple(changes))


# -- hardware -------------------------------------------------------------------------------------------------
def hardware_problems(target: Mapping[str, Any], hardware: Mapping[str, Any]) -> list[str]:
    """Why a device profile cannot run a model target (empty: it can). Same rule as edgefleet.config.hardware_runs."""
    out = []
    if target.get("arch") != hardware.get("arch"):
        out.append(f"arch {target.get('arch')} != {hardware.get('arch')}")
    have = list(hardware.get("execution_providers") or [])
    if not any(ep in have for ep in target.get("execution_providers") or []):
        out.append(f"needs one of {', '.join(target.get('execution_providers') or [])}; device has {', '.join(have) or 'none'}")
    if (target.get("memory_mb") or 0) > (hardware.get("memory_mb") or 0):
        out.append(f"needs {target.get('memory_mb')} MB memory; device budget {hardware.get('memory_mb')} MB")
    if (target.get("storage_mb") or 0) > (hardware.get("storage_mb") or 0):
        out.append(f"needs {target.get('storage_mb')} MB storage; device budget {hardware.get('storage_mb')} MB")
    return out


def hardware_runs(target: Mapping[str, Any], hardware: Mapping[str, Any]) -> bool:
    return not hardware_problems(target, hardware)
