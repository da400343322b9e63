"""Tensors a manifest describes: seeded inputs shaped by its signature, and which float outputs are not finite.

The agent warms a model up with these inputs before serving it; `edgefleet model validate` smoke-tests with
the same ones, so both judge a model on the same data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import TensorSpec

NUMPY_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "bool": np.bool_,
}
SYMBOLIC_DIM_SIZE = 1


def synthetic_inputs(specs: list[TensorSpec], seed: int = 0, batch: int = SYMBOLIC_DIM_SIZE) -> dict[str, np.ndarray]:
    """Inputs shaped by the signature: symbolic dimensions become `batch`, values are seeded noise."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = [d if isinstance(d, int) else batch for d in spec.shape]
        if spec.element_type == "string":
            feeds[spec.name] = np.full(shape, "edgefleet", dtype=object)
        elif spec.element_type == "bool":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif spec.element_type.startswith(("int", "uint")):
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(NUMPY_TYPES[spec.element_type])
        elif spec.element_type in NUMPY_TYPES:
            feeds[spec.name] = rng.standard_normal(size=shape).astype(NUMPY_TYPES[spec.element_type])
        else:
            raise EdgefleetError(spec.name, f"cannot generate smoke inputs of type {spec.element_type}")
    return feeds


def non_finite_outputs(names: list[str], values: Sequence[object]) -> list[str]:
    """Names of float outputs holding NaN or infinity."""
    bad = []
    for name, value in zip(names, values, strict=True):
        arr = np.asarray(value)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            bad.append(name)
    return bad
