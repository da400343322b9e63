"""Typed stack configuration: `stacks/Pulumi.<stack>.yaml`, keys under the `edgefleet:` namespace.

The Pulumi program reads these keys through `pulumi.Config` (so `pulumi up` and `pulumi config set` work as
usual); offline commands read the stack file directly. Both paths end in `parse_stack_config`, so an error
names the same file and key whichever way the program ran. `check_stack` holds the cross-field rules in a
pure function that the policy pack can call too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgefleet_agent.contract.errors import ConfigError, from_validation_error
from edgefleet_agent.contract.manifest import HardwareProfile, ModelManifest, NAME_RE, check_semver

PROJECT = "edgefleet"
PlatformName = Literal["local", "aws", "azure"]
Name = Annotated[str, Field(pattern=NAME_RE)]
Share = Annotated[float, Field(ge=0, le=1)]

# Regions where Greengrass v2 is offered (AWS docs, "AWS IoT Greengrass endpoints and quotas").
AWS_REGIONS = (
    "us-east-1", "us-east-2", "us-west-2", "ca-central-1", "sa-east-1",
    "eu-west-1", "eu-west-2", "eu-central-1", "eu-north-1", "eu-south-1",
    "ap-south-1", "ap-northeast-1", "ap-northeast-2", "ap-southeast-1", "ap-southeast-2",
    "me-central-1", "cn-north-1", "us-gov-west-1", "us-gov-east-1",
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class GateConfig(Strict):
    """When a ring counts as healthy. Shares are of the ring's devices; metrics are over devices on the new version."""

    soak_seconds: float = Field(default=300, ge=0)
    deadline_seconds: float = Field(default=3600, gt=0)
    min_reporting_share: Share = 0.9
    success_share: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_failure_share: Share = 0.05
    max_p99_latency_ms: Annotated[float, Field(gt=0)] | None = None
    max_error_rate: Share | None = None
    max_invalid_output_share: Share | None = 0.0
    # Metric thresholds judge nothing until the new version has served: a ring must not pass on silence.
    min_inferences: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "GateConfig":
        if self.deadline_seconds < self.soak_seconds:
            raise ValueError(f"deadline_seconds ({self.deadline_seconds}) is shorter than soak_seconds ({self.soak_seconds}); no ring could ever pass")
        return self


class RingConfig(Strict):
    """A step of a rollout: which devices of a group, and the gate they must pass before the next ring.

    `percent` is cumulative: a ring with percent 30 after one with 5 adds the next 25% of the group.
    Rings are disjoint: a device belongs to the first ring that selects it.
    """

    name: Name
    group: Name
    percent: Annotated[float, Field(gt=0, le=100)] | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    gate: GateConfig = GateConfig()


class RolloutConfig(Strict):
    name: Name
    model: Name
    rings: list[RingConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_rings(self) -> "RolloutConfig":
        names = [r.name for r in self.rings]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"ring names must be unique within a rollout: {', '.join(dupes)}")
        return self


class DeviceGroupConfig(Strict):
    """Devices of one hardware profile, chosen by labels (thing attributes / twin tags) or explicit ids."""

    name: Name
    platform: PlatformName | None = None
    hardware: HardwareProfile
    labels: dict[str, str] = Field(default_factory=dict)
    devices: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _selects_something(self) -> "DeviceGroupConfig":
        if not self.labels and not self.devices:
            raise ValueError("a group needs labels or devices to select its members")
        return self


class ModelRef(Strict):
    path: str = Field(min_length=1)


class SigningConfig(Strict):
    """Local stacks sign with a key file (created on first `edgefleet up`); cloud stacks create KMS / Key Vault keys."""

    key_file: str = ".edgefleet/keys/signing.pem"


class LocalDevices(Strict):
    """A batch of simulated devices. `processes` of them run as real agent processes, the rest in one simulator."""

    count: int = Field(ge=1, le=100_000)
    prefix: Name = "dev"
    labels: dict[str, str] = Field(default_factory=dict)
    arch: Literal["amd64", "arm64", "armv7"] = "amd64"
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    processes: int = Field(default=0, ge=0)
    offline: int = Field(default=0, ge=0)
    reconnect_after_seconds: Annotated[float, Field(ge=0)] | None = None   # offline devices come back after this (None: never)

    @model_validator(mode="after")
    def _fits(self) -> "LocalDevices":
        if self.processes + self.offline > self.count:
            raise ValueError(f"processes ({self.processes}) + offline ({self.offline}) exceed count ({self.count})")
        return self


