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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.datasets import DATASETS_DIR, FORMAT_DOC, LabelledSet, check_fits, load_set
from edgefleet.onnx_check import _open_session, _ort_reason, validate
from edgefleet_agent.contract.errors import EdgefleetError
from edgefleet_agent.contract.manifest import (
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

MAX_BATCH = 32
BATCH_INPUT_BYTES = 1 << 20  # a run's input: one 224x224 float frame; more frames make no run faster on one thread


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


# -- measuring ---------------------------------------------------------------------------------------------------------
def batch_size(spec: TensorSpec, ev: LabelledSet) -> int:
    """Frames per run: the model's fixed batch, else as many as fit in BATCH_INPUT_BYTES (1 to MAX_BATCH). The session
    has one intra-op thread, so a bigger batch is not faster, and the model's activations grow with it: on the 128
    frames of 224x224 of the shipped set, detector 1.1.0 took 0.16 s at 1 frame a run and 0.57 s at 32, and its
    10x-slower variant (benchmarks/rollout_bench.py --slow) 1.40 s and 170 MiB peak at 1 against 3.06 s and 1,540 MiB
    at 32 (2026-12-05, scratch measurement, one process each)."""
    if isinstance(spec.shape[0], int):
        return spec.shape[0]
    frame = ev.feed(ev.frames[:1]).nbytes
    return max(1, min(MAX_BATCH, BATCH_INPUT_BYTES // max(1, frame)))


def measure(manifest: ModelManifest, artifact: Path, ev: LabelledSet, output: str | None, manifest_path: str) -> Evaluation:
    """Runs the model on every frame of the set; accuracy from the named output's highest score."""
    import onnxruntime as ort

    spec, out = check_fits(manifest, ev, output, manifest_path)
    session = _open_session(artifact)
    batch = batch_size(spec, ev)
    predicted = np.empty(ev.samples, np.int64)
    bad = 0
    for start in range(0, ev.samples, batch):
        chunk = ev.frames[start : start + batch]
        n = len(chunk)
        if n < batch and isinstance(spec.shape[0], int):  # a fixed batch: pad with the last frame, ignore its scores
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        feed = ev.feed(chunk)
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
    dataset: LabelledSet
    replaced: list[Metric]  # declared metrics the measured ones superseded
    changed: bool  # False: the same measurement was already recorded; nothing was written
    removed_signature: bool


def evaluate_model(model_dir: Path, dataset: Path | None = None, output: str | None = None) -> EvaluateResult:
    mdir = ModelDir(model_dir)
    previous = mdir.load()
    manifest_path = str(mdir.manifest_path)
    artifact = mdir.artifact_path(previous)
    validate(previous, artifact, manifest_path, runs=1)  # the file is the one the manifest pins, and it runs
    ev = load_set(descriptor_path(dataset, mdir.path, previous))
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
