"""Rollout and Ring: the Pulumi face of the engine.

Each Ring holds its platform's deployment and a gate resource; ring N+1's deployment depends on ring N's
gate output, so `pulumi preview` lists the rings that change and `pulumi up` promotes them in order. A
failed gate rolls back the rings it touched and fails the update; later rings are never created.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi

from components.device_group import DeviceGroup
from components.model_version import ModelVersion
from components.platform import Platform, RingOutputs, RingSpec, StackBase
from components.rollout.spec import RolloutConfig


@dataclass
class RingArgs:
    spec: RingSpec
    model: ModelVersion
    group: DeviceGroup
    platform: Platform
    base: StackBase


class Ring(pulumi.ComponentResource):
    def __init__(self, name: str, args: RingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        spec = args.spec
        super().__init__(
            "edgefleet:rollout:Ring",
            name,
            {
                "rollout": spec.rollout.name,
                "ring": spec.ring.name,
                "index": spec.index,
                "group": spec.group.name,
                "platform": args.platform.name,
                "percent": spec.ring.percent,
                "labels": dict(spec.ring.labels),
                "gate": spec.ring.gate.model_dump(mode="json"),
                # written only when declared: a ring without capture registers exactly as before it existed
                **({"capture": spec.ring.capture.model_dump(mode="json")} if spec.ring.capture is not None else {}),
                **(
                    {"max_download_bytes_per_second": spec.ring.max_download_bytes_per_second}
                    if spec.ring.max_download_bytes_per_second is not None
                    else {}
                ),
                "model": args.model.manifest.name,
                "version": args.model.manifest.version,
                "sha256": args.model.manifest.sha256,
            },
            opts,
        )
        self.resource_name = name
        out = args.platform.ring(self, spec, args.model, args.group, args.base)
        self.outputs = out
        self.deployment = out.deployment
        self.gate = out.gate
        self.register_outputs({"deployment": out.deployment, "gate": out.gate, "devices": out.devices})


@dataclass
class RolloutArgs:
    config: RolloutConfig
    model: ModelVersion
    groups: dict[str, DeviceGroup]
    platforms: dict[str, Platform]


class Rollout(pulumi.ComponentResource):
    def __init__(self, name: str, args: RolloutArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        cfg = args.config
        super().__init__(
            "edgefleet:rollout:Rollout",
            name,
            {
                "model": args.model.manifest.name,
                "version": args.model.manifest.version,
                "sha256": args.model.manifest.sha256,
                "rings": [r.name for r in cfg.rings],
                # written only when declared: a rollout without one registers exactly as before it existed
                **({"control_holdback": cfg.control_holdback} if cfg.control_holdback else {}),
            },
            opts,
        )
        previous: list[RingOutputs] = []
        self.rings: list[Ring] = []
        for index, ring_cfg in enumerate(cfg.rings):
            group = args.groups[ring_cfg.group]
            platform = group.platform
            spec = RingSpec(rollout=cfg, index=index, ring=ring_cfg, group=group.config, previous=tuple(previous))
            ring = Ring(
                f"{name}-{ring_cfg.name}", RingArgs(spec, args.model, group, platform, group.base), pulumi.ResourceOptions(parent=self)
            )
            self.rings.append(ring)
            previous.append(ring.outputs)
        self.register_outputs({"rings": [r.gate for r in self.rings]})
