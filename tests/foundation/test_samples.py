"""models/generate_samples.py is reproducible: the committed sample models are exactly what it generates, and so
are the arrays of the sample evaluation set (models/datasets/), which is small, pinned, and ranks the samples."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort

from edgefleet_agent.contract.manifest import ModelDir

from .conftest import DETECTOR, REPO, SAMPLES

FILES = ("detector-1.0.0.onnx", "detector-1.1.0.onnx", "detector-1.2.0-nan.onnx", "detector-1.3.0-constant.onnx", "metrics.json")
DATASETS = REPO / "models" / "datasets"
EVAL_SET = DATASETS / "channel-dominance-eval.yaml"


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_samples", REPO / "models" / "generate_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_run_in_a_copy_reproduces_the_committed_bytes(tmp_path):
    """Runs the script into a temporary copy of models/ (never over the committed files) and compares bytes."""
    (tmp_path / "models").mkdir()
    shutil.copy2(REPO / "models" / "generate_samples.py", tmp_path / "models" / "generate_samples.py")
    subprocess.run([sys.executable, "models/generate_samples.py"], cwd=tmp_path, check=True, capture_output=True, timeout=120)
    for name in FILES:
        assert (tmp_path / "models" / "samples" / name).read_bytes() == (SAMPLES / name).read_bytes(), name
    for name in ("channel-dominance-eval", "channel-dominance-live"):
        made, committed = (d / name for d in (tmp_path / "models" / "datasets", DATASETS))
        with np.load(made.with_suffix(".npz"), allow_pickle=False) as a, np.load(committed.with_suffix(".npz"), allow_pickle=False) as b:
            assert a.files == b.files
            for key in a.files:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)
        if made.with_suffix(".npz").read_bytes() == committed.with_suffix(".npz").read_bytes():  # the same zlib wrote both
            assert made.with_suffix(".yaml").read_text() == committed.with_suffix(".yaml").read_text()


def test_build_is_deterministic():
    gen = load_generator()
    for kwargs in (
        {"noise": 0.6, "seed": 1},
        {"noise": 0.1, "seed": 2},
        {"noise": 0.15, "seed": 2, "nan": True},
        {"noise": 0.1, "seed": 3, "ignore_input": True},
    ):
        first = gen.build(**kwargs).SerializeToString(deterministic=True)
        second = gen.build(**kwargs).SerializeToString(deterministic=True)
        assert first == second


def test_declared_model_is_sample_1_0_0_and_metrics_agree():
    assert (DETECTOR / "detector.onnx").read_bytes() == (SAMPLES / "detector-1.0.0.onnx").read_bytes()
    metrics = json.loads((SAMPLES / "metrics.json").read_text())
    manifest = ModelDir(DETECTOR).load()
    assert manifest.metric("accuracy").value == metrics["1.0.0"]["accuracy"]
    assert manifest.metric("accuracy").dataset == metrics["1.0.0"]["dataset"]
    assert metrics["1.1.0"]["accuracy"] > metrics["1.0.0"]["accuracy"]
    assert metrics["1.2.0"]["accuracy"] is None


def test_samples_behave_as_documented():
    image = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    image[0, 1] += 1.0  # green dominates frame 0
    image[1, 2] += 1.0  # blue dominates frame 1
    outs = {}
    for name in FILES[:4]:
        session = ort.InferenceSession(str(SAMPLES / name), providers=["CPUExecutionProvider"])
        assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", ["batch", 3, 224, 224])]
        assert [(o.name, o.shape) for o in session.get_outputs()] == [("scores", ["batch", 3])]
        outs[name] = session.run(["scores"], {"image": image})[0]
    for good in FILES[:2]:
        assert np.isfinite(outs[good]).all() and outs[good].argmax(axis=1).tolist() == [1, 2]
    assert np.isnan(outs["detector-1.2.0-nan.onnx"]).all()
    constant = outs["detector-1.3.0-constant.onnx"]
    assert np.isfinite(constant).all() and np.array_equal(constant[0], constant[1]), "1.3.0 gives every frame the same answer"
    assert metrics_of("1.3.0") < 0.4, "no better than always answering one class"


def metrics_of(version: str) -> float:
    return json.loads((SAMPLES / "metrics.json").read_text())[version]["accuracy"]


def test_eval_set_is_small_pinned_and_labelled_as_documented():
    import yaml

    from components.datasets import load_set
    from edgefleet_agent.contract.digest import sha256_file

    desc = yaml.safe_load(EVAL_SET.read_text())
    npz = DATASETS / desc["file"]
    assert (desc["sha256"], desc["size"]) == sha256_file(npz)
    assert npz.stat().st_size < 1_000_000, "small enough for git (the limit is 5 MB; it is 0.65 MB)"
    ev = load_set(EVAL_SET)
    assert (ev.name, ev.task, ev.input, ev.element_type, ev.classes) == (
        "channel-dominance-eval",
        "classification",
        "image",
        "float32",
        ["red", "green", "blue"],
    )
    assert ev.frames.shape == (128, 3, 224, 224) and ev.frames.dtype == np.uint8 and (ev.scale, ev.zero_point) == (1 / 32, 128.0)
    seen = (ev.frames.astype(np.float64) - ev.zero_point) * ev.scale
    assert (seen.mean(axis=(2, 3)).argmax(axis=1) == ev.labels).all(), "a label is the channel with the highest mean"
    assert sorted(np.bincount(ev.labels).tolist())[0] > 20, "every class is well represented"


def test_eval_set_ranks_the_samples_as_metrics_json_does():
    from components.datasets import load_set
    from edgefleet.evaluate import measure
    from edgefleet.onnx_check import inspect

    ev = load_set(EVAL_SET)
    manifest = ModelDir(DETECTOR).load()
    measured = {}
    for version in ("1.0.0", "1.1.0"):
        artifact = SAMPLES / f"detector-{version}.onnx"
        graph = inspect(artifact)
        m = manifest.model_copy(update={"sha256": graph.sha256, "version": version})
        evaluation = measure(m, artifact, ev, None, "model.yaml")
        assert (evaluation.dataset, evaluation.samples, evaluation.output) == ("channel-dominance-eval", 128, "scores")
        measured[version] = evaluation.metrics[0].value
    declared = json.loads((SAMPLES / "metrics.json").read_text())
    assert measured == {"1.0.0": 0.8203, "1.1.0": 0.9609}, "the figures models/datasets/README.md gives"
    assert (measured["1.1.0"] > measured["1.0.0"]) == (declared["1.1.0"]["accuracy"] > declared["1.0.0"]["accuracy"])


def test_live_traffic_set_is_another_sample_of_the_task():
    """The local fleet's traffic: pinned like the evaluation set, other frames (gates never judge on the frames a
    model was measured on), labelled by the same rule, brighter and darker than the evaluation set."""
    from components.datasets import load_set

    live, ev = load_set(DATASETS / "channel-dominance-live.yaml"), load_set(EVAL_SET)
    assert live.frames.shape == (96, 3, 224, 224) and live.classes == ev.classes and live.input == ev.input
    assert live.path.stat().st_size < 1_000_000
    seen = live.feed(live.frames).astype(np.float64)
    assert (seen.mean(axis=(2, 3)).argmax(axis=1) == live.labels).all()
    assert sorted(np.bincount(live.labels).tolist())[0] > 15
    brightness = lambda s: s.feed(s.frames).mean(axis=(1, 2, 3))  # noqa: E731
    assert brightness(live).std() > 1.4 * brightness(ev).std(), "the live frames vary more in brightness"
    shared = {f.tobytes() for f in ev.frames} & {f.tobytes() for f in live.frames}
    assert not shared
