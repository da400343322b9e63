"""`edgefleet model variant add models/<name> --kind int8|fp16 [--calibration PATH]`: another build of the version.

The variant is built from the reference (the manifest's top-level file) with onnxruntime's own tools: int8 by
`onnxruntime.quantization` (quantize_dynamic, or quantize_static calibrated on --calibration), fp16 by
`onnxruntime.transformers.float16` (inputs and outputs kept float32, so applications feed every build alike). It
must pass what `model add` checks (onnxruntime loads it, same I/O signature, finite smoke outputs), then it is
measured against the reference on the version's evaluation set in the same run and recorded as measured.

It targets the version in model.yaml, the one being prepared: its reference is unchanged, the manifest gains (or
replaces) the variant, min_agent_version and format rise to 0.4.0 / 3, and the stale signature is removed. Every
check and measurement happens before anything is written. Replacing a variant whose bytes changed first writes the
manifest without it, so a crash at any point leaves a manifest whose every file matches its pin.

Calibration set (--calibration, int8 only): an .npz read without pickle, one array per model input, named as the
input, shaped [samples, *the input's dimensions] in the input's element type, the same number of samples in each.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from components.datasets import LabelledSet, check_fits, load_set
from edgefleet.evaluate import batch_size, descriptor_path
from edgefleet.onnx_check import _open_session, _ort_reason, compare_signature, inspect, validate
from edgefleet_agent.contract.digest import sha256_file
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import (
    VARIANT_KINDS,
    Comparison,
    ModelDir,
    ModelManifest,
    Requirements,
    TensorSpec,
    Variant,
    required_agent_version,
    required_format,
    version_key,
)
from edgefleet_agent.fsutil import atomic_write_bytes
from edgefleet_agent.tensors import NUMPY_TYPES, non_finite_outputs, synthetic_inputs

CPU = "CPUExecutionProvider"
FP16_ACCELERATORS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "DmlExecutionProvider")
CALIBRATION_DOC = "docs/models.md#calibration-set"


@dataclass(frozen=True)
class VariantResult:
    manifest: ModelManifest
    variant: Variant
    replaced: Variant | None  # the variant of this kind the manifest had before
    removed_signature: bool
    raised_agent_from: str | None


# -- building ----------------------------------------------------------------------------------------------------------
@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantizer logs advice on the root logger; our own messages say what matters."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def load_calibration(path: Path, inputs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """Reads a calibration set and checks it against the model's inputs; every mismatch named at once."""
    if not path.is_file():
        raise EdgefleetError(str(path), "calibration set not found", f"pass --calibration an .npz as {CALIBRATION_DOC} describes")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises ValueError, OSError, zipfile errors, BadZipFile
        raise EdgefleetError(
            str(path), f"not a readable .npz (pickle is never loaded): {str(exc)[:200]}", f"write it with numpy.savez ({CALIBRATION_DOC})"
        ) from None
    problems = []
    names = {s.name for s in inputs}
    for spec in inputs:
        if spec.name not in arrays:
            problems.append(f"{spec.name}: missing; the model's input {spec.signature()} needs an array of that name")
            continue
        a = arrays[spec.name]
        want = NUMPY_TYPES.get(spec.element_type)
        if want is None or a.dtype != np.dtype(want):
            problems.append(f"{spec.name}: element type {a.dtype}, the input takes {spec.element_type}")
        dims = list(spec.shape[1:])
        if a.ndim != len(spec.shape):
            problems.append(f"{spec.name}: {a.ndim} dimensions {list(a.shape)}, expected [samples, {', '.join(map(str, dims))}]")
        else:
            bad = [
                f"dimension {i + 1} is {a.shape[i + 1]}, the input fixes {d}"
                for i, d in enumerate(dims)
                if isinstance(d, int) and a.shape[i + 1] != d
            ]
            if bad:
                problems.append(f"{spec.name}: shape {list(a.shape)} does not match {spec.signature()} ({'; '.join(bad)})")
        if a.shape[:1] == (0,):
            problems.append(f"{spec.name}: no samples")
        elif a.dtype.kind == "f" and not np.isfinite(a).all():
            problems.append(f"{spec.name}: holds NaN or infinite values")
    for extra in sorted(set(arrays) - names):
        problems.append(f"{extra}: the model has no input of that name (inputs: {', '.join(sorted(names))})")
    counts = {len(arrays[s.name]) for s in inputs if s.name in arrays and arrays[s.name].ndim}
    if len(counts) > 1:
        problems.append(f"inputs hold different numbers of samples: {sorted(counts)}")
    if problems:
        raise EdgefleetError(
            str(path),
            "calibration set does not match the model's input signature:\n  - " + "\n  - ".join(problems),
            f"write one array per input, named as the input, shaped [samples, …] in its element type ({CALIBRATION_DOC})",
        )
    return {s.name: arrays[s.name] for s in inputs}


