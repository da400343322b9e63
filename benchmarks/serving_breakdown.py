"""Where the endpoint's added latency goes, per request: the client's and the server's side of each request.

Starts `edgefleet-agent serve` (this file in --server mode: the agent's own `serve`, with timestamps patched around
its request phases) on a signed copy of the model, three times: the model itself, a model that answers at once (the
floor), and one that busy-waits for the in-process p50 of session.run instead of running (same CPU time, none of the
model's memory traffic). Triton's HTTP client with binary tensors (or http.client) sends requests interleaved with
in-process session.run (same session options), rounds in ABBA order. perf_counter_ns is CLOCK_MONOTONIC, common to
both processes, so each request's phases line up with the client's call. Prints p50s per phase, in ms; Linux/macOS
(the server dumps its timestamps on SIGUSR1).

    .venv/bin/python benchmarks/serving_breakdown.py [--model sample|light_squeezenet] [--requests 150] [--rounds 6] [--client triton|http]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

ns = time.perf_counter_ns
PHASES = (  # (label, start mark, end mark), server marks
    ("headers", "line", "hdr<"),
    ("body read (from the socket)", "body>", "body<"),
    ("parse request", "parse>", "parse<"),
    ("predict() before session.run", "predict>", "run>"),
    ("session.run (or its stand-in)", "run>", "run<"),
    ("predict() after: NaN check, telemetry", "run<", "predict<"),
    ("encode response", "enc>", "enc<"),
    ("send response", "send>", "send<"),
)


def server(variant: str, spin_ms: float, model_dir: str, key: str, stats: str) -> int:
    """--server: the agent's `serve`, its request phases timed; timestamps to `stats` on SIGUSR1."""
    import resource

    import edgefleet_agent.__main__ as main
    import edgefleet_agent.core as core
    import edgefleet_agent.endpoint as ep
    import edgefleet_agent.serving as sv

    done: list[dict[str, int]] = []
    current = threading.local()

    def mark(label: str) -> None:
        d = getattr(current, "d", None)
        if d is not None:
            d[label] = ns()

    def timed(owner: object, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def call(*a: object, **k: object) -> object:
            mark(label + ">")
            try:
                return inner(*a, **k)
            finally:
                mark(label + "<")

        setattr(owner, name, call)

    handle = ep._Handler.handle_one_request

    def handle_one_request(self: ep._Handler) -> None:
        readline, d = self.rfile.readline, {}
        current.d = None

        def first_line(*a: int) -> bytes:
            line = readline(*a)
            if current.d is None and "line" not in d:
                d.update(line=ns(), cpu=time.thread_time_ns(), flt=resource.getrusage(resource.RUSAGE_THREAD).ru_minflt)
                current.d = d
            return line

        self.rfile.readline = first_line  # type: ignore[method-assign]
        try:
            handle(self)
        finally:
            self.rfile.readline = readline  # type: ignore[method-assign]
            current.d = None
            if "send<" in d:
                d.update(
                    end=ns(), cpu=time.thread_time_ns() - d["cpu"], flt=resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - d["flt"]
                )
                done.append(d)

    ep._Handler.handle_one_request = handle_one_request  # type: ignore[method-assign]
    timed(ep._Handler, "parse_request", "hdr")
    timed(ep._Handler, "_read_body", "body")
    timed(ep._Handler, "_send", "send")
    timed(ep, "parse_infer_request", "parse")
    timed(ep, "encode_infer_response", "enc")
    timed(core.DeviceAgent, "predict", "predict")
    open_session = sv.open_session

    class Session:
        def __init__(self, inner: sv.Session) -> None:
            self.inner, self.answer = inner, None

        def run(self, names: list[str], feed: dict) -> list:
            mark("run>")
            try:
                if variant == "model" or self.answer is None:  # warm-up runs the model: its outputs are the answer
                    self.answer = self.inner.run(names, feed)
                elif variant == "busy":
                    end = ns() + int(spin_ms * 1e6)
                    while ns() < end:
                        pass
                return self.answer
            finally:
                mark("run<")

        def get_providers(self) -> list[str]:
            return self.inner.get_providers()

    sv.open_session = lambda *a: Session(open_session(*a))  # type: ignore[assignment]
    signal.signal(signal.SIGUSR1, lambda *_: Path(stats).write_text(json.dumps(done)))
    argv = ["serve", "--model-dir", model_dir, "--public-key", key, "--port", "0", "--report-seconds", "3600", "--log-level", "WARNING"]
    return main.main(argv)


def measure(variant: str, spin_ms: float, args: argparse.Namespace, model_dir: Path, key: Path, tmp: Path) -> dict:
    import numpy as np
    import tritonclient.http as triton
    from serving_bench import SERVING

    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.serving import open_session

    stats = tmp / f"{variant}.json"
    cmd = [sys.executable, __file__, "--server", variant, str(spin_ms), str(model_dir), str(key), str(stats)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        while not (found := SERVING.search(line := proc.stderr.readline())):
            if not line:
                raise SystemExit(f"the {variant} server did not start")
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        url = found.group(1).removeprefix("http://")
        manifest = ModelDir(model_dir).load()
        spec = manifest.inputs[0]
        shape = [d if isinstance(d, int) else 1 for d in spec.shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        session = open_session(ModelDir(model_dir).artifact_path(manifest), ["CPUExecutionProvider"])
        names = [o.name for o in manifest.outputs]
        if args.client == "triton":
            client = triton.InferenceServerClient(url)
            inp = triton.InferInput(spec.name, shape, "FP32")
            inp.set_data_from_numpy(x, binary_data=True)

            def endpoint() -> None:
                client.infer(manifest.name, [inp])
        else:
            host, port = url.split(":")
            conn = http.client.HTTPConnection(host, int(port))
            inputs = [{"name": spec.name, "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}]
            header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
            body, headers = header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header))}

            def endpoint() -> None:
                conn.request("POST", f"/v2/models/{manifest.name}/infer", body, headers)
                conn.getresponse().read()

        for _ in range(20):
            endpoint()
            session.run(names, {spec.name: x})
        calls: list[tuple[int, int, int]] = []
        in_process: list[int] = []
        for r in range(args.rounds):
            for side in ("in_process", "endpoint") if r % 2 == 0 else ("endpoint", "in_process"):
                for _ in range(args.requests):
                    t, cpu = ns(), time.thread_time_ns()
                    if side == "endpoint":
                        endpoint()
                        calls.append((t, ns(), time.thread_time_ns() - cpu))
                    else:
                        session.run(names, {spec.name: x})
                        in_process.append(ns() - t)
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not stats.exists() or len(json.loads(stats.read_text() or "[]")) < len(calls) + 20:
            if time.monotonic() > deadline:
                raise SystemExit(f"the {variant} server did not report its timings")
            time.sleep(0.2)
            proc.send_signal(signal.SIGUSR1)
    finally:
        proc.terminate()
        proc.wait(30)
    server_side = json.loads(stats.read_text())[-len(calls) :]

    def p50(values: list[float]) -> float:
        return statistics.median(values) / 1e6

    rows = {
        "round trip": p50([e - t for t, e, _ in calls]),
        "in-process session.run": p50(in_process),
        "client CPU (thread time)": p50([c for _, _, c in calls]),
        "client start -> server has the request line": p50([d["line"] - t for (t, _, _), d in zip(calls, server_side, strict=True)]),
        "server wall, request line -> response sent": p50([d["send<"] - d["line"] for d in server_side]),
        "server CPU in that span": p50([d["cpu"] for d in server_side]),
    }
    rows.update({label: p50([d[b] - d[a] for d in server_side]) for label, a, b in PHASES})
    rest = [d["send<"] - d["line"] - sum(d[b] - d[a] for _, a, b in PHASES) for d in server_side]
    rows["routing, checks, outputs (the rest)"] = p50(rest)
    rows["minor page faults (count)"] = p50([d["flt"] * 1e6 for d in server_side])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", default="sample", help="sample (models/samples/detector-1.1.0.onnx) or a model of the onnx package's light set"
    )
    ap.add_argument("--requests", type=int, default=150, help="requests per side per round (default 150)")
    ap.add_argument("--rounds", type=int, default=6, help="rounds (default 6)")
    ap.add_argument("--client", choices=("triton", "http"), default="triton", help="Triton's HTTP client (default) or http.client")
    ap.add_argument("--server", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        variant, spin_ms, model_dir, key, stats = args.server
        return server(variant, float(spin_ms), model_dir, key, stats)

    from serving_bench import LIGHT, SAMPLE, publish

    from components.local.signer import LocalKeySigner, create_key_file, public_key_path
    from edgefleet_agent.serving import open_session

    with tempfile.TemporaryDirectory(prefix="edgefleet-serving-breakdown-") as name:
        tmp = Path(name)
        signing_key = create_key_file(tmp / "k.pem")
        if args.model == "sample":
            model_dir, _ = publish(tmp, LocalKeySigner(signing_key), "detector", SAMPLE, "1.1.0")
        else:
            copied = tmp / f"{args.model.replace('_', '-')}.onnx"
            shutil.copyfile(LIGHT / f"{args.model}.onnx", copied)
            model_dir, _ = publish(tmp, LocalKeySigner(signing_key), copied.stem, copied, "1.0.0")
        import numpy as np

        from edgefleet_agent.contract.manifest import ModelDir

        manifest = ModelDir(model_dir).load()
        session = open_session(ModelDir(model_dir).artifact_path(manifest), ["CPUExecutionProvider"])
        spec = manifest.inputs[0]
        feed = {spec.name: np.zeros([d if isinstance(d, int) else 1 for d in spec.shape], np.float32)}
        times = []
        for _ in range(max(20, args.requests)):
            t = ns()
            session.run(None, feed)
            times.append(ns() - t)
        spin_ms = statistics.median(times) / 1e6
        columns = {
            "model": measure("model", 0.0, args, model_dir, public_key_path(signing_key), tmp),
            "instant": measure("instant", 0.0, args, model_dir, public_key_path(signing_key), tmp),
            f"busy {spin_ms:.2f} ms": measure("busy", spin_ms, args, model_dir, public_key_path(signing_key), tmp),
        }
    print(f"\n{args.model}, {args.client} client, p50 ms per request; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    width = max(len(k) for k in columns["model"])
    print(f"{'':<{width}}  " + "  ".join(f"{c:>14}" for c in columns))
    for row in columns["model"]:
        print(f"{row:<{width}}  " + "  ".join(f"{columns[c][row]:>14.3f}" for c in columns))
    added = {c: v["round trip"] - v["in-process session.run"] for c, v in columns.items()}
    print(f"{'added (round trip - in-process)':<{width}}  " + "  ".join(f"{added[c]:>+14.3f}" for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
