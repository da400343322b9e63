"""`edgefleet model add`: record a new model version from the real ONNX graph.

Metrics typed in with `--metric` are recorded as declared (`metrics:`); with `--dataset` the new version is also
measured on a pinned evaluation set and those metrics are recorded as measured (`evaluation:`, see
edgefleet/evaluate.py). Everything is computed, checked and measured before anything is written; the artifact and
the manifest are then each replaced atomically, and a stale signature is removed (it no longer matches the manifest).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from components.datasets import LabelledSet, load_set
from edgefleet.evaluate import measure, with_evaluation
from edgefleet.onnx_check import inspect
from edgefleet_agent.contract.errors import EdgefleetError, field_path, from_validation_error
from edgefleet_agent.contract.manifest import (
    BASELINE_AGENT_VERSION,
    HardwareProfile,
    Metric,
    ModelDir,
    ModelManifest,
    check_semver,
    is_valid_name,
    version_key,
)
from edgefleet_agent.fsutil import atomic_copy, atomic_write_bytes


def _reason(exc: Exception) -> str:
    """The field and problem of a ValidationError (its first line only says how many errors there were)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{field_path(tuple(e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors())
    return str(exc).splitlines()[0]


def parse_metric(text: str, lower_is_better: set[str]) -> Metric:
    """`accuracy=0.95@imagenet-val` -> Metric."""
    try:
        name_value, dataset = text.split("@", 1)
        name, value = name_value.split("=", 1)
        return Metric(name=name.strip(), value=float(value), dataset=dataset.strip(), higher_is_better=name.strip() not in lower_is_better)
    except (ValueError, ValidationError) as exc:
        raise EdgefleetError(f"--metric {text}", f"expected NAME=VALUE@DATASET, e.g. accuracy=0.95@imagenet-val ({_reason(exc)})") from None


def parse_target(text: str) -> HardwareProfile:
    """`name=gw,arch=amd64,providers=CUDAExecutionProvider+CPUExecutionProvider,memory_mb=512,storage_mb=64`."""
    try:
        fields = dict(part.split("=", 1) for part in text.split(","))
        return HardwareProfile(
            name=fields.pop("name"),
            arch=fields.pop("arch"),
            execution_providers=fields.pop("providers").split("+"),
            memory_mb=int(fields.pop("memory_mb")),
            storage_mb=int(fields.pop("storage_mb")),
            **fields,
        )
    except (ValueError, KeyError, ValidationError, TypeError) as exc:
        raise EdgefleetError(
            f"--target {text}", f"expected name=..,arch=amd64|arm64|armv7,providers=EP1+EP2,memory_mb=N,storage_mb=N ({_reason(exc)})"
        ) from None


@dataclass(frozen=True)
class AddResult:
    manifest: ModelManifest
    previous_version: str | None
    removed_signature: bool
    dataset: LabelledSet | None = None  # measured on it (`--dataset`)
    now_declared: tuple[str, ...] = ()  # --keep-metrics: the previous version's measured metrics, carried over as declared
    raised_agent_from: str | None = None  # min_agent_version asked for (or carried over) before the fields needed more


def carried_metrics(previous: ModelManifest) -> tuple[list[Metric], list[str]]:
    """--keep-metrics: the previous version's declared metrics, and its measured ones as declared (they were measured
    on the previous artifact, not this one), named after the set they were measured on."""
    carried = list(previous.metrics)
    ev = previous.evaluation
    if ev is None:
        return carried, []
    for m in ev.metrics:
        carried.append(
            Metric(name=m.name, value=m.value, dataset=f"{ev.label}, measured on {previous.version}", higher_is_better=m.higher_is_better)
        )
    return carried, [m.name for m in ev.metrics]


def add_version(
    model_dir: Path,
    onnx_file: Path,
    version: str,
    metrics: list[Metric] | None = None,
    targets: list[HardwareProfile] | None = None,
    keep_metrics: bool = False,
    min_agent_version: str | None = None,
    description: str | None = None,
    dataset: Path | None = None,
    output: str | None = None,
) -> AddResult:
    mdir = ModelDir(model_dir)
    name = mdir.path.name
    if not is_valid_name(name):
        raise EdgefleetError(
            str(mdir.path), f"directory name {name!r} is not a valid model name (lower case, digits and dashes)", "rename the directory"
        )
    try:
        check_semver(version)
    except ValueError as exc:
        raise EdgefleetError("--version", str(exc), "use MAJOR.MINOR.PATCH, e.g. 1.4.0") from None
    if min_agent_version is not None:
        try:
            check_semver(min_agent_version)
        except ValueError as exc:
            raise EdgefleetError("--min-agent-version", str(exc), "use MAJOR.MINOR.PATCH, e.g. 0.2.0") from None
    previous = mdir.load() if mdir.exists() else None
    if previous is not None and version_key(version) <= previous.semver:
        raise EdgefleetError(
            str(mdir.manifest_path),
            f"version {version} is not newer than the manifest's {previous.version}",
            f"pass a version above {previous.version} (semver: bump patch for a retrain, minor for new behaviour, major for an I/O change)",
        )
    for flag, items in (("--metric", metrics or []), ("--target", targets or [])):
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise EdgefleetError(flag, f"{', '.join(dupes)} given more than once", f"pass each {flag} name once")
    if metrics and keep_metrics:
        raise EdgefleetError(
            "--keep-metrics", "cannot be combined with --metric", "pass either the new evaluation (--metric) or --keep-metrics"
        )
    if output is not None and dataset is None:
        raise EdgefleetError("--output", "names the output to measure, and nothing is measured without --dataset", "pass --dataset too")
    previous_metrics = [m.name for m in previous.metrics] if previous else []
    previous_metrics += [m.name for m in previous.evaluation.metrics] if previous and previous.evaluation else []
    if previous is not None and not metrics and not keep_metrics and dataset is None and previous_metrics:
        raise EdgefleetError(
            "--metric",
            f"version {version} has no evaluation metrics; the manifest's {previous.version} had {', '.join(previous_metrics)}",
            "pass --dataset models/datasets/<set>.yaml to measure the new version, --metric NAME=VALUE@DATASET to declare its "
            "metrics, or --keep-metrics to carry the old ones over knowingly (as declared)",
        )
    if previous is None and not targets:
        raise EdgefleetError(
            "--target",
            "a new model needs at least one hardware target",
            "pass --target name=x86-gateway,arch=amd64,providers=CPUExecutionProvider,memory_mb=256,storage_mb=64",
        )
    graph = inspect(Path(onnx_file))
    eval_set = load_set(_descriptor(dataset)) if dataset is not None else None
    file_name = f"{name}.onnx"
    carried, now_declared = carried_metrics(previous) if previous is not None and keep_metrics else ([], [])
    chosen_agent = min_agent_version or (previous.min_agent_version if previous else BASELINE_AGENT_VERSION)
    try:
        manifest = ModelManifest(
            name=name,
            version=version,
            file=file_name,
            sha256=graph.sha256,
            size=graph.size,
            opset=graph.opset,
            inputs=graph.inputs,
            outputs=graph.outputs,
            metrics=list(metrics) if metrics else carried,
            targets=list(targets) if targets else list(previous.targets),
            min_agent_version=chosen_agent,
            description=description if description is not None else (previous.description if previous else ""),
        )
    except ValidationError as exc:  # e.g. a graph whose opset or I/O the manifest cannot describe
        problem = from_validation_error(exc, str(onnx_file)).problem
        raise EdgefleetError(
            str(onnx_file),
            f"a manifest cannot describe this graph: {problem}",
            "export the model with ONNX opset 7 or newer and named, typed inputs and outputs",
        ) from None
    if eval_set is not None:
        evaluation = measure(manifest, Path(onnx_file), eval_set, output, str(onnx_file))
        clash = sorted({m.name for m in metrics or []} & {m.name for m in evaluation.metrics})
        if clash:
            raise EdgefleetError(
                "--metric",
                f"{', '.join(clash)} is measured on {eval_set.name} (--dataset) and also typed in",
                f"drop --metric {clash[0]}=…: the measured value is recorded",
            )
        manifest, _ = with_evaluation(manifest, evaluation)
        now_declared = [n for n in now_declared if manifest.measured(n) is None]
    raised_from = chosen_agent if manifest.min_agent_version != chosen_agent else None
    target_file = mdir.path / file_name
    mdir.path.mkdir(parents=True, exist_ok=True)
    if Path(onnx_file).resolve() != target_file.resolve():
        atomic_copy(Path(onnx_file), target_file)
    atomic_write_bytes(mdir.manifest_path, manifest.to_yaml().encode())  # a crash never leaves half a manifest
    removed = False
    if mdir.signature_path.exists():
        mdir.signature_path.unlink()
        removed = True
    return AddResult(manifest, previous.version if previous else None, removed, eval_set, tuple(now_declared), raised_from)


def _descriptor(dataset: Path) -> Path:
    """`--dataset` names the set's .yaml; its .npz stands for the .yaml beside it."""
    return dataset.with_suffix(".yaml") if dataset.suffix == ".npz" else dataset
