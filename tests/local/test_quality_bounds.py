"""The shipped local stack's quality bounds, proven on the sample task with the real models.

The task (models/generate_samples.py): which of 3 colour channels dominates a 224x224 frame. Frames are drawn as the
task's evaluation set draws them (a per-channel offset plus pixel noise, seeded). Each model runs with onnxruntime;
device reports are built from what it answered, exactly as an agent summarizes its requests
(edgefleet_agent/contract/telemetry.py); the gate judges them with the stack's own gate settings. This is the evidence,
over many more frames than the local fleet's traffic set (tests/local/test_traffic.py runs the fleet on that set), that:

- detector 1.1.0 shadowed beside 1.0.0 passes the canary's shadow gate (agreement about 85% against a bound of 70%),
  and its wider rings' control comparisons against 1.0.0;
- wrong-but-healthy models stop at the canary: one that ignores its input (always class 0, finite and fast), one
  that swaps two classes, one 10x slower, one that answers NaN only on bright frames.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from components.rollout.gate import evaluate
from components.rollout.observe import observe_reports
from components.rollout.quality import QualityContext, Summary, Telemetry, judge
from components.rollout.spec import RolloutConfig
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.contract.telemetry import Latency, Predictions, Shadow

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "models" / "samples"
spec = importlib.util.spec_from_file_location("generate_samples", ROOT / "models" / "generate_samples.py")
assert spec is not None and spec.loader is not None
samples = importlib.util.module_from_spec(spec)
spec.loader.exec_module(samples)

CANARY_DEVICES = 50  # the shipped stack's canary: 5% of 1,000 cameras
PER_DEVICE = 6  # requests per device per report window: 300 a window for the ring, over the gate's 200


def stack_rollout() -> RolloutConfig:
    doc = yaml.safe_load((ROOT / "stacks" / "Pulumi.local.yaml").read_text())
    return RolloutConfig.model_validate(doc["config"]["edgefleet:rollouts"][0], strict=False)


ROLLOUT = stack_rollout()
CANARY = ROLLOUT.rings[0].gate
# The early ring's comparisons with its control group; its live accuracy needs labelled requests, which these frames
# do not carry (tests/local/test_traffic.py judges it on the fleet's labelled traffic).
EARLY = ROLLOUT.rings[1].gate.model_copy(update={"min_live_accuracy": None})


def frames(seed: int, n: int, batch: int = 60):
    """The task's frames as generate_samples.eval_batches draws them, from another seed."""
    rng = np.random.default_rng(seed)
    for _ in range(math.ceil(n / batch)):
        offsets = rng.uniform(-0.3, 0.3, (batch, samples.CHANNELS)).astype(np.float32)
        yield rng.normal(0, 1, (batch, samples.CHANNELS, samples.SIZE, samples.SIZE)).astype(np.float32) + offsets[:, :, None, None]


# -- models: the samples, and wrong-but-healthy ones of our own ---------------------------------------------------
def session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    """One thread, as the agent's sessions: each request's work then runs on the calling thread, whose CPU time times it."""
    data = model.read_bytes() if isinstance(model, Path) else model.SerializeToString()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _graph(nodes, inits, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def always_class_0() -> onnx.ModelProto:
    """Finite, fast, confident, and blind: zero weights, so only the bias speaks (class 0 at 90%)."""
    inits = [
        numpy_helper.from_array(np.zeros((3, 3), np.float32), "w"),
        numpy_helper.from_array(np.array([3.0, 0.8, 0.8], np.float32), "b"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["image"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
    ]
    return _graph(nodes, inits, "always-0")


def v110() -> onnx.ModelProto:
    return onnx.load(str(SAMPLES / "detector-1.1.0.onnx"))


renamed, finish = samples.renamed, samples.finish


def swaps_classes() -> onnx.ModelProto:
    """1.1.0 with classes 0 and 1 swapped: as accurate a model as any, answering the wrong name."""
    m = renamed(v110(), "s")
    return finish(
        m, [helper.make_node("Gather", ["s", "perm"], ["scores"], axis=1)], [numpy_helper.from_array(np.array([1, 0, 2], np.int64), "perm")]
    )


def ten_times_slower() -> onnx.ModelProto:
    return samples.ten_times_slower(v110())


def nan_on_bright() -> onnx.ModelProto:
    """1.1.0, but NaN for frames brighter than +0.1 on average: sqrt of a negative only there."""
    m = renamed(v110(), "s")
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["mean", "threshold"], ["over"]),
        helper.make_node("Relu", ["over"], ["bright"]),
        helper.make_node("Neg", ["bright"], ["neg"]),
        helper.make_node("Sqrt", ["neg"], ["root"]),  # NaN where bright > 0, -0.0 elsewhere
        helper.make_node("Unsqueeze", ["root", "axis"], ["col"]),
        helper.make_node("Add", ["s", "col"], ["scores"]),
    ]
    consts = [numpy_helper.from_array(np.array(0.1, np.float32), "threshold"), numpy_helper.from_array(np.array([1], np.int64), "axis")]
    return finish(m, nodes, consts)


# -- devices: each request's answers, summarized as an agent reports them ----------------------------------------
@dataclass
class Answers:
    classes: np.ndarray  # top-1 class per request
    confidence: np.ndarray
    finite: np.ndarray
    ms: np.ndarray  # per-request latency


def cat(parts: list[Answers]) -> Answers:
    return Answers(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("classes", "confidence", "finite", "ms")))


