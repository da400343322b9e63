"""Two versions of the agent's endpoint side by side: `edgefleet-agent serve` from two checkouts (say the commit before a
change and the change), each in its own process on one signed copy of the same model, and in-process `session.run`
as the baseline, Triton's HTTP client with binary tensors, requests interleaved in rounds (timing.interleaved). A
serving change is a few hundredths of a millisecond against run-to-run noise of a tenth: only the same run, with
thousands of requests a side, tells them apart.

    git worktree add --detach /tmp/before HEAD~1
    .venv/bin/python benchmarks/serving_ab.py /tmp/before . --model light_squeezenet --requests 50 --rounds 20

Each checkout's agent is imported from its own tree (PYTHONPATH), so the two serve processes run their own code.
No target: it prints added p50/p99 over in-process for each side and their difference, and writes
benchmarks/out/serving_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import tritonclient.http as triton  # noqa: E402
from serving_bench import LIGHT, SAMPLE, baseline, publish, start_serve  # noqa: E402
from timing import interleaved, pct  # noqa: E402

from components.local.signer import LocalKeySigner, create_key_file, public_key_path  # noqa: E402

OUT = REPO / "benchmarks" / "out" / "serving_ab.json"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="checkout A (e.g. the commit before a change)")
    ap.add_argument("b", type=Path, help="checkout B")
    ap.add_argument(
        "--model", default="light_squeezenet", help="'sample' (models/samples/detector-1.1.0.onnx) or a model in onnx's light test data"
    )
    ap.add_argument("--requests", type=int, default=50, help="requests a side a round")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    for side, tree in trees.items():
        if not (tree / "agent" / "edgefleet_agent").is_dir():
            raise SystemExit(f"{side}: {tree} is not an edgefleet checkout (no agent/edgefleet_agent); pass the repository's root")
    source = SAMPLE if args.model == "sample" else LIGHT / f"{args.model}.onnx"
    name = "detector" if args.model == "sample" else args.model.replace("_", "-")
    procs: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as tmp:
        key = create_key_file(Path(tmp) / "k.pem")
        model_dir, _ = publish(Path(tmp), LocalKeySigner(key), name, source, "1.0.0")
        manifest, shape, x, session = baseline(model_dir)
        spec = manifest.inputs[0]
        outputs = [o.name for o in manifest.outputs]
        inp = triton.InferInput(spec.name, shape, "FP32")
        inp.set_data_from_numpy(x)
        sides = {"in_process": lambda: session.run(outputs, {spec.name: x})}
        try:
            for side, tree in trees.items():
                proc, url = start_serve(model_dir, public_key_path(key), tree)
                procs.append(proc)
                client = triton.InferenceServerClient(url.removeprefix("http://"))
                sides[side] = lambda c=client: c.infer(name, [inp])
            print(f"{args.model}: {args.rounds} rounds of {args.requests} requests a side …", flush=True)
            lat, _ = interleaved(sides, args.rounds, dict.fromkeys(sides, args.requests), dict.fromkeys(sides, 30))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    base50, base99 = pct(lat["in_process"], 0.5), pct(lat["in_process"], 0.99)
    result = {
        "model": args.model,
        "trees": {k: str(v) for k, v in trees.items()},
        "requests": {k: len(v) for k, v in lat.items()},
        "load_average": os.getloadavg(),
        **{k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99)} for k, v in lat.items()},
    }
    print(f"in-process p50 / p99 {base50:.3f} / {base99:.3f} ms")
    for side in trees:
        p50, p99 = result[side]["p50_ms"], result[side]["p99_ms"]
        result[side].update(added_p50_ms=p50 - base50, added_p99_ms=p99 - base99)
        print(f"{side} ({trees[side]}): p50 {p50:.3f} ms, added p50 {p50 - base50:+.3f}, p99 {p99 - base99:+.3f} ms")
    print(f"b - a: p50 {result['b']['p50_ms'] - result['a']['p50_ms']:+.3f} ms   (load average {os.getloadavg()[0]:.2f})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
