"""int8 and fp16 builds against fp32 on this machine: size, latency (p50, ratio to fp32 in the same run), top-1
agreement with fp32 and, where the model has an evaluation set, the accuracy delta.

Models: the sample detector (models/detector, measured on models/datasets/channel-dominance-eval) and a light model
from onnx's own test data (onnx/backend/test/data/light/, random seeded inputs: agreement only, no labels).
Builds are made with the same code as `edgefleet model variant add` (edgefleet/variant_add.py).

    python benchmarks/variant_bench.py [--runs 50] [--light light_squeezenet]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "agent")]

from components.datasets import load_set  # noqa: E402
from edgefleet.onnx_check import _open_session  # noqa: E402
from edgefleet.variant_add import build  # noqa: E402
from edgefleet_agent.contract.errors import EdgefleetError  # noqa: E402


def p50_ms(session, feed: dict, runs: int) -> float:
    session.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


def bench(name: str, reference: Path, feeds: list[dict], labels: np.ndarray | None, runs: int, work: Path) -> None:
    paths = {"fp32": reference}
    for kind in ("int8", "fp16"):
        paths[kind] = work / f"{reference.stem}.{kind}.onnx"
        build(kind, reference, paths[kind], None, "")
    top = {}
    lat = {}
    for kind, path in paths.items():
        s = _open_session(path)
        top[kind] = np.concatenate([np.asarray(s.run(None, f)[0]).reshape(len(next(iter(f.values()))), -1).argmax(1) for f in feeds])
        lat[kind] = p50_ms(s, feeds[0], runs)
    size = {k: p.stat().st_size for k, p in paths.items()}
    print(f"\n{name} ({len(top['fp32'])} samples, batch {len(next(iter(feeds[0].values())))}, {runs} timed runs)")
    print("| build | bytes | size vs fp32 | p50 ms | latency vs fp32 | top-1 agreement | accuracy | delta |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in paths:
        agree = float(np.mean(top[kind] == top["fp32"]))
        if labels is not None:
            acc = float(np.mean(top[kind] == labels))
            ref = float(np.mean(top["fp32"] == labels))
            acc_s, delta_s = f"{acc:.4f}", f"{acc - ref:+.4f}"
        else:
            acc_s = delta_s = "n/a"
        print(
            f"| {kind} | {size[kind]} | {size[kind] / size['fp32']:.2f}x | {lat[kind]:.3f} | {lat[kind] / lat['fp32']:.2f}x | "
            f"{agree:.2%} | {acc_s} | {delta_s} |"
        )


def materialised(light: Path, work: Path) -> Path:
    """onnx's light models take their weights as graph inputs (the files carry shapes only); the quantizer needs
    initializers: every input but the image (data_0) becomes an initializer of seeded N(0, 0.05) weights."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(light))
    rng = np.random.default_rng(3)
    known = {i.name for i in model.graph.initializer}
    keep = []
    for inp in model.graph.input:
        if inp.name.endswith("data_0") or inp.name in known:
            keep.append(inp)
            continue
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        model.graph.initializer.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), inp.name))
    del model.graph.input[:]
    model.graph.input.extend(keep)
    out = work / light.name
    onnx.save(model, str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--light", default="light_squeezenet")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, CPUExecutionProvider, 1 intra-op thread")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ev = load_set(ROOT / "models" / "datasets" / "channel-dominance-eval.yaml")
        feeds = [{ev.input: ev.feed(ev.frames[i : i + 32])} for i in range(0, ev.samples, 32)]
        ref = work / "detector.onnx"
        shutil.copy(ROOT / "models" / "detector" / "detector.onnx", ref)
        bench("models/detector/detector.onnx on channel-dominance-eval", ref, feeds, ev.labels, args.runs, work)

        light = materialised(Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{args.light}.onnx", work)
        s = _open_session(light)
        rng = np.random.default_rng(7)
        inputs = s.get_inputs()
        feeds = [
            {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32) for i in inputs}
            for _ in range(32)
        ]
        try:
            bench(f"onnx {onnx.__version__} {light.name} on 32 seeded random inputs", light, feeds, None, args.runs, work)
        except EdgefleetError as exc:  # the quantizer refuses weights computed in the graph rather than stored
            print(f"\n{light.name}: not measured: {exc.problem}")


if __name__ == "__main__":
    main()
