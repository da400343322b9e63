"""`edgefleet model add` and `edgefleet model validate`, through the CLI, with the messages a user sees."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from edgefleet_agent.contract.manifest import ModelDir

from .conftest import SAMPLES, TARGET, assert_user_error, clone_model, edit_manifest, run_cli_subprocess


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_model(path: Path, graph: onnx.GraphProto, opset: int = 17) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString(deterministic=True))
    return path


def reshape_model(path: Path) -> Path:
    """Valid ONNX whose signature is [n, 3] -> [2, m], but that cannot run on batch 1: Reshape(1x3 -> 2x-1) fails."""
    shape = numpy_helper.from_array(np.array([2, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, "m"])],
        [shape],
    )
    return write_model(path, graph)


def two_io_model(path: Path) -> Path:
    """Two inputs of different types, two outputs: int64 ids and a float mask -> sum and a bool."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["idsf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["idsf", "mask"], ["total"]),
            helper.make_node("Greater", ["total", "zero"], ["positive"]),
        ],
        "two",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 8]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("positive", TensorProto.BOOL, ["batch", 8]),
        ],
        [numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    return write_model(path, graph, opset=13)


# -- model add ----------------------------------------------------------------------------------------------------
def test_add_new_model_reads_the_graph(run_cli, models_dir):
    res = run_cli(
        "model",
        "add",
        models_dir / "camera",
        "--onnx",
        SAMPLES / "detector-1.1.0.onnx",
        "--version",
        "0.3.0",
        "--metric",
        "accuracy=0.95@channel-eval",
        "--metric",
        "latency_ms=3.5@bench",
        "--lower-is-better",
        "latency_ms",
        "--target",
        TARGET,
        "--description",
        "a camera model",
    )
    assert res.code == 0, res.err
    assert "camera new model at 0.3.0" in res.out_text
    m = ModelDir(models_dir / "camera").load()
    assert m.sha256 == sha256(SAMPLES / "detector-1.1.0.onnx")
    assert m.size == (SAMPLES / "detector-1.1.0.onnx").stat().st_size
    assert m.opset == 17 and m.file == "camera.onnx"
    assert [t.signature() for t in m.inputs] == ["image: float32[batch, 3, 224, 224]"]
    assert [t.signature() for t in m.outputs] == ["scores: float32[batch, 3]"]
    assert [(x.name, x.value, x.dataset, x.higher_is_better) for x in m.metrics] == [
        ("accuracy", 0.95, "channel-eval", True),
        ("latency_ms", 3.5, "bench", False),
    ]
    assert m.targets[0].name == "x86-gw" and m.min_agent_version == "0.1.0" and m.description == "a camera model"
    assert (models_dir / "camera" / "camera.onnx").read_bytes() == (SAMPLES / "detector-1.1.0.onnx").read_bytes()


def test_add_reads_several_typed_inputs_and_outputs(run_cli, tmp_path):
    src = two_io_model(tmp_path / "two.onnx")
    res = run_cli("model", "add", tmp_path / "models" / "two", "--onnx", src, "--version", "1.0.0", "--target", TARGET)
    assert res.code == 0, res.err
    m = ModelDir(tmp_path / "models" / "two").load()
    assert [t.signature() for t in m.inputs] == ["ids: int64[batch, 8]", "mask: float32[batch, 8]"]
    assert [t.signature() for t in m.outputs] == ["total: float32[batch, 8]", "positive: bool[batch, 8]"]
    assert m.opset == 13
    assert run_cli("model", "validate", tmp_path / "models" / "two", "--runs", "3").code == 0


def test_add_updates_to_a_newer_version_and_keeps_targets(run_cli, detector_dir):
    before = ModelDir(detector_dir).load()
    res = run_cli(
        "model",
        "add",
        detector_dir,
        "--onnx",
        SAMPLES / "detector-1.1.0.onnx",
        "--version",
        "1.1.0",
        "--metric",
        "accuracy=0.9492@channel-dominance-eval-v1",
    )
    assert res.code == 0, res.err
    assert "detector 1.0.0 -> 1.1.0" in res.out_text
    after = ModelDir(detector_dir).load()
    assert after.version == "1.1.0" and after.sha256 == sha256(SAMPLES / "detector-1.1.0.onnx") != before.sha256
    assert after.targets == before.targets and after.description == before.description
    assert after.metric("accuracy").value == pytest.approx(0.9492)
    assert (detector_dir / "detector.onnx").read_bytes() == (SAMPLES / "detector-1.1.0.onnx").read_bytes()
    assert run_cli("model", "validate", detector_dir, "--runs", "2").code == 0


def test_add_keep_metrics_carries_them_over(run_cli, detector_dir):
    before = ModelDir(detector_dir).load()
    assert (
        run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", "--version", "1.0.1", "--keep-metrics").code == 0
    )
    assert ModelDir(detector_dir).load().metrics == before.metrics


@pytest.mark.parametrize("version", ["1.0.0", "0.9.9", "1.0.0-rc.1"])
def test_add_refuses_a_version_that_is_not_newer(run_cli, detector_dir, version):
    manifest_before = (detector_dir / "model.yaml").read_bytes()
    res = run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", "--version", version, "--keep-metrics")
    assert_user_error(
        res, f"{detector_dir / 'model.yaml'}: version {version} is not newer than the manifest's 1.0.0", "fix: pass a version above 1.0.0"
    )
    assert (detector_dir / "model.yaml").read_bytes() == manifest_before  # nothing written


def test_add_prerelease_then_release_is_newer(run_cli, detector_dir):
    assert (
        run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", "--version", "1.1.0-rc.1", "--keep-metrics").code
        == 0
    )
    assert (
        run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", "--version", "1.1.0", "--keep-metrics").code == 0
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--version", "banana"], ["--version: 'banana' is not a semantic version such as 1.4.0"]),
        (["--version", "1.2.0"], ["--metric: version 1.2.0 has no evaluation metrics; the manifest's 1.0.0 had accuracy"]),
        (["--version", "1.2.0", "--keep-metrics", "--metric", "accuracy=0.9@x"], ["--keep-metrics: cannot be combined with --metric"]),
        (
            ["--version", "1.2.0", "--keep-metrics", "--min-agent-version", "latest"],
            ["--min-agent-version: 'latest' is not a semantic version"],
        ),
        (["--version", "1.2.0", "--metric", "accuracy=0.9"], ["--metric accuracy=0.9: expected NAME=VALUE@DATASET"]),
        (
            ["--version", "1.2.0", "--metric", "accuracy=high@x"],
            ["--metric accuracy=high@x: expected NAME=VALUE@DATASET", "could not convert string to float"],
        ),
        (["--version", "1.2.0", "--metric", "Top1=0.9@x"], ["--metric Top1=0.9@x", "name: String should match pattern"]),
        (
            [
                "--version",
                "1.2.0",
                "--keep-metrics",
                "--target",
                "name=X,arch=amd64,providers=CPUExecutionProvider,memory_mb=1,storage_mb=1",
            ],
            ["--target name=X", "name: String should match pattern"],
        ),
        (
            ["--version", "1.2.0", "--keep-metrics", "--target", "name=x,arch=x86,providers=CPUExecutionProvider,memory_mb=1,storage_mb=1"],
            ["--target name=x,arch=x86", "arch: Input should be 'amd64', 'arm64' or 'armv7'"],
        ),
        (
            ["--version", "1.2.0", "--keep-metrics", "--target", "name=x,arch=amd64,providers=GPU,memory_mb=1,storage_mb=1"],
            ["unknown onnxruntime execution provider 'GPU'"],
        ),
        (["--version", "1.2.0", "--keep-metrics", "--target", "name=x,arch=amd64"], ["--target name=x,arch=amd64: expected name=..,arch="]),
        (
            ["--version", "1.2.0", "--metric", "accuracy=0.9@a", "--metric", "accuracy=0.8@b"],
            ["--metric: accuracy given more than once", "pass each --metric name once"],
        ),
        (["--version", "1.2.0", "--keep-metrics", "--target", TARGET, "--target", TARGET], ["--target: x86-gw given more than once"]),
        (["--version", "1.2.0", "--metric", "accuracy=nan@x"], ["--metric accuracy=nan@x", "value: Input should be a finite number"]),
    ],
)
def test_add_bad_arguments(run_cli, detector_dir, args, expected):
    res = run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", *args)
    assert_user_error(res, *expected)
    assert ModelDir(detector_dir).load().version == "1.0.0"