def _reader(arrays: dict[str, np.ndarray]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        """One sample of every input at a time, as quantize_static calibrates."""

        def __init__(self) -> None:
            self._n = len(next(iter(arrays.values())))
            self._i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._i >= self._n:
                return None
            feed = {k: v[self._i : self._i + 1] for k, v in arrays.items()}
            self._i += 1
            return feed

    return Reader()


def build(kind: str, reference: Path, out: Path, calibration: dict[str, np.ndarray] | None, calibration_label: str) -> str:
    """Writes the variant to `out`; returns what built it (recorded as `built_with`)."""
    import onnxruntime as ort

    try:
        with _quiet():
            if kind == "int8" and calibration is None:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                quantize_dynamic(str(reference), str(out), weight_type=QuantType.QInt8)
                return f"onnxruntime {ort.__version__} quantization.quantize_dynamic (QInt8 weights, activations quantized at run time)"
            if kind == "int8":
                from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

                quantize_static(
                    str(reference),
                    str(out),
                    _reader(calibration or {}),
                    quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
                return f"onnxruntime {ort.__version__} quantization.quantize_static (QDQ, QInt8 weights, QUInt8 activations, MinMax) on {calibration_label}"
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(reference)), keep_io_types=True)
            onnx.save(model, str(out))
            return f"onnxruntime {ort.__version__} transformers.float16.convert_float_to_float16 (keep_io_types: inputs and outputs stay float32)"
    except EdgefleetError:
        raise
    except Exception as exc:  # the converters raise many types; the user needs the file and the reason
        out.unlink(missing_ok=True)
        raise EdgefleetError(
            str(reference),
            f"building the {kind} variant failed: {_ort_reason(exc)}",
            "check the reference loads (`edgefleet model validate`); some graphs cannot be converted: ship the reference alone",
        ) from None


# -- checking and measuring --------------------------------------------------------------------------------------------
def check_build(manifest: ModelManifest, path: Path, kind: str) -> None:
    """What `model add` and `model validate` check: onnxruntime loads it, the signature is the reference's, outputs are finite."""
    graph = inspect(path)  # refuses a build onnxruntime cannot load, naming the file
    problems = compare_signature(manifest.inputs, graph.inputs, "inputs") + compare_signature(manifest.outputs, graph.outputs, "outputs")
    if problems:
        raise EdgefleetError(
            str(path),
            f"the {kind} build's signature differs from the reference's:\n  - " + "\n  - ".join(problems),
            "applications feed every build alike: build it with the reference's inputs and outputs",
        )
    session = _open_session(path)
    names = [o.name for o in manifest.outputs]
    try:
        values = session.run(names, synthetic_inputs(manifest.inputs))
    except Exception as exc:
        raise EdgefleetError(
            str(path), f"smoke inference of the {kind} build failed: {_ort_reason(exc)}", "ship the reference alone"
        ) from None
    bad = non_finite_outputs(names, values)
    if bad:
        raise EdgefleetError(
            str(path), f"the {kind} build's smoke inference produced NaN or infinite values in {', '.join(bad)}", "ship the reference alone"
        )


def scores(path: Path, spec: TensorSpec, out: TensorSpec, ev: LabelledSet) -> np.ndarray:
    """The named output on every frame of the set, [samples, classes], in float64."""
    session = _open_session(path)
    fixed = isinstance(spec.shape[0], int)
    batch = batch_size(spec, ev)
    result = []
    for start in range(0, ev.samples, batch):
        chunk = ev.frames[start : start + batch]
        n = len(chunk)
        if n < batch and fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        try:
            (values,) = session.run([out.name], {spec.name: ev.feed(chunk)})
        except Exception as exc:
            raise EdgefleetError(str(path), f"inference on evaluation set {ev.name} failed at frame {start}: {_ort_reason(exc)}") from None
        result.append(np.asarray(values, np.float64)[:n])
    all_scores = np.concatenate(result)
    if not np.isfinite(all_scores).all():
        raise EdgefleetError(str(path), f"output {out.name} is NaN or infinite on evaluation set {ev.name}", "ship the reference alone")
    return all_scores


