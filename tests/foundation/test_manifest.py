"""The typed manifest, models/<name>/model.yaml: every field typed, unknown keys are errors."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from pydantic import ValidationError

from edgefleet_agent.contract.errors import ConfigError, EdgefleetError
from edgefleet_agent.contract.manifest import HardwareProfile, ModelDir, ModelManifest, TensorSpec, parse_manifest_bytes

from .conftest import DETECTOR, REPO

SOURCE = "models/detector/model.yaml"


@pytest.fixture
def doc() -> dict:
    return yaml.safe_load((DETECTOR / "model.yaml").read_text())


def parse(doc: dict) -> ModelManifest:
    return parse_manifest_bytes(yaml.safe_dump(doc).encode(), SOURCE)


def problem_of(doc: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse(doc)
    assert info.value.where == SOURCE
    return info.value.problem


def test_committed_manifest_declares_every_field():
    m = ModelDir(DETECTOR).load()
    assert (m.name, m.version, m.file, m.size, m.opset) == ("detector", "1.0.0", "detector.onnx", 2364, 17)
    assert len(m.sha256) == 64
    assert m.inputs == [TensorSpec(name="image", element_type="float32", shape=["batch", 3, 224, 224])]
    assert m.outputs == [TensorSpec(name="scores", element_type="float32", shape=["batch", 3])]
    assert m.inputs[0].signature() == "image: float32[batch, 3, 224, 224]"
    acc = m.metric("accuracy")
    assert acc is not None and acc.value == pytest.approx(0.8613) and acc.dataset.startswith("channel-dominance-eval-v1")
    assert m.metric("f1") is None
    assert [t.name for t in m.targets] == ["x86-camera", "jetson-orin"]
    assert m.targets[1].execution_providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # order of preference
    assert (m.targets[0].arch, m.targets[0].memory_mb, m.targets[0].storage_mb) == ("amd64", 256, 64)
    assert m.min_agent_version == "0.1.0"
    assert str(m.semver) == "1.0.0"


def test_to_yaml_round_trips(doc):
    m = parse(doc)
    assert parse_manifest_bytes(m.to_yaml().encode(), SOURCE) == m


def test_manifest_is_immutable(doc):
    m = parse(doc)
    with pytest.raises(ValidationError):
        m.version = "2.0.0"  # type: ignore[misc]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(foo=1), "foo: unknown key (check the spelling; unknown keys are errors)"),
        (lambda d: d["inputs"][0].update(dtype="float32"), "inputs[0].dtype: unknown key"),
        (lambda d: d["targets"][0].update(gpu=True), "targets[0].gpu: unknown key"),
        (lambda d: d["metrics"][0].update(split="val"), "metrics[0].split: unknown key"),
        (lambda d: d["metrics"][0].update(value=float("nan")), "metrics[0].value: Input should be a finite number"),
        (lambda d: d.pop("sha256"), "sha256: required key is missing"),
        (lambda d: d.update(version="1.0"), "version: '1.0' is not a semantic version such as 1.4.0"),
        (lambda d: d.update(version=1.0), "version: Input should be a valid string (got 1.0)"),
        (lambda d: d.update(min_agent_version="latest"), "min_agent_version: 'latest' is not a semantic version"),
        (lambda d: d.update(sha256="ABC"), "sha256: String should match pattern '^[0-9a-f]{64}$' (got 'ABC')"),
        (lambda d: d.update(size="2364"), "size: Input should be a valid integer (got '2364')"),
        (lambda d: d.update(size=0), "size: Input should be greater than 0"),
        (lambda d: d.update(opset=6), "opset: Input should be greater than or equal to 7"),
        (lambda d: d.update(file="../escape.onnx"), "file: String should match pattern"),
        (lambda d: d.update(file="detector.pt"), "file: String should match pattern"),
        (lambda d: d.update(name="Detector"), "name: String should match pattern"),
        (lambda d: d["inputs"][0].update(element_type="float"), "inputs[0].element_type: Input should be 'float32'"),
        (lambda d: d["targets"][0].update(arch="x86"), "targets[0].arch: Input should be 'amd64', 'arm64' or 'armv7' (got 'x86')"),
        (
            lambda d: d["targets"][0].update(execution_providers=["GPU"]),
            "targets[0].execution_providers: unknown onnxruntime execution provider 'GPU'",
        ),
        (lambda d: d["targets"][0].update(execution_providers=[]), "targets[0].execution_providers: List should have at least 1 item"),
        (lambda d: d["targets"][0].update(memory_mb=0), "targets[0].memory_mb: Input should be greater than 0"),
        (lambda d: d.update(targets=[]), "targets: List should have at least 1 item"),
        (lambda d: d.update(inputs=[]), "inputs: List should have at least 1 item"),
        (lambda d: d["inputs"].append(copy.deepcopy(d["inputs"][0])), "inputs has duplicate names: image"),
        (lambda d: d["targets"].append(copy.deepcopy(d["targets"][0])), "targets has duplicate names: x86-camera"),
        (lambda d: d["metrics"][0].update(value="high"), "metrics[0].value: Input should be a valid number"),
        (lambda d: d["metrics"][0].update(name="Top-1"), "metrics[0].name: String should match pattern"),
        (lambda d: d["inputs"][0].update(shape=[0, 3]), "inputs[0].shape[0]"),
    ],
)
def test_bad_manifest_names_the_field(doc, mutate, expected):
    mutate(doc)
    problem = problem_of(doc)
    assert expected in problem
    assert "Value error," not in problem  # pydantic's internal prefix never reaches the user


def test_every_bad_field_is_listed_at_once(doc):
    doc.update(foo=1, size="big")
    problem = problem_of(doc)
    assert "foo: unknown key" in problem and "size: Input should be a valid integer" in problem


def test_symbolic_and_fixed_dims(doc):
    doc["inputs"][0]["shape"] = ["batch", 3, "height", "width"]
    assert parse(doc).inputs[0].shape == ["batch", 3, "height", "width"]


def test_integer_metric_value_is_a_number(doc):
    doc["metrics"][0]["value"] = 1
    assert parse(doc).metrics[0].value == 1


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"name: [", "not valid YAML"),
        (b"\xff\xfe\x00", "not valid YAML"),
        (b"- a\n- b\n", "expected a mapping of manifest fields at the top level"),
        (b"", "expected a mapping of manifest fields at the top level"),
    ],
)
def test_unparseable_manifest(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_manifest_bytes(data, SOURCE)
    assert str(info.value).startswith(f"{SOURCE}: {expected}")


def test_name_must_match_directory(models_dir):
    (models_dir / "camera").mkdir()
    (models_dir / "camera" / "model.yaml").write_bytes((DETECTOR / "model.yaml").read_bytes())
    with pytest.raises(ConfigError) as info:
        ModelDir(models_dir / "camera").load()
    assert "name: 'detector' does not match its directory 'camera'" in str(info.value)
    assert str(models_dir / "camera" / "model.yaml") in str(info.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(EdgefleetError) as info:
        ModelDir(tmp_path / "nothing").load()
    assert str(info.value).startswith(f"{tmp_path / 'nothing' / 'model.yaml'}: no manifest here")
    assert "edgefleet model add" in str(info.value)


def test_hardware_profile_is_typed():
    hp = HardwareProfile(
        name="orin", arch="arm64", execution_providers=["TensorrtExecutionProvider", "CPUExecutionProvider"], memory_mb=512, storage_mb=64
    )
    assert hp.execution_providers[0] == "TensorrtExecutionProvider"
    with pytest.raises(ValidationError):
        HardwareProfile(name="orin", arch="arm64", execution_providers=["CPUExecutionProvider"], memory_mb="512", storage_mb=64)


# -- evaluation: measured metrics (format 2, agent 0.3.0) ---------------------------------------------------------------
EVALUATION = {
    "dataset": "channel-dominance-eval",
    "dataset_sha256": "d" * 64,
    "samples": 128,
    "output": "scores",
    "metrics": [{"name": "accuracy", "value": 0.8203, "higher_is_better": True}],
    "measured_with": "onnxruntime 1.32.0",
}


def measured(doc: dict) -> dict:
    """The committed manifest with its declared accuracy measured instead, as `edgefleet model evaluate` writes it."""
    return {**doc, "metrics": [], "evaluation": copy.deepcopy(EVALUATION), "min_agent_version": "0.3.0", "format": 2}


def test_a_manifest_without_evaluation_is_format_1_and_byte_identical():
    data = (DETECTOR / "model.yaml").read_bytes()
    m = parse_manifest_bytes(data, SOURCE)
    assert m.evaluation is None and m.format == 1
    assert m.to_yaml().encode() == data, "an untouched manifest is written back exactly as agents before format 2 read it"
    assert "evaluation" not in m.model_dump(mode="json") and "format" not in m.model_dump(mode="json")


def test_evaluation_is_registered_with_the_agent_and_format_that_first_read_it():
    import edgefleet_agent
    from edgefleet_agent.contract.manifest import (
        FIELDS_FORMAT,
        FIELDS_SINCE,
        MANIFEST_FORMAT,
        required_agent_version,
        required_format,
        version_key,
    )

    assert FIELDS_SINCE["evaluation"] == "0.3.0" and FIELDS_SINCE["variants"] == "0.4.0"
    newest = max(FIELDS_SINCE.values(), key=version_key)
    assert version_key(newest) <= version_key(edgefleet_agent.__version__), "a field this checkout's agent does not read"
    assert FIELDS_FORMAT["evaluation"] == 2 and FIELDS_FORMAT["variants"] == MANIFEST_FORMAT == 3
    assert required_agent_version({"evaluation": EVALUATION}) == "0.3.0" and required_agent_version({"evaluation": None}) == "0.1.0"
    assert required_format({"evaluation": EVALUATION}) == 2 and required_format({}) == 1


def test_the_agent_docs_say_what_this_agent_version_and_every_version_the_contract_names_added():
    """A bump without its entry would leave operators guessing what a stack's agent_version gets them."""
    import edgefleet_agent
    from edgefleet_agent.contract.manifest import FIELDS_SINCE

    text = (REPO / "docs" / "agent.md").read_text()
    listed = set(re.findall(r"^\| (\d+\.\d+\.\d+) \|", text, re.MULTILINE))
    assert {edgefleet_agent.__version__, *FIELDS_SINCE.values()} <= listed


