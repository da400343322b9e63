"""`edgefleet model variant add models/<name> --kind int8|fp16 [--calibration PATH]`: a build of the version made with
onnxruntime's tools, checked as `model add` checks, measured against the reference and recorded under the one
signed manifest; bad builds and bad calibration sets are refused naming the file, and nothing is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgefleet_agent.contract.manifest import ModelDir

from .conftest import REPO, assert_user_error

DATASETS = REPO / "models" / "datasets"


@pytest.fixture
def detector(models_dir: Path, run_cli) -> Path:
    """models/detector measured on the committed evaluation set (variants are compared on it)."""
    shutil.copytree(DATASETS, models_dir / "datasets")
    d = models_dir / "detector"
    assert run_cli("model", "evaluate", d, "--dataset", models_dir / "datasets" / "channel-dominance-eval.yaml").code == 0
    return d


def calibration(where: Path, n: int = 16, **override: np.ndarray) -> Path:
    live = np.load(DATASETS / "channel-dominance-live.npz", allow_pickle=False)
    frames = ((live["frames"][:n].astype(np.float64) - 128.0) / 32).astype(np.float32)
    path = where / "calibration.npz"
    np.savez(path, **(override or {"image": frames}))
    return path


@pytest.mark.parametrize("kind", ["int8", "fp16"])
def test_variant_is_built_measured_and_pinned_beside_the_untouched_reference(run_cli, detector, keypair, kind):
    key, pub = keypair
    assert run_cli("model", "sign", detector, "--key", key).code == 0
    reference = (detector / "detector.onnx").read_bytes()
    res = run_cli("model", "variant", "add", detector, "--kind", kind)
    assert res.code == 0, res.err
    m = ModelDir(detector).load()
    v = m.variant(kind)
    assert v is not None and (detector / v.file).is_file() and v.file == f"detector.{kind}.onnx"
    assert (detector / "detector.onnx").read_bytes() == reference and m.file == "detector.onnx", "the reference stays on top"
    assert (m.format, m.min_agent_version) == (3, "0.4.0")
    c = v.comparison
    assert c.dataset == "channel-dominance-eval" and c.samples == 128 and c.reference == 0.8203
    assert c.top1_agreement >= 0.95 and abs(c.delta) <= 0.02, "a faithful build of the sample model"
    assert c.delta == pytest.approx(c.value - c.reference, abs=1e-4)
    assert f"top-1 agreement {c.top1_agreement:.2%}" in res.out_text and "removed the old model.yaml.sig" in res.out_text
    assert not ModelDir(detector).signature_path.exists(), "the old signature no longer matches the manifest"
    assert run_cli("model", "sign", detector, "--key", key).code == 0
    from edgefleet_agent.contract.artifact import verify_model_dir
    from edgefleet_agent.contract.signing import load_public_key

    trusted = load_public_key(pub.read_bytes(), str(pub))
    assert verify_model_dir(ModelDir(detector), trusted, kind).variant(kind) == v, "the variant verifies under the one signature"
    (detector / v.file).write_bytes((detector / v.file).read_bytes() + b"\0")
    with pytest.raises(Exception, match=f"{kind} variant does not match the signed manifest"):
        verify_model_dir(ModelDir(detector), trusted, kind)


def test_static_int8_calibrates_on_a_set_matching_the_inputs(run_cli, detector, tmp_path):
    res = run_cli("model", "variant", "add", detector, "--kind", "int8", "--calibration", calibration(tmp_path))
    assert res.code == 0, res.err
    v = ModelDir(detector).load().variant("int8")
    assert (
        v is not None and "quantize_static" in v.built_with and "calibration.npz (sha256" in v.built_with and "16 samples" in v.built_with
    )


def test_a_calibration_set_that_does_not_match_the_inputs_is_refused_field_by_field(run_cli, detector, tmp_path):
    before = (detector / "model.yaml").read_bytes()
    bad = calibration(tmp_path, pixels=np.zeros((4, 3, 224, 224), np.float64), image=np.zeros((4, 3, 100, 224), np.float64))
    res = run_cli("model", "variant", "add", detector, "--kind", "int8", "--calibration", bad)
    assert_user_error(
        res,
        str(bad),
        "calibration set does not match the model's input signature",
        "image: element type float64, the input takes float32",
        "dimension 2 is 100, the input fixes 224",
        "pixels: the model has no input of that name",
        "fix: write one array per input",
    )
    assert (detector / "model.yaml").read_bytes() == before and not (detector / "detector.int8.onnx").exists()


def test_a_build_onnxruntime_cannot_load_is_refused_naming_the_file(run_cli, detector, monkeypatch):
    import edgefleet.variant_add as va

    def broken(kind, reference, out, calibration, label):
        out.write_bytes(b"not onnx")
        return "a broken converter"

    monkeypatch.setattr(va, "build", broken)
    before = (detector / "model.yaml").read_bytes()
    res = run_cli("model", "variant", "add", detector, "--kind", "fp16")
    assert_user_error(res, "detector.fp16.onnx.part: not a loadable ONNX model: onnxruntime says")
    assert (detector / "model.yaml").read_bytes() == before
    assert sorted(p.name for p in detector.iterdir()) == ["detector.onnx", "model.yaml"], "nothing half done"


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--kind", "int4"], ["--kind: 'int4' is not a variant kind", "pass one of int8, fp16"]),
        (["--kind", "fp16", "--calibration", "x.npz"], ["--calibration: calibrates int8 quantization", "drop --calibration"]),
    ],
)
def test_bad_flags_are_refused(run_cli, detector, args, fragments):
    assert_user_error(run_cli("model", "variant", "add", detector, *args), *fragments)


def test_a_version_without_a_measured_evaluation_is_refused_with_the_command_to_measure_it(run_cli, detector_dir):
    res = run_cli("model", "variant", "add", detector_dir, "--kind", "int8")
    assert_user_error(
        res, "has no measured evaluation to compare a variant with", "fix: measure the reference first: `edgefleet model evaluate"
    )
