"""The stack configuration's schema, `edgefleet:` keys in `stacks/Pulumi.<stack>.yaml`, and its cross-field rules.

The sections every stack has (platforms, models, groups, rollouts, signing, policy) are here; each platform's own
section (`edgefleet:local`, `edgefleet:aws`, …) is that platform's schema, found through components/registry.py.
`check_stack` holds the rules that span sections, as a pure function the policies can reuse; each platform's
load-time checks run after it. Reading the stack file (or Pulumi's config) is the controller's: edgefleet/config.py.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, create_model

from components import registry
from components.rollout.membership import selectors_may_overlap
from components.rollout.spec import DeviceGroupConfig, RolloutConfig, Strict
from edgefleet_agent.contract.errors import ConfigError, from_validation_error
from edgefleet_agent.contract.manifest import HardwareProfile, ModelManifest

PROJECT = "edgefleet"
PlatformName = Literal[registry.NAMES]  # type: ignore[valid-type]
Problem = tuple[str, str, str]  # (key under edgefleet:, what is wrong, how to fix it)


class GroupConfig(DeviceGroupConfig):
    """A device group as a stack declares it: on one of the registry's platforms."""

    platform: PlatformName | None = None


class ModelRef(Strict):
    path: str = Field(min_length=1)


class SigningConfig(Strict):
    """Local stacks sign with a key file (made once by `edgefleet keys create`, never by `up`); cloud stacks create KMS / Key Vault keys."""

    key_file: str = ".edgefleet/keys/signing.pem"


TufRole = Literal["root", "targets", "snapshot", "timestamp"]


class TrustConfig(Strict):
    """The stack's TUF repository (docs/signing.md, "Update metadata"): root keys and threshold, each role's expiry.

    Root keys are key files made by `edgefleet keys create --role root` and kept offline; the online roles (targets,
    snapshot, timestamp) are signed by the stack's signing key. Expiry defaults: root 365 days, targets 30, snapshot 7,
    timestamp 1. `device_refresh_seconds`: how often a device whose timestamp expired tries for a fresh one."""

    root_keys: list[str] = Field(default_factory=lambda: [".edgefleet/keys/root.pem"], min_length=1)
    root_threshold: int = Field(default=1, ge=1)
    expiry_seconds: dict[TufRole, Annotated[float, Field(gt=0)]] = Field(default_factory=dict)
    device_refresh_seconds: Annotated[float, Field(gt=0)] = 60.0


class DeltaConfig(Strict):
    """Delta updates (docs/deltas.md): on the local and Azure platforms the store publishes, with each version, a patch
    from the version(s) its rollout moves devices off, and devices holding that version download the patch instead."""

    enabled: bool = Field(
        default=True, description="publish patches with each version on the local and Azure platforms (devices use them when they fit)"
    )
    max_share: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.9,
        description="a patch is published only when its size is at most this share of the full artifact's; a larger one "
        "saves too few bytes to be worth rebuilding on the device",
    )


Enforcement = Literal["advisory", "mandatory", "disabled"]


class PolicyConfig(Strict):
    """Thresholds and enforcement levels for the rules in policies/ (run by `edgefleet policy` and CrossGuard)."""

    production: bool = False
    canary_max_share: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_canary_soak_seconds: float = Field(default=300, ge=0)
    metric_floors: dict[str, float] = Field(default_factory=dict)
    max_metric_regression: float = Field(default=0.02, ge=0)
    max_variant_drop: float = Field(
        default=0.01,
        ge=0,
        description="the most a model variant (int8, fp16) may measure worse than its reference on the version's evaluation set, "
        "absolute in the metric's units (0.01: one accuracy point); a variant that drops more is refused (rule variant-quality)",
    )
    min_variant_agreement: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="the least share of evaluation frames on which a variant must pick the reference's top-1 class; a variant "
        "that agrees less is refused even when its metric holds (rule variant-quality)",
    )
    enforcement: dict[str, Enforcement] = Field(default_factory=dict)


