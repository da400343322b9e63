"""The declared graph the rules read: records, the markers for what is unknown before deploy, and views over them.

A graph is the list of records `edgefleet synth` writes (urn, type, name, custom, parent, inputs, dependencies,
property_dependencies, outputs); the CrossGuard adapter (pack.py) builds the same records from what the Pulumi
engine hands a policy pack. Standard library only and no imports from this package, so every other module of
policies/ may import it, as `policies.graph` or, in the pack's own virtualenv, as `graph`.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

UNKNOWN = "[unknown]"  # edgefleet synth: an output the mock runtime could not compute
SECRET = "[secret]"
COMPUTED_PREFIX = "[computed"  # "[computed at deploy]": what a provider fills in at `pulumi up`

# edgefleet's component types: the same on every platform.
MODEL = "edgefleet:models:ModelVersion"
ROLLOUT = "edgefleet:rollout:Rollout"
RING = "edgefleet:rollout:Ring"
GROUP = "edgefleet:fleet:DeviceGroup"
STORE = "edgefleet:storage:ModelStore"
KEY = "edgefleet:signing:SigningKey"
REGISTRY = "edgefleet:registry:AppRegistry"


def is_unknown(value: Any) -> bool:
    """True for what cannot be known before deploy: synth's markers, or nothing at all."""
    return value is None or (isinstance(value, str) and (value in (UNKNOWN, SECRET) or value.startswith(COMPUTED_PREFIX)))


def dig(value: Any, *path: Any, default: Any = None) -> Any:
    for key in path:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return default
    return value


class Graph:
    """Read-only views over graph records: by URN, by type, children and subtrees."""

    def __init__(self, resources: Iterable[Mapping[str, Any]]) -> None:
        self.resources = [dict(r) for r in resources]
        self.by_urn = {r["urn"]: r for r in self.resources}
        self._children: dict[str, list[dict]] = {}
        for r in self.resources:
            if r.get("parent"):
                self._children.setdefault(r["parent"], []).append(r)

    def of_type(self, *types: str) -> list[dict]:
        return [r for r in self.resources if r.get("type") in types]

    def children(self, urn: str) -> list[dict]:
        return list(self._children.get(urn, []))

    def descendants(self, urn: str) -> list[dict]:
        out, todo = [], list(self._children.get(urn, []))
        while todo:
            r = todo.pop()
            out.append(r)
            todo.extend(self._children.get(r["urn"], []))
        return out

    def subtree(self, urn: str) -> set[str]:
        return {urn} | {r["urn"] for r in self.descendants(urn)}

    def models(self) -> dict[str, dict]:
        return {model_name(r): r for r in self.of_type(MODEL)}

    def groups(self) -> dict[str, dict]:
        return {r["name"]: r for r in self.of_type(GROUP)}

    def rings(self, rollout: Mapping[str, Any]) -> list[dict]:
        rings = [r for r in self.children(rollout["urn"]) if r.get("type") == RING]
        return sorted(rings, key=lambda r: (dig(r, "inputs", "index", default=0) or 0, r["name"]))


def model_name(rec: Mapping[str, Any]) -> str:
    return str(dig(rec, "inputs", "name") or rec.get("name"))


def manifest_of(rec: Mapping[str, Any]) -> dict | None:
    m = dig(rec, "inputs", "manifest")
    return m if isinstance(m, Mapping) else None


def ring_name(rec: Mapping[str, Any]) -> str:
    return str(dig(rec, "inputs", "ring") or rec.get("name"))


def base_model_facts(resources: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the base graph's models were: name -> manifest (what the regression and I/O rules compare against)."""
    return {model_name(r): manifest_of(r) for r in resources if r.get("type") == MODEL and manifest_of(r) is not None}
