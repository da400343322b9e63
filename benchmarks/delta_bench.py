"""Delta benchmark: bytes on the wire and time to rebuild, a patch against the full artifact, on a generated model.

    python benchmarks/delta_bench.py                       # ~20 MB model, 3 timed applies of each, interleaved
    python benchmarks/delta_bench.py --hidden 1024 --runs 5 --methods cdc-xz zstd

Generates an ONNX model with seeded random float32 weights (He-normal, so it does not compress to nothing): two
convolutions and three fully connected layers, the last a 1,000-class head. Two successors: `last-layer` (the head
retrained: its weights and bias drawn again) and `perturbed` (N(0, 1e-3) noise added to every weight). Each is
checked with onnx.checker and run once in onnxruntime.

Methods, each creating a patch from the base to a successor and applying it (rebuild, then sha256 of the result):
  cdc-xz    edgefleet's format (components/delta.py, edgefleet_agent/delta.py): FastCDC chunks, literals in xz
  bsdiff4   bsdiff4.file_diff / file_patch
  zstd      what `zstd --patch-from=BASE` does (the base as a referenced prefix, a window spanning base and new
            file, long-distance matching) at the CLI's default level 3, through backports.zstd (Python 3.14's
            compression.zstd, libzstd 1.5.7); applied by streaming decompression with the same prefix. Level 19
            in-process lost every match into a 92 MB base (92.5% of the full artifact for a retrained head);
            level 3 kept them, and matched the 1.5.4 CLI's -19 (9.4% at 20 MB, 8.3% at 92 MB)
and, sizes and literal decompression only, cdc-zstd: the cdc-xz patch with its literals compressed by zstd -19
instead, to show what the literal codec is worth. Baselines: the full artifact and the full artifact compressed by
zstd -19 with long-distance matching.

Each create and apply runs in a fresh child process that reports its peak resident memory (VmHWM: ru_maxrss would
carry over the parent's, which has onnxruntime loaded); the table subtracts an idle child's (interpreter and imports)
so the method's own memory shows. Creates run once; applies `--runs` times, interleaved across methods, medians.

Then, for the chosen method, time to fetch, rebuild and verify from a local HTTP server against the agent's full
download of the same artifact (edgefleet_agent.download.download hashes while it writes), and the link speed below
which the patch is the faster path.

bsdiff4 and backports.zstd are the bench extra (pip install -c constraints.txt -e '.[bench]'; scripts/bootstrap
installs it). Writes benchmarks/out/delta_bench.json. Exit status 2 if the last-layer patch of the chosen method exceeds 25% of
the full artifact.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "agent"), str(ROOT)]  # this checkout's agent and components, in this process and its children

from edgefleet_agent.contract.digest import sha256_file  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "delta_bench.json"
CHOSEN = "cdc-xz"
METHODS = ("cdc-xz", "bsdiff4", "zstd")
CASES = ("last-layer", "perturbed")
GOAL = 0.25
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------------------------
# the model and its successors
# ---------------------------------------------------------------------------------------------------------------
def shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        "conv1.w": (64, 3, 3, 3),
        "conv1.b": (64,),
        "conv2.w": (128, 64, 3, 3),
        "conv2.b": (128,),
        "fc1.w": (128 * 8 * 8, hidden),
        "fc1.b": (hidden,),
        "fc2.w": (hidden, hidden),
        "fc2.b": (hidden,),
        "head.w": (hidden, 1000),
        "head.b": (1000,),
    }


def init(rng, shape):
    import numpy as np

    if len(shape) == 1:
        return (rng.standard_normal(shape) * 0.01).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
    return (rng.standard_normal(shape) * math.sqrt(2 / fan_in)).astype(np.float32)


def save_model(weights, path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node
    nodes = [
        node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1]),
        node("Relu", ["c1"], ["r1"]),
        node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1]),
        node("Relu", ["c2"], ["r2"]),
        node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Flatten", ["p2"], ["f"]),
        node("Gemm", ["f", "fc1.w", "fc1.b"], ["h1"]),
        node("Relu", ["h1"], ["a1"]),
        node("Gemm", ["a1", "fc2.w", "fc2.b"], ["h2"]),
        node("Relu", ["h2"], ["a2"]),
        node("Gemm", ["a2", "head.w", "head.b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "delta-bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1000])],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))


def generate(folder: Path, hidden: int, seed: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    base = {name: init(rng, shape) for name, shape in shapes(hidden).items()}
    retrained = np.random.default_rng(seed + 1)
    last = {**base, "head.w": init(retrained, base["head.w"].shape), "head.b": init(retrained, base["head.b"].shape)}
    noise = np.random.default_rng(seed + 2)
    perturbed = {name: (w + noise.normal(0.0, 1e-3, w.shape)).astype(np.float32) for name, w in base.items()}
    paths = {"base": folder / "base.onnx", "last-layer": folder / "last-layer.onnx", "perturbed": folder / "perturbed.onnx"}
    x = np.random.default_rng(seed + 3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    outputs = {}
    for name, weights in (("base", base), ("last-layer", last), ("perturbed", perturbed)):
        save_model(weights, paths[name])
        outputs[name] = ort.InferenceSession(str(paths[name]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    head_bytes = base["head.w"].nbytes + base["head.b"].nbytes
    return {
        "paths": paths,
        "parameters": int(sum(w.size for w in base.values())),
        "head_bytes": head_bytes,
        "max_output_change": {k: float(np.abs(outputs[k] - outputs["base"]).max()) for k in CASES},
    }


# ---------------------------------------------------------------------------------------------------------------
# child: one create, apply or fetch in a fresh interpreter, so its peak memory is that step's own
# ---------------------------------------------------------------------------------------------------------------
def child(action: str, args: dict) -> None:
    result: dict = {}
    t0 = time.perf_counter()
    method = args.get("method")
    if action == "idle":
        pass
    elif action == "create" and method == "cdc-xz":
        from components.delta import make_patch

        make_patch(args["old"], args["new"], args["patch"])
    elif action == "create" and method == "bsdiff4":
        import bsdiff4

        bsdiff4.file_diff(args["old"], args["new"], args["patch"])
    elif action == "create" and method == "zstd":
        from backports.zstd import CompressionParameter, ZstdCompressor

        new = Path(args["new"]).read_bytes()
        options = {
            CompressionParameter.compression_level: 3,
            CompressionParameter.window_log: zstd_window_log(args["old"], len(new)),
            CompressionParameter.enable_long_distance_matching: 1,
        }
        compressor = ZstdCompressor(options=options, zstd_dict=zstd_prefix(args["old"]))
        Path(args["patch"]).write_bytes(compressor.compress(new, ZstdCompressor.FLUSH_FRAME))
    elif action == "apply" and method == "cdc-xz":
        from edgefleet_agent.delta import apply_patch

        apply_patch(args["old"], args["patch"], args["out"], args["sha256"], args["size"])
    elif action == "apply" and method in ("bsdiff4", "zstd"):
        if method == "bsdiff4":
            import bsdiff4

            bsdiff4.file_patch(args["old"], args["out"], args["patch"])
        else:
            from backports.zstd import DecompressionParameter, ZstdDecompressor

            options = {DecompressionParameter.window_log_max: zstd_window_log(args["old"], args["size"])}
            decompressor = ZstdDecompressor(zstd_prefix(args["old"]), options=options)
            with open(args["patch"], "rb") as src, open(args["out"], "wb") as out:
                while not decompressor.eof:
                    data = src.read(1 << 16) if decompressor.needs_input else b""
                    out.write(decompressor.decompress(data, max_length=1 << 18))
        if sha256_file(args["out"]) != (args["sha256"], args["size"]):
            raise SystemExit(f"{method} rebuilt a different file")
    elif action == "fetch-full":
        from edgefleet_agent.download import download

        if download(args["url"], Path(args["out"]), expected_size=args["size"]) != args["sha256"]:
            raise SystemExit("the full download does not match its digest")
    elif action == "fetch-delta":
        from edgefleet_agent.delta import apply_patch
        from edgefleet_agent.download import download

        if download(args["patch_url"], Path(args["patch"]), expected_size=args["patch_size"]) != args["patch_sha256"]:
            raise SystemExit("the patch download does not match its digest")
        apply_patch(args["old"], args["patch"], args["out"], args["sha256"], args["size"])
    else:
        raise SystemExit(f"unknown child action {action} {method}")
    result["seconds"] = time.perf_counter() - t0
    result["peak_kib"] = peak_kib()
    print(json.dumps(result))


def peak_kib() -> int:
    """This process's peak resident memory since its exec (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def zstd_window_log(old: str, size: int) -> int:
    """A window spanning the base and the new file, as --patch-from sets it: else matches into the base are lost."""
    return max(10, math.ceil(math.log2(os.path.getsize(old) + size + 1)))