class CaptureDestination(Strict):
    """Where the samples this stack's devices capture (rings' `capture`) may go, for how long, and why: the declaration
    the policy `capture-destination-declared` asks for before any ring captures (docs/capture.md)."""

    store: str = Field(
        min_length=1,
        description="local: a directory relative to the project (e.g. .edgefleet/local/captures); AWS: s3://bucket/prefix; "
        "Azure: https://<account>.blob.core.windows.net/<container>. Never the model store",
    )
    retention_days: int = Field(ge=1, le=3650, description="how long captured samples are kept before they are deleted")
    purpose: str = Field(min_length=1, description="why samples are captured (e.g. 'labelling and retraining of detector')")


class StackCore(Strict):
    """The sections every stack has; StackConfig adds one optional section per registered platform."""

    platforms: list[PlatformName] = Field(min_length=1)  # type: ignore[valid-type]
    models: list[ModelRef] = Field(min_length=1)
    groups: list[GroupConfig] = Field(min_length=1)
    rollouts: list[RolloutConfig] = Field(default_factory=list)
    signing: SigningConfig = SigningConfig()
    trust: TrustConfig = TrustConfig()
    delta: DeltaConfig = DeltaConfig()
    capture: CaptureDestination | None = None  # where rings' captured samples may go; None: declared nowhere

    def group(self, name: str) -> GroupConfig:
        return next(g for g in self.groups if g.name == name)

    def group_platform(self, group: DeviceGroupConfig) -> str:
        return group.platform or self.platforms[0]

    def section(self, platform: str) -> Any:
        """The platform's own `edgefleet:<platform>` settings, or None."""
        return getattr(self, platform, None)


StackConfig = create_model(  # type: ignore[call-overload]
    "StackConfig",
    __base__=StackCore,
    __doc__="A whole stack: the common sections, each platform's section, the policy settings.",
    **{name: (entry.load("config") | None, None) for name, entry in registry.PLATFORMS.items()},
    policy=(PolicyConfig, PolicyConfig()),
)
KEYS = tuple(StackConfig.model_fields)


def parse_stack(raw: dict[str, Any], source: str) -> Any:
    """The validated StackConfig of a stack's `edgefleet:` keys; errors name `source` and the key."""
    try:
        cfg = StackConfig.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, source, prefix=f"{PROJECT}:") from None
    raise_first(check_stack(cfg), source)
    return cfg


