"""A model version's variant entry as model.yaml holds it (manifest format 3), for tests that need one without
building the variant: its pins, requirements and a measured comparison with the reference."""

from __future__ import annotations

from collections.abc import Sequence


def comparison(drop: float = 0.01, measured_with: str = "onnxruntime") -> dict:
    return {
        "dataset": "channel-dominance-eval",
        "dataset_sha256": "d" * 64,
        "samples": 128,
        "output": "scores",
        "top1_agreement": 0.99,
        "max_abs_diff": 0.01,
        "metric": "accuracy",
        "reference": 0.82,
        "value": round(0.82 - drop, 4),
        "delta": round(-drop, 4),
        "measured_with": measured_with,
    }


def variant_entry(
    kind: str,
    *,
    sha256: str,
    size: int,
    eps: Sequence[str],
    memory: int,
    providers: Sequence[str],
    arch: Sequence[str] = ("amd64", "arm64"),
    drop: float = 0.01,
) -> dict:
    return {
        "kind": kind,
        "file": f"detector.{kind}.onnx",
        "sha256": sha256,
        "size": size,
        "execution_providers": list(eps),
        "requires": {"arch": list(arch), "min_memory_mb": memory, "providers": list(providers)},
        "built_with": "test",
        "comparison": comparison(drop),
    }
