"""What onnxruntime says about a model: its I/O signature, whether it loads, and a smoke inference.

`model add` reads the signature from the real graph; `model validate` checks a manifest against it and
refuses outputs that are NaN or infinite, which is how a broken export usually shows up.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from edgefleet_agent.contract.digest import sha256_file
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import ModelManifest, TensorSpec
from edgefleet_agent.tensors import NUMPY_TYPES, non_finite_outputs, synthetic_inputs

ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


@dataclass(frozen=True)
class GraphInfo:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    sha256: str
    size: int


def _open_session(path: Path, providers: list[str] | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: load and run failures reach the user once, in our own message
    opts.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private exception types
        first = str(exc).strip().splitlines()[0][:300]
        raise EdgefleetError(
            str(path),
            f"not a loadable ONNX model: onnxruntime says: {first}",
            "export the model again; check the file was copied completely",
        ) from None


def _ort_reason(exc: Exception) -> str:
    """onnxruntime's first line, without the C++ source location and failed condition that hide the reason
    ("…/reshape_helper.h:84 onnxruntime::ReshapeHelper::ReshapeHelper(…) size != 0 … was false. The input tensor…")."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"/\S+\.(?:h|cc|cpp):\d+ .*? was false\. ", "", first)[:500]


def _spec(arg, path: Path) -> TensorSpec:
    if arg.type not in ORT_TYPES:
        raise EdgefleetError(
            str(path),
            f"{arg.name}: type {arg.type} is not a tensor, which a manifest cannot describe",
            "export with tensor inputs and outputs only (skl2onnx classifiers: options={'zipmap': False})",
        )
    shape = [d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) and d else "?") for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, element_type=ORT_TYPES[arg.type], shape=shape)


def _signature(session, path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    inputs = [_spec(i, path) for i in session.get_inputs()]
    for spec in inputs:
        if not _can_generate(spec.element_type):
            raise EdgefleetError(
                str(path),
                f"input {spec.name} is {spec.element_type}: no smoke input can be generated for it, "
                "so neither `model validate` nor the agent could run the model",
                "export with float16, float32 or integer inputs",
            )
    return inputs, [_spec(o, path) for o in session.get_outputs()]


def _can_generate(element_type: str) -> bool:
    return element_type in NUMPY_TYPES or element_type == "string"


def read_opset(path: Path) -> int:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise EdgefleetError(str(path), f"not an ONNX model: {str(exc).splitlines()[0][:200]}", "pass an .onnx file") from None
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise EdgefleetError(str(path), "model imports no default-domain opset", "export with a standard ONNX opset")


def inspect(path: Path) -> GraphInfo:
    path = Path(path)
    if not path.is_file():
        raise EdgefleetError(str(path), "file not found", "check the path to the .onnx file")
    session = _open_session(path)
    digest, size = sha256_file(path)
    return GraphInfo(*_signature(session, path), read_opset(path), digest, size)


@dataclass(frozen=True)
class ValidationReport:
    manifest: ModelManifest
    graph: GraphInfo
    latency_ms_p50: float
    latency_ms_p99: float
    runs: int


def compare_signature(declared: list[TensorSpec], actual: list[TensorSpec], kind: str) -> list[str]:
    problems = []
    by_name = {t.name: t for t in actual}
    for t in declared:
        got = by_name.get(t.name)
        if got is None:
            problems.append(
                f"{kind} {t.name!r} is declared but the graph has no such {kind[:-1]} (graph has: {', '.join(by_name) or 'none'})"
            )
        elif got.element_type != t.element_type:
            problems.append(f"{kind} {t.name!r}: declared {t.element_type}, graph has {got.element_type}")
        elif list(got.shape) != list(t.shape):
            problems.append(f"{kind} {t.name!r}: declared shape {t.shape}, graph has {got.shape}")
    declared_names = {t.name for t in declared}
    for t in actual:
        if t.name not in declared_names:
            problems.append(f"{kind} {t.name!r} is in the graph but not declared")
    return problems


def validate(manifest: ModelManifest, artifact: Path, manifest_path: str, runs: int = 20) -> ValidationReport:
    """Every check `edgefleet model validate` makes, in the order a user would want them reported."""
    artifact = Path(artifact)
    if runs < 1:
        raise EdgefleetError("--runs", f"must be at least 1 (got {runs})", "pass --runs 20, the default")
    if not artifact.is_file():
        raise EdgefleetError(
            manifest_path, f"file: {manifest.file} does not exist next to the manifest", "add the .onnx file or fix `file:`"
        )
    size = artifact.stat().st_size
    if size < manifest.size:
        raise EdgefleetError(
            str(artifact),
            f"truncated: {size} bytes on disk, the manifest pins {manifest.size}",
            "copy the model again; if it changed on purpose, run `edgefleet model add`",
        )
    digest, _ = sha256_file(artifact)
    if size != manifest.size or digest != manifest.sha256:
        raise EdgefleetError(
            str(artifact),
            f"digest mismatch: sha256 {digest} ({size} bytes), manifest pins {manifest.sha256} ({manifest.size} bytes)",
            "restore the pinned file, or run `edgefleet model add` to record a new version",
        )
    session = _open_session(artifact)
    graph = GraphInfo(*_signature(session, artifact), read_opset(artifact), digest, size)
    problems = compare_signature(manifest.inputs, graph.inputs, "inputs") + compare_signature(manifest.outputs, graph.outputs, "outputs")
    if graph.opset != manifest.opset:
        problems.append(f"opset: declared {manifest.opset}, graph imports {graph.opset}")
    if problems:
        raise EdgefleetError(
            manifest_path,
            "manifest disagrees with the graph:\n  - " + "\n  - ".join(problems),
            f"run `edgefleet model add {Path(manifest_path).parent} --onnx {artifact} --version X.Y.Z` to re-read the graph",
        )
    feeds = synthetic_inputs(manifest.inputs)
    names = [o.name for o in manifest.outputs]
    timings = []
    for i in range(runs + 1):
        start = time.perf_counter()
        try:
            values = session.run(names, feeds)
        except Exception as exc:
            raise EdgefleetError(
                str(artifact), f"smoke inference failed: {_ort_reason(exc)}", "check the model runs on the declared input shapes"
            ) from None
        if i:
            timings.append((time.perf_counter() - start) * 1000)
        bad = non_finite_outputs(names, values)
        if bad:
            raise EdgefleetError(
                str(artifact),
                f"smoke inference produced NaN or infinite values in output(s) {', '.join(bad)}",
                "this model is broken in service; fix the export before shipping it",
            )
    timings.sort()
    return ValidationReport(manifest, graph, timings[len(timings) // 2], timings[min(len(timings) - 1, int(len(timings) * 0.99))], runs)
