"""Telemetry of real traffic: what each request to a served version adds to its report, in fixed-size counters."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from agent_testkit import TARGET

from edgefleet_agent.contract.manifest import ModelManifest, TensorSpec
from edgefleet_agent.contract.telemetry import LATENCY_BOUNDS_MS, TOP_K, Latency, Predictions
from edgefleet_agent.serving import InvalidInput, NotReady, VersionNotServed
from edgefleet_agent.telemetry import Said, Watch, Window, read_output, watched_output

IMAGE = {"image": np.zeros((1, 3, 224, 224), np.float32)}


def manifest(*outputs: TensorSpec) -> ModelManifest:
    return ModelManifest(
        name="m",
        version="1.0.0",
        file="m.onnx",
        sha256="0" * 64,
        size=1,
        opset=17,
        inputs=[TensorSpec(name="x", element_type="float32", shape=["batch", 4])],
        outputs=list(outputs),
        targets=[TARGET],
        min_agent_version="0.1.0",
    )


def out(name: str, element_type: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name=name, element_type=element_type, shape=list(shape))


@pytest.mark.parametrize(
    "outputs, expected",
    [
        ([out("scores", "float32", "batch", 10)], ("classes", 0, 10)),
        ([out("prob", "float32", "batch", 1000, 1, 1)], ("classes", 0, 1000)),  # squeezenet's softmax output
        ([out("ids", "int64", "batch"), out("logits", "float16", "batch", 5)], ("classes", 1, 5)),
        ([out("boxes", "float32", "batch", 4, 4), out("scores", "float32", "batch", 3)], ("classes", 1, 3)),
        ([out("score", "float32", "batch", 1)], ("values", 0, 0)),  # one column: not a choice between classes
        ([out("boxes", "float32", "batch", 4, 4)], ("values", 0, 0)),
        ([out("n", "float32", "batch", "k")], ("values", 0, 0)),  # no fixed class count
        ([out("ids", "int64", "batch", 10)], None),
    ],
)
def test_which_output_is_watched(outputs, expected):
    watch = watched_output(manifest(*outputs))
    assert (watch.kind, watch.index, watch.classes) == expected if expected else watch is None


def test_probabilities_or_logits_is_read_off_the_warm_up_output():
    spec = manifest(out("scores", "float32", "batch", 3))
    assert watched_output(spec, [np.array([[0.2, 0.3, 0.5]], np.float32)]).probabilities is True
    assert watched_output(spec, [np.array([[2.0, -1.0, 0.5]], np.float32)]).probabilities is False
    assert watched_output(spec, [np.array([[0.2, 0.2, 0.2]], np.float32)]).probabilities is False  # does not sum to 1


def test_confidence_is_the_top_probability_softmax_applied_to_logits():
    logits = np.array([[2.0, 0.0, -1.0]], np.float32)
    said = read_output(Watch("classes", 0, "s", 3, probabilities=False), [logits])
    soft = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert said.top1 == [0] and said.confidence[0] == pytest.approx(float(soft.max()), rel=1e-6)
    said = read_output(Watch("classes", 0, "s", 3, probabilities=True), [np.array([[0.1, 0.7, 0.2]], np.float32)])
    assert said.top1 == [1] and said.confidence[0] == pytest.approx(0.7)
    rows = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], np.float32)
    said = read_output(Watch("classes", 0, "s", 3, probabilities=True), [rows])
    assert said.top1 == [1, 0] and said.confidence == pytest.approx([0.7, 0.6])
    assert read_output(Watch("classes", 0, "s", 3), [np.array([[np.nan, 0.0, 1.0]], np.float32)]) is None
    assert read_output(Watch("values", 0, "v"), [np.array([[1.0, 3.0]], np.float32)]) == Said(mean=2.0)


def test_a_window_is_the_same_size_after_any_amount_of_traffic():
    watch = Watch("classes", 0, "scores", 1000)
    w = Window(watch)
    sizes = (len(w.latency), len(w.classes), len(w.confidence), len(w.values))
    before = sys.getsizeof(w.latency) + sys.getsizeof(w.classes)
    rng = np.random.default_rng(0)
    for i in range(20_000):
        w.record(float(rng.exponential(2.0)), i % 97 == 0, i % 89 == 0, Said([int(rng.integers(0, 1000))], [float(rng.random())]), i % 3)
    assert (len(w.latency), len(w.classes), len(w.confidence), len(w.values)) == sizes
    assert sys.getsizeof(w.latency) + sys.getsizeof(w.classes) == before
    assert w.requests == 20_000 and w.errors == 207 and sum(w.latency) == 20_000 - 207
    predictions = w.predictions()
    assert len(predictions.classes) == TOP_K + 1 and sum(predictions.classes.values()) == predictions.n == 20_000 - 207
    labelled = w.labelled_summary()
    assert labelled.n == 20_000 - 207 and 0 < labelled.correct < labelled.n


def test_latency_quantiles_come_from_the_contracts_buckets():
    w = Window()
    for ms in [1.0] * 90 + [50.0] * 10:
        w.record(ms, False, False, None, None)
    lat = w.latency_summary()
    assert lat.n == 100 and lat.counts == Latency(lat.counts).counts and len(lat.counts) == len(LATENCY_BOUNDS_MS) + 1
    assert 1.0 <= lat.quantile(0.5) <= 1.2 and 50.0 <= lat.quantile(0.99) <= 60.0


# -- through the agent ---------------------------------------------------------------------------------------------------
def test_reports_carry_what_the_requests_showed(make_agent, transport, v110):
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    rng = np.random.default_rng(1)
    answers = []
    for i in range(40):
        pred = agent_.predict({"image": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}, label=i % 3 if i < 30 else None)
        answers.append(int(pred.outputs["scores"].argmax()))
    report = agent_.build_report()
    assert (report.version, report.inferences, report.errors, report.invalid_outputs) == ("1.1.0", 40, 0, 0)
    assert report.p50_latency_ms is not None and report.p99_latency_ms >= report.p50_latency_ms
    assert sum(report.latency) == 40
    predictions = Predictions.from_json(report.predictions)
    assert (predictions.kind, predictions.output, predictions.n) == ("classes", "scores", 40)
    assert predictions.classes == {str(c): answers.count(c) for c in set(answers)}
    assert sum(predictions.confidence) == 40
    assert report.labelled == {"n": 30, "correct": sum(1 for i in range(30) if answers[i] == i % 3)}
    assert report.shadow is None
    empty = agent_.build_report()
    assert (empty.inferences, empty.latency, empty.predictions, empty.labelled, empty.p50_latency_ms) == (0, None, None, None, None)


def test_nan_outputs_are_counted_and_answered(make_agent, transport, v120_nan):
    agent_ = make_agent()
    transport.desired_model = v120_nan
    agent_.sync()
    pred = agent_.predict(IMAGE)
    assert pred.invalid and np.isnan(next(iter(pred.outputs.values()))).any()
    report = agent_.build_report()
    assert (report.inferences, report.invalid_outputs, report.errors) == (1, 1, 0)


def test_requests_are_checked_against_the_served_signature(make_agent, transport, v110):
    agent_ = make_agent()
    with pytest.raises(NotReady, match="no verified version loaded"):
        agent_.predict(IMAGE)
    transport.desired_model = v110
    agent_.sync()
    for inputs, message in (
        ({"image": np.zeros((1, 3, 224, 224), np.float64)}, "input 'image' is FP64; the model expects FP32"),
        ({"image": np.zeros((1, 3, 32, 32), np.float32)}, r"has shape \[1, 3, 32, 32\]; the model expects \[batch, 3, 224, 224\]"),
        ({"img": np.zeros((1, 3, 224, 224), np.float32)}, "missing input.*'image'.*unknown input.*'img'"),
        ({}, "missing input"),
    ):
        with pytest.raises(InvalidInput, match=message):
            agent_.predict(inputs)
    with pytest.raises(VersionNotServed, match="version '1.0.0' is not served here; this device serves 1.1.0"):
        agent_.predict(IMAGE, version="1.0.0")
    assert agent_.predict(IMAGE, version="1.1.0").version == "1.1.0"
    assert agent_.build_report().inferences == 1, "refused requests are the application's mistakes, not the version's"
