"""AppRegistry: where the device agent's image lives (ECR, ACR); the local fleet runs the agent from source."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.platform import Platform


@dataclass
class AppRegistryArgs:
    platform: Platform


class AppRegistry(pulumi.ComponentResource):
    def __init__(self, name: str, args: AppRegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("edgefleet:registry:AppRegistry", name, {"platform": args.platform.name}, opts)
        self.resource_name = name
        out = args.platform.app_registry(self)
        self.outputs = out
        self.repository_url = out.repository_url
        self.register_outputs({"repositoryUrl": out.repository_url})
