"""What the rules know about a stack besides its graph: thresholds, enforcement levels and the platforms' facts.

The stack file's `edgefleet:policy` section (or PULUMI_CONFIG, which is what the engine hands a policy pack) sets
the thresholds; each registered platform's rules module says what its own section sets (platforms.py). The
CrossGuard pack's per-policy config overrides them, so SETTING_SCHEMA is the pack's config schema.

Standard library only; imports platforms, as `policies.platforms` or, in the pack's own virtualenv, as `platforms`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Mapping

if __package__:
    from . import platforms
else:
    import platforms  # type: ignore[no-redef]

if TYPE_CHECKING:
    from .engine import Rule

# Defaults mirror edgefleet.config.PolicyConfig; tests/policy checks they agree.
DEFAULT_CANARY_MAX_SHARE = 0.1
DEFAULT_MIN_CANARY_SOAK_SECONDS = 300.0
DEFAULT_MAX_METRIC_REGRESSION = 0.02
DEFAULT_MAX_VARIANT_DROP = 0.01
DEFAULT_MIN_VARIANT_AGREEMENT = 0.95
DEFAULT_SAS_WARNING_DAYS = 30  # time to notice, rotate, and let every device pick up a new base deployment


@dataclass(frozen=True)
class Settings:
    """What the rules need to know about the stack besides its graph.

    `base_models` (model name -> the manifest it replaces) exists only when a base graph was synthesized
    (`--base`); `ring_devices` / `rollout_devices` only where membership is computable offline (local).
    `declared_ring_devices` (platform -> ring -> devices) is what cloud stacks declare each ring must reach
    (`edgefleet:aws.rings.<ring>.devices`): the only size a label-selected cloud ring has before deploy.
    `project_dir` lets the digest rule re-hash local artifacts; it is never set under CrossGuard.
    """

    stack: str = ""
    production: bool = False
    canary_max_share: float = DEFAULT_CANARY_MAX_SHARE
    min_canary_soak_seconds: float = DEFAULT_MIN_CANARY_SOAK_SECONDS
    metric_floors: Mapping[str, float] = field(default_factory=dict)
    max_metric_regression: float = DEFAULT_MAX_METRIC_REGRESSION
    max_variant_drop: float = DEFAULT_MAX_VARIANT_DROP
    min_variant_agreement: float = DEFAULT_MIN_VARIANT_AGREEMENT
    enforcement: Mapping[str, str] = field(default_factory=dict)
    agent_versions: Mapping[str, str] = field(default_factory=dict)
    base_models: Mapping[str, Any] | None = None
    ring_devices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    rollout_devices: Mapping[str, int] = field(default_factory=dict)
    declared_ring_devices: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    azure_sas_expiry: str | None = None
    today: str | None = None  # ISO date the expiry rule counts from; None: today (UTC)
    sas_warning_days: int = DEFAULT_SAS_WARNING_DAYS
    project_dir: str | None = None
    capture_destination: Mapping[str, Any] | None = None  # edgefleet:capture: where captured samples may go

    def level(self, rule: Rule) -> str:
        return self.enforcement.get(rule.name, rule.default_level)

    def with_overrides(self, values: Mapping[str, Any]) -> Settings:
        known = {k: v for k, v in values.items() if k in SETTING_SCHEMA and v is not None}
        return replace(self, **known)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], stack: str = "", **extra: Any) -> Settings:
        """From the stack's `edgefleet:` keys, namespace stripped (a graph's `config`, or PULUMI_CONFIG decoded)."""
        policy = config.get("policy") or {}
        return cls(
            stack=stack,
            production=bool(policy.get("production", False)),
            canary_max_share=float(policy.get("canary_max_share", DEFAULT_CANARY_MAX_SHARE)),
            min_canary_soak_seconds=float(policy.get("min_canary_soak_seconds", DEFAULT_MIN_CANARY_SOAK_SECONDS)),
            metric_floors={str(k): float(v) for k, v in (policy.get("metric_floors") or {}).items()},
            max_metric_regression=float(policy.get("max_metric_regression", DEFAULT_MAX_METRIC_REGRESSION)),
            max_variant_drop=float(policy.get("max_variant_drop", DEFAULT_MAX_VARIANT_DROP)),
            min_variant_agreement=float(policy.get("min_variant_agreement", DEFAULT_MIN_VARIANT_AGREEMENT)),
            enforcement={str(k): str(v) for k, v in (policy.get("enforcement") or {}).items()},
            capture_destination=config.get("capture") if isinstance(config.get("capture"), Mapping) else None,
            **platform_settings(config),
            **extra,
        )


def platform_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The Settings fields the platforms' own stack sections set, each platform asked in registry order.

    Mapping fields gather every platform's entries (agent_versions: platform -> the agent its devices run).
    """
    out: dict[str, Any] = {"agent_versions": {}, "declared_ring_devices": {}}
    for _name, module in platforms.modules():
        for key, value in module.stack_settings(config).items():
            if isinstance(value, Mapping):
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value
    return out


def cloud_settings(config: Mapping[str, Any], platform: str, default_agent_version: str) -> dict[str, Any]:
    """What a cloud platform's `edgefleet:<platform>` section sets: the agent version its devices run (the section's
    `agent_version`, else the platform's default) and the ring sizes it declares (`rings.<ring>.devices`)."""
    section = config.get(platform)
    if not isinstance(section, Mapping):
        return {}
    out: dict[str, Any] = {"agent_versions": {platform: str(section.get("agent_version") or default_agent_version)}}
    rings = section.get("rings")
    if isinstance(rings, Mapping):
        counts = {
            str(name): policy["devices"]
            for name, policy in rings.items()
            if isinstance(policy, Mapping) and type(policy.get("devices")) is int
        }
        if counts:
            out["declared_ring_devices"] = {platform: counts}
    return out


def settings_from_pulumi_config(env_config: Mapping[str, str], stack: str = "") -> Settings:
    """Settings from PULUMI_CONFIG as the engine passes it to programs and policy packs (`edgefleet:key` -> JSON)."""
    raw = {}
    for key, value in env_config.items():
        ns, _, name = key.partition(":")
        if ns != "edgefleet":
            continue
        name = name.removeprefix("config:")  # older engines wrote `project:config:key`
        try:
            raw[name] = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            raw[name] = value
    return Settings.from_config(raw, stack=stack)


# JSON-schema types of the settings a CrossGuard policy accepts in its config (PolicyConfigSchema.properties).
SETTING_SCHEMA: dict[str, dict[str, Any]] = {
    "production": {"type": "boolean"},
    "canary_max_share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "min_canary_soak_seconds": {"type": "number", "minimum": 0},
    "metric_floors": {"type": "object", "additionalProperties": {"type": "number"}},
    "max_metric_regression": {"type": "number", "minimum": 0},
    "max_variant_drop": {"type": "number", "minimum": 0},
    "min_variant_agreement": {"type": "number", "minimum": 0, "maximum": 1},
    "agent_versions": {"type": "object", "additionalProperties": {"type": "string"}},
    "base_models": {"type": "object"},
    "ring_devices": {"type": "object"},
    "rollout_devices": {"type": "object"},
    "declared_ring_devices": {"type": "object"},
    "azure_sas_expiry": {"type": "string"},
    "today": {"type": "string"},
    "sas_warning_days": {"type": "integer", "minimum": 1},
    "capture_destination": {"type": "object"},
}
