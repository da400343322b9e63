"""SigningKey: the stack's ECDSA P-256 key. Cloud keys never leave KMS / Key Vault; devices get the public half."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.platform import Platform


@dataclass
class SigningKeyArgs:
    platform: Platform


class SigningKey(pulumi.ComponentResource):
    def __init__(self, name: str, args: SigningKeyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("edgefleet:signing:SigningKey", name, {"platform": args.platform.name, "algorithm": "ecdsa-p256-sha256"}, opts)
        self.resource_name = name
        self.platform = args.platform
        out = args.platform.signing_key(self)
        self.outputs = out
        self.key_ref = out.key_ref
        self.public_key_pem = out.public_key_pem
        self.exportable = out.exportable
        self.register_outputs({"keyRef": out.key_ref, "publicKeyPem": out.public_key_pem, "exportable": out.exportable})
