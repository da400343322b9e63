"""The one small interface behind which AWS, Azure and the local fleet live.

Generic components (ModelStore, SigningKey, AppRegistry, ModelVersion, DeviceGroup, Rollout) own the concepts and
their outputs; a Platform realises each concept as child resources parented to that component. Reading
`components/aws/platform.py` beside `components/local/platform.py` should show the same methods.

A platform is a value: whatever a step needs from an earlier one arrives as an argument (the stack's base
resources, the model's publication, the rings before this one), each carrying the platform's own `handles`
(its bucket, its key, its thing group…), so no method depends on what another was called with before.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pulumi

from components.rollout.spec import DeviceGroupConfig, RingConfig, RolloutConfig
from components.rollout.windows import Windows, longest_hold
from edgefleet_agent.contract.manifest import ModelManifest

if TYPE_CHECKING:
    from components.app_registry import AppRegistry
    from components.device_group import DeviceGroup
    from components.model_store import ModelStore
    from components.model_version import ModelVersion
    from components.rollout_component import Ring
    from components.signing_key import SigningKey


@dataclass
class StoreOutputs:
    uri: pulumi.Output[str]  # prefix under which artifacts live: s3://…, https://…blob…, file://…
    encrypted: bool
    public_access_blocked: bool
    handles: Any = None  # the platform's own resources, for the steps that follow


@dataclass
class KeyOutputs:
    key_ref: pulumi.Output[str]  # KMS key ARN, Key Vault key id, or the local key file path
    public_key_pem: pulumi.Output[str]  # what devices trust
    exportable: bool
    handles: Any = None


@dataclass
class RegistryOutputs:
    repository_url: pulumi.Output[str]
    handles: Any = None


@dataclass
class GroupOutputs:
    target: pulumi.Output[str]  # thing group ARN, twin target condition, or the local selector
    handles: Any = None


@dataclass
class PublishOutputs:
    uri: pulumi.Output[str]  # where devices download this exact artifact
    signature: pulumi.Output[str]  # the signature envelope over the manifest bytes
    extra: dict[str, pulumi.Output[Any]] = field(default_factory=dict)
    handles: Any = None


@dataclass
class RingOutputs:
    deployment: pulumi.Output[str]  # the platform deployment for this ring
    gate: pulumi.Output[str]  # resolves once the ring's gate passed; the next ring waits on it
    devices: pulumi.Output[Any]
    handles: Any = None


@dataclass(frozen=True)
class StackBase:
    """A platform's stack-wide resources, declared once: what groups, models and rings build on."""

    key: SigningKey
    store: ModelStore
    registry: AppRegistry


@dataclass(frozen=True)
class RingSpec:
    """What a Platform needs to build one ring: position, selection, gate, and the rings declared before it."""

    rollout: RolloutConfig
    index: int
    ring: RingConfig
    group: DeviceGroupConfig
    previous: tuple[RingOutputs, ...] = ()

    @property
    def previous_gate(self) -> pulumi.Output[str] | None:
        return self.previous[-1].gate if self.previous else None


class Platform(ABC):
    name: ClassVar[str]

    def __init__(self, stack: Any, project_dir: Path) -> None:
        self.stack = stack
        self.project_dir = Path(project_dir)

    def delta_inputs(self) -> dict[str, Any]:
        """edgefleet:delta for a publishing provider, only when the stack sets it: graphs of stacks that do not stay as
        they were (docs/deltas.md)."""
        if "delta" not in self.stack.model_fields_set:
            return {}
        return {"delta_enabled": self.stack.delta.enabled, "delta_max_share": self.stack.delta.max_share}

    @abstractmethod
    def signing_key(self, parent: SigningKey) -> KeyOutputs: ...

    @abstractmethod
    def model_store(self, parent: ModelStore) -> StoreOutputs: ...

    @abstractmethod
    def app_registry(self, parent: AppRegistry) -> RegistryOutputs: ...

    @abstractmethod
    def device_group(self, parent: DeviceGroup, group: DeviceGroupConfig, base: StackBase) -> GroupOutputs: ...

    @abstractmethod
    def publish_model(
        self, parent: ModelVersion, manifest: ModelManifest, manifest_text: str, artifact: Path, base: StackBase
    ) -> PublishOutputs: ...

    @abstractmethod
    def ring(self, parent: Ring, spec: RingSpec, model: ModelVersion, group: DeviceGroup, base: StackBase) -> RingOutputs: ...


def child(parent: pulumi.Resource, **kwargs: Any) -> pulumi.ResourceOptions:
    """Options for a child resource: parented to the component, nothing else inherited from its opts."""
    return pulumi.ResourceOptions(parent=parent, **kwargs)


def held_deadline(ring: RingConfig, group: DeviceGroupConfig) -> float:
    """The longest a ring's gate can take to judge it: its deadline, stretched by however long its group's maintenance
    windows keep the ring waiting to deploy or pause that deadline (the engine's rules). Every platform's gate timeout
    is built on it, so a ring waiting days for its window does not time the Pulumi operation out."""
    return _held(group.windows(), ring.gate.deadline_seconds, time.time() // 86400 * 86400)


def ring_gate_timeout(spec: RingSpec, slack_seconds: int) -> str:
    """The Pulumi create timeout of a gate that judges its own ring: held_deadline, a rollback's wait (rollbacks ignore
    windows), and `slack_seconds`."""
    return f"{int(held_deadline(spec.ring, spec.group) + spec.ring.gate.deadline_seconds) + slack_seconds}s"


@functools.lru_cache(maxsize=1024)
def _held(windows: Windows | None, seconds: float, day: float) -> float:
    """longest_hold from the start of `day` (UTC): one value for every ring with the same windows all day, so a stack of
    10,000 groups computes it once per distinct windows; keyed on the day, so a long-lived process (the Automation API)
    does not keep the first day's value."""
    return longest_hold(windows, seconds, day)


def read_after(value: pulumi.Output[Any], *resources: pulumi.Resource) -> pulumi.Output[Any]:
    """An invoke's result that carries the resources it reads as dependencies. Under `pulumi preview` an invoke whose
    arguments are still unknown returns an unknown result with no dependencies at all (even those its arguments or
    `depends_on` named), so what consumes it would look unrelated to the resource it reads: a thinner graph for the
    policies than `pulumi up` builds."""
    return pulumi.Output.all(value, *(r.urn for r in resources)).apply(lambda parts: parts[0])
