"""Generates the sample models reproducibly: `python models/generate_samples.py`.

The task is small and real: an image (3x224x224) belongs to the colour channel with the highest mean.
Weights are built analytically (no training), with seeded noise, so versions differ measurably:

  detector 1.0.0   noisier weights                       -> models/samples/detector-1.0.0.onnx (models/detector/ declares it)
  detector 1.1.0   cleaner weights, better accuracy      -> models/samples/detector-1.1.0.onnx
  detector 1.2.0   valid ONNX, same signature, but every
                   output is NaN (a broken export)        -> models/samples/detector-1.2.0-nan.onnx
  detector 1.3.0   valid ONNX, finite and fast, but it
                   ignores its input (an export whose
                   preprocessing scaled it by zero): the
                   same answer for every frame            -> models/samples/detector-1.3.0-constant.onnx

Accuracy is measured with onnxruntime on a seeded evaluation set of 512 float32 frames and recorded in
models/samples/metrics.json, which the demo types in (declared) with `edgefleet model add --metric` for 1.2.0.

It also writes the evaluation set `edgefleet model evaluate` measures on, small enough for git:

  models/datasets/channel-dominance-eval.npz    128 uint8 frames 3x224x224 with their labels (format: models/datasets/README.md)
  models/datasets/channel-dominance-eval.yaml   its descriptor, which pins the .npz by sha256

and the traffic the local fleet's simulated applications send their devices, in the same format:

  models/datasets/channel-dominance-live.npz    96 other frames (seed 23), brighter or darker as a camera's day goes,
  models/datasets/channel-dominance-live.yaml   with their labels: `edgefleet:local` traffic sends them

Their frames are textured in 8x8 blocks (28x28 seeded normal cells per channel plus a per-channel offset), which
deflate compresses ~30x, and a frame's label is the channel whose mean is highest in the float32 values the model
receives ((uint8 - 128) / 32). The arrays are reproducible; the .npz's bytes depend on the zlib that wrote them,
so the committed file and its pin are what counts.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent
CHANNELS, SIZE, FILTERS, CLASSES = 3, 224, 16, 3
DATASET = "channel-dominance-eval-v1 (seed 7, 512 images)"

EVAL_SET = "channel-dominance-eval"
EVAL_FRAMES, EVAL_BLOCK, EVAL_SEED = 128, 8, 11
LIVE_SET = "channel-dominance-live"
LIVE_FRAMES, LIVE_SEED, LIVE_BRIGHTNESS = 96, 31, 0.2  # a frame's brightness shifts every channel alike: labels keep
EVAL_SCALE, EVAL_ZERO_POINT = 1 / 32, 128.0  # float32 = (uint8 - zero_point) * scale: [-4, 3.97] in steps of 1/32


def build(noise: float, seed: int, nan: bool = False, ignore_input: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    conv = np.zeros((FILTERS, CHANNELS, 3, 3), np.float32)
    for k in range(FILTERS):
        conv[k, k % CHANNELS, 1, 1] = 1.0
    conv += rng.normal(0, noise * 0.2, conv.shape).astype(np.float32)
    conv_b = np.full((FILTERS,), 4.0, np.float32)  # keeps ReLU in its linear range for these inputs
    gemm = np.zeros((FILTERS, CLASSES), np.float32)
    for k in range(FILTERS):
        gemm[k, k % CHANNELS] = 1.0
    gemm += rng.normal(0, noise, gemm.shape).astype(np.float32)
    gemm_b = -(np.full((FILTERS,), 4.0, np.float32) @ gemm)  # cancels the ReLU bias: only channel means remain
    inits = [numpy_helper.from_array(a, n) for a, n in ((conv, "conv_w"), (conv_b, "conv_b"), (gemm, "fc_w"), (gemm_b, "fc_b"))]
    nodes = []
    if ignore_input:  # the scale of a preprocessing step exported as 0: every frame becomes the same zeros
        inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "input_scale"))
        nodes.append(helper.make_node("Mul", ["image", "input_scale"], ["seen"]))
    nodes += [
        helper.make_node("Conv", ["seen" if ignore_input else "image", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs" if nan else "scores"], axis=1),
    ]
    if nan:
        # sqrt of a negative probability: NaN everywhere, which only shows up when the model runs.
        nodes += [helper.make_node("Neg", ["probs"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["scores"])]
    graph = helper.make_graph(
        nodes,
        "detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgefleet-samples", producer_version="1")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def renamed(model: onnx.ModelProto, out: str) -> onnx.ModelProto:
    """`model` with its output "scores" renamed, to append nodes after it."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        node.output[:] = [out if o == "scores" else o for o in node.output]
    del m.graph.output[:]
    return m


