"""models/generate_samples.py is reproducible: the committed sample models are exactly what it generates."""

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

FILES = ("detector-1.0.0.onnx", "detector-1.1.0.onnx", "detector-1.2.0-nan.onnx", "metrics.json")


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


def test_build_is_deterministic():
    gen = load_generator()
    for kwargs in ({"noise": 0.6, "seed": 1}, {"noise": 0.1, "seed": 2}, {"noise": 0.15, "seed": 2, "nan": True}):
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
    for name in FILES[:3]:
        session = ort.InferenceSession(str(SAMPLES / name), providers=["CPUExecutionProvider"])
        assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", ["batch", 3, 224, 224])]
        assert [(o.name, o.shape) for o in session.get_outputs()] == [("scores", ["batch", 3])]
        outs[name] = session.run(["scores"], {"image": image})[0]
    for good in FILES[:2]:
        assert np.isfinite(outs[good]).all() and outs[good].argmax(axis=1).tolist() == [1, 2]
    assert np.isnan(outs["detector-1.2.0-nan.onnx"]).all()