class LocalConfig(Strict):
    hub: str = ".edgefleet/local/hub.sqlite"
    store: str = ".edgefleet/local/store"
    devices: list[LocalDevices] = Field(min_length=1)
    poll_seconds: Annotated[float, Field(gt=0, le=60)] = 0.2
    report_seconds: Annotated[float, Field(gt=0, le=300)] = 0.5


class AwsConfig(Strict):
    """AWS IoT Greengrass v2: where the fleet lives and how each ring's deployment (an IoT job) rolls out.

    Rings select devices by thing attributes (labels), so AWS cannot count a ring before devices register:
    `rings.<ring>.devices` says how many devices the ring should reach, and the gate never judges a ring
    on fewer. Unset job settings derive from the ring's gate (abort threshold from max_failure_share,
    in-progress timeout from deadline_seconds). Cross-field rules: components/aws/checks.py.
    """

    class RingPolicy(Strict):
        """One ring's IoT job: rollout rate, abort criteria and timeout, plus the devices it must reach."""

        devices: int = Field(ge=1, le=1_000_000)
        max_per_minute: int = Field(default=50, ge=1, le=1000)
        abort_failure_percent: Annotated[float, Field(gt=0, le=100)] | None = None   # IoT aborts at >= this share: 0 would abort at once
        abort_min_executed: int = Field(default=1, ge=1)
        timeout_minutes: Annotated[int, Field(ge=1, le=10080)] | None = None

    region: Literal[AWS_REGIONS]                        # regions with Greengrass v2; anything else fails naming aws.region
    thing_type: Name | None = None                      # default: edgefleet-<stack>-device
    metric_namespace: str = Field(default="Edgefleet/Agent", pattern=r"^[A-Za-z0-9._/#:-]{1,255}$")
    agent_version: str = Field(default="0.1.0", pattern=r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")  # the agent image tag
    deploying_role_arn: str | None = Field(default=None, pattern=r"^arn:aws(-cn|-us-gov)?:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$")
    rings: dict[Name, RingPolicy] = Field(default_factory=dict)
    manage_fleet_indexing: bool = True                 # false when another stack owns this account's fleet-indexing settings
    poll_seconds: Annotated[float, Field(ge=1, le=300)] = 15

    @field_validator("metric_namespace")
    @classmethod
    def _not_aws_namespace(cls, value: str) -> str:
        if value.startswith("AWS/"):
            raise ValueError("namespaces starting with AWS/ are reserved for AWS services")
        return value


class AzureConfig(Strict):
    """Azure IoT Edge settings (see docs/azure.md). Globally unique names derive from subscription and stack."""

    location: str
    resource_group: Name | None = None
    iot_hub_sku: Literal["S1", "S2", "S3"] = "S1"           # layered deployments need a standard tier
    iot_hub_units: int = Field(default=1, ge=1, le=200)
    agent_version: str = "0.1.0"
    deployment_priority: int = Field(default=10, ge=0, le=1_000_000)   # the base deployment's; ring layers sit above it
    edge_runtime: Literal["1.4", "1.5"] = "1.5"             # tag of the $edgeAgent / $edgeHub images
    edge_agent_schema: Literal["1.0", "1.1"] = "1.1"
    edge_hub_schema: Literal["1.0", "1.1", "1.2"] = "1.2"
    storage_sku: Literal["Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_GZRS"] = "Standard_LRS"
    registry_sku: Literal["Basic", "Standard", "Premium"] = "Standard"
    device_sas_expiry: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")   # read-only store SAS the devices download with
    poll_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    deployer_principal_type: Literal["User", "ServicePrincipal", "Group"] = "User"   # who runs `pulumi up`: gets the data-plane roles

    @field_validator("location")
    @classmethod
    def _location(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[a-z][a-z0-9]*", value):
            hint = re.sub(r"[^a-z0-9]", "", value.lower()) or "westeurope"
            raise ValueError(f"{value!r} is not an Azure region name; use the lower-case name such as {hint!r} "
                             "(`az account list-locations -o table` lists them)")
        return value

    _v_agent_version = field_validator("agent_version")(check_semver)

    @field_validator("device_sas_expiry")
    @classmethod
    def _expiry(cls, value: str) -> str:
        import datetime

        try:
            datetime.date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a calendar date (YYYY-MM-DD)") from None
        return value


Enforcement = Literal["advisory", "mandatory", "disabled"]


class PolicyConfig(Strict):
    """Thresholds and enforcement levels for the rules in policies/ (run by `edgefleet policy` and CrossGuard)."""

    production: bool = False
    canary_max_share: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_canary_soak_seconds: float = Field(default=300, ge=0)
    metric_floors: dict[str, float] = Field(default_factory=dict)
    max_metric_regression: float = Field(default=0.02, ge=0)
    enforcement: dict[str, Enforcement] = Field(default_factory=dict)


class StackConfig(Strict):
    platforms: list[PlatformName] = Field(min_length=1)
    models: list[ModelRef] = Field(min_length=1)
    groups: list[DeviceGroupConfig] = Field(min_length=1)
    rollouts: list[RolloutConfig] = Field(default_factory=list)
    signing: SigningConfig = SigningConfig()
    local: LocalConfig | None = None
    aws: AwsConfig | None = None
    azure: AzureConfig | None = None
    policy: PolicyConfig = PolicyConfig()

    def group(self, name: str) -> DeviceGroupConfig:
        return next(g for g in self.groups if g.name == name)

    def group_platform(self, group: DeviceGroupConfig) -> str:
        return group.platform or self.platforms[0]


KEYS = tuple(StackConfig.model_fields)


def stack_file(project_dir: Path, stack: str) -> Path:
    return Path(project_dir) / "stacks" / f"Pulumi.{stack}.yaml"


def check_known_key(name: str, source: str) -> None:
    """A misspelt key would otherwise be dropped silently and its section fall back to defaults."""
    if name not in KEYS:
        raise ConfigError(source, f"config.{PROJECT}:{name}: unknown key",
                          f"edgefleet keys are: {', '.join(PROJECT + ':' + k for k in KEYS)}")


def read_stack_file(project_dir: Path, stack: str) -> tuple[dict[str, Any], str]:
    """Returns the stack file's `edgefleet:` keys (namespace stripped) and the path to name in errors."""
    path = stack_file(project_dir, stack)
    source = str(path.relative_to(project_dir)) if path.is_relative_to(project_dir) else str(path)
    if not path.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in path.parent.glob("Pulumi.*.yaml"))
        raise ConfigError(source, f"no such stack file (stack {stack!r})", f"use one of: {', '.join(known) or 'none yet'}, or create {source}")
    try:
        # libyaml's parser when PyYAML has it: same safe loader, ~10x faster on a 1,000-group stack file
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(doc, dict):
        raise ConfigError(source, f"expected a mapping with a `config:` key at the top level, got {type(doc).__name__}",
                          "see docs/configuration.md")
    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(source, "config: must be a mapping of keys", "see docs/configuration.md")
    raw: dict[str, Any] = {}
    for key, value in config.items():
        ns, _, name = str(key).partition(":")
        if ns != PROJECT:
            continue  # provider settings such as aws:region belong to their providers
        check_known_key(name, source)
        if isinstance(value, dict) and "secure" in value and len(value) == 1:
            raise ConfigError(source, f"config.{key}: edgefleet keys hold no secrets", "store secrets in the provider's own config")
        raw[name] = value
    return raw, source


def parse_stack_config(raw: dict[str, Any], source: str) -> StackConfig:
    try:
        cfg = StackConfig.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, source, prefix=f"{PROJECT}:") from None
    raise_first(check_stack(cfg), source)
    return cfg