def finish(m: onnx.ModelProto, nodes, inits) -> onnx.ModelProto:
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(inits)
    m.graph.output.extend([helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])])
    onnx.checker.check_model(m)
    return m


def ten_times_slower(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`'s answers after a wide convolution whose result is multiplied by zero: same outputs, far more work
    (about 10x detector 1.1.0's time a frame here). What a latency gate must stop, whatever else the model gets right."""
    m = renamed(model, "s")
    heavy = np.random.default_rng(0).normal(0, 0.01, (48, 3, 7, 7)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "heavy"], ["h"], pads=[3, 3, 3, 3]),
        helper.make_node("ReduceMean", ["h"], ["hm"], keepdims=0),
        helper.make_node("Mul", ["hm", "zero"], ["hz"]),
        helper.make_node("Add", ["s", "hz"], ["scores"]),
    ]
    return finish(m, nodes, [numpy_helper.from_array(heavy, "heavy"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")])


def eval_batches(n: int = 512, batch: int = 64):
    """The seeded evaluation set, in batches so memory stays small at 224x224."""
    rng = np.random.default_rng(7)
    for _ in range(n // batch):
        offsets = rng.uniform(-0.3, 0.3, (batch, CHANNELS)).astype(np.float32)
        images = rng.normal(0, 1, (batch, CHANNELS, SIZE, SIZE)).astype(np.float32) + offsets[:, :, None, None]
        yield images, images.mean(axis=(2, 3)).argmax(axis=1)


def accuracy(path: Path) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = total = 0
    for images, labels in eval_batches():
        scores = session.run(["scores"], {"image": images})[0]
        if not np.isfinite(scores).all():
            return float("nan")
        correct += int((scores.argmax(axis=1) == labels).sum())
        total += len(labels)
    return round(correct / total, 4)


def eval_set_arrays(count: int = EVAL_FRAMES, seed: int = EVAL_SEED, brightness: float = 0.0) -> dict[str, np.ndarray]:
    """The arrays of models/datasets/channel-dominance-eval.npz (format: models/datasets/README.md); with another
    seed and a brightness spread, those of the live traffic set."""
    rng = np.random.default_rng(seed)
    cells = SIZE // EVAL_BLOCK
    offsets = rng.uniform(-0.3, 0.3, (count, CHANNELS))
    values = rng.normal(0, 1, (count, CHANNELS, cells, cells)) + offsets[:, :, None, None]
    if brightness:
        values += rng.uniform(-brightness, brightness, (count, 1, 1, 1))
    values = np.repeat(np.repeat(values, EVAL_BLOCK, axis=2), EVAL_BLOCK, axis=3)
    frames = np.clip(np.round(values / EVAL_SCALE + EVAL_ZERO_POINT), 0, 255).astype(np.uint8)
    seen = (frames.astype(np.float32) - np.float32(EVAL_ZERO_POINT)) * np.float32(EVAL_SCALE)  # what the model receives
    means = seen.astype(np.float64).mean(axis=(2, 3))
    top2 = np.sort(means, axis=1)[:, -2:]
    assert (top2[:, 1] - top2[:, 0]).min() > 1e-4, "a frame without a clearly dominant channel"
    return {
        "frames": frames,
        "labels": means.argmax(axis=1).astype(np.int64),
        "classes": np.array(["red", "green", "blue"]),
        "input": np.array("image"),
        "element_type": np.array("float32"),
        "scale": np.array(EVAL_SCALE, np.float64),
        "zero_point": np.array(EVAL_ZERO_POINT, np.float64),
        "task": np.array("classification"),
    }


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A compressed .npz as numpy.load reads it, with fixed zip timestamps (np.savez_compressed stamps the time)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(array), allow_pickle=False)  # keeps 0-d scalars 0-d
    return buf.getvalue()


def write_set(datasets: Path, name: str, arrays: dict[str, np.ndarray], comment: str, description: str) -> Path:
    datasets.mkdir(exist_ok=True)
    data = npz_bytes(arrays)
    npz = datasets / f"{name}.npz"
    npz.write_bytes(data)
    (datasets / f"{name}.yaml").write_text(
        comment + f"name: {name}\n"
        f"file: {npz.name}\n"
        f"sha256: {hashlib.sha256(data).hexdigest()}\n"
        f"size: {len(data)}\n"
        f"description: {description}\n"
    )
    return npz


def write_eval_set(datasets: Path) -> Path:
    return write_set(
        datasets,
        EVAL_SET,
        eval_set_arrays(),
        "# The sample task's evaluation set: `edgefleet model evaluate models/detector --dataset models/datasets/"
        f"{EVAL_SET}.yaml`.\n"
        "# Written by models/generate_samples.py; format: models/datasets/README.md. The digest pins the .npz: evaluate\n"
        "# refuses a file that hashes differently, and records this digest in the manifest it measures.\n",
        f"{EVAL_FRAMES} frames 3x224x224, uint8 (float32 = (uint8 - 128) / 32), labelled with the dominant colour channel "
        f"(red, green, blue); seed {EVAL_SEED}",
    )


