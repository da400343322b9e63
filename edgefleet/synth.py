"""Offline synth: evaluate the Pulumi program under Pulumi's own mock runtime and write the declared graph.

No CLI, no credentials, no cloud. The recording monitor sees exactly the RegisterResource requests the
Pulumi engine would receive (type, name, parent, inputs, dependencies, options), and gives URNs the way the
engine builds them (the parent type chain, without the stack). Secrets are redacted. The output is
deterministic: same program, config and models, same bytes. This graph feeds the local stack, `edgefleet
plan` and the policies.

Pulumi's mocks do not read stack files, so the stack file is parsed here and handed over as config, the
same shape the engine passes in PULUMI_CONFIG.
"""

from __future__ import annotations

import gc
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from components import registry
from edgefleet.config import parse_stack_config, read_stack_file, to_pulumi_config
from edgefleet_agent.contract import yamlfile
from edgefleet_agent.contract.errors import EdgefleetError

GRAPH_FORMAT = "edgefleet-graph/v1"
SECRET = "[secret]"
UNKNOWN = "[unknown]"


def project_name(project_dir: Path) -> str:
    path = Path(project_dir) / "Pulumi.yaml"
    if not path.is_file():
        raise EdgefleetError(
            str(path), "not a Pulumi project (no Pulumi.yaml)", "run edgefleet from the project root or pass --project-dir"
        )
    try:
        doc = yamlfile.load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise EdgefleetError(str(path), f"not valid YAML: {exc}", "fix Pulumi.yaml") from None
    return str(doc.get("name", "edgefleet") if isinstance(doc, dict) else "edgefleet")


def _clean(value: Any) -> Any:
    """Redacts secrets and unknowns; drops the pickled dynamic provider (bytes that say nothing to a reviewer)."""
    from pulumi.runtime import rpc

    if isinstance(value, dict):
        sig = value.get(rpc._special_sig_key)
        if sig == rpc._special_secret_sig:
            return SECRET
        return {k: _clean(v) for k, v in sorted(value.items()) if k != "__provider"}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if value is rpc.UNKNOWN or (isinstance(value, str) and value == rpc.UNKNOWN):
        return UNKNOWN
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _platform_hooks() -> list[Any]:
    """Each registered platform's mocks: what its providers compute at deploy time, shown deterministically."""
    return [entry.load("mocks") for entry in registry.PLATFORMS.values()]


