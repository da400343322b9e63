"""`edgefleet plan`: what a change does to which devices, computed from two declared graphs, offline.

The base graph is synthesized from a temporary `git worktree` of the base ref (removed afterwards, even on
error), by that checkout's own program when it has one, in a child process so its modules never mix
with the working tree's. Everything after that is pure: `compute_plan(base, head)` diffs the graphs into
models, rollouts (rings in order, devices and cumulative share per step), resources (create / update /
replace / delete by URN) and the policy report, and `render_markdown` turns that into a PR comment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from edgefleet_agent.contract.errors import ConfigError, EdgefleetError
from policies.compatibility import compare_io, signature_text
from policies.engine import Report
from policies.graph import ROLLOUT, Graph, base_model_facts, dig, manifest_of, ring_name
from policies.rollouts import fmt_share
from policies.rules import evaluate
from policies.settings import Settings

PLAN_FORMAT = "edgefleet-plan/v1"
ACTIONS = ("create", "replace", "update", "delete")
COMMENT_MARKER = "<!-- edgefleet-plan -->"

# Inputs whose change makes the provider replace the resource, for the types edgefleet declares that do not say so
# themselves. Dynamic providers answer for themselves (their diff's DiffResult.replaces); resources created with
# `replace_on_changes` (pulumi-aws-native sets it on Greengrass types) carry it in their recorded options.
REPLACE_ON: dict[str, tuple[str, ...]] = {
    "aws:s3/bucket:Bucket": ("bucket", "bucketPrefix", "objectLockEnabled"),
    "aws:s3/bucketV2:BucketV2": ("bucket", "bucketPrefix", "objectLockEnabled"),
    "aws:kms/key:Key": ("customerMasterKeySpec", "keyUsage", "customKeyStoreId", "multiRegion", "xksKeyId"),
    "aws:ecr/repository:Repository": ("name", "encryptionConfigurations"),
    "aws:iam/role:Role": ("name", "namePrefix", "path"),
    "aws:iam/policy:Policy": ("name", "namePrefix", "path", "description"),
    "aws:iam/rolePolicy:RolePolicy": ("name", "namePrefix", "role"),
    "aws:iot/thingGroup:ThingGroup": ("name",),
    "aws:iot/thingType:ThingType": ("name", "properties"),
    "aws:iot/policy:Policy": ("name",),
    "aws:iot/roleAlias:RoleAlias": ("alias",),
    "aws:s3/bucketObjectv2:BucketObjectv2": ("bucket", "key"),
    "aws:s3/bucketObject:BucketObject": ("bucket", "key"),
    "aws:cloudwatch/metricAlarm:MetricAlarm": ("name",),
    "azure-native:storage:StorageAccount": ("accountName", "resourceGroupName", "location"),
    "azure-native:storage:BlobContainer": ("accountName", "containerName", "resourceGroupName"),
    "azure-native:containerregistry:Registry": ("registryName", "resourceGroupName", "location"),
    "azure-native:keyvault:Key": ("keyName", "vaultName", "resourceGroupName"),
    "azure-native:iothub:IotHubResource": ("resourceName", "resourceGroupName", "location"),
}
# Every property of a Greengrass v2 deployment is create-only in CloudFormation (tags aside).
REPLACE_ALL_BUT: dict[str, tuple[str, ...]] = {"aws-native:greengrassv2:Deployment": ("tags",)}
# IoT Hub configurations (IoT Edge layered deployments) cannot change their content once created.
IMMUTABLE_CONTENT = ("content",)
# A provider moved to another region or location creates everything it manages anew there: Pulumi replaces the
# provider and, with it, every resource the provider manages.
PROVIDER_PREFIX = "pulumi:providers:"
PROVIDER_LOCATION_KEYS = ("region", "location")
PROVIDER_MOVED = "provider region changed"


def _is_iot_hub_configuration(type_: str) -> bool:
    kind = type_.rsplit(":", 1)[-1].lower()
    return ("azure" in type_.lower() or "iothub" in type_.lower()) and any(
        w in kind for w in ("configuration", "edgedeployment", "layereddeployment"))


# -- base graph from git ------------------------------------------------------------------------------------------
def _git(cwd: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise EdgefleetError("git", "git is not installed", "install git; `edgefleet plan --base` reads the base from a git worktree") from None
    if out.returncode != 0:
        raise EdgefleetError(f"git {' '.join(args)}", (out.stderr or out.stdout).strip().splitlines()[-1] if (out.stderr or out.stdout).strip() else "failed")
    return out.stdout.strip()


@contextmanager
def base_worktree(project_dir: Path, ref: str) -> Iterator[Path]:
    """The project directory as it is at `ref`, in a temporary git worktree that is always removed."""
    project_dir = Path(project_dir).resolve()
    try:
        root = Path(_git(project_dir, "rev-parse", "--show-toplevel")).resolve()
    except EdgefleetError:
        raise EdgefleetError(str(project_dir), "not inside a git repository", "run `edgefleet plan` from a git checkout of the project") from None
    try:
        commit = _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except EdgefleetError:
        raise EdgefleetError(f"--base {ref}", "no such commit, branch or tag in this repository",
                             f"fetch it first (e.g. `git fetch origin {ref.split('/')[-1]}`) or pass a commit") from None
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-base-"))
    tree = tmp / "tree"
    try:
        _git(root, "worktree", "add", "--detach", "--quiet", str(tree), commit)
        yield tree / project_dir.relative_to(root)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=root, capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True, check=False)


def empty_graph(project: str, stack: str, note: str) -> dict[str, Any]:
    return {"format": "edgefleet-graph/v1", "project": project, "stack": stack, "stack_file": None, "config": {}, "resources": [], "note": note}


def synth_subprocess(project_dir: Path, stack: str, where: str = "") -> dict[str, Any]:
    """`edgefleet synth` of `project_dir` in a child process, preferring that checkout's own edgefleet code."""
    out = Path(tempfile.mkdtemp(prefix="edgefleet-graph-")) / "graph.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(project_dir), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    try:
        proc = subprocess.run([sys.executable, "-m", "edgefleet", "synth", "--stack", stack, "--project-dir", str(project_dir), "--out", str(out)],
                              cwd=project_dir, env=env, capture_output=True, text=True, check=False, timeout=600)
        if proc.returncode != 0:
            detail = "\n  ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            raise EdgefleetError(f"synth at base{' ' + where if where else ''}", f"stack {stack} does not synthesize there:\n  {detail}",
                                 "fix the base, or compare against another ref with --base")
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