def test_add_new_model_needs_a_target(run_cli, models_dir):
    res = run_cli("model", "add", models_dir / "fresh", "--onnx", SAMPLES / "detector-1.0.0.onnx", "--version", "1.0.0")
    assert_user_error(res, "--target: a new model needs at least one hardware target")
    assert not (models_dir / "fresh").exists()


def test_add_rejects_a_bad_directory_name(run_cli, models_dir):
    res = run_cli(
        "model", "add", models_dir / "Bad_Name", "--onnx", SAMPLES / "detector-1.0.0.onnx", "--version", "1.0.0", "--target", TARGET
    )
    assert_user_error(res, f"{models_dir / 'Bad_Name'}: directory name 'Bad_Name' is not a valid model name")


def test_add_missing_onnx_file(run_cli, models_dir):
    res = run_cli("model", "add", models_dir / "fresh", "--onnx", models_dir / "nope.onnx", "--version", "1.0.0", "--target", TARGET)
    assert_user_error(res, f"{models_dir / 'nope.onnx'}: file not found")


@pytest.mark.parametrize("content", [b"this is not a model\n" * 100, b"\x00\x01\x02garbage" * 50])
def test_add_refuses_a_non_onnx_file(run_cli, models_dir, content):
    bad = models_dir / "bad.onnx"
    bad.write_bytes(content)
    res = run_cli("model", "add", models_dir / "fresh", "--onnx", bad, "--version", "1.0.0", "--target", TARGET)
    assert_user_error(res, f"{bad}: not a loadable ONNX model: onnxruntime says:")
    assert not (models_dir / "fresh").exists()