def _monitor_and_mocks(stack: str, project: str, region: str, preview: bool = False):
    from pulumi.runtime import rpc
    from pulumi.runtime.mocks import MockMonitor, Mocks

    hooks = _platform_hooks()
    # The monitor's thread hands the inputs it deserialized to the mocks (MockMonitor.RegisterResource); new_resource
    # keeps them, cleaned, for the recording, so each request's inputs are deserialized once, not twice.
    cleaned = threading.local()

    class GraphMocks(Mocks):
        """Echoes inputs and adds the outputs a provider would compute (ARNs, ids), deterministically."""

        def new_resource(self, args):
            cleaned.inputs = _clean(args.inputs)
            state = dict(args.inputs)
            for hook in hooks:
                computed = hook.computed(args.typ, args.name, args.inputs, region) or {}
                # before anything exists (preview), what a provider computes is unknown, as the engine reports it
                state.update({k: rpc.UNKNOWN for k in computed} if preview else computed)
            return f"{args.name}-id", state

        def call(self, args):
            for hook in hooks:
                out = hook.call(args.token, args.args, region) if hasattr(hook, "call") else None
                if out is not None:
                    return out
            return {}

    class RecordingMonitor(MockMonitor):
        def __init__(self, mocks):
            super().__init__(mocks)
            self.records: dict[str, dict[str, Any]] = {}
            self.root_urn = f"urn:pulumi:{stack}::{project}::pulumi:pulumi:Stack::{project}-{stack}"

        def make_urn(self, parent: str, type_: str, name: str) -> str:
            qualified = type_
            if parent and parent != self.root_urn:
                qualified = parent.split("::")[2] + "$" + type_
            return f"urn:pulumi:{stack}::{project}::{qualified}::{name}"

        def RegisterResource(self, request):
            cleaned.inputs = None
            response = super().RegisterResource(request)
            if request.type != "pulumi:pulumi:Stack":
                inputs, cleaned.inputs = cleaned.inputs, None
                if inputs is None:  # the mocks did not see this request: read it here
                    inputs = _clean(rpc.deserialize_properties(request.object))
                urn = self.make_urn(request.parent, request.type, request.name)
                self.records[urn] = {
                    "urn": urn,
                    "type": request.type,
                    "name": request.name,
                    "custom": bool(request.custom),
                    "parent": None if request.parent in ("", self.root_urn) else request.parent,
                    "inputs": inputs,
                    "dependencies": sorted(set(request.dependencies)),
                    "property_dependencies": {k: sorted(v.urns) for k, v in sorted(request.propertyDependencies.items()) if v.urns},
                    "options": {
                        k: v
                        for k, v in {
                            "protect": request.protect or None,
                            "delete_before_replace": request.deleteBeforeReplace or None,
                            "replace_on_changes": sorted(request.replaceOnChanges) or None,
                            "ignore_changes": sorted(request.ignoreChanges) or None,
                            "additional_secret_outputs": sorted(request.additionalSecretOutputs) or None,
                            "aliases": sorted(a.spec.name or a.urn for a in request.aliases) or None,
                            "retain_on_delete": request.retainOnDelete or None,
                            # `urn::id` as the engine gets it; the mock's id says nothing, the URN names the provider
                            "provider": request.provider.rsplit("::", 1)[0] if request.provider else None,
                        }.items()
                        if v is not None
                    },
                }
            return response

        def RegisterResourceOutputs(self, request):
            if request.urn in self.records:
                self.records[request.urn]["outputs"] = _clean(rpc.deserialize_properties(request.outputs))
            return super().RegisterResourceOutputs(request)

    mocks = GraphMocks()
    return RecordingMonitor(mocks), mocks


@contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pauses the cyclic garbage collector while the program is evaluated.

    Evaluation keeps growing the heap (resources, Outputs, futures, captured stack traces), and each full
    collection rescans all of it: measured at over half of a 1,000-group synth (benchmarks/synth_bench.py).
    Reference counting still frees everything acyclic; the cyclic garbage left meanwhile (about 25 MiB at
    1,000 groups) is freed once the collector resumes.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def synth(project_dir: Path, stack: str, preview: bool = False) -> dict[str, Any]:
    """Evaluates the fleet program for `stack` and returns the declared graph. `preview`: as `pulumi preview` of a new
    stack sees it, with every output a provider computes unknown (so invokes that read them are skipped)."""
    import pulumi
    from pulumi.runtime import settings

    project_dir = Path(project_dir).resolve()
    project = project_name(project_dir)
    raw, source = read_stack_file(project_dir, stack)
    cfg = parse_stack_config(raw, source)  # fails early, naming the stack file and key (read once)
    region = cfg.aws.region if cfg.aws else "us-east-1"
    monitor, mocks = _monitor_and_mocks(stack, project, region, preview)
    settings.ROOT.set(None)  # a fresh root stack per synth, as a new `pulumi` process has
    config = to_pulumi_config(raw)
    pulumi.runtime.set_all_config(config, [])
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=preview, monitor=monitor)

    from edgefleet.program import declare, hand_over_parsed

    hand_over_parsed(source, config, cfg)  # the program reads these same texts: it need not validate them again
    with _cwd(project_dir), _no_cyclic_gc():
        pulumi.runtime.test(lambda: declare(project_dir))()
    return {
        "format": GRAPH_FORMAT,
        "project": project,
        "stack": stack,
        "stack_file": source,
        "config": _clean(raw),
        "resources": [monitor.records[u] for u in sorted(monitor.records)],
    }


def dumps(graph: dict[str, Any]) -> str:
    return json.dumps(graph, indent=2, sort_keys=True) + "\n"