def base_graph(project_dir: Path, stack: str, ref: str) -> dict[str, Any]:
    """The stack's graph at `ref`; an empty graph when the project or the stack did not exist there yet."""
    from edgefleet.synth import project_name

    project = project_name(project_dir)
    with base_worktree(project_dir, ref) as base_dir:
        if not (base_dir / "Pulumi.yaml").is_file():
            return empty_graph(project, stack, f"the project did not exist at {ref}")
        if not (base_dir / "stacks" / f"Pulumi.{stack}.yaml").is_file():
            return empty_graph(project, stack, f"stack {stack} did not exist at {ref}")
        return synth_subprocess(base_dir, stack, where=ref)


# -- local fleet membership ------------------------------------------------------------------------------------------
def local_devices(cfg) -> list:
    """The local fleet's devices exactly as the local platform registers them (components/local/fleet.py),
    as the membership module's Devices, so the plan's rings are the rings the hub will form."""
    from components.local.fleet import local_devices as fleet_devices
    from components.rollout.membership import Device

    return [Device(d.id, dict(d.labels)) for d in fleet_devices(cfg)]


@dataclass(frozen=True)
class Membership:
    """Per rollout: ring -> device count, and how many devices the rollout's rings hold.

    Local rollouts are counted over the devices the local fleet registers, exactly. Cloud rings select by
    thing attributes / twin tags, so the only size they have before deploy is the one the stack declares
    (`edgefleet:aws.rings.<ring>.devices`); those rollouts are listed in `declared`.
    """

    rings: dict[str, dict[str, int]]
    rollout_devices: dict[str, int]
    fleet: int | None
    declared: frozenset[str] = frozenset()

    def counted(self, rollout: str) -> str | None:
        if rollout not in self.rings:
            return None
        return "declared" if rollout in self.declared else "local"