def answer(sess: ort.InferenceSession, batch: np.ndarray) -> Answers:
    """One request per frame, timed one by one as a simulated device times them."""
    scores, ms = [], []
    for frame in batch:
        t = time.thread_time()  # CPU time, as the local fleet's simulated devices time requests: not the machine's load
        scores.append(sess.run(["scores"], {"image": frame[None]})[0][0])
        ms.append((time.thread_time() - t) * 1000)
    s = np.array(scores)
    finite = np.isfinite(s).all(axis=1)
    return Answers(np.nan_to_num(s, nan=-1).argmax(axis=1), np.nan_to_num(s, nan=0).max(axis=1), finite, np.array(ms))


SERVED = DesiredModel("detector", "1.0.0", "a" * 64, 1, "file:///a", "m", "s")
CANDIDATE = DesiredModel("detector", "1.1.0", "b" * 64, 1, "file:///b", "m", "s")
SHADOWING = DesiredModel(**{**SERVED.__dict__, "shadow": CANDIDATE, "format": 2})


def shadow_reports(served: Answers, candidate: Answers, devices: int) -> dict[str, DeviceReport]:
    """Each device's window: its share of the requests, both models run on each, the candidate's answer never returned."""
    out = {}
    for d, idx in enumerate(np.array_split(np.arange(len(served.classes)), devices)):
        preds, cpreds, lat, clat = Predictions("classes", "scores"), Predictions("classes", "scores"), Latency(), Latency()
        compared = agree = invalid = 0
        for i in idx:
            preds.add_class(int(served.classes[i]), float(served.confidence[i]))
            lat.add(float(served.ms[i]))
            clat.add(float(candidate.ms[i]))
            if not candidate.finite[i]:
                invalid += 1
                continue
            compared += 1
            agree += int(candidate.classes[i] == served.classes[i])
            cpreds.add_class(int(candidate.classes[i]), float(candidate.confidence[i]))
        shadow = Shadow(CANDIDATE.version, CANDIDATE.sha256, compared, agree, 0, invalid, clat, lat, cpreds)
        out[f"cam-{d:04d}"] = DeviceReport(
            f"cam-{d:04d}",
            "detector",
            SERVED.version,
            SERVED.sha256,
            "ok",
            inferences=len(idx),
            p99_latency_ms=lat.quantile(0.99),
            reported_at=10.0,
            predictions=preds.to_json(),
            latency=lat.to_json(),
            shadow=shadow.to_json(),
        )
    return out


def run_window(candidate: ort.InferenceSession, seed: int):
    served_sess = SESSIONS["1.0.0"]
    served, cand = [], []
    for batch in frames(seed, CANARY_DEVICES * PER_DEVICE):
        served.append(answer(served_sess, batch))
        cand.append(answer(candidate, batch))
    reports = shadow_reports(cat(served), cat(cand), CANARY_DEVICES)
    obs = observe_reports(sorted(reports), reports, SHADOWING, since=0.0)
    # the shadow soak is done and every device adopted: the verdict is the shadow criteria's
    return evaluate(CANARY, obs, since_deploy=0.0, soak_started=0.0, now=CANARY.shadow_soak_seconds, ctx=QualityContext(phase="shadow"))


SESSIONS: dict[str, ort.InferenceSession] = {}


