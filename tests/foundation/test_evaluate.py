"""`edgefleet model evaluate` and `model add --dataset`: metrics measured on a pinned evaluation set, recorded as
measured with the set's digest; typed-in ones stay declared; sets that are tampered with or do not fit are refused,
naming the mismatch, and nothing is written."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgefleet_agent.contract.manifest import ModelDir, parse_manifest_bytes

from .conftest import REPO, assert_user_error, run_cli_subprocess

DATASETS = REPO / "models" / "datasets"
SET = "channel-dominance-eval"
PIN = yaml.safe_load((DATASETS / f"{SET}.yaml").read_text())["sha256"]
# What the sample models measure on the committed set (models/datasets/README.md says so too).
ACCURACY = {"1.0.0": 0.8203, "1.1.0": 0.9609}


@pytest.fixture
def models(models_dir: Path) -> Path:
    """tmp/models: detector (1.0.0, accuracy declared), the samples, and the evaluation sets."""
    shutil.copytree(DATASETS, models_dir / "datasets")
    return models_dir


@pytest.fixture
def detector(models: Path) -> Path:
    return models / "detector"


def descriptor(models: Path) -> Path:
    return models / "datasets" / f"{SET}.yaml"


def manifest(model_dir: Path):
    return ModelDir(model_dir).load()


def write_set(
    where: Path,
    name: str = "custom-set",
    frames: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    pin: bool = True,
    **arrays: object,
) -> Path:
    """A small evaluation set (8 frames unless given) in the documented format, with its descriptor."""
    rng = np.random.default_rng(0)
    frames = rng.integers(96, 160, (8, 3, 224, 224), dtype=np.uint8) if frames is None else frames
    body = {
        "frames": frames,
        "labels": np.arange(len(frames)) % 3 if labels is None else labels,
        "classes": np.array(["red", "green", "blue"]),
        "input": np.array("image"),
        "element_type": np.array("float32"),
        "scale": np.array(1 / 32),
        "zero_point": np.array(128.0),
        "task": np.array("classification"),
    }
    body.update({k: np.asarray(v) for k, v in arrays.items()})
    body = {k: v for k, v in body.items() if v.dtype != object}  # arrays=None drops one
    where.mkdir(parents=True, exist_ok=True)
    npz = where / f"{name}.npz"
    np.savez_compressed(npz, **body)
    data = npz.read_bytes()
    desc = {"name": name, "file": npz.name, "sha256": hashlib.sha256(data).hexdigest() if pin else "0" * 64, "size": len(data)}
    path = where / f"{name}.yaml"
    path.write_text(yaml.safe_dump(desc, sort_keys=False))
    return path


# -- measured, with the dataset's digest ---------------------------------------------------------------------------
def test_evaluate_records_measured_metrics_with_the_dataset_digest(run_cli, models, detector):
    before = manifest(detector)
    assert before.metric("accuracy") is not None and before.evaluation is None, "the committed accuracy is declared"
    res = run_cli("model", "evaluate", detector, "--dataset", descriptor(models))
    assert res.code == 0, res.err
    m = manifest(detector)
    ev = m.evaluation
    assert ev is not None
    assert (ev.dataset, ev.dataset_sha256, ev.samples, ev.output) == (SET, PIN, 128, "scores")
    assert ev.measured_with.startswith("onnxruntime ") and [(x.name, x.value) for x in ev.metrics] == [("accuracy", ACCURACY["1.0.0"])]
    assert m.metrics == [] and m.metric("accuracy") is None, "the measured accuracy replaces the declared one"
    assert (m.format, m.min_agent_version) == (2, "0.3.0"), "min_agent_version rises to the first agent that reads evaluation"
    assert (m.version, m.sha256, m.targets) == (before.version, before.sha256, before.targets)
    out = res.out_text
    assert f"accuracy 0.8203 measured on {SET} (sha256 {PIN[:12]}), 128 samples, output scores" in out
    assert "replaces the declared accuracy 0.8613 (on channel-dominance-eval-v1 (seed 7, 512 images))" in out
    assert "min_agent_version 0.1.0 -> 0.3.0" in out


def test_a_second_evaluate_on_the_recorded_set_changes_nothing_and_keeps_the_signature(run_cli, models, detector, keypair):
    assert run_cli("model", "evaluate", detector, "--dataset", descriptor(models)).code == 0
    assert run_cli("model", "sign", detector, "--key", keypair[0]).code == 0
    data = (detector / "model.yaml").read_bytes()
    res = run_cli("model", "evaluate", detector)  # no --dataset: the set the manifest names, models/datasets/<name>.yaml
    assert res.code == 0, res.err
    assert "unchanged" in res.out_text and "signature kept" in res.out_text
    assert (detector / "model.yaml").read_bytes() == data and (detector / "model.yaml.sig").is_file()
    assert run_cli("model", "verify", detector, "--public-key", keypair[1]).code == 0


def test_evaluate_removes_a_stale_signature_and_says_so(run_cli, models, detector, keypair):
    assert run_cli("model", "sign", detector, "--key", keypair[0]).code == 0
    res = run_cli("model", "evaluate", detector, "--dataset", descriptor(models))
    assert res.code == 0, res.err
    assert not (detector / "model.yaml.sig").exists()
    assert "removed the old model.yaml.sig" in res.out_text and "edgefleet model sign" in res.out_text
    assert not [p.name for p in detector.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_the_npz_stands_for_its_descriptor(run_cli, models, detector):
    res = run_cli("model", "evaluate", detector, "--dataset", models / "datasets" / f"{SET}.npz")
    assert res.code == 0, res.err
    assert manifest(detector).evaluation.dataset_sha256 == PIN


def test_evaluate_without_a_set_to_measure_on_says_which_to_pass(run_cli, detector):
    before = (detector / "model.yaml").read_bytes()
    res = run_cli("model", "evaluate", detector)
    assert_user_error(res, "--dataset", "records no evaluation set", "models/datasets/channel-dominance-eval.yaml")
    assert (detector / "model.yaml").read_bytes() == before


# -- declared vs measured through model add ------------------------------------------------------------------------
def test_add_with_metric_is_declared_and_with_dataset_is_measured(run_cli, models, detector):
    samples = models / "samples"
    res = run_cli(
        "model", "add", detector, "--onnx", samples / "detector-1.1.0.onnx", "--version", "1.1.0", "--metric", "accuracy=0.95@mine"
    )
    assert res.code == 0, res.err
    m = manifest(detector)
    assert m.evaluation is None and m.metric("accuracy").value == 0.95 and m.format == 1
    assert "accuracy 0.95 declared (typed in) on mine" in res.out_text
    assert "format" not in (detector / "model.yaml").read_text(), "a declared-only manifest stays format 1"

    res = run_cli(
        "model", "add", detector, "--onnx", samples / "detector-1.1.0.onnx", "--version", "1.1.1", "--dataset", descriptor(models)
    )
    assert res.code == 0, res.err
    m = manifest(detector)
    assert m.metrics == [] and m.measured("accuracy").value == ACCURACY["1.1.0"] and m.evaluation.dataset_sha256 == PIN
    assert (m.format, m.min_agent_version) == (2, "0.3.0")
    assert "min_agent_version 0.1.0 -> 0.3.0" in res.out_text
    assert f"accuracy 0.9609 measured on {SET}" in res.out_text


def test_add_with_dataset_raises_an_explicit_older_min_agent_version(run_cli, models, detector):
    res = run_cli(
        "model",
        "add",
        detector,
        "--onnx",
        models / "samples" / "detector-1.1.0.onnx",
        "--version",
        "1.1.0",
        "--dataset",
        descriptor(models),
        "--min-agent-version",
        "0.2.0",
    )
    assert res.code == 0, res.err
    assert manifest(detector).min_agent_version == "0.3.0" and "min_agent_version 0.2.0 -> 0.3.0" in res.out_text


def test_keep_metrics_carries_measured_ones_over_as_declared(run_cli, models, detector):
    assert run_cli("model", "evaluate", detector, "--dataset", descriptor(models)).code == 0
    res = run_cli("model", "add", detector, "--onnx", models / "samples" / "detector-1.1.0.onnx", "--version", "1.1.0", "--keep-metrics")
    assert res.code == 0, res.err
    m = manifest(detector)
    assert m.evaluation is None, "a measurement of 1.0.0's file says nothing about 1.1.0's"
    acc = m.metric("accuracy")
    assert acc.value == ACCURACY["1.0.0"] and acc.dataset == f"{SET} (sha256 {PIN[:12]}), measured on 1.0.0"
    assert "carried accuracy over as declared: measured on 1.0.0, not on 1.1.0" in res.out_text


def test_add_after_a_measured_version_needs_new_metrics(run_cli, models, detector):
    assert run_cli("model", "evaluate", detector, "--dataset", descriptor(models)).code == 0
    res = run_cli("model", "add", detector, "--onnx", models / "samples" / "detector-1.1.0.onnx", "--version", "1.1.0")
    assert_user_error(res, "--metric", "the manifest's 1.0.0 had accuracy", "--dataset models/datasets/<set>.yaml to measure")


def test_add_refuses_a_metric_both_typed_in_and_measured(run_cli, models, detector):
    before = (detector / "model.yaml").read_bytes()
    res = run_cli(
        "model",
        "add",
        detector,
        "--onnx",
        models / "samples" / "detector-1.1.0.onnx",
        "--version",
        "1.1.0",
        "--metric",
        "accuracy=0.99@mine",
        "--dataset",
        descriptor(models),
    )
    assert_user_error(res, "--metric", "accuracy is measured on channel-dominance-eval (--dataset) and also typed in")
    assert (detector / "model.yaml").read_bytes() == before


def test_add_output_needs_a_dataset(run_cli, models, detector):
    res = run_cli(
        "model", "add", detector, "--onnx", models / "samples" / "detector-1.1.0.onnx", "--version", "1.1.0", "--output", "scores"
    )
    assert_user_error(res, "--output", "pass --dataset too")


# -- refused: tampered, mismatched, malformed, broken model; nothing written -----------------------------------------
def test_a_tampered_dataset_is_refused_by_its_digest(run_cli, models, detector):
    npz = models / "datasets" / f"{SET}.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0x01
    npz.write_bytes(bytes(data))
    before = (detector / "model.yaml").read_bytes()
    res = run_cli("model", "evaluate", detector, "--dataset", descriptor(models))
    assert_user_error(res, str(npz), "digest mismatch", f"pins {PIN}", "not the evaluation set that was pinned", "restore the pinned file")
    assert (detector / "model.yaml").read_bytes() == before


def test_a_dataset_whose_descriptor_pins_another_file_is_refused(run_cli, models, detector):
    path = write_set(models / "datasets", pin=False)
    res = run_cli("model", "evaluate", detector, "--dataset", path)
    assert_user_error(res, "custom-set.npz", "digest mismatch", f"{path} pins {'0' * 64}")


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"input": "pixels"}, ["input: the set feeds 'pixels', the model's input is 'image'"]),
        (
            {"frames": np.zeros((4, 3, 128, 128), np.uint8), "labels": np.zeros(4, np.int64)},
            ["shape: a frame is [3, 128, 128] (frames [4, 3, 128, 128]), input image is [batch, 3, 224, 224]"],
        ),
        ({"element_type": "float16"}, ["element type: the set feeds float16, input image is float32"]),
        (
            {"classes": np.array(["red", "green", "blue", "alpha"])},
            ["classes: output scores gives 3 scores per frame, the set labels 4 classes (red, green, blue, alpha)"],
        ),
    ],
)
def test_a_dataset_that_does_not_fit_the_model_is_refused_naming_the_mismatch(run_cli, models, detector, arrays, expected):
    path = write_set(models / "datasets", **arrays)
    before = (detector / "model.yaml").read_bytes()
    res = run_cli("model", "evaluate", detector, "--dataset", path)
    assert_user_error(res, "custom-set.npz", "evaluation set custom-set does not fit detector 1.0.0", *expected)
    assert "measure on a set made for this model's signature" in res.err_text and "models/datasets/README.md" in res.err_text
    assert (detector / "model.yaml").read_bytes() == before


def test_every_mismatch_is_named_at_once(run_cli, models, detector):
    path = write_set(
        models / "datasets",
        frames=np.zeros((4, 3, 64, 64), np.uint8),
        labels=np.zeros(4, np.int64),
        element_type="float16",
        classes=np.array(["a", "b"]),
    )
    res = run_cli("model", "evaluate", detector, "--dataset", path)
    assert_user_error(res, "shape: a frame is [3, 64, 64]", "element type: the set feeds float16", "classes: output scores gives 3 scores")


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"labels": np.zeros(5, np.int64)}, "labels: 5 labels for 8 frames"),
        ({"labels": np.full(8, 3)}, "labels: values 3..3, but classes names 3"),
        ({"frames": np.zeros((8, 3, 224, 224), np.float32)}, "frames: uint8 expected, got float32"),
        ({"task": "detection"}, "task: 'detection' is not measured yet (this version measures: classification)"),
        ({"scale": None}, "missing array(s) scale"),
        ({"input": np.array(["a", "b"])}, "input: expected a single string"),
        ({"element_type": "int32"}, "element_type: 'int32' cannot be fed from uint8 frames"),
    ],
)
def test_a_malformed_dataset_is_refused_naming_the_array(run_cli, models, detector, arrays, expected):
    path = write_set(models / "datasets", **arrays)
    res = run_cli("model", "evaluate", detector, "--dataset", path)
    assert_user_error(res, "custom-set.npz", expected)


def test_other_tasks_are_told_to_stay_declared(run_cli, models, detector):
    res = run_cli("model", "evaluate", detector, "--dataset", write_set(models / "datasets", task="detection"))
    assert_user_error(res, "record that model's metrics as declared instead", "--metric NAME=VALUE@DATASET")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: p.unlink(), "no evaluation set descriptor here"),
        (lambda p: p.write_text("name: [\n"), "not valid YAML"),
        (lambda p: p.write_text(p.read_text().replace("size:", "bytes:")), "size: required key is missing"),
        (lambda p: p.write_text(p.read_text().replace(f"name: {SET}", "name: other")), "name: 'other' does not match the file name"),
        (lambda p: p.with_suffix(".npz").unlink(), f"file: {SET}.npz does not exist next to the descriptor"),
    ],
)
def test_a_bad_descriptor_names_the_file_and_field(run_cli, models, detector, edit, expected):
    path = descriptor(models)
    edit(path)
    res = run_cli("model", "evaluate", detector, "--dataset", path)
    assert_user_error(res, str(path), expected)


def test_a_model_with_nan_outputs_gets_no_number(run_cli, models, detector):
    before = (detector / "model.yaml").read_bytes()
    res = run_cli(
        "model",
        "add",
        detector,
        "--onnx",
        models / "samples" / "detector-1.2.0-nan.onnx",
        "--version",
        "1.2.0",
        "--dataset",
        descriptor(models),
    )
    assert_user_error(
        res, "detector-1.2.0-nan.onnx", "output scores is NaN or infinite on 128 of 128 frames", "a broken model has no accuracy"
    )
    assert (detector / "model.yaml").read_bytes() == before
    assert (detector / "detector.onnx").read_bytes() == (models / "samples" / "detector-1.0.0.onnx").read_bytes(), "nothing half done"


def test_output_must_exist_and_be_chosen_when_there_are_several(run_cli, models, detector):
    res = run_cli("model", "evaluate", detector, "--dataset", descriptor(models), "--output", "probs")
    assert_user_error(res, "--output", "detector 1.0.0 has no output 'probs' (outputs: scores)")


def test_evaluate_in_a_real_process_exits_1_with_the_message_only(models, detector):
    npz = models / "datasets" / f"{SET}.npz"
    npz.write_bytes(npz.read_bytes()[:-10])
    res = run_cli_subprocess("model", "evaluate", "models/detector", "--dataset", f"models/datasets/{SET}.yaml", cwd=models.parent)
    assert_user_error(res, f"models/datasets/{SET}.npz", "digest mismatch")
    ok = shutil.copy2(DATASETS / f"{SET}.npz", npz)
    assert ok
    res = run_cli_subprocess("model", "evaluate", "models/detector", "--dataset", f"models/datasets/{SET}.yaml", cwd=models.parent)
    assert res.code == 0, res.err
    assert parse_manifest_bytes((detector / "model.yaml").read_bytes(), "m").evaluation.dataset_sha256 == PIN


def test_a_run_holds_one_224_frame_but_many_small_ones_and_a_fixed_batch_as_it_is():
    """Evaluation memory follows the batch: a 224x224 float frame is a run of its own (a 32-frame batch took the
    10x-slower sample to 1.5 GiB), small frames are batched up to MAX_BATCH, a fixed batch dimension is kept."""
    from types import SimpleNamespace

    from components.datasets import LabelledSet
    from edgefleet.evaluate import MAX_BATCH, batch_size

    def labelled(shape: tuple[int, ...], element_type: str = "float32") -> LabelledSet:
        frames = np.zeros(shape, np.uint8)
        return LabelledSet(
            descriptor=Path("set.yaml"), path=Path("set.npz"), name="set", sha256="0" * 64, task="classification",
            input="image", element_type=element_type, scale=1 / 255, zero_point=0.0, classes=["a", "b"], frames=frames,
            labels=np.zeros(shape[0], np.int64),
        )  # fmt: skip

    dynamic, fixed = SimpleNamespace(shape=["N", 3, 224, 224]), SimpleNamespace(shape=[4, 3, 224, 224])
    assert batch_size(dynamic, labelled((128, 3, 224, 224))) == 1
    assert batch_size(dynamic, labelled((128, 3, 32, 32))) == MAX_BATCH  # 12 KB a frame
    assert batch_size(dynamic, labelled((128, 3, 224, 224), "uint8")) == 6  # 147 KB a frame fed as bytes
    assert batch_size(fixed, labelled((128, 3, 224, 224))) == 4