def _declared_sizes(cfg, platform: str) -> Mapping[str, int]:
    """Ring name -> the devices the stack declares it must reach, for a cloud platform that declares them."""
    policies = getattr(getattr(cfg, platform, None), "rings", None) or {}
    return {name: p.devices for name, p in policies.items() if isinstance(getattr(p, "devices", None), int)}


def membership(graph: Mapping[str, Any]) -> Membership:
    """Ring membership from the graph's stack config (the same function the hub uses); empty when not computable."""
    if not graph.get("config") or not graph.get("stack_file"):
        return Membership({}, {}, None)
    from pydantic import ValidationError

    from components.rollout.membership import in_group, ring_members
    from edgefleet.config import StackConfig

    # Typed, but not held to today's cross-field rules: a base that a newer rule rejects (the PR that fixes it)
    # must still plan. The working tree's own synth has already enforced them on the head.
    try:
        cfg = StackConfig.model_validate(graph["config"])
    except ValidationError:
        return Membership({}, {}, None)
    try:
        devices = local_devices(cfg)
    except ConfigError:
        devices = []
    groups = {g.name: g for g in cfg.groups}
    if any(r.group not in groups for ro in cfg.rollouts for r in ro.rings):
        return Membership({}, {}, None)
    rings, totals, declared = {}, {}, set()
    for ro in cfg.rollouts:
        rollout_groups = [groups[r.group] for r in ro.rings]
        platforms = {cfg.group_platform(g) for g in rollout_groups}
        if platforms == {"local"} and devices:
            rings[ro.name] = {r: len(ids) for r, ids in ring_members(ro.name, ro.rings, groups, devices).items()}
            totals[ro.name] = sum(1 for d in devices if any(in_group(d, g) for g in rollout_groups))
        elif len(platforms) == 1 and platforms != {"local"}:
            sizes = _declared_sizes(cfg, next(iter(platforms)))
            if sizes and all(r.name in sizes for r in ro.rings):
                rings[ro.name] = {r.name: sizes[r.name] for r in ro.rings}
                totals[ro.name] = sum(rings[ro.name].values())
                declared.add(ro.name)
    return Membership(rings, totals, len(devices) if devices else None, frozenset(declared))


def policy_settings(graph: Mapping[str, Any], base: Mapping[str, Any] | None = None, project_dir: Path | None = None) -> Settings:
    """The rules' settings for a synthesized graph: its stack's policy config, ring counts, and the base's models."""
    members = membership(graph)
    return Settings.from_config(
        graph.get("config") or {}, stack=str(graph.get("stack", "")),
        base_models=base_model_facts(base["resources"]) if base is not None else None,
        # Declared cloud sizes reach the rules through the stack config, where they are reported as declared.
        ring_devices={ro: dict(rs) for ro, rs in members.rings.items() if ro not in members.declared},
        rollout_devices={ro: n for ro, n in members.rollout_devices.items() if ro not in members.declared},
        project_dir=str(project_dir) if project_dir is not None else None,
    )


def run_policy(graph: Mapping[str, Any], base: Mapping[str, Any] | None = None, project_dir: Path | None = None) -> Report:
    settings = policy_settings(graph, base, project_dir)
    try:
        return evaluate(graph["resources"], settings)
    except ValueError as exc:
        raise EdgefleetError(str(graph.get("stack_file") or "stack file"), str(exc),
                             "name rules as listed, each with advisory, mandatory or disabled (docs/plan-and-policy.md)") from None


