"""Which changes replace a resource rather than update it, and how that is known: the resource's recorded
`replace_on_changes`, an edgefleet dynamic provider's own diff, each platform's replace-on tables, and providers
moved to another region (which replace everything they manage).

The tables live in each platform's folder (`components/<platform>/replace_on.py`, named by components/registry.py),
all of one shape, pure data:

    REPLACE_ON          type -> the inputs whose change replaces the resource
    REPLACE_ALL_BUT     type -> the only inputs that update in place (every other input is create-only)
    IMMUTABLE_BY_NAME   ({type_mentions, kind_mentions, inputs, why}, ...): types known by name (any of type_mentions
                        in the type token, any of kind_mentions in its last part) whose `inputs` never change in place

Imports the registry and the contract's errors; a platform's providers only to ask one for its diff.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Mapping

from components.registry import PLATFORMS, PlatformEntry
from edgefleet_agent.contract.errors import EdgefleetError

TABLES = ("REPLACE_ON", "REPLACE_ALL_BUT", "IMMUTABLE_BY_NAME")
DYNAMIC_PREFIX = "pulumi-python:dynamic/edgefleet-"
# A provider moved to another region or location creates everything it manages anew there: Pulumi replaces the
# provider and, with it, every resource the provider manages.
PROVIDER_PREFIX = "pulumi:providers:"
PROVIDER_LOCATION_KEYS = ("region", "location")
PROVIDER_MOVED = "provider region changed"


@dataclass(frozen=True)
class ReplaceTables:
    """Every registered platform's replace-on tables, together."""

    replace_on: dict[str, tuple[str, ...]]
    replace_all_but: dict[str, tuple[str, ...]]
    immutable_by_name: tuple[dict[str, Any], ...]

    def immutable(self, type_: str) -> dict[str, Any] | None:
        kind = type_.rsplit(":", 1)[-1].lower()
        return next(
            (
                rule
                for rule in self.immutable_by_name
                if any(m in type_.lower() for m in rule["type_mentions"]) and any(w in kind for w in rule["kind_mentions"])
            ),
            None,
        )


@functools.lru_cache(maxsize=None)
def replace_tables() -> ReplaceTables:
    replace_on: dict[str, tuple[str, ...]] = {}
    replace_all_but: dict[str, tuple[str, ...]] = {}
    immutable_by_name: list[dict[str, Any]] = []
    owner: dict[str, str] = {}
    for name, entry in PLATFORMS.items():
        where = entry.replace_on.replace(".", "/") + ".py"
        try:
            module = entry.load("replace_on")
        except ImportError as exc:
            raise EdgefleetError(
                "components/registry.py",
                f"PLATFORMS[{name!r}].replace_on names {entry.replace_on!r}, which does not import ({exc})",
                f"create {where} with {', '.join(TABLES)} (empty where the platform has none; see edgefleet/plan/replace.py)",
            ) from None
        missing = [t for t in TABLES if not hasattr(module, t)]
        if missing:
            raise EdgefleetError(
                where,
                f"defines no {', '.join(missing)} (named by components/registry.py PLATFORMS[{name!r}].replace_on)",
                "define each table, empty where the platform has none (see edgefleet/plan/replace.py)",
            )
        for table, merged in (("REPLACE_ON", replace_on), ("REPLACE_ALL_BUT", replace_all_but)):
            for type_, inputs in getattr(module, table).items():
                if type_ in owner:
                    raise EdgefleetError(
                        where,
                        f"{table}[{type_!r}]: {owner[type_]} already declares that type",
                        "keep each resource type in the table of the one platform that declares it",
                    )
                owner[type_] = f"{where} {table}"
                merged[type_] = tuple(inputs)
        immutable_by_name += module.IMMUTABLE_BY_NAME
    return ReplaceTables(replace_on, replace_all_but, tuple(immutable_by_name))


def top_key(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0]


def _provider_replaces(type_: str, olds: dict, news: dict) -> list[str] | None:
    """Asks an edgefleet dynamic provider (`pulumi-python:dynamic/edgefleet-<platform>:<Name>`) what it would replace."""
    if not type_.startswith(DYNAMIC_PREFIX):
        return None
    platform, _, kind = type_.removeprefix(DYNAMIC_PREFIX).partition(":")
    try:
        provider = _provider_class(platform, f"{kind}Provider")
        return None if provider is None else list(provider().diff("plan", olds, news).replaces or [])
    except Exception:  # noqa: BLE001 - a provider we cannot ask leaves the decision to `pulumi preview`
        return None


