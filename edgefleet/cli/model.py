"""`edgefleet model add | evaluate | variant add | validate | sign | verify`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from edgefleet.cli import app, console
from edgefleet_agent.contract.manifest import ModelDir, ModelManifest

model_app = typer.Typer(no_args_is_help=True, help="Add, evaluate, validate, sign and verify model versions.")
app.add_typer(model_app, name="model")
variant_app = typer.Typer(no_args_is_help=True, help="Builds of a version for other hardware (int8, fp16), measured against the reference.")
model_app.add_typer(variant_app, name="variant")


@model_app.command("add")
def add(
    model_dir: Path = typer.Argument(..., help="models/<name>: created if missing."),
    onnx: Path = typer.Option(..., "--onnx", help="The ONNX file of the new version."),
    version: str = typer.Option(..., "--version", help="Semantic version, newer than the manifest's."),
    metric: list[str] = typer.Option([], "--metric", help="NAME=VALUE@DATASET, repeatable: recorded as declared (typed in)."),
    lower_is_better: list[str] = typer.Option([], "--lower-is-better", help="Metric names where lower is better."),
    keep_metrics: bool = typer.Option(False, "--keep-metrics", help="Carry the previous version's metrics over."),
    target: list[str] = typer.Option(
        [], "--target", help="name=..,arch=..,providers=EP1+EP2,memory_mb=N,storage_mb=N (repeatable; default: keep)."
    ),
    min_agent_version: str | None = typer.Option(None, "--min-agent-version"),
    description: str | None = typer.Option(None, "--description"),
    dataset: Path | None = typer.Option(
        None, "--dataset", help="Also measure the new version on this evaluation set (models/datasets/<set>.yaml): recorded as measured."
    ),
    output: str | None = typer.Option(
        None, "--output", help="With --dataset: the output holding the class scores (default: the only one)."
    ),
) -> None:
    """Write or update models/<name>/model.yaml from the real ONNX graph (I/O read from the model, digest computed)."""
    from edgefleet.model_add import add_version, parse_metric, parse_target

    result = add_version(
        model_dir,
        onnx,
        version,
        metrics=[parse_metric(m, set(lower_is_better)) for m in metric],
        targets=[parse_target(t) for t in target],
        keep_metrics=keep_metrics,
        min_agent_version=min_agent_version,
        description=description,
        dataset=dataset,
        output=output,
    )
    m = result.manifest
    what = f"{result.previous_version} -> {m.version}" if result.previous_version else f"new model at {m.version}"
    console.print(
        escape(f"{model_dir}/model.yaml: {m.name} {what}, sha256 {m.sha256[:16]}…, {m.size} bytes, opset {m.opset}"), soft_wrap=True
    )
    for line in metric_lines(m):
        console.print(escape(f"  {line}"), soft_wrap=True, highlight=False)
    if result.now_declared:
        console.print(
            escape(
                f"carried {', '.join(result.now_declared)} over as declared: measured on {result.previous_version}, not on {m.version}; "
                f"measure it with `edgefleet model evaluate {model_dir}`"
            ),
            soft_wrap=True,
        )
    if result.raised_agent_from:
        console.print(escape(agent_note(result.raised_agent_from, m.min_agent_version)), soft_wrap=True)
    if result.removed_signature:
        console.print(
            "removed the old model.yaml.sig: it signed the previous manifest; sign again with `edgefleet model sign`", soft_wrap=True
        )


def metric_lines(m: ModelManifest) -> list[str]:
    """Each metric of a manifest, saying whether it was measured (and on what) or declared."""
    lines = []
    if m.evaluation is not None:
        ev = m.evaluation
        for x in ev.metrics:
            lines.append(f"{x.name} {x.value:g} measured on {ev.label}, {ev.samples} samples, output {ev.output}, {ev.measured_with}")
    lines += [f"{x.name} {x.value:g} declared (typed in) on {x.dataset}" for x in m.metrics]
    return lines


def agent_note(before: str, after: str) -> str:
    return (
        f"min_agent_version {before} -> {after}: agents before {after} do not read a manifest's `evaluation` "
        "(a fleet on an older agent refuses this version; `edgefleet policy` checks that the fleet runs a new enough one)"
    )


@model_app.command("evaluate")
def evaluate(
    model_dir: Path = typer.Argument(..., help="models/<name>"),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        help="The evaluation set's descriptor, models/datasets/<set>.yaml (or its .npz); default: the set the manifest was measured on.",
    ),
    output: str | None = typer.Option(None, "--output", help="The output holding one score per class (default: the model's only output)."),
) -> None:
    """Measure the model on an evaluation set pinned by digest and record the metrics in model.yaml as measured.

    Exit codes: 0 measured (or already recorded), 1 bad input: a missing or invalid set, a set whose digest differs
    from its pin, a set that does not fit the model's signature, a model whose outputs are NaN (nothing is written).
    """
    from edgefleet.evaluate import evaluate_model

    result = evaluate_model(model_dir, dataset, output)
    m, before, ev = result.manifest, result.previous, result.dataset
    console.print(
        escape(f"{model_dir}/model.yaml: {m.name} {m.version} on {ev.name} ({ev.samples} frames, sha256 {ev.sha256[:16]}…)"),
        soft_wrap=True,
        highlight=False,
    )
    for line in metric_lines(m):
        console.print(escape(f"  {line}"), soft_wrap=True, highlight=False)
    for x in result.replaced:
        console.print(escape(f"  replaces the declared {x.name} {x.value:g} (on {x.dataset})"), soft_wrap=True, highlight=False)
    if not result.changed:
        console.print("unchanged: the manifest already records this measurement (signature kept)", soft_wrap=True)
        return
    if before.evaluation is not None and before.evaluation.dataset_sha256 != ev.sha256:
        console.print(escape(f"the evaluation set changed: last measured on {before.evaluation.label}"), soft_wrap=True, highlight=False)
    if m.min_agent_version != before.min_agent_version:
        console.print(escape(agent_note(before.min_agent_version, m.min_agent_version)), soft_wrap=True)
    if result.removed_signature:
        console.print(
            "removed the old model.yaml.sig: it signed the previous manifest; sign again with `edgefleet model sign`", soft_wrap=True
        )


@model_app.command("validate")
def validate(
    model_dir: Path = typer.Argument(..., help="models/<name>"),
    runs: int = typer.Option(20, min=1, help="Timed smoke inferences."),
) -> None:
    """Load the model in onnxruntime, check it against its manifest, run a smoke inference, report latency."""
    from edgefleet.onnx_check import validate as run_validate

    mdir = ModelDir(model_dir)
    manifest = mdir.load()
    report = run_validate(manifest, mdir.artifact_path(manifest), str(mdir.manifest_path), runs=runs)
    table = Table(title=escape(f"{manifest.name} {manifest.version}  (opset {manifest.opset}, {manifest.size} bytes)"))
    for col in ("", "name", "type", "shape"):
        table.add_column(col)
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for s in specs:
            table.add_row(kind, escape(s.name), s.element_type, escape("[" + ", ".join(str(d) for d in s.shape) + "]"))
    console.print(table)
    console.print(
        f"smoke inference: {report.runs} runs on synthetic inputs, outputs finite, "
        f"latency p50 {report.latency_ms_p50:.3f} ms, p99 {report.latency_ms_p99:.3f} ms",
        soft_wrap=True,
    )
    console.print(f"[green]ok[/] {escape(str(mdir.manifest_path))}", soft_wrap=True)


@model_app.command("sign")
def sign(
    model_dir: Path = typer.Argument(..., help="models/<name>"),
    key: Path = typer.Option(..., "--key", help="P-256 private key (PEM), see `edgefleet keys create`."),
) -> None:
    """Write models/<name>/model.yaml.sig: ECDSA P-256 over the manifest, which pins the model's digest."""
    from components.local.signer import LocalKeySigner
    from edgefleet.signing import sign_model_dir

    signer = LocalKeySigner(key)
    path = sign_model_dir(ModelDir(model_dir), signer)
    console.print(escape(f"wrote {path} (key {signer.key_id[:23]}…)"), soft_wrap=True)