# -- models -----------------------------------------------------------------------------------------------------------
def _metric_rows(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    olds = {m["name"]: m for m in (old or {}).get("metrics") or []}
    news = {m["name"]: m for m in (new or {}).get("metrics") or []}
    rows = []
    for name in list(olds) + [n for n in news if n not in olds]:
        a, b = olds.get(name), news.get(name)
        higher = (b or a).get("higher_is_better", True)
        row = {"name": name, "dataset": (b or a).get("dataset"), "higher_is_better": higher,
               "old": a["value"] if a else None, "new": b["value"] if b else None, "delta": None}
        if a and b:
            row["delta"] = round(b["value"] - a["value"], 10)
            if a.get("dataset") != b.get("dataset"):
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
        out.append({
            "name": name, "status": status, "old": _model_facts(old), "new": _model_facts(new),
            "size_delta": (new["size"] - old["size"]) if old and new else None,
            "io": {"verdict": io.verdict if io else ("new" if new else "removed"),
                   "changes": [{"kind": c.kind, "name": c.name, "detail": c.detail, "breaking": c.breaking} for c in (io.changes if io else ())],
                   "inputs": [f"{t['name']}: {signature_text(t)}" for t in (new or old).get("inputs") or []],
                   "outputs": [f"{t['name']}: {signature_text(t)}" for t in (new or old).get("outputs") or []]},
            "metrics": _metric_rows(old, new),
            "targets": {"added": [_target_text(t) for n, t in news_t.items() if n not in olds_t],
                        "removed": [_target_text(t) for n, t in olds_t.items() if n not in news_t],
                        "changed": [_target_text(t) for n, t in news_t.items() if n in olds_t and olds_t[n] != t],
                        "all": [_target_text(t) for t in news_t.values()]},
        })
    return out


# -- rollouts ---------------------------------------------------------------------------------------------------------
GATE_KEYS = ("soak_seconds", "deadline_seconds", "min_reporting_share", "success_share", "max_failure_share",
             "max_error_rate", "max_invalid_output_share", "max_p99_latency_ms")


def gate_summary(gate: Mapping[str, Any]) -> str:
    parts = [f"soak {gate.get('soak_seconds', 0):g}s", f"deadline {gate.get('deadline_seconds', 0):g}s",
             f"reporting ≥ {fmt_share(gate.get('min_reporting_share', 0))}",
             f"healthy ≥ {fmt_share(gate.get('success_share', 0))}", f"failed ≤ {fmt_share(gate.get('max_failure_share', 0))}"]
    if gate.get("max_error_rate") is not None:
        parts.append(f"error rate ≤ {fmt_share(gate['max_error_rate'])}")
    if gate.get("max_invalid_output_share") is not None:
        parts.append(f"NaN/Inf outputs ≤ {fmt_share(gate['max_invalid_output_share'])}")
    if gate.get("max_p99_latency_ms") is not None:
        parts.append(f"p99 ≤ {gate['max_p99_latency_ms']:g} ms")
    return ", ".join(parts)


def _selector(ring: Mapping[str, Any], group: Mapping[str, Any] | None) -> str:
    inputs = ring.get("inputs") or {}
    what = f"group {inputs.get('group')}"
    if inputs.get("percent") is not None:
        what = f"{inputs['percent']:g}% of {what}"
    if inputs.get("labels"):
        what += " where " + ", ".join(f"{k}={v}" for k, v in sorted(inputs["labels"].items()))
    hw = dig(group or {}, "inputs", "hardware", "name")
    return what + (f" [{hw}]" if hw else "")


def _ring_rows(g: Graph, rollout: Mapping[str, Any], counts: Mapping[str, int] | None, fleet: int | None,
               stack_fleet: int | None, base_rings: Mapping[str, dict], base_counts: Mapping[str, int] | None,
               counted: str | None = None) -> list[dict]:
    groups = g.groups()
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
            status = "changed" if changes else "unchanged"
        base_devices = base_counts[name] if base_counts is not None and name in base_counts else None
        if old is not None and None not in (devices, base_devices) and devices != base_devices:
            changes.append("devices")
            status = "changed"
        if devices is not None:
            cumulative += devices
        rows.append({
            "index": inputs.get("index"), "name": name, "group": inputs.get("group"), "platform": inputs.get("platform"),
            "hardware": dig(groups.get(inputs.get("group"), {}), "inputs", "hardware", "name"),
            "percent": inputs.get("percent"), "labels": inputs.get("labels") or {}, "selector": _selector(ring, groups.get(inputs.get("group"))),
            "devices": devices, "counted": counted if devices is not None else None, "base_devices": base_devices,
            "cumulative": cumulative if devices is not None else None,
            "share": (cumulative / fleet) if devices is not None and fleet else None,
            "stack_share": (cumulative / stack_fleet) if devices is not None and stack_fleet else None,
            "soak_seconds": dig(inputs, "gate", "soak_seconds"), "gate": {k: dig(inputs, "gate", k) for k in GATE_KEYS},
            "gate_summary": gate_summary(inputs.get("gate") or {}), "status": status, "changes": changes,
        })
    return rows


def diff_rollouts(base_g: Graph, head_g: Graph, base_m: Membership, head_m: Membership) -> list[dict[str, Any]]:
    base_ro = {r["name"]: r for r in base_g.of_type(ROLLOUT)}
    out = []
    for ro in head_g.of_type(ROLLOUT):
        name, inputs = ro["name"], ro.get("inputs") or {}
        old = base_ro.get(name)
        base_rings = {ring_name(r): r for r in base_g.rings(old)} if old else {}
        counted = head_m.counted(name)
        stack_fleet = head_m.fleet if counted == "local" else None   # declared sizes are of this rollout's rings only
        rows = _ring_rows(head_g, ro, head_m.rings.get(name), head_m.rollout_devices.get(name), stack_fleet,
                          base_rings, base_m.rings.get(name), counted)
        removed = [n for n in base_rings if n not in {r["name"] for r in rows}]
        version_changed = old is None or dig(old, "inputs", "sha256") != inputs.get("sha256") or dig(old, "inputs", "version") != inputs.get("version")
        rings_changed = bool(removed) or any(r["status"] != "unchanged" for r in rows)
        if old is not None and not version_changed and not rings_changed:
            continue
        out.append({
            "name": name, "model": inputs.get("model"), "status": "new" if old is None else "changed",
            "from_version": dig(old, "inputs", "version") if old else None, "to_version": inputs.get("version"),
            "from_sha256": dig(old, "inputs", "sha256") if old else None, "to_sha256": inputs.get("sha256"),
            "version_changed": version_changed, "rings": rows, "removed_rings": removed,
            "devices": head_m.rollout_devices.get(name), "fleet": stack_fleet, "counted": counted,
        })
    for name, old in sorted(base_ro.items()):
        if name not in {r["name"] for r in head_g.of_type(ROLLOUT)}:
            out.append({"name": name, "model": dig(old, "inputs", "model"), "status": "removed",
                        "from_version": dig(old, "inputs", "version"), "to_version": None, "from_sha256": dig(old, "inputs", "sha256"),
                        "to_sha256": None, "version_changed": True, "rings": [], "removed_rings": [ring_name(r) for r in base_g.rings(old)],
                        "devices": base_m.rollout_devices.get(name), "fleet": base_m.fleet if base_m.counted(name) == "local" else None,
                        "counted": base_m.counted(name)})
    return out


# -- resources ---------------------------------------------------------------------------------------------------------
def _top_key(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0]


def _provider_replaces(type_: str, olds: dict, news: dict) -> list[str] | None:
    """Asks an edgefleet dynamic provider (`pulumi-python:dynamic/edgefleet-<platform>:<Name>`) what it would replace."""
    prefix = "pulumi-python:dynamic/edgefleet-"
    if not type_.startswith(prefix):
        return None
    platform, _, kind = type_.removeprefix(prefix).partition(":")
    try:
        provider = _provider_class(platform, f"{kind}Provider")
        return None if provider is None else list(provider().diff("plan", olds, news).replaces or [])
    except Exception:  # noqa: BLE001 - a provider we cannot ask leaves the decision to `pulumi preview`
        return None


def _provider_class(platform: str, class_name: str):
    """`<Kind>Provider` from components.<platform>.providers, or else from any module of that package."""
    import importlib
    import pkgutil

    package = importlib.import_module(f"components.{platform}")
    names = ["providers"] + sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name != "providers")
    for name in names:
        try:
            module = importlib.import_module(f"components.{platform}.{name}")
        except ImportError:
            continue
        if hasattr(module, class_name):
            return getattr(module, class_name)
    return None