def _graph_with(tmp: Path, name: str, input_type: int, output) -> Path:
    """A one-node graph whose input or output is of a kind a manifest cannot describe or feed."""
    from onnx import helper, save

    x = helper.make_tensor_value_info("x", input_type, [1, 4])
    node = helper.make_node("SequenceConstruct", ["x"], ["y"]) if output == "sequence" else helper.make_node("Identity", ["x"], ["y"])
    y = (
        helper.make_tensor_sequence_value_info("y", input_type, [1, 4])
        if output == "sequence"
        else helper.make_tensor_value_info("y", input_type, [1, 4])
    )
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp / f"{name}.onnx"
    save(model, str(path))
    return path


def test_add_refuses_a_sequence_output_naming_the_file_and_the_export_fix(run_cli, models_dir):
    from onnx import TensorProto

    bad = _graph_with(models_dir, "zipmap", TensorProto.FLOAT, "sequence")
    res = run_cli("model", "add", models_dir / "fresh", "--onnx", bad, "--version", "1.0.0", "--target", TARGET)
    assert_user_error(res, f"{bad}: y: type seq(tensor(float)) is not a tensor", "zipmap")
    assert not (models_dir / "fresh").exists()


def test_add_refuses_an_input_no_smoke_inference_can_feed(run_cli, models_dir):
    from onnx import TensorProto

    bad = _graph_with(models_dir, "bf16", TensorProto.BFLOAT16, "tensor")
    res = run_cli("model", "add", models_dir / "fresh", "--onnx", bad, "--version", "1.0.0", "--target", TARGET)
    assert_user_error(res, f"{bad}: input x is bfloat16: no smoke input can be generated", "export with float16")
    assert not (models_dir / "fresh").exists()


def test_add_refuses_a_truncated_onnx_file(run_cli, models_dir):
    bad = models_dir / "truncated.onnx"
    bad.write_bytes((SAMPLES / "detector-1.0.0.onnx").read_bytes()[:1000])
    res = run_cli("model", "add", models_dir / "fresh", "--onnx", bad, "--version", "1.0.0", "--target", TARGET)
    assert_user_error(res, f"{bad}: not a loadable ONNX model")