def compare(manifest: ModelManifest, reference: Path, variant: Path, ev: LabelledSet, output: str) -> Comparison:
    """Both builds on every frame, in one run: top-1 agreement, largest score difference, accuracy delta."""
    import onnxruntime as ort

    spec, out = check_fits(manifest, ev, output, str(reference))
    ref, var = scores(reference, spec, out, ev), scores(variant, spec, out, ev)
    ref_top, var_top = ref.argmax(axis=1), var.argmax(axis=1)
    ref_acc, var_acc = float(np.mean(ref_top == ev.labels)), float(np.mean(var_top == ev.labels))
    return Comparison(
        dataset=ev.name,
        dataset_sha256=ev.sha256,
        samples=ev.samples,
        output=out.name,
        top1_agreement=round(float(np.mean(ref_top == var_top)), 4),
        max_abs_diff=float(f"{float(np.max(np.abs(ref - var))):.4g}"),
        metric="accuracy",
        reference=round(ref_acc, 4),
        value=round(var_acc, 4),
        delta=round(var_acc - ref_acc, 4),
        higher_is_better=True,
        measured_with=f"onnxruntime {ort.__version__}, CPUExecutionProvider, both builds in one run",
    )


def requirements(manifest: ModelManifest, kind: str, size: int) -> tuple[list[str], Requirements]:
    """Execution providers and requirements of a new variant: the targets' arches, CPU, memory scaled by size
    from the smallest target's (the reference's requirement) — edit and re-sign to say more."""
    ref_memory = min(t.memory_mb for t in manifest.targets)
    memory = max(1, math.ceil(ref_memory * size / manifest.size))
    listed = {ep for t in manifest.targets for ep in t.execution_providers}
    eps = [ep for ep in FP16_ACCELERATORS if ep in listed] + [CPU] if kind == "fp16" else [CPU]
    arches = sorted({t.arch for t in manifest.targets})
    return eps, Requirements(arch=arches, min_memory_mb=memory, providers=[CPU])  # type: ignore[arg-type]


# -- the command -------------------------------------------------------------------------------------------------------
def _with_variants(manifest: ModelManifest, variants: list[Variant]) -> ModelManifest:
    fields: dict[str, Any] = {name: getattr(manifest, name) for name in type(manifest).model_fields}
    fields["variants"] = variants
    fields["min_agent_version"] = max(manifest.min_agent_version, required_agent_version(fields), key=version_key)
    fields["format"] = max(manifest.format, required_format(fields))
    return ModelManifest(**fields)


def add_variant(model_dir: Path, kind: str, calibration: Path | None = None) -> VariantResult:
    mdir = ModelDir(model_dir)
    if kind not in VARIANT_KINDS:
        raise EdgefleetError(
            "--kind", f"{kind!r} is not a variant kind", f"pass one of {', '.join(VARIANT_KINDS)} (fp32 is the reference itself)"
        )
    if calibration is not None and kind != "int8":
        raise EdgefleetError("--calibration", f"calibrates int8 quantization; a {kind} build takes none", "drop --calibration")
    manifest = mdir.load()
    manifest_path = str(mdir.manifest_path)
    reference = mdir.artifact_path(manifest)
    validate(manifest, reference, manifest_path, runs=1)  # the reference is the file the manifest pins, and it runs
    if manifest.evaluation is None:
        raise EdgefleetError(
            manifest_path,
            f"{manifest.name} {manifest.version} has no measured evaluation to compare a variant with (evaluation: is absent)",
            f"measure the reference first: `edgefleet model evaluate {model_dir} --dataset models/datasets/<set>.yaml`",
        )
    ev = load_set(descriptor_path(None, mdir.path, manifest))
    arrays = load_calibration(calibration, manifest.inputs) if calibration is not None else None
    label = ""
    if calibration is not None and arrays is not None:
        label = f"{calibration.name} (sha256 {sha256_file(calibration)[0][:12]}, {len(next(iter(arrays.values())))} samples)"
    file_name = f"{manifest.name}.{kind}.onnx"
    final = mdir.path / file_name
    part = mdir.path / f".{file_name}.part"
    try:
        built_with = build(kind, reference, part, arrays, label)
        check_build(manifest, part, kind)
        comparison = compare(manifest, reference, part, ev, manifest.evaluation.output)
        digest, size = sha256_file(part)
        eps, requires = requirements(manifest, kind, size)
        variant = Variant(
            kind=kind,  # type: ignore[arg-type]
            file=file_name,
            sha256=digest,
            size=size,
            execution_providers=eps,
            requires=requires,
            built_with=built_with,
            comparison=comparison,
        )
        previous = manifest.variant(kind)
        others = [v for v in manifest.variants if v.kind != kind]
        updated = _with_variants(manifest, [*others, variant])
        if previous is not None and previous.sha256 != digest and final.exists():
            atomic_write_bytes(mdir.manifest_path, _with_variants(manifest, others).to_yaml().encode())  # withdraw the old build first
        part.replace(final)
    finally:
        part.unlink(missing_ok=True)
    atomic_write_bytes(mdir.manifest_path, updated.to_yaml().encode())
    removed = False
    if mdir.signature_path.exists():
        mdir.signature_path.unlink()
        removed = True
    raised = manifest.min_agent_version if updated.min_agent_version != manifest.min_agent_version else None
    return VariantResult(updated, variant, previous, removed, raised)