def replace_keys(rec: Mapping[str, Any], olds: dict, news: dict, changed: list[str]) -> tuple[list[str], str]:
    """Which changed inputs force a replacement, and how that is known."""
    type_ = rec["type"]
    declared = [_top_key(p) for p in (rec.get("options") or {}).get("replace_on_changes") or []]
    if "*" in declared:
        return changed, "replace_on_changes: *"
    hits = [k for k in changed if k in declared]
    from_provider = _provider_replaces(type_, olds, news)
    if from_provider is not None:
        return sorted(set(hits) | set(from_provider)), "the provider's diff"
    if type_ in REPLACE_ALL_BUT:
        return sorted(set(hits) | {k for k in changed if k not in REPLACE_ALL_BUT[type_]}), "create-only properties"
    if _is_iot_hub_configuration(type_):
        return sorted(set(hits) | {k for k in changed if k in IMMUTABLE_CONTENT}), "IoT Hub configuration content is immutable"
    if type_ in REPLACE_ON:
        return sorted(set(hits) | {k for k in changed if k in REPLACE_ON[type_]}), "replace-triggering inputs"
    return sorted(set(hits)), "replace_on_changes" if declared else ""


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
        entry = {"urn": urn, "type": r["type"], "name": r["name"], "custom": r.get("custom", True), "changed": [], "replace_keys": [], "why": ""}
        if old is None:
            out.append({**entry, "action": "create"})
            continue
        a, b = old.get("inputs") or {}, r.get("inputs") or {}
        ignored = {p for p in (r.get("options") or {}).get("ignore_changes") or [] if _top_key(p) == p}   # as Pulumi: old value kept
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
        out.append({**entry, "action": "replace" if keys else "update", "changed": changed, "replace_keys": keys,
                    "why": entry["why"] or (f"{', '.join(keys)} changed ({how})" if keys else "")})
    for urn, o in olds.items():
        if urn not in news and urn not in aliased:
            out.append({"urn": urn, "type": o["type"], "name": o["name"], "custom": o.get("custom", True), "action": "delete",
                        "changed": [], "replace_keys": [], "why": ""})
    out = follow_moved_providers(news, out)
    order = {a: i for i, a in enumerate(ACTIONS)}
    return sorted(out, key=lambda e: (order[e["action"]], e["type"], e["name"]))


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
            e.update(action="replace", replace_keys=sorted(set(e["replace_keys"]) | set(keys)),
                     why=f"{', '.join(keys)} changed: a provider in another region manages new resources")
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
            e = {"urn": urn, "type": r["type"], "name": r["name"], "custom": True, "action": "update", "changed": [], "replace_keys": [], "why": ""}
            entries.append(e)
        if e["action"] in ("update", "replace"):
            e.update(action="replace", replace_keys=sorted(set(e["replace_keys"]) | {"(provider)"}),
                     why=PROVIDER_MOVED + (f"; {e['why']}" if e["why"] else ""))
    return entries


