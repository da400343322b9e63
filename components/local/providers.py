"""Dynamic providers for the local platform, for `pulumi up --stack local` with the Pulumi CLI.

Pulumi pickles each provider into the resource's inputs and runs it in another process: providers hold no
state, build what they need inside each method, and import nothing at module level beyond what unpickling
needs. `PROVIDER_VERSION` sits among the inputs so a change in provider behaviour shows up as a diff.
`edgefleet up --stack local` calls the same functions (store.publish, the hub, the engine) directly.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.dynamic import RingGateProvider as GateProvider
from components.dynamic import input_diff
from components.props import Props

PROVIDER_VERSION = "2"


class ModelStoreProps(Props):
    path: str


class SigningKeyProps(Props):
    key_file: str


class ArtifactProps(Props):
    store: str
    key_file: str
    source: str
    model: str
    version: str
    sha256: str
    size: int
    manifest: str
    delta_max_share: float | None = None  # given only when the stack sets edgefleet:delta (docs/deltas.md)
    delta_enabled: bool = True


class _Idempotent(ResourceProvider):
    """Every local create is idempotent (mkdir, existing key, content-addressed publish, set desired, a
    resumable gate), so an in-place update re-runs it; the base class would return no outputs at all."""

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs=self.create(news).outs)


class ModelStoreProvider(_Idempotent):
    def create(self, props: dict[str, Any]) -> CreateResult:
        from pathlib import Path

        path = Path(ModelStoreProps.of(props).path)
        path.mkdir(parents=True, exist_ok=True)
        return CreateResult(id_=str(path), outs={**props, "uri": path.resolve().as_uri()})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, ("path",))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Artifacts outlive the stack resource: devices may still be downloading them."""


class SigningKeyProvider(_Idempotent):
    def create(self, props: dict[str, Any]) -> CreateResult:
        from pathlib import Path

        from components.local.signer import stack_signer

        signer = stack_signer(Path(SigningKeyProps.of(props).key_file), "local")
        return CreateResult(id_=signer.key_id, outs={**props, "key_id": signer.key_id, "public_key_pem": signer.public_key_pem().decode()})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, ("key_file",))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Never deletes key material: devices in the field still trust it."""


class ArtifactProvider(_Idempotent):
    def create(self, props: dict[str, Any]) -> CreateResult:
        from pathlib import Path

        from components.local.signer import LocalKeySigner
        from components.local.store import publish
        from components.local.trust import identity, repository_for_uri

        p = ArtifactProps.of(props)
        signer = LocalKeySigner(p.key_file)
        published = publish(Path(p.store), p.manifest, Path(p.source), signer, p.source)
        repo = repository_for_uri(published.uri, signer)  # none yet: `edgefleet fleet run` makes it, listing the store
        if repo is not None:
            repo.add_targets([identity(published.desired(""))])
        if p.delta_enabled:  # patches from the newest older versions in the store (docs/deltas.md)
            from components.local.deltas import publish_patches
            from components.stack import DeltaConfig

            share = p.delta_max_share if p.delta_max_share is not None else DeltaConfig().max_share
            patches = publish_patches(Path(p.store), published.model, published.sha256, None, share)
            if repo is not None and patches:
                repo.add_patches(patches)
        return CreateResult(
            id_=f"{published.model}@{published.version}+{published.sha256[:12]}",
            outs={**props, "uri": published.uri, "signature": published.signature_text},
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, ("sha256", "version", "manifest", "store", "key_file"))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Content-addressed artifacts stay: a rollback may need them."""


class RingDeploymentProvider(_Idempotent):
    """Points a ring's devices at the declared version in the local hub, as `edgefleet up` would: a declared
    older version goes out under a signed rollback order, a version a gate rejected is refused."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        from components.local.plan import LocalRingProps, deploy_ring

        p = LocalRingProps.of(props)
        return CreateResult(id_=f"{p.rollout}/{p.ring}", outs={**props, "devices": deploy_ring(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, ("sha256", "version"))


class RingGateProvider(_Idempotent, GateProvider):
    """Against the local hub. An in-place update runs the gate again, like every local create (_Idempotent)."""

    REPLACE_ON = ("sha256", "version", "gate_config")

    def run_gate(self, props: dict[str, Any]) -> dict[str, Any]:
        from components.local.plan import run_gate

        return run_gate(props)


class ModelStore(Resource, module="edgefleet-local", name="ModelStore"):
    uri: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(ModelStoreProvider(), name, {"uri": None, **props, "provider_version": PROVIDER_VERSION}, opts)


class SigningKey(Resource, module="edgefleet-local", name="SigningKey"):
    key_id: pulumi.Output[str]
    public_key_pem: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            SigningKeyProvider(), name, {"key_id": None, "public_key_pem": None, **props, "provider_version": PROVIDER_VERSION}, opts
        )


class Artifact(Resource, module="edgefleet-local", name="Artifact"):
    uri: pulumi.Output[str]
    signature: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(ArtifactProvider(), name, {"uri": None, "signature": None, **props, "provider_version": PROVIDER_VERSION}, opts)


class RingDeployment(Resource, module="edgefleet-local", name="RingDeployment"):
    devices: pulumi.Output[list]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(RingDeploymentProvider(), name, {"devices": None, **props, "provider_version": PROVIDER_VERSION}, opts)


class RingGate(Resource, module="edgefleet-local", name="RingGate"):
    gate: pulumi.Output[str]
    measured: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(RingGateProvider(), name, {"gate": None, "measured": None, **props, "provider_version": PROVIDER_VERSION}, opts)
