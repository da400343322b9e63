"""Labelled sets of frames on disk, pinned by digest: what `edgefleet model evaluate` measures a model on and what the
local fleet's simulated applications send their devices (format: models/datasets/README.md).

A set is two files: `<name>.yaml` (the descriptor: name, file, and the sha256 and size that pin the .npz) and
`<name>.npz` (uint8 frames, integer labels, the class names, the model input the frames feed, its element type and
the scale/zero point that turn a uint8 into it). Everything that decides a measurement is inside the .npz, so its
digest pins it.
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

from edgefleet_agent.contract.digest import sha256_bytes
from edgefleet_agent.contract.errors import ConfigError, EdgefleetError, from_validation_error
from edgefleet_agent.contract.manifest import NAME_RE, ModelManifest, TensorSpec
from edgefleet_agent.tensors import NUMPY_TYPES

FORMAT_DOC = "models/datasets/README.md"
DATASETS_DIR = "datasets"  # beside the model directories: models/datasets/<name>.yaml
ARRAYS = ("frames", "labels", "classes", "input", "element_type", "scale", "zero_point", "task")
TASKS = ("classification",)
FEED_TYPES = ("float32", "float16", "float64", "uint8")  # what dequantized uint8 frames can become
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
class LabelledSet:
    """A set whose bytes matched their pin, read without pickle."""

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

    def feed(self, frames: np.ndarray) -> np.ndarray:
        """Frames as the model receives them: `(uint8 - zero_point) * scale` in the input's element type."""
        if self.element_type == "uint8":
            return frames
        return ((frames.astype(np.float64) - self.zero_point) * self.scale).astype(NUMPY_TYPES[self.element_type])


# -- reading a set ----------------------------------------------------------------------------------------------------
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


def load_set(descriptor: Path) -> LabelledSet:
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
    return LabelledSet(
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


def input_problems(manifest: ModelManifest, ev: LabelledSet) -> tuple[TensorSpec | None, list[str]]:
    """The model input the set's frames feed, and what keeps them from feeding it (empty when they fit)."""
    problems: list[str] = []
    if len(manifest.inputs) != 1:
        problems.append(
            f"inputs: the model has {len(manifest.inputs)} inputs ({', '.join(i.name for i in manifest.inputs)}); a set feeds exactly one"
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
    return spec, problems


def check_fits(manifest: ModelManifest, ev: LabelledSet, output: str | None, manifest_path: str) -> tuple[TensorSpec, TensorSpec]:
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
    spec, problems = input_problems(manifest, ev)
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
