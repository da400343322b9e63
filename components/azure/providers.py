"""Dynamic providers for what ARM cannot do: read a Key Vault public key, publish a signed model, run a ring's gate.

(IoT Edge deployments themselves are in configurations.py.) Pulumi pickles each provider into the resource's
inputs and runs it in another process, so providers hold no state and no credentials: the deploying identity
is picked up at run time by azure-identity (`az login`, a service principal's environment, or a managed
identity), and the one shared secret, the IoT Hub policy key, arrives as a secret input. `PROVIDER_VERSION`
sits among the inputs so a change in provider behaviour shows up as a diff (2: waits out RBAC propagation).

SigningPublicKey and ModelArtifact run right after the stack grants the deploying identity its Key Vault and
Storage roles; on a fresh stack those take minutes to apply, so their work runs under `rbac.until_granted`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components.dynamic import RingGateProvider as GateProvider
from components.dynamic import input_diff
from components.props import Props

PROVIDER_VERSION = "2"


class SigningPublicKeyProps(Props):
    key_url: str


class ModelArtifactProps(Props):
    blob_endpoint: str
    container: str
    key_url: str
    source: str
    model: str
    version: str
    sha256: str
    size: int
    manifest: str
    delta_max_share: float | None = None  # given only when the stack sets edgefleet:delta (docs/deltas.md)
    delta_enabled: bool = True


class SigningPublicKeyProvider(ResourceProvider):
    """Reads the public half of the Key Vault signing key, which devices trust."""

    def create(self, props: dict[str, Any]) -> CreateResult:
        out = read_public_key(props)
        return CreateResult(id_=out["key_id"], outs={**props, **out})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, ("key_url",))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Only the provider version changed (the key is a replace): read the key again so the outputs stay."""
        return UpdateResult(outs={**news, **read_public_key(news)})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """The key itself is retained on delete: devices in the field still trust it."""


def read_public_key(props: dict[str, Any], signer: Any = None, wait: Any = None) -> dict[str, str]:
    from components.azure.rbac import until_granted
    from components.azure.signer import KeyVaultSigner

    key_url = SigningPublicKeyProps.of(props).key_url
    signer = signer or KeyVaultSigner(key_url)
    return until_granted(
        f"Key Vault key {key_url}", lambda: {"key_id": signer.key_id, "public_key_pem": signer.public_key_pem().decode()}, wait
    )


def publish_artifact(props: dict[str, Any], signer: Any = None, container: Any = None, wait: Any = None) -> dict[str, str]:
    """Uploads <model>/<sha256>.onnx, .yaml (exact manifest bytes) and .yaml.sig; re-uses a signature that verifies.
    Idempotent, so a 403 while the deployer's roles propagate is retried from the top."""
    from pathlib import Path

    from components.azure.rbac import until_granted
    from components.azure.signer import KeyVaultSigner, default_credential
    from edgefleet_agent.contract.digest import same_file_digest
    from edgefleet_agent.contract.errors import EdgefleetError

    p = ModelArtifactProps.of(props)
    source = Path(p.source)
    problem = same_file_digest(source, p.sha256, p.size)
    if problem:
        raise EdgefleetError(p.source, f"refusing to publish: {problem}", "run `edgefleet model add` to re-pin the artifact")
    signer = signer or KeyVaultSigner(p.key_url)
    if container is None:
        from azure.storage.blob import ContainerClient  # deploy-time dependency, see docs/azure.md

        container = ContainerClient(p.blob_endpoint, p.container, credential=default_credential())
    return until_granted(
        f"publishing {p.model} {p.version} to {p.blob_endpoint.rstrip('/')}/{p.container}",
        lambda: _publish(p, source, signer, container),
        wait,
    )