def zstd_prefix(old: str):
    from backports.zstd import ZstdDict

    return ZstdDict(Path(old).read_bytes(), is_raw=True).as_prefix


def zstd_compress(data: bytes) -> bytes:
    from backports.zstd import CompressionParameter, ZstdCompressor

    options = {
        CompressionParameter.compression_level: 19,
        CompressionParameter.window_log: 27,
        CompressionParameter.enable_long_distance_matching: 1,
    }
    return ZstdCompressor(options=options).compress(data, ZstdCompressor.FLUSH_FRAME)


def run_child(action: str, **args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", action, json.dumps(args, default=str)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{action} {args.get('method', '')} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------------------------------------------
def unavailable(method: str) -> str | None:
    module = {"bsdiff4": "bsdiff4", "zstd": "backports.zstd"}.get(method)
    if module and importlib.util.find_spec(module.split(".")[0]) is None:
        return f"{module} is not installed (pip install -c constraints.txt -e '.[bench]')"
    return None


def cdc_zstd(patch: Path, work: Path) -> dict:
    """The cdc-xz patch with its literals recompressed by zstd -19: its size and literal decompression time."""
    import lzma

    from backports.zstd import decompress

    from edgefleet_agent.delta import HEADER, OP, read_header

    header = read_header(patch)
    body = patch.read_bytes()
    table = HEADER.size + header.ops * OP.size
    literals = zstd_compress(lzma.decompress(body[table:]))
    t0 = time.perf_counter()
    decompress(literals)
    zstd_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    lzma.decompress(body[table:])
    xz_s = time.perf_counter() - t0
    return {"bytes": table + len(literals), "zstd_decompress_s": zstd_s, "xz_decompress_s": xz_s}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=512, help="width of the fully connected layers (512: ~20 MB)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3, help="timed applies and fetches of each")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--tmpdir", default=None)
    ap.add_argument("--child", nargs=2, metavar=("ACTION", "JSON"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], json.loads(a.child[1]))
        return 0

    cmd = " ".join(["python", "benchmarks/delta_bench.py", *sys.argv[1:]])
    print(f"reproduce: {cmd}", flush=True)
    if unavailable("zstd"):
        print(f"cannot run: {unavailable('zstd')}; the baselines need it", file=sys.stderr)
        return 3
    methods = [m for m in a.methods if not unavailable(m)]
    skipped = {m: unavailable(m) for m in a.methods if unavailable(m)}
    for m, why in skipped.items():
        print(f"skipped {m}: {why}")
    with tempfile.TemporaryDirectory(dir=a.tmpdir, prefix="delta-bench-") as tmp:
        work = Path(tmp)
        model = generate(work, a.hidden, a.seed)
        paths = model["paths"]
        full = paths["base"].stat().st_size
        digests = {k: sha256_file(p) for k, p in paths.items()}
        compressed = {case: len(zstd_compress(paths[case].read_bytes())) for case in CASES}
        print(
            f"model: {full:,} bytes, {model['parameters']:,} float32 parameters, head {model['head_bytes']:,} bytes "
            f"({model['head_bytes'] / full:.1%}); the full artifact in zstd -19: {compressed['last-layer'] / full:.1%}",
            flush=True,
        )
        idle = run_child("idle")["peak_kib"]

        results: dict[str, dict[str, dict]] = {case: {} for case in CASES}
        for case in CASES:
            for method in methods:
                patch = work / f"{case}.{method}.patch"
                print(f"creating {case} {method} ...", flush=True)
                created = run_child("create", method=method, old=paths["base"], new=paths[case], patch=patch)
                results[case][method] = {"bytes": patch.stat().st_size, "create": created, "applies": []}
        for r in range(a.runs):
            order = methods if r % 2 == 0 else list(reversed(methods))
            for case in CASES:
                for method in order:
                    out = work / f"{case}.{method}.out"
                    sha, size = digests[case]
                    applied = run_child(
                        "apply", method=method, old=paths["base"], patch=work / f"{case}.{method}.patch", out=out, sha256=sha, size=size
                    )
                    results[case][method]["applies"].append(applied)
                    out.unlink()
        for case in CASES:
            for row in results[case].values():
                row["apply_s"] = statistics.median(x["seconds"] for x in row["applies"])
                row["apply_peak_mib"] = max(x["peak_kib"] for x in row["applies"]) / 1024
                row["apply_own_mib"] = (max(x["peak_kib"] for x in row["applies"]) - idle) / 1024
                row["create_s"] = row["create"]["seconds"]
                row["create_peak_mib"] = row["create"]["peak_kib"] / 1024
            if CHOSEN in results[case]:
                results[case]["cdc-zstd"] = cdc_zstd(work / f"{case}.{CHOSEN}.patch", work)

        fetch = fetch_rows(work, paths, digests, a.runs) if CHOSEN in methods else {}

    print_tables(results, fetch, full, compressed, idle)
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    if importlib.util.find_spec("backports") and importlib.util.find_spec("backports.zstd"):
        from backports.zstd import zstd_version

        env["libzstd"] = zstd_version
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "command": cmd,
                "model": {k: v for k, v in model.items() if k != "paths"} | {"bytes": full},
                "full_zstd_bytes": compressed,
                "idle_child_peak_kib": idle,
                "results": results,
                "fetch": fetch,
                "skipped": skipped,
                "environment": env,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwrote {OUT.relative_to(ROOT)}")
    if CHOSEN in results["last-layer"] and results["last-layer"][CHOSEN]["bytes"] > GOAL * full:
        print(f"MISSED: the last-layer patch is more than {GOAL:.0%} of the full artifact")
        return 2
    return 0