def test_add_removes_a_stale_signature(run_cli, detector_dir, keypair):
    key, _ = keypair
    assert run_cli("model", "sign", detector_dir, "--key", key).code == 0
    assert (detector_dir / "model.yaml.sig").exists()
    res = run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", "--version", "1.1.0", "--keep-metrics")
    assert res.code == 0
    assert "removed the old model.yaml.sig" in res.out_text
    assert not (detector_dir / "model.yaml.sig").exists()


def test_add_leaves_no_temporary_files(run_cli, detector_dir):
    assert (
        run_cli("model", "add", detector_dir, "--onnx", SAMPLES / "detector-1.1.0.onnx", "--version", "1.1.0", "--keep-metrics").code == 0
    )
    assert sorted(p.name for p in detector_dir.iterdir()) == ["detector.onnx", "model.yaml"]


# -- model validate -----------------------------------------------------------------------------------------------
def test_validate_good_model_prints_io_table_and_latency(run_cli, detector_dir):
    res = run_cli("model", "validate", detector_dir, "--runs", "5")
    assert res.code == 0, res.err
    out = res.out_text
    assert "detector 1.0.0 (opset 17, 2364 bytes)" in out
    assert "input │ image │ float32 │ [batch, 3, 224, 224]" in out
    assert "output │ scores │ float32 │ [batch, 3]" in out
    assert "smoke inference: 5 runs on synthetic inputs, outputs finite, latency p50" in out and " ms, p99 " in out
    assert f"ok {detector_dir / 'model.yaml'}" in out


def test_validate_committed_model_in_a_real_process(tmp_path):
    shutil.copytree(Path(__file__).resolve().parents[2] / "models", tmp_path / "models")
    res = run_cli_subprocess("model", "validate", "models/detector", "--runs", "2", cwd=tmp_path)
    assert res.code == 0, res.err
    assert "ok models/detector/model.yaml" in res.out and res.err == ""


def test_validate_truncated_file(run_cli, detector_dir):
    art = detector_dir / "detector.onnx"
    art.write_bytes(art.read_bytes()[:1000])
    assert_user_error(
        run_cli("model", "validate", detector_dir),
        f"error: {art}: truncated: 1000 bytes on disk, the manifest pins 2364",
        "fix: copy the model again",
    )


def test_validate_truncated_file_in_a_real_process(tmp_path):
    """The process boundary: exit status 1, the one-line message on stderr, no traceback, nothing from onnxruntime."""
    clone_model(Path(__file__).resolve().parents[2] / "models" / "detector", tmp_path / "models" / "detector")
    art = tmp_path / "models" / "detector" / "detector.onnx"
    art.write_bytes(art.read_bytes()[:1500])
    res = run_cli_subprocess("model", "validate", "models/detector", cwd=tmp_path)
    assert res.code == 1
    assert res.err.splitlines()[0] == "error: models/detector/detector.onnx: truncated: 1500 bytes on disk, the manifest pins 2364"
    assert res.out == ""


def test_validate_digest_mismatch(run_cli, detector_dir):
    art = detector_dir / "detector.onnx"
    shutil.copy(SAMPLES / "detector-1.1.0.onnx", art)  # same size, different bytes
    pinned = ModelDir(detector_dir).load().sha256
    assert_user_error(
        run_cli("model", "validate", detector_dir),
        f"{art}: digest mismatch: sha256 {sha256(art)} (2364 bytes), manifest pins {pinned} (2364 bytes)",
        "fix: restore the pinned file, or run `edgefleet model add`",
    )


def test_validate_longer_file_is_a_digest_mismatch(run_cli, detector_dir):
    art = detector_dir / "detector.onnx"
    art.write_bytes(art.read_bytes() + b"\0")
    assert_user_error(run_cli("model", "validate", detector_dir), f"{art}: digest mismatch", "(2365 bytes)")