def _publish(p: ModelArtifactProps, source: Any, signer: Any, container: Any) -> dict[str, str]:
    from edgefleet_agent.contract.artifact import verify_artifact
    from edgefleet_agent.contract.signing import SignatureError, load_public_key, sign_bytes

    base = f"{p.model}/{p.sha256}"
    manifest = p.manifest.encode()
    names = {b.name: b for b in container.list_blobs(name_starts_with=base, include=["metadata"])}
    onnx = names.get(f"{base}.onnx")
    if onnx is None or (onnx.metadata or {}).get("sha256") != p.sha256:
        with open(source, "rb") as fh:
            container.upload_blob(f"{base}.onnx", fh, overwrite=True, metadata={"sha256": p.sha256, "version": p.version})
    signature = None
    if f"{base}.yaml.sig" in names and f"{base}.yaml" in names and container.download_blob(f"{base}.yaml").readall() == manifest:
        old = container.download_blob(f"{base}.yaml.sig").readall()
        try:
            verify_artifact(manifest, old, source, load_public_key(signer.public_key_pem(), "Key Vault"), p.source)
            signature = old
        except SignatureError:
            signature = None  # signed by another key: sign again
    if signature is None:
        signature = sign_bytes(signer, manifest).to_bytes()
        container.upload_blob(f"{base}.yaml", manifest, overwrite=True)
        container.upload_blob(f"{base}.yaml.sig", signature, overwrite=True)
    _publish_variants(p, source, container)
    uri = f"{p.blob_endpoint.rstrip('/')}/{p.container}/{base}.onnx"
    if p.delta_enabled:
        _publish_patches(p, source, signer, container, uri)
    return {"uri": uri, "signature": signature.decode()}


def _publish_variants(p: ModelArtifactProps, source: Any, container: Any) -> None:
    """Each variant the signed manifest lists, from beside the reference's file, content-addressed by its own digest
    (`<model>/<sha256>.onnx`, where manifest.desired_variants points devices); checked against its pin first."""
    from pathlib import Path

    from edgefleet_agent.contract.digest import same_file_digest
    from edgefleet_agent.contract.errors import EdgefleetError
    from edgefleet_agent.contract.manifest import parse_manifest_bytes

    try:
        variants = parse_manifest_bytes(p.manifest.encode(), p.source).variants
    except EdgefleetError:
        return  # the reference's own checks (and the agent) say what is wrong with the manifest
    for v in variants:
        file = Path(source).parent / v.file
        problem = same_file_digest(file, v.sha256, v.size)
        if problem:
            raise EdgefleetError(
                str(file), f"refusing to publish the {v.kind} variant: {problem}", "build it again with `edgefleet model variant add`"
            )
        name = f"{p.model}/{v.sha256}.onnx"
        held = next(iter(container.list_blobs(name_starts_with=name, include=["metadata"])), None)
        if held is None or held.name != name or (held.metadata or {}).get("sha256") != v.sha256:
            with open(file, "rb") as fh:
                container.upload_blob(name, fh, overwrite=True, metadata={"sha256": v.sha256, "version": p.version, "variant": v.kind})