def fetch_rows(work: Path, paths: dict, digests: dict, runs: int) -> dict:
    """Fetch + rebuild + verify from a patch against a full download, from a local HTTP server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(work)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base_url = f"http://127.0.0.1:{server.server_address[1]}"
    rows: dict[str, dict] = {}
    try:
        for case in CASES:
            sha, size = digests[case]
            patch = work / f"{case}.{CHOSEN}.patch"
            patch_sha, patch_size = sha256_file(patch)
            full_runs, delta_runs = [], []
            for r in range(runs):
                sides = ("full", "delta") if r % 2 == 0 else ("delta", "full")
                for side in sides:
                    out = work / "fetched.onnx"
                    if side == "full":
                        full_runs.append(run_child("fetch-full", url=f"{base_url}/{paths[case].name}", out=out, sha256=sha, size=size))
                    else:
                        delta_runs.append(
                            run_child(
                                "fetch-delta",
                                patch_url=f"{base_url}/{patch.name}",
                                patch=work / "fetched.patch",
                                patch_sha256=patch_sha,
                                patch_size=patch_size,
                                old=paths["base"],
                                out=out,
                                sha256=sha,
                                size=size,
                            )
                        )
                    out.unlink()
            full_s = statistics.median(x["seconds"] for x in full_runs)
            delta_s = statistics.median(x["seconds"] for x in delta_runs)
            saved = size - patch_size
            rows[case] = {
                "full_bytes": size,
                "patch_bytes": patch_size,
                "full_s": full_s,
                "delta_s": delta_s,
                "full_peak_mib": max(x["peak_kib"] for x in full_runs) / 1024,
                "delta_peak_mib": max(x["peak_kib"] for x in delta_runs) / 1024,
                # below this link speed fetching the patch and rebuilding beats fetching the whole file
                "break_even_mib_s": (saved / (delta_s - full_s) / MIB) if delta_s > full_s else None,
                "runs": {"full": full_runs, "delta": delta_runs},
            }
    finally:
        server.shutdown()
    return rows


def print_tables(results: dict, fetch: dict, full: int, compressed: dict, idle_kib: int) -> None:
    print(f"\nBytes on the wire (full artifact {full:,} bytes), create once, apply = rebuild + sha256, median")
    print("| case | method | patch bytes | × full | × full zstd | create s | apply s | apply peak RSS MiB (own) |")
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        for method, row in results[case].items():
            if method == "cdc-zstd":
                print(
                    f"| {case} | cdc-zstd (literals in zstd -19; size only) | {row['bytes']:,} | {row['bytes'] / full:.3f} | "
                    f"{row['bytes'] / compressed[case]:.3f} | | literals {row['zstd_decompress_s']:.2f} vs xz {row['xz_decompress_s']:.2f} | |"
                )
                continue
            print(
                f"| {case} | {method} | {row['bytes']:,} | {row['bytes'] / full:.3f} | {row['bytes'] / compressed[case]:.3f} | "
                f"{row['create_s']:.2f} | {row['apply_s']:.2f} | {row['apply_peak_mib']:.1f} ({row['apply_own_mib']:.1f}) |"
            )
    print(f"(own: above an idle child's {idle_kib / 1024:.1f} MiB)")
    if fetch:
        print(f"\nTime to fetch + rebuild + verify from a local HTTP server, {CHOSEN} patch vs full download, median")
        print("| case | full bytes | full s | patch bytes | patch + rebuild s | patch faster below |")
        print("|---|---|---|---|---|---|")
        for case, row in fetch.items():
            even = f"{row['break_even_mib_s']:.1f} MiB/s" if row["break_even_mib_s"] else "any speed"
            print(f"| {case} | {row['full_bytes']:,} | {row['full_s']:.3f} | {row['patch_bytes']:,} | {row['delta_s']:.3f} | {even} |")


if __name__ == "__main__":
    sys.exit(main())