def test_the_controller_requires_the_agent_in_this_checkout():
    """The controller pins edgefleet-agent exactly; a bump that leaves the pin behind cannot be installed from a clone."""
    import tomllib

    import edgefleet_agent

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"edgefleet-agent=={edgefleet_agent.__version__}" in deps


def test_measured_manifest_round_trips_and_says_which_metric_is_which(doc):
    m = parse(measured(doc))
    assert m.format == 2 and m.min_agent_version == "0.3.0"
    assert m.metric("accuracy") is None, "nothing declared"
    acc = m.measured("accuracy")
    assert acc is not None and acc.value == 0.8203
    assert m.evaluation is not None and m.evaluation.label == f"channel-dominance-eval (sha256 {'d' * 12})"
    text = m.to_yaml()
    assert "format: 2" in text and "evaluation:\n  dataset: channel-dominance-eval\n  dataset_sha256: " in text
    assert parse_manifest_bytes(text.encode(), SOURCE) == m


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda d: d.update(min_agent_version="0.2.0"),
            "min_agent_version 0.2.0 is older than 0.3.0, the first agent that reads evaluation",
        ),
        (lambda d: d.pop("format"), "evaluation needs manifest format 2, and this manifest is format 1; set format: 2"),
        (
            lambda d: d.update(metrics=[{"name": "accuracy", "value": 0.86, "dataset": "eval-v1"}]),
            "accuracy is both declared (metrics) and measured (evaluation.metrics)",
        ),
        (lambda d: d["evaluation"].update(dataset_sha256="abc"), "evaluation.dataset_sha256: String should match pattern"),
        (lambda d: d["evaluation"].update(metrics=[]), "evaluation.metrics: List should have at least 1 item"),
        (lambda d: d["evaluation"].update(samples=0), "evaluation.samples: Input should be greater than 0"),
        (lambda d: d["evaluation"].update(split="val"), "evaluation.split: unknown key"),
        (lambda d: d["evaluation"]["metrics"][0].update(dataset="x"), "evaluation.metrics[0].dataset: unknown key"),
        (lambda d: d["evaluation"]["metrics"].append(dict(d["evaluation"]["metrics"][0])), "evaluation.metrics has duplicate names"),
        (
            lambda d: d["evaluation"]["metrics"][0].update(value=float("inf")),
            "evaluation.metrics[0].value: Input should be a finite number",
        ),
    ],
)
def test_bad_evaluation_names_the_field(doc, mutate, expected):
    d = measured(doc)
    mutate(d)
    assert expected in problem_of(d)


