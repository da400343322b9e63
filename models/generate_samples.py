"""Generates the sample models reproducibly: `python models/generate_samples.py`.

The task is small and real: an image (3x224x224) belongs to the colour channel with the highest mean.
Weights are built analytically (no training), with seeded noise, so versions differ measurably:

  detector 1.0.0   noisier weights                       -> models/samples/detector-1.0.0.onnx (models/detector/ declares it)
  detector 1.1.0   cleaner weights, better accuracy      -> models/samples/detector-1.1.0.onnx
  detector 1.2.0   valid ONNX, same signature, but every
                   output is NaN (a broken export)        -> models/samples/detector-1.2.0-nan.onnx

Accuracy is measured with onnxruntime on a seeded evaluation set and recorded in
models/samples/metrics.json, which `edgefleet model add --metric` reads in the demo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent
CHANNELS, SIZE, FILTERS, CLASSES = 3, 224, 16, 3
DATASET = "channel-dominance-eval-v1 (seed 7, 512 images)"


def build(noise: float, seed: int, nan: bool = False) -> onnx.ModelProto:
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
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
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


def main() -> int:
    samples = ROOT / "samples"
    samples.mkdir(exist_ok=True)
    outputs = {
        "1.0.0": (ROOT / "samples" / "detector-1.0.0.onnx", build(noise=0.6, seed=1)),
        "1.1.0": (samples / "detector-1.1.0.onnx", build(noise=0.1, seed=2)),
        "1.2.0": (samples / "detector-1.2.0-nan.onnx", build(noise=0.15, seed=2, nan=True)),
    }
    metrics = {}
    for version, (path, model) in outputs.items():
        path.write_bytes(model.SerializeToString(deterministic=True))
        acc = accuracy(path)
        metrics[version] = {"file": path.name, "accuracy": None if acc != acc else acc, "dataset": DATASET}
        print(f"{path.relative_to(ROOT.parent)}: {path.stat().st_size} bytes, accuracy {acc}")
    (samples / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