# -- the plan ----------------------------------------------------------------------------------------------------------
def compute_plan(base: Mapping[str, Any], head: Mapping[str, Any], base_ref: str = "", project_dir: Path | None = None) -> dict[str, Any]:
    """Everything a reviewer needs, as JSON-friendly data. Pure over the two graphs (and, for the digest rule, the files)."""
    base_g, head_g = Graph(base["resources"]), Graph(head["resources"])
    base_m, head_m = membership(base), membership(head)
    resources = diff_resources(base["resources"], head["resources"])
    report = run_policy(head, base, project_dir)
    counts = {a: sum(1 for e in resources if e["action"] == a) for a in ACTIONS}
    models = diff_models(base_g.models(), head_g.models())
    rollouts = diff_rollouts(base_g, head_g, base_m, head_m)
    return {
        "format": PLAN_FORMAT, "project": head.get("project"), "stack": head.get("stack"), "base_ref": base_ref,
        "base_note": base.get("note"), "changed": any(counts.values()) or bool(models) or bool(rollouts),
        "models": models, "rollouts": rollouts,
        "resources": {"counts": counts, "changes": resources},
        "policy": report.to_dict(),
    }


# -- Markdown ----------------------------------------------------------------------------------------------------------
def _num(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,}"


def _bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n:,} B"