@model_app.command("verify")
def verify(
    model_dir: Path = typer.Argument(..., help="models/<name>"),
    public_key: Path = typer.Option(..., "--public-key", help="The signer's public key (PEM)."),
) -> None:
    """Check the signature over the manifest and the model file against the digest it pins, as a device does."""
    from edgefleet_agent.contract.artifact import verify_model_dir
    from edgefleet_agent.contract.errors import EdgefleetError
    from edgefleet_agent.contract.signing import load_public_key

    if not public_key.is_file():
        raise EdgefleetError(str(public_key), "public key file not found", "pass the .pub.pem written by `edgefleet keys create`")
    manifest = verify_model_dir(ModelDir(model_dir), load_public_key(public_key.read_bytes(), str(public_key)))
    console.print(
        f"[green]verified[/] {manifest.name} {manifest.version}: signature by the given key, sha256 {manifest.sha256[:16]}… matches",
        soft_wrap=True,
    )


@variant_app.command("add")
def variant_add(
    model_dir: Path = typer.Argument(..., help="models/<name>: the version in its model.yaml gains the variant."),
    kind: str = typer.Option(..., "--kind", help="int8 (onnxruntime quantization) or fp16 (onnxruntime float16 conversion)."),
    calibration: Path | None = typer.Option(
        None, "--calibration", help="int8 only: an .npz of input samples for static quantization (docs/models.md#calibration-set)."
    ),
) -> None:
    """Build a variant from the reference, validate it as `model add` does, measure it against the reference on the
    version's evaluation set and record it (measured) in model.yaml.

    Exit codes: 0 recorded; 1 bad input: no measured evaluation to compare with, a calibration set that does not match
    the inputs, a build onnxruntime cannot load or whose outputs are NaN (nothing is written).
    """
    from edgefleet.variant_add import add_variant

    result = add_variant(model_dir, kind, calibration)
    m, v, c = result.manifest, result.variant, result.variant.comparison
    verb = "replaced" if result.replaced is not None else "added"
    console.print(
        escape(
            f"{model_dir}/model.yaml: {m.name} {m.version} {verb} {v.kind} variant {v.file}, sha256 {v.sha256[:16]}…, {v.size} bytes "
            f"({v.size / m.size:.0%} of the reference)"
        ),
        soft_wrap=True,
        highlight=False,
    )
    console.print(escape(f"  built with {v.built_with}"), soft_wrap=True, highlight=False)
    console.print(
        escape(
            f"  measured on {c.dataset} (sha256 {c.dataset_sha256[:12]}), {c.samples} samples, output {c.output}: top-1 agreement "
            f"{c.top1_agreement:.2%}, max score difference {c.max_abs_diff:g}, {c.metric} {c.value:g} vs reference {c.reference:g} "
            f"(delta {c.delta:+g})"
        ),
        soft_wrap=True,
        highlight=False,
    )
    r = v.requires
    console.print(
        escape(
            f"  requires arch {', '.join(r.arch)}, {r.min_memory_mb} MB, {', '.join(r.providers)}; runs on {', '.join(v.execution_providers)}"
        ),
        soft_wrap=True,
        highlight=False,
    )
    if result.raised_agent_from:
        console.print(
            escape(
                f"min_agent_version {result.raised_agent_from} -> {m.min_agent_version}: agents before {m.min_agent_version} do not read variants"
            ),
            soft_wrap=True,
        )
    if result.removed_signature:
        console.print(
            "removed the old model.yaml.sig: it signed the previous manifest; sign again with `edgefleet model sign`", soft_wrap=True
        )