def test_an_agent_before_format_2_refuses_a_measured_manifest_naming_the_agent_it_needs(doc, monkeypatch):
    """What a 0.2 agent (MANIFEST_FORMAT 1) does with it: refuses the format by number, not an unknown key."""
    from edgefleet_agent.contract import manifest as contract
    from edgefleet_agent.contract.errors import FormatError

    monkeypatch.setattr(contract, "MANIFEST_FORMAT", 1)
    with pytest.raises(FormatError) as info:
        parse(measured(doc))
    assert "manifest format 2 is newer than the 1 this agent reads" in str(info.value)
    assert "upgrade the agent to 0.3.0 or newer" in str(info.value)


# -- variants: other builds of the version (format 3, agent 0.4.0) ------------------------------------------------------
INT8 = {
    "kind": "int8",
    "file": "detector.int8.onnx",
    "sha256": "e" * 64,
    "size": 1900,
    "execution_providers": ["CPUExecutionProvider"],
    "requires": {"arch": ["amd64", "arm64"], "min_memory_mb": 64, "providers": ["CPUExecutionProvider"]},
    "built_with": "onnxruntime 1.32.0 quantize_dynamic (QInt8 weights)",
    "comparison": {
        "dataset": "channel-dominance-eval",
        "dataset_sha256": "d" * 64,
        "samples": 128,
        "output": "scores",
        "top1_agreement": 0.9922,
        "max_abs_diff": 0.031,
        "metric": "accuracy",
        "reference": 0.8203,
        "value": 0.8125,
        "delta": -0.0078,
        "higher_is_better": True,
        "measured_with": "onnxruntime 1.32.0, CPUExecutionProvider",
    },
}


