"""The typed inputs of edgefleet's dynamic resources: one Props type per resource, validated once when its provider
runs. No Pulumi here: gate code and tests build them from plain dicts too."""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from components.rollout.engine import RingPlan
from components.rollout.spec import RingConfig
from components.rollout.types import RingTarget
from components.rollout.windows import Windows
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import REFERENCE_KIND, ModelManifest, parse_manifest_bytes
from edgefleet_agent.contract.state import DesiredModel


def published_variants(manifest: ModelManifest, reference_uri: str) -> list[dict[str, Any]] | None:
    """The desired state's `variants` for a version (kind order): every platform that publishes a version's builds
    publishes each content-addressed beside the reference (`<folder>/<sha256>.onnx`: the local store, S3, Azure blobs),
    so devices fetch only the build they choose, and a rollback finds each version's own. None without variants."""
    if not manifest.variants:
        return None
    folder = reference_uri.rpartition("/")[0]
    return [
        {"kind": v.kind, "uri": f"{folder}/{v.sha256}.onnx", "sha256": v.sha256, "size": v.size}
        for v in sorted(manifest.variants, key=lambda v: v.kind)
    ]


def variant_kinds(desired: DesiredModel | None) -> tuple[str, ...]:
    """The builds a version ships (its variants and the reference, kind order), which the cloud hubs observe one by one;
    () for a version of one build, whose devices all serve the reference: nothing to split, no read spent on it."""
    if desired is None or not desired.variants:
        return ()
    return tuple(sorted({REFERENCE_KIND, *(str(v["kind"]) for v in desired.variants)}))


class ProviderInputError(RuntimeError):
    """Inputs a provider cannot run on: a resource recorded by an older edgefleet, or state edited by hand."""


class Props(BaseModel):
    """A dynamic resource's inputs, validated once from what Pulumi hands its provider. Lax (Pulumi gives numbers as
    floats) and ignoring keys it does not declare: Pulumi's own (`__provider`), outputs kept among the inputs, and
    keys older records carry, so resources already deployed keep updating and deleting."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    @classmethod
    def of(cls, inputs: Mapping[str, Any]) -> Any:
        try:
            return cls.model_validate(dict(inputs))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ProviderInputError(
                f"{cls.__name__}: the resource's inputs are not what this provider runs on ({problems}); "
                "run `pulumi up` with the edgefleet version that declared it, or `pulumi refresh`"
            ) from None


class RingGateProps(Props):
    """The inputs every platform's ring gate carries: the ring, the rings up to it, the declared artifact."""

    rollout: str
    ring: str
    index: int
    rings: list[dict[str, Any]]  # the stack's ring configs up to this one (RingConfig, as JSON)
    model: str
    version: str
    sha256: str
    size: int
    manifest: str
    uri: str
    signature: str
    poll_seconds: float
    stack: str = "<stack>"

    def ring_configs(self) -> list[RingConfig]:
        return [RingConfig.model_validate(r, strict=False) for r in self.rings]

    def declared(self) -> DesiredModel:
        """The declared artifact, with its variants where the stack published them (published_variants); its rollout id
        is the decision's (components/rollout/decide.py)."""
        try:
            variants = published_variants(parse_manifest_bytes(self.manifest.encode(), "the ring gate's manifest"), self.uri)
        except EdgefleetError:
            variants = None  # the agent refuses the manifest, saying why
        return DesiredModel(
            model=self.model,
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            uri=self.uri,
            manifest=self.manifest,
            signature=self.signature,
            variants=variants,
        )

    def ring_plans(self, selectors: list[Any], windows: list[str] | None = None) -> tuple[RingPlan, ...]:
        """`windows`: each ring's group's maintenance windows document ("" for none), as the platform's gate props carry
        them; the engine then pauses a ring's deadline while its window is closed, as on the local platform, rather than
        failing a good ring whose devices wait for their window. None or []: no ring has windows."""
        docs = windows or [""] * len(selectors)
        try:
            parsed = [Windows.from_document(doc) for doc in docs]
        except ValueError as exc:
            raise ProviderInputError(
                f"{type(self).__name__} of rollout {self.rollout!r}: a ring's windows cannot be read ({exc}); run "
                f"`pulumi up --stack {self.stack}` again so the gate is recreated from the stack file's groups"
            ) from None
        return tuple(
            RingPlan(
                RingTarget(self.rollout, r.name, i, selector),
                r.gate,
                capture=r.capture.spec() if r.capture else None,
                window=window,
            )
            for i, (r, selector, window) in enumerate(zip(self.ring_configs(), selectors, parsed, strict=True))
        )
