"""ModelStore: where a stack's model artifacts live (S3 bucket, Blob container, or a local directory)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.platform import Platform


@dataclass
class ModelStoreArgs:
    platform: Platform


class ModelStore(pulumi.ComponentResource):
    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("edgefleet:storage:ModelStore", name, {"platform": args.platform.name}, opts)
        self.resource_name = name
        self.platform = args.platform
        out = args.platform.model_store(self)
        self.outputs = out
        self.uri = out.uri
        self.encrypted = out.encrypted
        self.public_access_blocked = out.public_access_blocked
        self.register_outputs({"uri": out.uri, "encrypted": out.encrypted, "publicAccessBlocked": out.public_access_blocked})
