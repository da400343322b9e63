"""Small hand-built graphs in `edgefleet synth`'s record format, one fact at a time, for the rule tests."""

from __future__ import annotations

import copy
from typing import Any

STACK = "urn:pulumi:prod::edgefleet::"
SHA = "a" * 64
SHA2 = "b" * 64

CAMERA = {"name": "x86-camera", "arch": "amd64", "execution_providers": ["CPUExecutionProvider"], "memory_mb": 1024, "storage_mb": 4096}
PI = {"name": "pi-zero", "arch": "armv7", "execution_providers": ["CPUExecutionProvider"], "memory_mb": 128, "storage_mb": 64}
GATE = {
    "soak_seconds": 600,
    "deadline_seconds": 3600,
    "min_reporting_share": 0.9,
    "success_share": 0.95,
    "max_failure_share": 0.05,
    "max_error_rate": None,
    "max_invalid_output_share": 0.0,
    "max_p99_latency_ms": None,
}


def manifest(
    version: str = "1.0.0",
    sha: str = SHA,
    accuracy: float | None = 0.9,
    inputs: list | None = None,
    outputs: list | None = None,
    min_agent: str = "0.1.0",
    targets: list | None = None,
    size: int = 2364,
) -> dict[str, Any]:
    return {
        "name": "detector",
        "version": version,
        "file": "detector.onnx",
        "sha256": sha,
        "size": size,
        "opset": 17,
        "inputs": inputs or [{"name": "image", "element_type": "float32", "shape": ["batch", 3, 224, 224]}],
        "outputs": outputs or [{"name": "scores", "element_type": "float32", "shape": ["batch", 3]}],
        "metrics": [] if accuracy is None else [{"name": "accuracy", "value": accuracy, "dataset": "eval-v1", "higher_is_better": True}],
        "targets": targets
        or [{"name": "x86-camera", "arch": "amd64", "execution_providers": ["CPUExecutionProvider"], "memory_mb": 256, "storage_mb": 64}],
        "min_agent_version": min_agent,
        "description": "",
    }


def measured(m: dict[str, Any], accuracy: float = 0.9, dataset_sha256: str = "d" * 64) -> dict[str, Any]:
    """The manifest with its accuracy measured (`edgefleet model evaluate`) instead of declared."""
    return {
        **m,
        "metrics": [x for x in m["metrics"] if x["name"] != "accuracy"],
        "evaluation": {
            "dataset": "channel-dominance-eval",
            "dataset_sha256": dataset_sha256,
            "samples": 128,
            "output": "scores",
            "metrics": [{"name": "accuracy", "value": accuracy, "higher_is_better": True}],
            "measured_with": "onnxruntime 1.32.0",
        },
        "min_agent_version": "0.3.0",
        "format": 2,
    }


def rec(
    type_: str,
    name: str,
    parent: str | None = None,
    custom: bool = True,
    inputs: dict | None = None,
    outputs: dict | None = None,
    deps: list | None = None,
    prop_deps: dict | None = None,
) -> dict[str, Any]:
    qualified = type_ if parent is None else parent.split("::")[2] + "$" + type_
    r = {
        "urn": f"{STACK}{qualified}::{name}",
        "type": type_,
        "name": name,
        "custom": custom,
        "parent": parent,
        "inputs": inputs or {},
        "dependencies": deps or [],
        "property_dependencies": prop_deps or {},
    }
    if outputs is not None:
        r["outputs"] = outputs
    return r


def fleet(
    platform: str = "aws",
    m: dict | None = None,
    rings: list[dict] | None = None,
    hardware: dict | None = None,
    exportable: bool = False,
    encrypted: bool = True,
    blocked: bool = True,
) -> list[dict[str, Any]]:
    """A complete little stack: key, store, group, model (published with an artifact), rollout with rings."""
    m = copy.deepcopy(m or manifest())
    key = rec(
        "edgefleet:signing:SigningKey",
        f"{platform}-signing",
        custom=False,
        inputs={"platform": platform},
        outputs={"exportable": exportable, "keyRef": "k", "publicKeyPem": "[computed at deploy]"},
    )
    key_child = rec(f"pulumi-python:dynamic/edgefleet-{platform}:SigningKey", f"{platform}-signing-key", parent=key["urn"])
    store = rec(
        "edgefleet:storage:ModelStore",
        f"{platform}-models",
        custom=False,
        inputs={"platform": platform},
        outputs={"encrypted": encrypted, "publicAccessBlocked": blocked, "uri": "[computed at deploy]"},
    )
    group = rec(
        "edgefleet:fleet:DeviceGroup",
        "cameras",
        custom=False,
        inputs={"platform": platform, "hardware": hardware or CAMERA, "labels": {"site": "a"}, "devices": []},
        outputs={"target": "t"},
    )
    model = rec(
        "edgefleet:models:ModelVersion",
        "detector",
        custom=False,
        inputs={
            "name": "detector",
            "version": m["version"],
            "sha256": m["sha256"],
            "size": m["size"],
            "manifest": m,
            "signingKeys": [key["urn"]],
            "stores": [store["urn"]],
        },
        outputs={"version": m["version"], "digest": m["sha256"], "size": m["size"], "signature": "[computed at deploy]"},
    )
    artifact = rec(
        f"pulumi-python:dynamic/edgefleet-{platform}:Artifact",
        "detector-artifact",
        parent=model["urn"],
        inputs={"sha256": m["sha256"], "version": m["version"]},
        deps=[key_child["urn"]],
    )
    rollout = rec(
        "edgefleet:rollout:Rollout", "detector", custom=False, inputs={"model": "detector", "version": m["version"], "sha256": m["sha256"]}
    )
    out = [key, key_child, store, group, model, artifact, rollout]
    for i, r in enumerate(rings or [{"ring": "canary", "labels": {"ring": "canary"}}, {"ring": "broad"}]):
        out.append(
            rec(
                "edgefleet:rollout:Ring",
                f"detector-{r['ring']}",
                parent=rollout["urn"],
                custom=False,
                inputs={
                    "rollout": "detector",
                    "ring": r["ring"],
                    "index": i,
                    "group": r.get("group", "cameras"),
                    "platform": platform,
                    "percent": r.get("percent"),
                    "labels": r.get("labels", {}),
                    "gate": {**GATE, **r.get("gate", {})},
                    "model": "detector",
                    "version": m["version"],
                    "sha256": m.get("ring_sha", m["sha256"]),
                },
            )
        )
    return out


def find(graph: list[dict], name: str) -> dict[str, Any]:
    return next(r for r in graph if r["name"] == name)
