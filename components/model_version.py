"""ModelVersion: one model version as a typed resource. Its diff (version, digest) is what drives a rollout.

The component's inputs carry the whole manifest, so `pulumi preview`, `edgefleet plan` and the policies
see the version, digest, I/O signature, metrics and targets of what is about to ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi

from components.platform import Platform, PublishOutputs, StackBase
from edgefleet_agent.contract.manifest import ModelDir


@dataclass
class Publication:
    """Where the version is published on one platform: its store and the key that signs it there (the base)."""

    platform: Platform
    base: StackBase


@dataclass
class ModelVersionArgs:
    model_dir: Path
    publications: list[Publication]


class ModelVersion(pulumi.ComponentResource):
    def __init__(self, name: str, args: ModelVersionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        mdir = ModelDir(args.model_dir)
        manifest_text = mdir.manifest_bytes().decode()
        manifest = mdir.load()
        super().__init__(
            "edgefleet:models:ModelVersion",
            name,
            {
                "name": manifest.name,
                "version": manifest.version,
                "sha256": manifest.sha256,
                "size": manifest.size,
                "manifest": manifest.model_dump(mode="json"),
                "signingKeys": [p.base.key.urn for p in args.publications],
                "stores": [p.base.store.urn for p in args.publications],
            },
            opts,
        )
        self.resource_name = name
        self.manifest = manifest
        self.manifest_text = manifest_text
        self.published: dict[str, PublishOutputs] = {}
        for pub in args.publications:
            self.published[pub.platform.name] = pub.platform.publish_model(
                self, manifest, manifest_text, mdir.artifact_path(manifest), pub.base
            )
        first = next(iter(self.published.values()))
        self.version = pulumi.Output.from_input(manifest.version)
        self.digest = pulumi.Output.from_input(manifest.sha256)
        self.size = pulumi.Output.from_input(manifest.size)
        self.signature = first.signature
        self.uri = first.uri
        self.register_outputs(
            {
                "version": manifest.version,
                "digest": manifest.sha256,
                "size": manifest.size,
                "signature": first.signature,
                "uri": first.uri,
                "publications": {p: {"uri": o.uri, "signature": o.signature} for p, o in self.published.items()},
            }
        )