@pytest.fixture(scope="module", autouse=True)
def sessions():
    SESSIONS["1.0.0"] = session(SAMPLES / "detector-1.0.0.onnx")
    SESSIONS["1.1.0"] = session(SAMPLES / "detector-1.1.0.onnx")
    yield
    SESSIONS.clear()


def test_the_stack_declares_the_gates_this_file_proves():
    assert (CANARY.shadow_soak_seconds, CANARY.min_agreement, CANARY.max_latency_ratio, CANARY.min_quality_samples) == (4, 0.7, 3.0, 200)
    assert ROLLOUT.control_holdback == 0.05
    assert all(r.gate.max_distribution_shift == 0.2 and r.gate.max_confidence_drop == 0.15 for r in ROLLOUT.rings[1:])


def test_detector_1_1_0_shadowed_beside_1_0_0_passes_the_canary_and_agrees_about_85_percent():
    agreements = []
    for seed in (101, 102, 103):
        verdict = run_window(SESSIONS["1.1.0"], seed)
        assert verdict.outcome == "pass", verdict.reasons
        agreements.append(verdict.measured["quality"]["agreement"])
    assert all(0.78 <= a <= 0.92 for a in agreements), agreements
    # "always": the chance that a 200-request window of a model agreeing 80% of the time (below every measured window)
    # shows under 70% agreement, by the binomial tail
    p, n, k = 0.8, CANARY.min_quality_samples, math.ceil(CANARY.min_agreement * CANARY.min_quality_samples) - 1
    tail = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))
    assert tail < 1e-3, tail


@pytest.mark.parametrize(
    "build,criterion",
    [
        (always_class_0, "shadow agreement"),
        (swaps_classes, "shadow agreement"),
        (ten_times_slower, "x the served model's"),
        (nan_on_bright, "invalid (NaN/Inf) outputs"),
    ],
    ids=["always-class-0", "swaps-two-classes", "ten-times-slower", "nan-on-bright-frames"],
)
def test_wrong_but_healthy_models_stop_at_the_canarys_shadow_gate(build, criterion):
    verdict = run_window(session(build()), seed=104)
    assert verdict.outcome == "fail" and any(criterion in r for r in verdict.reasons), verdict.reasons
    q = verdict.measured["quality"]
    if criterion == "shadow agreement":
        assert q["agreement"] < 0.45, q["agreement"]
    assert verdict.offenders, "a failed quality gate names devices"


def test_the_bad_models_are_healthy_by_the_health_gates_alone():
    """Why quality gates: each bad model is finite and fast, or fails only in part, so health criteria alone pass most."""
    batch = next(frames(105, 60))
    blind = answer(session(always_class_0()), batch)
    assert blind.finite.all() and (blind.classes == 0).all() and np.median(blind.ms) < 50
    swapped = answer(session(swaps_classes()), batch)
    assert swapped.finite.all()
    nan = answer(session(nan_on_bright()), batch)
    assert 0 < (~nan.finite).sum() < len(batch) / 2, "NaN on some frames only"


def summary_of(answers: Answers, devices: int) -> Summary:
    total = Telemetry()
    for idx in np.array_split(np.arange(len(answers.classes)), devices):
        preds, lat = Predictions("classes", "scores"), Latency()
        for i in idx:
            preds.add_class(int(answers.classes[i]), float(answers.confidence[i]))
            lat.add(float(answers.ms[i]))
        total.add(preds, lat, None, None)
    return total.summary()


@pytest.mark.parametrize("seed", [201, 202])
def test_the_wider_rings_comparison_passes_1_1_0_against_1_0_0_and_stops_a_blind_model(seed):
    """early/broad: the ring's devices on the candidate against the control group on 1.0.0, different requests each."""
    ring_frames, control_frames = frames(seed, 300), frames(seed + 50, 300)
    control = summary_of(cat([answer(SESSIONS["1.0.0"], b) for b in control_frames]), 50)
    ring_batches = list(ring_frames)
    good = summary_of(cat([answer(SESSIONS["1.1.0"], b) for b in ring_batches]), 250)
    j = judge(EARLY, good, QualityContext(control=control))
    assert not j.breaches and not j.short, (j.breaches, j.short, j.measured)
    assert j.measured["distribution_shift"] < 0.2
    blind = summary_of(cat([answer(session(always_class_0()), b) for b in ring_batches]), 250)
    j = judge(EARLY, blind, QualityContext(control=control))
    assert [k for k, _ in j.breaches] == ["distribution_shift"], j.breaches
