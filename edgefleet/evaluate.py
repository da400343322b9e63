"""`edgefleet model evaluate`: measure a model's metrics on an evaluation set pinned by its digest.

An evaluation set is two files under models/datasets/ (format: models/datasets/README.md):

  <name>.yaml   the descriptor: name, file, and the sha256 and size that pin the .npz
  <name>.npz    uint8 frames, integer labels, the class names, the model input the frames feed, the element type
                that input takes and the scale/zero point that turn a uint8 into it: float = (uint8 - zero_point) * scale

Everything that decides the numbers is inside the .npz, so its digest pins the measurement: the manifest records
it in `evaluation` (format 2, agent 0.3.0) beside the metrics, the output they came from and the onnxruntime that
ran the model. Classification from one named output is what this format measures (accuracy: the share of frames
whose highest score is the labelled class); other tasks keep declared metrics until a later format covers them.

Everything is checked and measured before anything is written; the manifest is then replaced atomically, and a
stale signature is removed, as `edgefleet model add` does.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.onnx_check import _open_session, _ort_reason, validate
from edgefleet_agent.contract.digest import sha256_bytes
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError, from_validation_error
from edgefleet_agent.contract.manifest import (
    NAME_RE,
    Evaluation,
    MeasuredMetric,
    Metric,
    ModelDir,
    ModelManifest,
    TensorSpec,
    required_agent_version,
    required_format,
    version_key,
)
from edgefleet_agent.fsutil import atomic_write_bytes
from edgefleet_agent.tensors import NUMPY_TYPES

FORMAT_DOC = "models/datasets/README.md"
DATASETS_DIR = "datasets"  # beside the model directories: models/datasets/<name>.yaml
ARRAYS = ("frames", "labels", "classes", "input", "element_type", "scale", "zero_point", "task")
TASKS = ("classification",)
FEED_TYPES = ("float32", "float16", "float64", "uint8")  # what dequantized uint8 frames can become
BATCH = 32
DECLARE_INSTEAD = "record that model's metrics as declared instead: `edgefleet model add … --metric NAME=VALUE@DATASET`"


class DatasetDescriptor(BaseModel):
    """models/datasets/<name>.yaml: names the evaluation set and pins its .npz."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(pattern=NAME_RE)
    file: str = Field(pattern=r"^[A-Za-z0-9._-]+\.npz$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(gt=0)
    description: str = ""


@dataclass(frozen=True)
class EvalSet:
    """An evaluation set whose bytes matched their pin, read without pickle."""

    descriptor: Path
    path: Path
    name: str
    sha256: str
    task: str
    input: str
    element_type: str
    scale: float
    zero_point: float
    classes: list[str]
    frames: np.ndarray
    labels: np.ndarray

    @property
    def samples(self) -> int:
        return int(self.frames.shape[0])


# -- the evaluation set ------------------------------------------------------------------------------------------------
def descriptor_path(dataset: Path | None, model_dir: Path, manifest: ModelManifest) -> Path:
    """`--dataset` as given (a .npz stands for the .yaml beside it), else the set the manifest was last measured on."""
    if dataset is None:
        if manifest.evaluation is None:
            raise EdgefleetError(
                "--dataset",
                f"{ModelDir(model_dir).manifest_path} records no evaluation set to measure {manifest.name} on again",
                f"pass --dataset models/{DATASETS_DIR}/<set>.yaml (the sample task's: models/{DATASETS_DIR}/channel-dominance-eval.yaml); "
                f"format: {FORMAT_DOC}",
            )
        return Path(model_dir).resolve().parent / DATASETS_DIR / f"{manifest.evaluation.dataset}.yaml"
    dataset = Path(dataset)
    return dataset.with_suffix(".yaml") if dataset.suffix == ".npz" else dataset


def load_descriptor(path: Path) -> DatasetDescriptor:
    if not path.is_file():
        raise EdgefleetError(
            str(path),
            "no evaluation set descriptor here",
            f"pass --dataset the set's .yaml, which pins its .npz by sha256 (format: {FORMAT_DOC})",
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid YAML: {exc}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "expected a mapping with name, file, sha256, size", f"see {FORMAT_DOC}")
    try:
        desc = DatasetDescriptor.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, str(path)) from None
    if desc.name != path.stem:
        raise ConfigError(
            str(path),
            f"name: {desc.name!r} does not match the file name {path.name!r}",
            f"rename the file to {desc.name}.yaml or set name: {path.stem} (manifests find a set by its name)",
        )
    return desc


