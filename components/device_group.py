"""DeviceGroup: devices of one hardware profile, selected by labels or ids (thing group, twin tags, local registry)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.platform import Platform, StackBase
from components.rollout.spec import DeviceGroupConfig


@dataclass
class DeviceGroupArgs:
    config: DeviceGroupConfig
    platform: Platform
    base: StackBase


class DeviceGroup(pulumi.ComponentResource):
    def __init__(self, name: str, args: DeviceGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        cfg = args.config
        super().__init__(
            "edgefleet:fleet:DeviceGroup",
            name,
            {
                "platform": args.platform.name,
                "hardware": cfg.hardware.model_dump(mode="json"),
                "labels": dict(cfg.labels),
                "devices": list(cfg.devices),
                # only when declared: a group without windows declares what it always did
                **(
                    {"timezone": cfg.timezone, "maintenance_windows": [w.model_dump(mode="json") for w in cfg.maintenance_windows]}
                    if cfg.maintenance_windows
                    else {}
                ),
                **({"max_download_bytes_per_second": cfg.max_download_bytes_per_second} if cfg.max_download_bytes_per_second else {}),
            },
            opts,
        )
        self.resource_name = name
        self.config = cfg
        self.platform = args.platform
        self.base = args.base
        out = args.platform.device_group(self, cfg, args.base)
        self.outputs = out
        self.target = out.target
        self.register_outputs({"target": out.target})