def test_validate_non_onnx_file(run_cli, detector_dir):
    """A file that is not ONNX at all, pinned by its manifest (so the digest checks pass): onnxruntime refuses it."""
    art = detector_dir / "detector.onnx"
    art.write_bytes(b"PK\x03\x04 a zip file, not a model" * 40)
    edit_manifest(detector_dir, sha256=sha256(art), size=art.stat().st_size)
    assert_user_error(
        run_cli("model", "validate", detector_dir),
        f"{art}: not a loadable ONNX model: onnxruntime says:",
        "INVALID_PROTOBUF",
        "fix: export the model again; check the file was copied completely",
    )


def test_validate_replaced_by_non_onnx_file_is_a_digest_mismatch(run_cli, detector_dir):
    art = detector_dir / "detector.onnx"
    art.write_bytes(b"x" * 2364)
    assert_user_error(run_cli("model", "validate", detector_dir), f"{art}: digest mismatch")


def test_validate_missing_artifact(run_cli, detector_dir):
    (detector_dir / "detector.onnx").unlink()
    assert_user_error(
        run_cli("model", "validate", detector_dir),
        f"{detector_dir / 'model.yaml'}: file: detector.onnx does not exist next to the manifest",
    )


def test_validate_missing_manifest(run_cli, models_dir):
    assert_user_error(run_cli("model", "validate", models_dir / "nothing"), f"{models_dir / 'nothing' / 'model.yaml'}: no manifest here")