def _signed(n: float, unit: str = "") -> str:
    return f"{n:+,}{unit}" if isinstance(n, int) else f"{n:+.4g}{unit}"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _model_md(m: dict[str, Any]) -> list[str]:
    old, new = m["old"], m["new"]
    if m["status"] == "added":
        head = f"#### `{m['name']}` — new model {new['version']}"
    elif m["status"] == "removed":
        return [f"#### `{m['name']}` — removed (was {old['version']})", ""]
    else:
        head = f"#### `{m['name']}` {old['version']} → {new['version']}"
    lines = [head, "", "| | base | this change |", "|---|---|---|"]
    for key, label in (("version", "version"), ("sha256", "sha256"), ("size", "size"), ("opset", "opset"), ("min_agent_version", "min agent")):
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
    badge = {"unchanged": "✅ unchanged", "compatible": "✅ compatible", "breaking": "⛔ **breaking**", "new": "new"}.get(io["verdict"], io["verdict"])
    lines += ["", f"**I/O signature: {badge}**", ""]
    lines += [f"- input `{_md(s)}`" for s in io["inputs"]] + [f"- output `{_md(s)}`" for s in io["outputs"]]
    for c in io["changes"]:
        lines.append(f"- {'⛔' if c['breaking'] else '➕'} {c['kind']} `{c['name']}`: {_md(c['detail'])}")
    if m["metrics"]:
        lines += ["", "| metric | dataset | base | this change | change |", "|---|---|---|---|---|"]
        for r in m["metrics"]:
            arrow = "↑" if r["higher_is_better"] else "↓"
            delta = "" if r["delta"] is None else _signed(r["delta"])
            lines.append(f"| {r['name']} {arrow} | {_md(r['dataset'])} | {'—' if r['old'] is None else r['old']} | "
                         f"{'—' if r['new'] is None else r['new']} | {delta} {r['verdict']} |")
    t = m["targets"]
    lines += ["", "**Targets:** " + "; ".join(t["all"])]
    for kind in ("added", "removed", "changed"):
        if t[kind]:
            lines.append(f"- target {kind}: " + "; ".join(t[kind]))
    return lines + [""]


