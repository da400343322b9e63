"""The rules (rules.py) as CrossGuard policies. `__main__.py` serves them; tests call `validate` directly.

What the engine gives a policy pack, and how it becomes edgefleet's graph records:

- A stack policy sees every resource with `props` = its *outputs* (pulumi/pulumi step generator:
  "AnalyzeStack is called on the final outputs of each resource"). A component's outputs are only what it
  passed to `register_outputs`, so a ModelVersion's manifest, a Ring's gate and a DeviceGroup's hardware,
  which are component *inputs*, are not there.
- A resource policy is called for every resource, components included, with its *inputs*, before the
  stack policies run. So the pack carries one resource policy, `edgefleet-collect-inputs`, that never
  reports anything and only records each resource's inputs by URN; the stack policies then build records
  with both. If that policy is disabled, rules that need component inputs report "not visible" (advisory).
- During preview, unknown values raise on access (pulumi_policy's proxy); they become "[unknown]" here and
  the rules report them as unverified instead of failing.
- The stack's config reaches the pack in PULUMI_CONFIG (as it reaches the program), so the stack's
  `edgefleet:policy` section sets thresholds and enforcement levels; a `--policy-pack-config` file (see
  `edgefleet policy --pack-config`) overrides both, per policy, the way CrossGuard config always does.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Secret,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

if __package__:  # imported as `policies.pack` (CLI, tests)
    from .engine import ADVISORY, DISABLED, MANDATORY, Rule, run_rule
    from .graph import SECRET, UNKNOWN, Graph
    from .rules import RULES
    from .settings import SETTING_SCHEMA, Settings, settings_from_pulumi_config
else:  # run by the pack's __main__.py, with policies/ as sys.path[0]
    from engine import ADVISORY, DISABLED, MANDATORY, Rule, run_rule  # type: ignore[no-redef]
    from graph import SECRET, UNKNOWN, Graph  # type: ignore[no-redef]
    from rules import RULES  # type: ignore[no-redef]
    from settings import SETTING_SCHEMA, Settings, settings_from_pulumi_config  # type: ignore[no-redef]

PACK_NAME = "edgefleet"
COLLECTOR = "edgefleet-collect-inputs"
UNVERIFIED = "edgefleet-unverifiable"
LEVEL = {ADVISORY: EnforcementLevel.ADVISORY, MANDATORY: EnforcementLevel.MANDATORY, DISABLED: EnforcementLevel.DISABLED}


def plain(value: Any) -> Any:
    """A policy SDK value as plain JSON-ish data: unknowns become "[unknown]", secrets "[secret]"."""
    if isinstance(value, Secret):
        return SECRET
    if isinstance(value, Mapping):
        out = {}
        for key in list(value):
            try:
                out[key] = plain(value[key])
            except UnknownValueError:
                out[key] = UNKNOWN
        return out
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        items = []
        for i in range(len(value)):
            try:
                items.append(plain(value[i]))
            except UnknownValueError:
                items.append(UNKNOWN)
        return items
    return value


class InputCollector:
    """Inputs of every resource the engine analyzed, by URN. The gRPC server runs several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inputs: dict[str, dict[str, Any]] = {}

    def record(self, args: ResourceValidationArgs, _report: ReportViolation) -> None:
        props = plain(args.props)
        with self._lock:
            self._inputs[args.urn] = props

    def get(self, urn: str) -> dict[str, Any] | None:
        with self._lock:
            return self._inputs.get(urn)


def to_records(resources: Sequence[Any], collector: InputCollector) -> list[dict[str, Any]]:
    """PolicyResources (StackValidationArgs.resources) as edgefleet graph records."""
    out = []
    for r in resources:
        outputs = plain(r.props)
        inputs = collector.get(r.urn)
        parent = r.parent.urn if r.parent is not None else getattr(r.opts, "parent", None)
        out.append(
            {
                "urn": r.urn,
                "type": r.resource_type,
                "name": r.name,
                "custom": r.provider is not None,  # components have no provider
                "parent": parent or None,
                "inputs": inputs if inputs is not None else ({} if r.provider is None else outputs),
                "outputs": outputs,
                "dependencies": [d.urn for d in r.dependencies],
                "property_dependencies": {k: [d.urn for d in v] for k, v in (r.property_dependencies or {}).items()},
            }
        )
    return out


def settings_from_environment(environ: Mapping[str, str] | None = None) -> Settings:
    """The stack's edgefleet settings from PULUMI_CONFIG / PULUMI_STACK, which the engine sets for policy packs."""
    environ = os.environ if environ is None else environ
    try:
        config = json.loads(environ.get("PULUMI_CONFIG") or "{}")
    except json.JSONDecodeError:
        config = {}
    return settings_from_pulumi_config(config if isinstance(config, dict) else {}, environ.get("PULUMI_STACK", ""))


def _stack_policy(rule: Rule, base: Settings, collector: InputCollector) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        settings = base.with_overrides(dict(args.get_config() or {}))
        graph = Graph(to_records(args.resources, collector))
        # The engine already applied the enforcement level; run the check itself under it.
        result = run_rule(rule, graph, settings, level=MANDATORY)
        if result.status == "not-applicable":
            args.not_applicable(result.note)
        for finding in result.violations:
            report_violation(finding.message, finding.urn)

    schema = {key: SETTING_SCHEMA[key] for key in rule.settings}
    return StackValidationPolicy(
        name=rule.name,
        description=rule.title,
        validate=validate,
        enforcement_level=LEVEL[base.level(rule)],
        config_schema=PolicyConfigSchema(properties=schema) if schema else None,
        remediation_steps=rule.description or None,
    )


def _unverified_policy(base: Settings, collector: InputCollector) -> StackValidationPolicy:
    """What no rule could check before deploy (unknown values), as advisories: CrossGuard levels are per policy,
    so a rule cannot report one finding as mandatory and another as advisory itself."""

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        settings = base.with_overrides(dict(args.get_config() or {}))
        graph = Graph(to_records(args.resources, collector))
        for rule in RULES:
            if settings.level(rule) == DISABLED:
                continue
            for finding in run_rule(rule, graph, settings).findings:
                if finding.unverified:
                    report_violation(f"[{rule.name}] {finding.message}", finding.urn)

    return StackValidationPolicy(
        name=UNVERIFIED,
        description="Facts edgefleet's rules could not check before deploy",
        validate=validate,
        enforcement_level=EnforcementLevel.ADVISORY,
    )


def build_policies(settings: Settings | None = None, collector: InputCollector | None = None) -> list:
    """The pack's policies: the input collector, one stack policy per rule, and the unverifiable-facts advisory."""
    settings = settings if settings is not None else settings_from_environment()
    collector = collector or InputCollector()
    policies: list = [
        ResourceValidationPolicy(
            name=COLLECTOR,
            description="Records each resource's inputs for edgefleet's stack policies (never reports).",
            validate=collector.record,
            enforcement_level=EnforcementLevel.ADVISORY,
        )
    ]
    policies += [_stack_policy(rule, settings, collector) for rule in RULES]
    policies.append(_unverified_policy(settings, collector))
    return policies