def _publish_patches(p: ModelArtifactProps, source: Any, signer: Any, container: Any, uri: str) -> list[Any]:
    """A patch to this version from each of the two newest older versions in the container, as the local store's
    Pulumi provider publishes them (docs/deltas.md): at `<model>/patches/<name>` beside the artifacts, where the
    devices' read SAS reaches and the agent derives it from the artifact's URI; listed in the container's TUF targets
    when it is a repository. A patch over `max_share` leaves `<name>.too-large` (its size) so it is not built again."""
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from components.azure.trust_store import repository_for_uri
    from components.delta import build_patch, patch_bases, patch_identity, within_share
    from components.stack import DeltaConfig
    from edgefleet_agent.contract.digest import sha256_file
    from edgefleet_agent.contract.tuf import TargetIdentity, manifest_digest, patch_path
    from edgefleet_agent.delta import METHOD

    share = p.delta_max_share if p.delta_max_share is not None else DeltaConfig().max_share
    target = _BlobVersion(p.model, p.version, p.sha256, p.size)
    held = {b.name: b.metadata or {} for b in container.list_blobs(name_starts_with=f"{p.model}/", include=["metadata"])}
    versions = [
        _BlobVersion(p.model, m["version"], m["sha256"], -1)  # its size once downloaded: the blob's own is not trusted
        for name, m in held.items()
        if name == f"{p.model}/{m.get('sha256')}.onnx" and _semver(m.get("version")) and "variant" not in m
    ]
    patches = []
    for base in patch_bases(versions, target, None):
        name = patch_path(p.model, base.sha256, target.sha256, METHOD)
        known = held.get(f"{name}.too-large", {}).get("size")
        if known is not None and int(known) > share * target.size:
            continue
        have = held.get(name, {})
        if have.get("to_sha256") == target.sha256 and have.get("from_sha256") == base.sha256:
            base = replace(base, size=int(have["from_size"]))
            patch = patch_identity(base, target, int(have["size"]), have["sha256"], int(have["memory_bytes"]))
            fits = within_share(patch, share)
        else:
            with tempfile.TemporaryDirectory(prefix="edgefleet-delta-") as tmp:
                old, out = Path(tmp) / "base.onnx", Path(tmp) / "patch"
                with open(old, "wb") as fh:
                    container.download_blob(f"{p.model}/{base.sha256}.onnx").readinto(fh)
                digest, size = sha256_file(old)
                if digest != base.sha256:
                    continue  # the blob is not the version it names: no patch from it, devices download in full
                base = replace(base, size=size)
                patch = build_patch(base, target, old, Path(source), out)
                fits = within_share(patch, share)
                if fits:
                    meta = {"sha256": patch.sha256, "size": str(patch.size), "from_sha256": base.sha256, "from_size": str(size)}
                    with open(out, "rb") as fh:
                        container.upload_blob(
                            name, fh, overwrite=True, metadata={**meta, "to_sha256": target.sha256, "memory_bytes": str(patch.memory_bytes)}
                        )
        if not fits:
            container.upload_blob(f"{name}.too-large", f"{patch.size}\n".encode(), overwrite=True, metadata={"size": str(patch.size)})
            continue
        patches.append(patch)
    repo = repository_for_uri(uri, signer, container) if patches else None
    if repo is not None:  # none yet: `edgefleet trust init` lists the container
        repo.add_targets([TargetIdentity(p.model, p.version, p.sha256, p.size, manifest_digest(p.manifest.encode()))])
        repo.add_patches(patches)
    return patches


def _semver(value: Any) -> bool:
    """Whether a blob's `version` metadata orders against others: a blob written by other tools is not a base."""
    import semver

    return isinstance(value, str) and semver.Version.is_valid(value)


@dataclass(frozen=True)
class _BlobVersion:
    """A version the container holds (components.delta.Version)."""

    model: str
    version: str
    sha256: str
    size: int


class ModelArtifactProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        p = ModelArtifactProps.of(props)
        return CreateResult(id_=f"{p.model}@{p.version}+{p.sha256[:12]}", outs={**props, **publish_artifact(props)})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        return input_diff(olds, news, ("sha256", "version", "manifest", "blob_endpoint", "container", "key_url"))

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        return UpdateResult(outs={**news, **publish_artifact(news)})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Content-addressed artifacts stay (and blob versioning keeps overwrites): a rollback may need them."""


class RingGateProvider(GateProvider):
    """Against IoT Hub: a failed ring goes back to the last good manifest; the ring's layer is the Configuration
    resource's, so deleting the gate undoes nothing."""

    REPLACE_ON = ("sha256", "version", "rings", "deployment")

    def run_gate(self, props: dict[str, Any]) -> dict[str, Any]:
        from components.azure.hub import run_gate

        return run_gate(props)


class SigningPublicKey(Resource, module="edgefleet-azure", name="SigningPublicKey"):
    key_id: pulumi.Output[str]
    public_key_pem: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            SigningPublicKeyProvider(), name, {"key_id": None, "public_key_pem": None, **props, "provider_version": PROVIDER_VERSION}, opts
        )


class ModelArtifact(Resource, module="edgefleet-azure", name="ModelArtifact"):
    uri: pulumi.Output[str]
    signature: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            ModelArtifactProvider(), name, {"uri": None, "signature": None, **props, "provider_version": PROVIDER_VERSION}, opts
        )


class RingGate(Resource, module="edgefleet-azure", name="RingGate"):
    gate: pulumi.Output[str]
    measured: pulumi.Output[dict]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["hub_key"]))
        super().__init__(RingGateProvider(), name, {"gate": None, "measured": None, **props, "provider_version": PROVIDER_VERSION}, opts)