def _scalar(arrays: Any, key: str, kind: type, where: str) -> Any:
    value = arrays[key]
    item = value.item() if value.shape == () else None
    if kind is float and isinstance(item, int) and not isinstance(item, bool):
        item = float(item)
    if not isinstance(item, kind) or isinstance(item, bool):
        what = "string" if kind is str else "number"
        raise EdgefleetError(where, f"{key}: expected a single {what}, got {value.dtype}{list(value.shape)}", f"see {FORMAT_DOC}")
    return item


def load_eval_set(descriptor: Path) -> EvalSet:
    """Reads the descriptor, checks the .npz's bytes against its pin, then reads those same bytes (no pickle)."""
    desc = load_descriptor(descriptor)
    path = descriptor.parent / desc.file
    if not path.is_file():
        raise EdgefleetError(str(descriptor), f"file: {desc.file} does not exist next to the descriptor", "add the .npz or fix `file:`")
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != desc.sha256 or len(data) != desc.size:
        raise EdgefleetError(
            str(path),
            f"digest mismatch: sha256 {digest} ({len(data)} bytes), but {descriptor} pins {desc.sha256} ({desc.size} bytes): "
            "this is not the evaluation set that was pinned",
            f"restore the pinned file (`git checkout -- {path}`); if the set changed on purpose, pin the new file in "
            f"{descriptor.name}'s sha256: and size: so the change is reviewed",
        )
    where = str(path)
    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        missing = [k for k in ARRAYS if k not in arrays.files]
        if missing:
            raise EdgefleetError(
                where,
                f"missing array(s) {', '.join(missing)}; an evaluation set holds {', '.join(ARRAYS)}",
                f"write every array {FORMAT_DOC} lists",
            )
        frames, labels, classes = arrays["frames"], arrays["labels"], arrays["classes"]
        meta = {k: _scalar(arrays, k, str, where) for k in ("task", "input", "element_type")}
        scale, zero_point = (_scalar(arrays, k, float, where) for k in ("scale", "zero_point"))
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:  # numpy refuses pickled object arrays with ValueError
        raise EdgefleetError(
            where, f"not an .npz numpy reads without pickle: {str(exc).splitlines()[0][:200]}", f"see {FORMAT_DOC}"
        ) from None
    if meta["task"] not in TASKS:
        raise EdgefleetError(
            where, f"task: {meta['task']!r} is not measured yet (this version measures: {', '.join(TASKS)})", DECLARE_INSTEAD
        )
    problems = []
    if frames.dtype != np.uint8:
        problems.append(f"frames: uint8 expected, got {frames.dtype} (store uint8 and say how to scale it in scale and zero_point)")
    if frames.ndim < 2 or frames.shape[0] == 0:
        problems.append(f"frames: expected [samples, ...one frame's shape] with at least one sample, got {list(frames.shape)}")
    if classes.ndim != 1 or classes.dtype.kind != "U" or len(classes) < 2:
        problems.append(f"classes: expected at least 2 class names (strings, index = label), got {classes.dtype}{list(classes.shape)}")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        problems.append(f"labels: expected one integer per frame, got {labels.dtype}{list(labels.shape)}")
    elif frames.ndim >= 1 and len(labels) != frames.shape[0]:
        problems.append(f"labels: {len(labels)} labels for {frames.shape[0]} frames")
    elif len(labels) and (labels.min() < 0 or (classes.ndim == 1 and labels.max() >= len(classes))):
        problems.append(f"labels: values {labels.min()}..{labels.max()}, but classes names {len(classes)} (labels index classes from 0)")
    if meta["element_type"] not in FEED_TYPES:
        problems.append(f"element_type: {meta['element_type']!r} cannot be fed from uint8 frames (one of {', '.join(FEED_TYPES)})")
    elif meta["element_type"] == "uint8" and (scale, zero_point) != (1.0, 0.0):
        problems.append(
            f"element_type: uint8 frames feed a uint8 input as they are, so scale must be 1 and zero_point 0 (got {scale}, {zero_point})"
        )
    if not (np.isfinite(scale) and scale > 0 and np.isfinite(zero_point)):
        problems.append(f"scale, zero_point: a positive finite scale and a finite zero point (got {scale}, {zero_point})")
    if problems:
        raise EdgefleetError(where, "not a valid evaluation set:\n  - " + "\n  - ".join(problems), f"see {FORMAT_DOC}")
    return EvalSet(
        descriptor=descriptor,
        path=path,
        name=desc.name,
        sha256=digest,
        task=meta["task"],
        input=meta["input"],
        element_type=meta["element_type"],
        scale=float(scale),
        zero_point=float(zero_point),
        classes=[str(c) for c in classes],
        frames=frames,
        labels=labels.astype(np.int64),
    )