def with_variants(doc: dict) -> dict:
    d = measured(doc)
    return {**d, "variants": [copy.deepcopy(INT8)], "min_agent_version": "0.4.0", "format": 3}


def test_a_manifest_with_variants_round_trips_and_keeps_the_reference_on_top(doc):
    m = parse(with_variants(doc))
    assert m.format == 3 and m.kinds == ["fp32", "int8"]
    assert m.build(None) == m.build("fp32") == ("detector.onnx", m.sha256, 2364), "the reference stays the top-level file"
    assert m.build("int8") == ("detector.int8.onnx", "e" * 64, 1900)
    v = m.variant("int8")
    assert v is not None and v.comparison.drop == pytest.approx(0.0078)
    assert m.variant("fp16") is None
    assert parse_manifest_bytes(m.to_yaml().encode(), SOURCE) == m
    assert ModelDir(DETECTOR).artifact_path(m, "int8") == DETECTOR / "detector.int8.onnx"


def test_manifests_without_variants_are_written_as_before(doc):
    m = parse(measured(doc))
    assert "variants" not in m.to_yaml() and m.format == 2


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d.update(min_agent_version="0.3.0"), "min_agent_version 0.3.0 is older than 0.4.0, the first agent that reads variants"),
        (lambda d: d.update(format=2), "variants needs manifest format 3, and this manifest is format 2; set format: 3"),
        (lambda d: d["variants"].append(copy.deepcopy(INT8)), "variants has more than one int8"),
        (lambda d: d["variants"][0].update(file="detector.onnx"), "detector.onnx is the file of more than one build"),
        (lambda d: d["variants"][0].update(kind="int4"), "variants[0].kind: Input should be 'int8' or 'fp16'"),
        (lambda d: d["variants"][0]["requires"].update(arch=["sparc"]), "variants[0].requires.arch[0]"),
        (lambda d: d["variants"][0]["requires"].update(providers=["FastEP"]), "unknown onnxruntime execution provider 'FastEP'"),
        (lambda d: d["variants"][0].pop("comparison"), "variants[0].comparison: required key is missing"),
        (lambda d: d["variants"][0]["comparison"].update(top1_agreement=1.5), "variants[0].comparison.top1_agreement"),
    ],
)
def test_bad_variant_names_the_field(doc, mutate, expected):
    d = with_variants(doc)
    mutate(d)
    assert expected in problem_of(d)


def test_an_agent_before_format_3_refuses_a_manifest_with_variants_naming_the_agent_it_needs(doc, monkeypatch):
    """What a 0.3 agent (MANIFEST_FORMAT 2) does with it: refuses by format number, never serves half of it."""
    from edgefleet_agent.contract import manifest as contract
    from edgefleet_agent.contract.errors import FormatError

    monkeypatch.setattr(contract, "MANIFEST_FORMAT", 2)
    with pytest.raises(FormatError) as info:
        parse(with_variants(doc))
    assert "manifest format 3 is newer than the 2 this agent reads" in str(info.value)
    assert "upgrade the agent to 0.4.0 or newer" in str(info.value)