def _platform_package(entry: PlatformEntry) -> str:
    """The package a registered platform's parts live in (its folder): where its Platform class is."""
    return entry.platform.partition(":")[0].rpartition(".")[0]


def _provider_class(platform: str, class_name: str):
    """`<Kind>Provider` from a registered platform's providers module, or else from any module of its package."""
    entry = PLATFORMS.get(platform)
    if entry is None:
        return None
    package_name = _platform_package(entry)
    package = importlib.import_module(package_name)
    names = ["providers"] + sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "providers")
    for name in names:
        try:
            module = importlib.import_module(f"{package_name}.{name}")
        except ImportError:
            continue
        if hasattr(module, class_name):
            return getattr(module, class_name)
    return None


def replace_keys(rec: Mapping[str, Any], olds: dict, news: dict, changed: list[str]) -> tuple[list[str], str]:
    """Which changed inputs force a replacement, and how that is known."""
    type_ = rec["type"]
    declared = [top_key(p) for p in (rec.get("options") or {}).get("replace_on_changes") or []]
    if "*" in declared:
        return changed, "replace_on_changes: *"
    hits = [k for k in changed if k in declared]
    from_provider = _provider_replaces(type_, olds, news)
    if from_provider is not None:
        return sorted(set(hits) | set(from_provider)), "the provider's diff"
    tables = replace_tables()
    if type_ in tables.replace_all_but:
        return sorted(set(hits) | {k for k in changed if k not in tables.replace_all_but[type_]}), "create-only properties"
    immutable = tables.immutable(type_)
    if immutable is not None:
        return sorted(set(hits) | {k for k in changed if k in immutable["inputs"]}), immutable["why"]
    if type_ in tables.replace_on:
        return sorted(set(hits) | {k for k in changed if k in tables.replace_on[type_]}), "replace-triggering inputs"
    return sorted(set(hits)), "replace_on_changes" if declared else ""


def provider_ref(rec: Mapping[str, Any]) -> str | None:
    """The provider reference a record carries (`urn::id` as the engine passes it, or the URN), when synth recorded one."""
    ref = rec.get("provider") or (rec.get("options") or {}).get("provider")
    return ref if isinstance(ref, str) and ref else None


def follow_moved_providers(news: Mapping[str, Mapping[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A provider whose region/location changed is replaced, and so is every resource it manages.

    Which resources a provider manages comes from the provider reference a record carries (`options.provider`,
    which edgefleet synth records). For a graph that records none (one synthesized by an older edgefleet at the
    base ref), every custom resource of the provider's package (`aws:` for `pulumi:providers:aws`) is taken to
    use it: the program passes its one explicit provider per package to all.
    """
    by_urn = {e["urn"]: e for e in entries}
    moved: dict[str, str] = {}
    for e in entries:
        keys = [k for k in e["changed"] if k in PROVIDER_LOCATION_KEYS]
        if e["type"].startswith(PROVIDER_PREFIX) and e["action"] in ("update", "replace") and keys:
            e.update(
                action="replace",
                replace_keys=sorted(set(e["replace_keys"]) | set(keys)),
                why=f"{', '.join(keys)} changed: a provider in another region manages new resources",
            )
            moved[e["urn"]] = e["type"].removeprefix(PROVIDER_PREFIX)
    if not moved:
        return entries
    refs_recorded = any(provider_ref(r) for r in news.values())
    for urn, r in news.items():
        if not r.get("custom", True) or r["type"].startswith(PROVIDER_PREFIX):
            continue
        ref = provider_ref(r)
        if ref is not None:
            hit = any(ref == m or ref.startswith(m + "::") for m in moved)
        else:
            hit = not refs_recorded and r["type"].split(":", 1)[0] in moved.values()
        if not hit:
            continue
        e = by_urn.get(urn)
        if e is None:
            e = {
                "urn": urn,
                "type": r["type"],
                "name": r["name"],
                "custom": True,
                "action": "update",
                "changed": [],
                "replace_keys": [],
                "why": "",
            }
            entries.append(e)
        if e["action"] in ("update", "replace"):
            e.update(
                action="replace",
                replace_keys=sorted(set(e["replace_keys"]) | {"(provider)"}),
                why=PROVIDER_MOVED + (f"; {e['why']}" if e["why"] else ""),
            )
    return entries
