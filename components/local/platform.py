"""The local platform: a directory store, a key file, and the SQLite hub that simulated and real agents use."""

from __future__ import annotations

import json
from pathlib import Path

import pulumi

from components.local import providers
from components.local.config import LocalConfig
from components.platform import (
    GroupOutputs,
    KeyOutputs,
    Platform,
    PublishOutputs,
    RegistryOutputs,
    RingOutputs,
    RingSpec,
    StackBase,
    StoreOutputs,
    child,
    ring_gate_timeout,
)
from components.rollout.spec import DeviceGroupConfig
from edgefleet_agent.contract.errors import ConfigError
from edgefleet_agent.contract.manifest import ModelManifest


class LocalPlatform(Platform):
    name = "local"

    @property
    def local(self) -> LocalConfig:
        if self.stack.local is None:
            raise ConfigError("edgefleet:local", "the local platform needs an `edgefleet:local` section")
        return self.stack.local

    def model_store(self, parent) -> StoreOutputs:
        store = providers.ModelStore(f"{parent.resource_name}-dir", {"path": self.local.store}, child(parent))
        return StoreOutputs(uri=store.uri, encrypted=False, public_access_blocked=True)

    def signing_key(self, parent) -> KeyOutputs:
        key = providers.SigningKey(
            f"{parent.resource_name}-keyfile", {"key_file": self.stack.signing.key_file}, child(parent, additional_secret_outputs=[])
        )
        return KeyOutputs(key_ref=pulumi.Output.from_input(self.stack.signing.key_file), public_key_pem=key.public_key_pem, exportable=True)

    def app_registry(self, parent) -> RegistryOutputs:
        return RegistryOutputs(repository_url=pulumi.Output.from_input("source:agent (the local fleet runs the agent from this checkout)"))

    def device_group(self, parent, group: DeviceGroupConfig, base: StackBase) -> GroupOutputs:
        # plain values: the JSON text now, not an Output.json_dumps chain per group (same string, known, no dependencies)
        selector = {"labels": dict(group.labels), "devices": list(group.devices)}
        return GroupOutputs(target=pulumi.Output.from_input(json.dumps(selector)))

    def publish_model(self, parent, manifest: ModelManifest, manifest_text: str, artifact: Path, base: StackBase) -> PublishOutputs:
        source = str(artifact.relative_to(self.project_dir) if artifact.is_relative_to(self.project_dir) else artifact)
        art = providers.Artifact(
            f"{parent.resource_name}-local-artifact",
            {
                "store": self.local.store,
                "key_file": self.stack.signing.key_file,
                "source": source,
                "model": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "size": manifest.size,
                "manifest": manifest_text,
                **self.delta_inputs(),
            },
            child(parent, depends_on=[base.store, base.key]),
        )
        return PublishOutputs(uri=art.uri, signature=art.signature)

    def ring(self, parent, spec: RingSpec, model, group, base: StackBase) -> RingOutputs:
        published = model.published[self.name]
        manifest = model.manifest
        rings = spec.rollout.rings[: spec.index + 1]
        groups = {r.group: self.stack.group(r.group).model_dump(mode="json") for r in rings}
        common = {
            "hub": self.local.hub,
            "rollout": spec.rollout.name,
            "ring": spec.ring.name,
            "index": spec.index,
            "total_rings": len(spec.rollout.rings),
            "rings": [r.model_dump(mode="json") for r in rings],
            "groups": groups,
            "model": manifest.name,
            "version": manifest.version,
            "sha256": manifest.sha256,
            "size": manifest.size,
            "manifest": model.manifest_text,
            "uri": published.uri,
            "signature": published.signature,
            "key_file": self.stack.signing.key_file,
            "poll_seconds": self.local.poll_seconds,
            "stack": pulumi.get_stack(),
            **({"control_holdback": spec.rollout.control_holdback} if spec.rollout.control_holdback else {}),
        }
        after = {"after": spec.previous_gate} if spec.previous_gate is not None else {}
        deployment = providers.RingDeployment(f"{parent.resource_name}-deployment", {**common, **after}, child(parent))
        gate = providers.RingGate(
            f"{parent.resource_name}-gate",
            {
                **common,
                "deployment": deployment.id,
                "gate_config": spec.ring.gate.model_dump(mode="json"),
            },
            child(parent, custom_timeouts=pulumi.CustomTimeouts(create=ring_gate_timeout(spec, 60))),
        )
        return RingOutputs(deployment=deployment.id, gate=gate.gate, devices=deployment.devices)