def raise_first(problems: list[tuple[str, str, str]], source: str) -> None:
    """A check's (key, problem, fix) list as the error a user reads: the first, naming the file and key, and how
    many more there are. Nothing when the list is empty."""
    if problems:
        key, problem, fix = problems[0]
        raise ConfigError(source, f"{PROJECT}:{key}: {problem}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), fix)


def load_stack(project_dir: Path, stack: str) -> tuple[StackConfig, str]:
    raw, source = read_stack_file(project_dir, stack)
    return parse_stack_config(raw, source), source


def to_pulumi_config(raw: dict[str, Any]) -> dict[str, str]:
    """The stack file's keys as the Pulumi engine hands them to a program: namespaced, objects as JSON."""
    return {f"{PROJECT}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def check_stack(cfg: StackConfig) -> list[tuple[str, str, str]]:
    """Cross-field rules: (key, problem, fix) for each. Pure, so policies can reuse it."""
    out: list[tuple[str, str, str]] = []
    if len(set(cfg.platforms)) != len(cfg.platforms):
        out.append(("platforms", "lists a platform twice", "list each platform once"))
    for p in cfg.platforms:
        if getattr(cfg, p) is None:
            out.append((p, f"platform {p!r} is listed in platforms but has no `{PROJECT}:{p}` section", f"add `{PROJECT}:{p}:` with its settings"))
    groups = {}
    for i, g in enumerate(cfg.groups):
        if g.name in groups:
            out.append((f"groups[{i}].name", f"group {g.name!r} is declared twice", "give each group a unique name"))
        groups[g.name] = g
        if g.platform is not None and g.platform not in cfg.platforms:
            out.append((f"groups[{i}].platform", f"{g.platform!r} is not one of this stack's platforms {cfg.platforms}", "add it to platforms or change the group's platform"))
        if g.platform is None and len(cfg.platforms) > 1:
            out.append((f"groups[{i}].platform", "required when the stack has more than one platform", f"set platform to one of {cfg.platforms}"))
    names = [r.name for r in cfg.rollouts]
    for i, r in enumerate(cfg.rollouts):
        if r.name in names[:i]:
            out.append((f"rollouts[{i}].name", f"rollout {r.name!r} is declared twice", "give each rollout a unique name"))
        last_percent: dict[str, float] = {}
        for j, ring in enumerate(r.rings):
            key = f"rollouts[{i}].rings[{j}]"
            group = groups.get(ring.group)
            if group is None:
                out.append((f"{key}.group", f"no device group named {ring.group!r}", f"declare it under {PROJECT}:groups or use one of: {', '.join(groups) or 'none'}"))
                continue
            platform = cfg.group_platform(group)
            if ring.percent is not None:
                if platform != "local":
                    out.append((f"{key}.percent", f"percentage rings need the device registry, which only the local platform keeps; group {group.name!r} is on {platform}",
                                "select the ring's devices with labels (a thing attribute / twin tag such as ring: canary)"))
                if ring.percent <= last_percent.get(ring.group, 0):
                    out.append((f"{key}.percent", f"{ring.percent} does not exceed the previous ring's {last_percent[ring.group]} for group {ring.group!r} (percent is cumulative)",
                                "make each ring's percent larger than the ring before it"))
                last_percent[ring.group] = ring.percent
            elif platform != "local" and not ring.labels and not group.labels and not group.devices:
                out.append((f"{key}", "ring selects no devices", "give the ring labels such as {ring: canary}"))
            gate = ring.gate
            if not math.isfinite(gate.soak_seconds):
                out.append((f"{key}.gate.soak_seconds", "must be finite", "use a number of seconds"))
    if not out:
        out += _platform_checks(cfg)
    return out


def _platform_checks(cfg: StackConfig) -> list[tuple[str, str, str]]:
    """Each cloud's own rules (ring queries, job policies, twin tags); imported lazily, they import this module."""
    from components.aws.checks import check_aws_stack
    from components.azure.checks import check_azure_stack
    from components.local.fleet import local_devices

    out = check_aws_stack(cfg) + check_azure_stack(cfg)
    try:
        local_devices(cfg)                     # each device's hardware must be its group's, which plans and policies check
    except ConfigError as exc:
        key, _, problem = exc.problem.partition(": ")
        out.append((key.removeprefix(f"{PROJECT}:"), problem, exc.fix or ""))
    return out


def check_models_against_groups(cfg: StackConfig, manifests: dict[str, ModelManifest], source_of: dict[str, str]) -> list[tuple[str, str, str]]:
    """Rollouts must name declared models, and the model's targets must match at least one of its groups' hardware."""
    out = []
    for i, r in enumerate(cfg.rollouts):
        manifest = manifests.get(r.model)
        if manifest is None:
            out.append((f"rollouts[{i}].model", f"no model named {r.model!r} among {PROJECT}:models ({', '.join(manifests) or 'none'})",
                        "add its directory under edgefleet:models or fix the name"))
            continue
        groups = [cfg.group(ring.group) for ring in r.rings if any(g.name == ring.group for g in cfg.groups)]
        if groups and not any(hardware_runs(t, g.hardware) for g in groups for t in manifest.targets):
            out.append((f"rollouts[{i}].model", f"model {r.model!r} targets {', '.join(t.name for t in manifest.targets)}, which match no hardware of groups "
                        f"{', '.join(sorted({g.name for g in groups}))} (see {source_of.get(r.model, 'its manifest')})",
                        "add a target for the groups' hardware to the manifest, or deploy to groups it can run on"))
    return out


def hardware_runs(target: HardwareProfile, hardware: HardwareProfile) -> bool:
    """A device profile runs a target when arch matches, it has one of the target's providers, and budgets fit."""
    return (target.arch == hardware.arch
            and any(ep in hardware.execution_providers for ep in target.execution_providers)
            and target.memory_mb <= hardware.memory_mb and target.storage_mb <= hardware.storage_mb)