def _rollout_md(r: dict[str, Any]) -> list[str]:
    if r["status"] == "removed":
        return [f"#### Rollout `{r['name']}` — removed (devices keep {r['model']} {r['from_version']}; rings {', '.join(r['removed_rings'])} go away)", ""]
    what = (f"{r['model']} {r['from_version']} → {r['to_version']}" if r["status"] == "changed" and r["version_changed"]
            else f"{r['model']} {r['to_version']}")
    lines = [f"#### Rollout `{r['name']}`: {what}" + (" (new rollout)" if r["status"] == "new" else ""), ""]
    if not r["version_changed"]:
        lines += [f"The model does not change; the ring layout does. Devices that land in a new or changed ring are "
                  f"(re)targeted with {r['model']} {r['to_version']}.", ""]
    declared = r.get("counted") == "declared"
    if declared:
        platform = (r["rings"][0]["platform"] if r["rings"] else None) or "aws"
        fleet = (f"{r['devices']:,} devices as declared in `edgefleet:{platform}.rings.<ring>.devices`: rings select devices by "
                 f"thing attributes / twin tags, so the devices that register decide the real counts at deploy")
        whole = "of the rollout's declared devices"
    elif r["devices"] is not None:
        fleet = f"{r['devices']:,} devices in its groups" + (f", {r['fleet']:,} in the stack's fleet" if r["fleet"] else "")
        whole = "of the fleet" if r["fleet"] else "of its groups' devices"
    else:
        fleet = "device counts are known at deploy: rings select devices by thing attributes / twin tags"
        whole = ""
    lines += [f"Rings run in this order, each after the previous one's gate passes ({fleet}):", "",
              "| step | ring | selects | devices | cumulative devices | cumulative share | gate |", "|---|---|---|---|---|---|---|"]
    for row in r["rings"]:
        mark = {"new": " 🆕", "changed": " ✱"}.get(row["status"], "")
        devices = _num(row["devices"]) if row["devices"] is not None else "known at deploy"
        if row["counted"] == "declared":
            devices += " (declared)"
        if row["base_devices"] is not None and row["devices"] is not None and row["base_devices"] != row["devices"]:
            devices += f" (was {row['base_devices']:,})"
        lines.append(f"| {row['index'] + 1} | `{row['name']}`{mark} | {_md(row['selector'])} | {devices} | {_num(row['cumulative'])} | "
                     f"{_share(row)} | {_md(row['gate_summary'])} |")
    for row in r["rings"]:
        if row["changes"]:
            lines.append(f"- ring `{row['name']}` changed: {', '.join(row['changes'])}")
    if r["removed_rings"]:
        lines.append(f"- rings removed: {', '.join(r['removed_rings'])}")
    first = r["rings"][0] if r["rings"] else None
    if first and first["devices"] is not None:
        share = f" ({_share(first)} {whole})" if first["share"] is not None else ""
        lines += ["", f"Blast radius of step 1: **{first['devices']:,} device(s){' (declared)' if declared else ''}**{share} "
                      f"for at least {first['soak_seconds']:g}s before ring `{r['rings'][1]['name'] if len(r['rings']) > 1 else '—'}` sees it."]
    return lines + [""]


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
    lines = ["### Policy", "", f"{status}" + ("" if policy["has_base"] else " (no base graph: regression checks not run)"), "",
             "| rule | level | result | details |", "|---|---|---|---|"]
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
    if plan.get("base_note"):
        lines += [f"_{plan['base_note']}: everything below is new._", ""]
    if not plan["changed"]:
        lines += ["**No changes.** This change leaves every model, rollout and resource of this stack as it is; no device is affected.", ""]
        return "\n".join(lines + policy_md(plan["policy"]))
    counts = plan["resources"]["counts"]
    shipping = [r for r in plan["rollouts"] if r["status"] != "removed"]
    summary = [f"{len(plan['models'])} model(s) changed" if plan["models"] else "no model changes",
               f"{len(shipping)} rollout(s) ship" if shipping else "no rollout ships",
               ", ".join(f"{counts[a]} {a}" for a in ACTIONS if counts[a]) or "no resource changes"]
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