def write_live_set(datasets: Path) -> Path:
    return write_set(
        datasets,
        LIVE_SET,
        eval_set_arrays(LIVE_FRAMES, LIVE_SEED, LIVE_BRIGHTNESS),
        "# Traffic for the local fleet: its simulated applications send these frames to their devices' agents, with the\n"
        "# label on a share of them (stacks/Pulumi.local.yaml, edgefleet:local traffic). Not the evaluation set: gates judge\n"
        "# the model on frames it was not measured on. Written by models/generate_samples.py; format: models/datasets/README.md.\n",
        f"{LIVE_FRAMES} frames 3x224x224 like the evaluation set's, other seed ({LIVE_SEED}), brightness varying by up to "
        f"±{LIVE_BRIGHTNESS} on every channel alike",
    )


def main() -> int:
    samples = ROOT / "samples"
    samples.mkdir(exist_ok=True)
    outputs = {
        "1.0.0": (ROOT / "samples" / "detector-1.0.0.onnx", build(noise=0.6, seed=1)),
        "1.1.0": (samples / "detector-1.1.0.onnx", build(noise=0.1, seed=2)),
        "1.2.0": (samples / "detector-1.2.0-nan.onnx", build(noise=0.15, seed=2, nan=True)),
        "1.3.0": (samples / "detector-1.3.0-constant.onnx", build(noise=0.1, seed=3, ignore_input=True)),
    }
    metrics = {}
    for version, (path, model) in outputs.items():
        path.write_bytes(model.SerializeToString(deterministic=True))
        acc = accuracy(path)
        metrics[version] = {"file": path.name, "accuracy": None if acc != acc else acc, "dataset": DATASET}
        print(f"{path.relative_to(ROOT.parent)}: {path.stat().st_size} bytes, accuracy {acc}")
    (samples / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for npz, count in ((write_eval_set(ROOT / "datasets"), EVAL_FRAMES), (write_live_set(ROOT / "datasets"), LIVE_FRAMES)):
        print(f"{npz.relative_to(ROOT.parent)}: {npz.stat().st_size} bytes, {count} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