def raise_first(problems: list[Problem], source: str) -> None:
    """A check's (key, problem, fix) list as the error a user reads: the first, naming the file and key, and how
    many more there are. Nothing when the list is empty."""
    if problems:
        key, problem, fix = problems[0]
        raise ConfigError(source, f"{PROJECT}:{key}: {problem}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), fix)


def check_stack(cfg: Any) -> list[Problem]:
    """Cross-field rules: (key, problem, fix) for each. Pure, so policies can reuse it."""
    out: list[Problem] = []
    if len(set(cfg.platforms)) != len(cfg.platforms):
        out.append(("platforms", "lists a platform twice", "list each platform once"))
    for p in cfg.platforms:
        if cfg.section(p) is None:
            out.append(
                (p, f"platform {p!r} is listed in platforms but has no `{PROJECT}:{p}` section", f"add `{PROJECT}:{p}:` with its settings")
            )
    if cfg.trust.root_threshold > len(cfg.trust.root_keys):
        out.append(
            (
                "trust.root_threshold",
                f"{cfg.trust.root_threshold} root keys must sign a root, and trust.root_keys lists {len(cfg.trust.root_keys)}",
                "list more root keys or lower the threshold",
            )
        )
    groups = {}
    for i, g in enumerate(cfg.groups):
        if g.name in groups:
            out.append((f"groups[{i}].name", f"group {g.name!r} is declared twice", "give each group a unique name"))
        groups[g.name] = g
        if g.platform is not None and g.platform not in cfg.platforms:
            out.append(
                (
                    f"groups[{i}].platform",
                    f"{g.platform!r} is not one of this stack's platforms {cfg.platforms}",
                    "add it to platforms or change the group's platform",
                )
            )
        if g.platform is None and len(cfg.platforms) > 1:
            out.append(
                (f"groups[{i}].platform", "required when the stack has more than one platform", f"set platform to one of {cfg.platforms}")
            )
        if g.max_download_bytes_per_second is not None and (
            g.platform in cfg.platforms or (g.platform is None and len(cfg.platforms) == 1)
        ):
            out += _download_cap_problems(f"groups[{i}].max_download_bytes_per_second", g.name, cfg.group_platform(g))
    names = [r.name for r in cfg.rollouts]
    for i, r in enumerate(cfg.rollouts):
        if r.name in names[:i]:
            out.append((f"rollouts[{i}].name", f"rollout {r.name!r} is declared twice", "give each rollout a unique name"))
        last_percent: dict[str, float] = {}
        on = [(j, cfg.group_platform(groups[ring.group])) for j, ring in enumerate(r.rings) if ring.group in groups]
        mixed = next(((j, p) for j, p in on if p != on[0][1]), None)
        if mixed is not None:
            first = registry.platform(on[0][1]).title
            out.append(
                (
                    f"rollouts[{i}].rings[{mixed[0]}].group",
                    f"rollout {r.name!r} mixes {first} rings with rings on {mixed[1]}: a rollout's gates read one platform's health",
                    "split it into one rollout per platform (see stacks/Pulumi.multi.yaml)",
                )
            )
        for j, ring in enumerate(r.rings):
            key = f"rollouts[{i}].rings[{j}]"
            group = groups.get(ring.group)
            if group is None:
                out.append(
                    (
                        f"{key}.group",
                        f"no device group named {ring.group!r}",
                        f"declare it under {PROJECT}:groups or use one of: {', '.join(groups) or 'none'}",
                    )
                )
                continue
            platform = cfg.group_platform(group)
            if ring.percent is not None:
                if platform != "local":
                    out.append(
                        (
                            f"{key}.percent",
                            f"percentage rings need the device registry, which only the local platform keeps; group {group.name!r} is on {platform}",
                            "select the ring's devices with labels (a thing attribute / twin tag such as ring: canary)",
                        )
                    )
                if ring.percent <= last_percent.get(ring.group, 0):
                    out.append(
                        (
                            f"{key}.percent",
                            f"{ring.percent} does not exceed the previous ring's {last_percent[ring.group]} for group {ring.group!r} (percent is cumulative)",
                            "make each ring's percent larger than the ring before it",
                        )
                    )
                last_percent[ring.group] = ring.percent
            elif platform != "local" and not ring.labels and not group.labels and not group.devices:
                out.append((f"{key}", "ring selects no devices", "give the ring labels such as {ring: canary}"))
            gate = ring.gate
            if not math.isfinite(gate.soak_seconds):
                out.append((f"{key}.gate.soak_seconds", "must be finite", "use a number of seconds"))
            if gate.shadow_soak_seconds is not None and platform != "local":
                out.append(
                    (
                        f"{key}.gate.shadow_soak_seconds",
                        f"shadow phases need the gate to set the ring's desired state, which only the local platform's ring "
                        f"deployment leaves to it; group {group.name!r} is on {platform}, whose ring deployment serves the "
                        "candidate itself before the gate could shadow it",
                        "on this platform compare the ring with the devices still on the previous version instead "
                        "(max_distribution_shift, max_confidence_drop, max_latency_ratio), or judge live accuracy (min_live_accuracy)",
                    )
                )
            if ring.capture is not None and platform != "local":
                out.append(
                    (
                        f"{key}.capture",
                        f"sample capture is implemented on the local platform only; group {group.name!r} is on {platform}, "
                        "whose devices would not receive the setting (docs/capture.md, 'On AWS and Azure')",
                        "remove capture from this ring, or capture on a local ring",
                    )
                )
            if ring.max_download_bytes_per_second is not None:
                out += _download_cap_problems(f"{key}.max_download_bytes_per_second", group.name, platform)
        if r.control_holdback > 0 and any(p != "local" for _, p in on):
            out.append(
                (
                    f"rollouts[{i}].control_holdback",
                    "a control holdback is a share of each group's devices, which needs the device registry only the local "
                    f"platform keeps; rollout {r.name!r} is on {next(p for _, p in on if p != 'local')}",
                    "remove it: on this platform each ring compares with the later rings' devices, still on the previous "
                    "version, so keep comparisons off the last ring",
                )
            )
    if not out:
        out += _overlapping_cloud_rollouts(cfg)
    if not out:
        for entry in registry.PLATFORMS.values():  # each platform's own rules (ring queries, job policies, twin tags)
            out += entry.load("checks")(cfg)
    return out


# Platforms whose devices download with the edgefleet agent's own downloader, which keeps to the cap their desired
# state carries: the local hub's desired state, the IoT Edge agent module's twin (`maxDownloadBytesPerSecond`).
CAPPED_PLATFORMS = ("local", "azure")
# Why a download cap set on a group of another platform would not reach its devices, and what to do instead.
_UNCAPPED = {
    "aws": (
        "on Greengrass the nucleus downloads a component's artifacts itself, not the edgefleet agent (docs/aws.md), so the "
        "cap would not apply",
        "remove it: Greengrass downloads are not capped by edgefleet",
    ),
}


def _download_cap_problems(key: str, group: str, platform: str) -> list[Problem]:
    """A download cap is kept by the agent's own downloader, fed by the desired state of the platforms in
    CAPPED_PLATFORMS: declared where it would be ignored, it is refused rather than silently not kept."""
    if platform in CAPPED_PLATFORMS:
        return []
    why, fix = _UNCAPPED.get(platform, ("its desired state does not carry a download cap", "remove it"))
    return [(key, f"a download cap on group {group!r} ({platform}): {why}", fix)]


def _overlapping_cloud_rollouts(cfg: Any) -> list[Problem]:
    """Two rollouts of one model whose groups can hold the same device (where rings select by attributes; the local
    fleet's membership is checked device by device in components/local/checks.py)."""
    out: list[Problem] = []
    groups = {g.name: g.model_copy(update={"platform": cfg.group_platform(g)}) for g in cfg.groups}
    seen: list[tuple[int, Any]] = []
    for i, r in enumerate(cfg.rollouts):
        mine = [groups[ring.group] for ring in r.rings if ring.group in groups]
        if any(g.platform == "local" for g in mine):
            continue
        for j, other in seen:
            theirs = [groups[ring.group] for ring in other.rings if ring.group in groups]
            if other.model == r.model and any(selectors_may_overlap(a, b) for a in mine for b in theirs):
                out.append(
                    (
                        f"rollouts[{i}]",
                        f"rollouts {other.name!r} (rollouts[{j}]) and {r.name!r} both ship model {r.model!r} to groups "
                        "that can hold the same devices: each would set versions the other's gates never judged",
                        "give each rollout of a model its own devices (disjoint groups), or make them one rollout",
                    )
                )
        seen.append((i, r))
    return out


def check_models_against_groups(cfg: Any, manifests: dict[str, ModelManifest], source_of: dict[str, str]) -> list[Problem]:
    """Rollouts must name declared models, and the model's targets must match at least one of its groups' hardware."""
    out = []
    for i, r in enumerate(cfg.rollouts):
        manifest = manifests.get(r.model)
        if manifest is None:
            out.append(
                (
                    f"rollouts[{i}].model",
                    f"no model named {r.model!r} among {PROJECT}:models ({', '.join(manifests) or 'none'})",
                    "add its directory under edgefleet:models or fix the name",
                )
            )
            continue
        groups = [cfg.group(ring.group) for ring in r.rings if any(g.name == ring.group for g in cfg.groups)]
        if groups and not any(hardware_runs(t, g.hardware) for g in groups for t in manifest.targets):
            out.append(
                (
                    f"rollouts[{i}].model",
                    f"model {r.model!r} targets {', '.join(t.name for t in manifest.targets)}, which match no hardware of groups "
                    f"{', '.join(sorted({g.name for g in groups}))} (see {source_of.get(r.model, 'its manifest')})",
                    "add a target for the groups' hardware to the manifest, or deploy to groups it can run on",
                )
            )
    return out


def hardware_runs(target: HardwareProfile, hardware: HardwareProfile) -> bool:
    """A device profile runs a target when arch matches, it has one of the target's providers, and budgets fit."""
    return (
        target.arch == hardware.arch
        and any(ep in hardware.execution_providers for ep in target.execution_providers)
        and target.memory_mb <= hardware.memory_mb
        and target.storage_mb <= hardware.storage_mb
    )