# -- does it fit the model -----------------------------------------------------------------------------------------
def _dims(shape: list[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_fits(manifest: ModelManifest, ev: EvalSet, output: str | None, manifest_path: str) -> tuple[TensorSpec, TensorSpec]:
    """The model input the set feeds and the output holding the class scores; every mismatch named at once."""
    if output is not None and output not in {o.name for o in manifest.outputs}:
        raise EdgefleetError(
            "--output",
            f"{manifest.name} {manifest.version} has no output {output!r} (outputs: {', '.join(o.name for o in manifest.outputs)})",
            "pass --output the output that holds one score per class",
        )
    if output is None and len(manifest.outputs) > 1:
        raise EdgefleetError(
            "--output",
            f"{manifest.name} {manifest.version} has {len(manifest.outputs)} outputs ({', '.join(o.name for o in manifest.outputs)}): "
            "which one holds the class scores?",
            "pass --output NAME",
        )
    out = next(o for o in manifest.outputs if o.name == (output or manifest.outputs[0].name))
    problems = []
    if len(manifest.inputs) != 1:
        problems.append(
            f"inputs: the model has {len(manifest.inputs)} inputs ({', '.join(i.name for i in manifest.inputs)}); "
            "an evaluation set feeds exactly one"
        )
    spec = next((i for i in manifest.inputs if i.name == ev.input), None)
    if spec is None:
        problems.append(f"input: the set feeds {ev.input!r}, the model's input is {', '.join(repr(i.name) for i in manifest.inputs)}")
    else:
        frame, want = list(ev.frames.shape[1:]), spec.shape[1:]
        fixed = [(i, d, f) for i, (d, f) in enumerate(zip(want, frame, strict=False)) if isinstance(d, int) and d != f]
        if len(frame) != len(want) or fixed:
            problems.append(
                f"shape: a frame is {_dims(frame)} (frames {_dims(list(ev.frames.shape))}), input {spec.name} is "
                f"{_dims(spec.shape)}: frames must match every dimension after the batch"
            )
        if spec.element_type != ev.element_type:
            problems.append(f"element type: the set feeds {ev.element_type}, input {spec.name} is {spec.element_type}")
    if len(out.shape) != 2 or out.element_type not in ("float32", "float16", "float64"):
        problems.append(
            f"output {out.name} is {out.element_type}{_dims(out.shape)}: classification is measured from scores "
            "[batch, classes] of a float type"
        )
    elif isinstance(out.shape[1], int) and out.shape[1] != len(ev.classes):
        problems.append(
            f"classes: output {out.name} gives {out.shape[1]} scores per frame, the set labels {len(ev.classes)} classes "
            f"({', '.join(ev.classes)})"
        )
    if problems:
        raise EdgefleetError(
            str(ev.path),
            f"evaluation set {ev.name} does not fit {manifest.name} {manifest.version} ({manifest_path}):\n  - " + "\n  - ".join(problems),
            f"measure on a set made for this model's signature (input name, frame shape, element type, one score per class), "
            f"or write one as {FORMAT_DOC} describes; for other tasks, {DECLARE_INSTEAD}",
        )
    assert spec is not None
    return spec, out


# -- measuring ---------------------------------------------------------------------------------------------------------
def measure(manifest: ModelManifest, artifact: Path, ev: EvalSet, output: str | None, manifest_path: str) -> Evaluation:
    """Runs the model on every frame of the set; accuracy from the named output's highest score."""
    import onnxruntime as ort

    spec, out = check_fits(manifest, ev, output, manifest_path)
    session = _open_session(artifact)
    batch = spec.shape[0] if isinstance(spec.shape[0], int) else BATCH
    dtype = NUMPY_TYPES[spec.element_type]
    predicted = np.empty(ev.samples, np.int64)
    bad = 0
    for start in range(0, ev.samples, batch):
        chunk = ev.frames[start : start + batch]
        n = len(chunk)
        if n < batch and isinstance(spec.shape[0], int):  # a fixed batch: pad with the last frame, ignore its scores
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        feed = chunk if spec.element_type == "uint8" else ((chunk.astype(np.float64) - ev.zero_point) * ev.scale).astype(dtype)
        try:
            (scores,) = session.run([out.name], {spec.name: feed})
        except Exception as exc:  # onnxruntime raises several private exception types
            raise EdgefleetError(
                str(artifact),
                f"inference on evaluation set {ev.name} failed at frame {start}: {_ort_reason(exc)}",
                "check the model runs on its declared input shape",
            ) from None
        scores = np.asarray(scores)[:n]
        if scores.shape != (n, len(ev.classes)):
            raise EdgefleetError(
                str(ev.path),
                f"classes: output {out.name} returned shape {list(scores.shape)} for {n} frames; the set labels {len(ev.classes)} classes",
                f"measure on a set with one class per score, or pass --output the output that scores {len(ev.classes)} classes",
            )
        finite = np.isfinite(scores).all(axis=1)
        bad += int((~finite).sum())
        predicted[start : start + n] = scores.argmax(axis=1)
    if bad:
        raise EdgefleetError(
            str(artifact),
            f"output {out.name} is NaN or infinite on {bad} of {ev.samples} frames of {ev.name}: a broken model has no accuracy",
            "fix the export before shipping it (in a sandbox stack its declared metrics still let it reach the canary, "
            "whose NaN/Inf gate stops it)",
        )
    accuracy = float(np.mean(predicted == ev.labels))
    return Evaluation(
        dataset=ev.name,
        dataset_sha256=ev.sha256,
        samples=ev.samples,
        output=out.name,
        metrics=[MeasuredMetric(name="accuracy", value=round(accuracy, 4), higher_is_better=True)],
        measured_with=f"onnxruntime {ort.__version__}",
    )


def with_evaluation(manifest: ModelManifest, evaluation: Evaluation) -> tuple[ModelManifest, list[Metric]]:
    """The manifest carrying these measured metrics: declared metrics of the same names give way to them, and
    min_agent_version and format rise to what `evaluation` needs. Also returns the declared metrics replaced."""
    measured = {m.name for m in evaluation.metrics}
    replaced = [m for m in manifest.metrics if m.name in measured]
    fields: dict[str, Any] = {name: getattr(manifest, name) for name in type(manifest).model_fields}
    fields.update(metrics=[m for m in manifest.metrics if m.name not in measured], evaluation=evaluation)
    fields["min_agent_version"] = max(manifest.min_agent_version, required_agent_version(fields), key=version_key)
    fields["format"] = max(manifest.format, required_format(fields))
    return ModelManifest(**fields), replaced


# -- the command ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvaluateResult:
    manifest: ModelManifest
    previous: ModelManifest
    dataset: EvalSet
    replaced: list[Metric]  # declared metrics the measured ones superseded
    changed: bool  # False: the same measurement was already recorded; nothing was written
    removed_signature: bool


def evaluate_model(model_dir: Path, dataset: Path | None = None, output: str | None = None) -> EvaluateResult:
    mdir = ModelDir(model_dir)
    previous = mdir.load()
    manifest_path = str(mdir.manifest_path)
    artifact = mdir.artifact_path(previous)
    validate(previous, artifact, manifest_path, runs=1)  # the file is the one the manifest pins, and it runs
    ev = load_eval_set(descriptor_path(dataset, mdir.path, previous))
    manifest, replaced = with_evaluation(previous, measure(previous, artifact, ev, output, manifest_path))
    data = manifest.to_yaml().encode()
    if data == mdir.manifest_bytes():
        return EvaluateResult(manifest, previous, ev, replaced, changed=False, removed_signature=False)
    atomic_write_bytes(mdir.manifest_path, data)  # a crash never leaves half a manifest
    removed = False
    if mdir.signature_path.exists():
        mdir.signature_path.unlink()
        removed = True
    return EvaluateResult(manifest, previous, ev, replaced, changed=True, removed_signature=removed)