def test_validate_invalid_manifest(run_cli, detector_dir):
    edit_manifest(detector_dir, colour="blue")
    assert_user_error(
        run_cli("model", "validate", detector_dir),
        f"{detector_dir / 'model.yaml'}: colour: unknown key (check the spelling; unknown keys are errors)",
    )


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda d: d["inputs"][0].update(shape=[1, 3, 224, 224]),
            ["inputs 'image': declared shape [1, 3, 224, 224], graph has ['batch', 3, 224, 224]"],
        ),
        (lambda d: d["inputs"][0].update(element_type="float16"), ["inputs 'image': declared float16, graph has float32"]),
        (
            lambda d: d["outputs"][0].update(name="probs"),
            [
                "outputs 'probs' is declared but the graph has no such output (graph has: scores)",
                "outputs 'scores' is in the graph but not declared",
            ],
        ),
        (
            lambda d: d["inputs"].append({"name": "mask", "element_type": "float32", "shape": ["batch"]}),
            ["inputs 'mask' is declared but the graph has no such input (graph has: image)"],
        ),
        (lambda d: d.update(opset=13), ["opset: declared 13, graph imports 17"]),
    ],
)
def test_validate_manifest_disagrees_with_graph(run_cli, detector_dir, edit, expected):
    doc = yaml.safe_load((detector_dir / "model.yaml").read_text())
    edit(doc)
    (detector_dir / "model.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    res = run_cli("model", "validate", detector_dir)
    assert_user_error(
        res,
        f"{detector_dir / 'model.yaml'}: manifest disagrees with the graph:",
        *expected,
        f"fix: run `edgefleet model add {detector_dir} --onnx {detector_dir / 'detector.onnx'} --version X.Y.Z`",
    )


def test_validate_rejects_nan_outputs(run_cli, models_dir):
    nan_dir = clone_model(models_dir / "detector", models_dir / "nandet")
    res = run_cli("model", "add", nan_dir, "--onnx", SAMPLES / "detector-1.2.0-nan.onnx", "--version", "1.2.0", "--keep-metrics")
    assert res.code == 0, res.err  # the graph is valid ONNX with the right signature ...
    assert_user_error(
        run_cli("model", "validate", nan_dir),  # ... but its outputs are NaN
        f"{nan_dir / 'nandet.onnx'}: smoke inference produced NaN or infinite values in output(s) scores",
        "fix: this model is broken in service",
    )


def test_validate_inference_that_fails(run_cli, models_dir):
    src = reshape_model(models_dir / "reshape.onnx")
    assert run_cli("model", "add", models_dir / "reshaper", "--onnx", src, "--version", "1.0.0", "--target", TARGET).code == 0
    m = ModelDir(models_dir / "reshaper").load()
    assert [t.signature() for t in m.inputs + m.outputs] == ["x: float32[n, 3]", "y: float32[2, m]"]
    res = run_cli("model", "validate", models_dir / "reshaper")
    assert_user_error(
        res,
        f"{models_dir / 'reshaper' / 'reshaper.onnx'}: smoke inference failed:",
        "The input tensor cannot be reshaped",
        "fix: check the model runs on the declared input shapes",
    )
    assert "onnxruntime:" not in res.err and len(res.err.splitlines()) == 2  # the message and its fix, no native log line


def test_validate_runs_must_be_positive(run_cli, detector_dir):
    res = run_cli("model", "validate", detector_dir, "--runs", "0")
    assert res.code == 2 and "Invalid value for '--runs'" in res.err_text


def test_validate_function_rejects_zero_runs(detector_dir):
    from edgefleet.onnx_check import validate
    from edgefleet_agent.contract.errors import EdgefleetError

    mdir = ModelDir(detector_dir)
    with pytest.raises(EdgefleetError, match="--runs: must be at least 1"):
        validate(mdir.load(), mdir.artifact_path(mdir.load()), str(mdir.manifest_path), runs=0)


def test_synthetic_inputs_follow_the_signature():
    from edgefleet_agent.contract.manifest import TensorSpec
    from edgefleet_agent.tensors import non_finite_outputs, synthetic_inputs

    feeds = synthetic_inputs(
        [
            TensorSpec(name="a", element_type="float16", shape=["batch", 4]),
            TensorSpec(name="b", element_type="int32", shape=[2]),
            TensorSpec(name="c", element_type="bool", shape=[3, "n"]),
            TensorSpec(name="d", element_type="string", shape=[1]),
        ],
        batch=2,
    )
    assert (feeds["a"].shape, feeds["a"].dtype) == ((2, 4), np.float16)
    assert (feeds["b"].shape, feeds["b"].dtype) == ((2,), np.int32)
    assert (feeds["c"].shape, feeds["c"].dtype) == ((3, 2), np.bool_)
    assert feeds["d"].tolist() == ["edgefleet"]
    assert np.array_equal(
        synthetic_inputs([TensorSpec(name="a", element_type="float32", shape=[4])])["a"],
        synthetic_inputs([TensorSpec(name="a", element_type="float32", shape=[4])])["a"],
    )  # seeded
    assert non_finite_outputs(["ok", "nan", "inf", "ints"], [np.ones(2), np.array([np.nan]), np.array([np.inf]), np.arange(3)]) == [
        "nan",
        "inf",
    ]


def test_error_text_in_square_brackets_reaches_the_user(run_cli, detector_dir):
    res = run_cli(
        "model",
        "add",
        detector_dir,
        "--onnx",
        SAMPLES / "detector-1.1.0.onnx",
        "--version",
        "1.3.0",
        "--keep-metrics",
        "--target",
        "name=X,arch=amd64,providers=CPUExecutionProvider,memory_mb=1,storage_mb=1",
    )
    assert_user_error(res, "name: String should match pattern '^[a-z0-9][a-z0-9-]{0,62}$'")


def test_paths_with_square_brackets_print_verbatim(run_cli, tmp_path):
    odd = tmp_path / "we[b]ird" / "detector"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "detector", odd)
    res = run_cli("model", "validate", odd, "--runs", "1")
    assert res.code == 0 and f"ok {odd / 'model.yaml'}" in res.out


def test_add_in_place_after_overwriting_the_artifact(run_cli, detector_dir):
    """A new export copied over models/<name>/<name>.onnx, then `model add` pointing at that same file."""
    shutil.copy(SAMPLES / "detector-1.1.0.onnx", detector_dir / "detector.onnx")
    res = run_cli("model", "add", detector_dir, "--onnx", detector_dir / "detector.onnx", "--version", "1.1.0", "--keep-metrics")
    assert res.code == 0, res.err
    assert ModelDir(detector_dir).load().sha256 == sha256(SAMPLES / "detector-1.1.0.onnx")
    assert run_cli("model", "validate", detector_dir, "--runs", "1").code == 0
