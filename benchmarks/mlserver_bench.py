"""MLServer benchmark: edgefleet's inference endpoint beside MLServer serving the same model file, against
session.run in this process, measured in the same run.

Sides, on each model (sequential requests from one client, interleaved in rounds, ABBA, warm-up excluded):

  in_process        session.run in this process (serving.open_session: the agent's session options, one intra-op and
                    one inter-op thread): the baseline of every ratio
  edgefleet_binary  `edgefleet-agent serve` on a signed copy of the model, Triton's HTTP client, binary tensors (its
                    default)
  edgefleet_json    the same endpoint and client with JSON tensors (binary_data=False): the like-for-like reference
                    for MLServer's JSON
  mlserver_json     MLServer (pip `mlserver==1.7.1` in its own virtualenv, with the same onnxruntime version as this
                    one) serving the same .onnx file through a minimal custom runtime (an MLModel whose load() opens
                    an InferenceSession with the same session options and thread counts, read from the in-process
                    session, and whose predict() decodes inputs and encodes outputs with MLServer's NumpyCodec),
                    Triton's HTTP client with JSON tensors
  mlserver_binary   one request with binary tensors: MLServer's answer (HTTP status and error) is recorded, not timed

Models: the 2 KB sample (models/samples/detector-1.1.0.onnx, image float32 [1,3,224,224]) and a real architecture
with light weights from the onnx package (light_squeezenet, data_0 float32 [1,3,224,224]; --large NAME).

MLServer runs `mlserver start` on free loopback ports with `parallel_workers` 0 (inference in the server's own
process, no inter-process queue: its fastest path for one client; --mlserver-workers N for MLServer's default, 1),
no metrics server, no gzip; its gRPC server cannot be turned off and idles on a free port. It is always stopped,
also on Ctrl-C or a failure. Its virtualenv is built once, under ~/.cache/edgefleet/ (--venv DIR), and rebuilt only
when what it pins changes; with no index to install from the benchmark says why and exits 3
(--skip-if-unavailable: prints "skipped: <reason>" and exits 0, as benchmarks/run_all.py runs it).

No target: it reports. Reproduce: .venv/bin/python benchmarks/mlserver_bench.py  (writes benchmarks/out/mlserver.json)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))  # timing.py and serving_bench.py, shared with the serving benchmark

from timing import against  # noqa: E402

OUT = REPO / "benchmarks" / "out" / "mlserver.json"
MLSERVER_VERSION = "1.7.1"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefleet"
DEFAULT_VENV = CACHE / f"mlserver-{MLSERVER_VERSION}-venv"
READY_MARKER = ".edgefleet-bench-ready"  # in the venv: the requirements it was built with, written last
EXIT_UNAVAILABLE = 3
ADDED_P50_MS_GOAL = 0.5  # issue 11's goals for edgefleet's binary endpoint; serving_bench.py gates them (exit 2)
THROUGHPUT_RATIO_GOAL = 0.8  # on the larger model
SIDES = ("in_process", "edgefleet_binary", "edgefleet_json", "mlserver_json")
LABELS = {
    "in_process": "in-process session.run",
    "edgefleet_binary": "edgefleet endpoint, binary",
    "edgefleet_json": "edgefleet endpoint, JSON",
    "mlserver_json": f"MLServer {MLSERVER_VERSION}, JSON",
    "mlserver_binary": f"MLServer {MLSERVER_VERSION}, binary",
}

# The custom runtime MLServer loads (runtime.py beside settings.json; `implementation: runtime.OnnxRuntime`).
RUNTIME = '''"""A minimal MLServer runtime for an ONNX model, written by edgefleet's benchmarks/mlserver_bench.py."""

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        opts = ort.SessionOptions()
        opts.log_severity_level = int(extra.get("log_severity_level", 3))
        opts.intra_op_num_threads = int(extra["intra_op_num_threads"])
        opts.inter_op_num_threads = int(extra["inter_op_num_threads"])
        path = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(path, sess_options=opts, providers=list(extra["providers"]))
        self._outputs = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        values = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name, value) for name, value in zip(self._outputs, values)],
        )
'''


class Unavailable(Exception):
    """MLServer cannot be had here (no index to install from, a failed install, a server that did not start)."""


# -- the MLServer side: virtualenv, files, process ---------------------------------------------------------------------
def requirements(onnxruntime_version: str) -> list[str]:
    return [f"mlserver=={MLSERVER_VERSION}", f"onnxruntime=={onnxruntime_version}"]


def ensure_venv(venv: Path, reqs: list[str], log: Path | None = None) -> Path:
    """The virtualenv's python, built once with reqs (pip's output streamed as progress, in full to log); raises
    Unavailable with the reason when it cannot be built."""
    python = venv / "bin" / "python"
    marker = venv / READY_MARKER
    if marker.is_file() and marker.read_text() == "\n".join(reqs) and (venv / "bin" / "mlserver").is_file():
        print(f"MLServer virtualenv: {venv} (cached)", flush=True)
        return python
    log = log or venv.with_name(venv.name + ".log")
    print(f"building the MLServer virtualenv (once) at {venv}: pip install {' '.join(reqs)} (full log: {log})", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        raise Unavailable(f"cannot create a virtualenv at {venv}: {(made.stderr or made.stdout).strip()[-300:]}")
    # this interpreter's pip installs into it (pip --python), so the venv needs no pip of its own
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install", "--progress-bar", "off"]
    cmd += ["--retries", "2", "--timeout", "30", *reqs]
    tail: list[str] = []
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            tail = (tail + [line.rstrip()])[-8:]
            if line.startswith(("Collecting ", "Installing collected", "Successfully installed", "ERROR")):
                print(f"  {line.rstrip()[:160]}", flush=True)
        code = proc.wait()
    if code != 0:
        shutil.rmtree(venv, ignore_errors=True)
        errors = [t for t in tail if t.startswith("ERROR")] or tail[-2:]
        raise Unavailable(f"pip could not install {' '.join(reqs)} (exit {code}; no index reachable?): {' / '.join(errors)[:400]}")
    marker.write_text("\n".join(reqs))
    return python


def server_settings(http_port: int, grpc_port: int, parallel_workers: int) -> dict:
    """settings.json: loopback only, no metrics server or middleware, no gzip, quiet logs."""
    return {
        "debug": False,
        "host": "127.0.0.1",
        "http_port": http_port,
        "grpc_port": grpc_port,
        "metrics_endpoint": None,
        "gzip_enabled": False,
        "parallel_workers": parallel_workers,
        "load_models_at_startup": True,
    }


def model_settings(name: str, onnx_file: Path, intra: int, inter: int, providers: list[str]) -> dict:
    """model-settings.json for the custom runtime, with the in-process side's session options."""
    return {
        "name": name,
        "implementation": "runtime.OnnxRuntime",
        "parameters": {
            "uri": str(onnx_file),
            "extra": {"intra_op_num_threads": intra, "inter_op_num_threads": inter, "log_severity_level": 3, "providers": providers},
        },
    }


def write_repository(root: Path, settings: dict, models: list[dict]) -> None:
    """MLServer's folder: settings.json, runtime.py, and one model-settings.json per model in its own folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "settings.json").write_text(json.dumps(settings, indent=2))
    (root / "runtime.py").write_text(RUNTIME)
    for m in models:
        (root / m["name"]).mkdir(exist_ok=True)
        (root / m["name"] / "model-settings.json").write_text(json.dumps(m, indent=2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlserver(venv: Path, root: Path, http_port: int, timeout_s: float = 180) -> Iterator[str]:
    """`mlserver start root` in its own process group; yields its URL once /v2/health/ready answers 200, and always
    stops it (SIGTERM to its group, SIGKILL after 20 s)."""
    log = root / "mlserver.log"
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "mlserver"), "start", str(root)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace").strip().splitlines()[-6:]
                why = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout_s:.0f} s"
                raise Unavailable(f"mlserver start {why}; its log ends: {' / '.join(tail)[-600:]}")
            time.sleep(0.25)
        yield url
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


# -- figures -------------------------------------------------------------------------------------------------------------
def compare(stats: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each side's figures with what it adds to in_process, and the served sides against edgefleet's binary endpoint
    (p50 and throughput as multiples: how many times slower / faster)."""
    base, ours = stats["in_process"], stats.get("edgefleet_binary")
    out: dict[str, dict[str, float]] = {}
    for side, s in stats.items():
        row = dict(s)
        if side in SIDES and side != "in_process":
            row.update(against(s, base))
        if ours is not None and side in SIDES and side not in ("in_process", "edgefleet_binary"):
            row["p50_x_edgefleet_binary"] = s["p50_ms"] / ours["p50_ms"]
            row["edgefleet_binary_throughput_x"] = ours["throughput_per_s"] / s["throughput_per_s"]
        out[side] = row
    return out


def table(result: dict) -> list[str]:
    """The readable table: one block per model, one line per side."""
    head = f"{'model / side':<38} {'p50 ms':>9} {'p99 ms':>9} {'req/s':>8} {'added p50':>10} {'added p99':>10} {'thr x base':>10}"
    lines = [head, "-" * len(head)]
    for m in result["models"]:
        lines.append(f"{m['model']} ({m['input_bytes'] / 1024:,.0f} KiB in, {m['requests']['in_process']} req/side)")
        for side in SIDES:
            s = m["sides"].get(side)
            if s is None:
                continue
            added = (
                ("", "", "1")
                if side == "in_process"
                else (f"{s['added_p50_ms']:+.3f}", f"{s['added_p99_ms']:+.3f}", f"{s['throughput_ratio']:.3f}")
            )
            label = f"  {LABELS[side]}" + (f" ({m['requests'][side]})" if m["requests"][side] != m["requests"]["in_process"] else "")
            lines.append(
                f"{label:<38} {s['p50_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['throughput_per_s']:>8.1f} {added[0]:>10} {added[1]:>10} {added[2]:>10}"
            )
        enc = m["sides"].get("client_json_encode")
        if enc is not None:
            lines.append(f"  of each JSON request, Triton's client serialising it: p50 {enc['p50_ms']:.3f} ms")
        b = m.get("mlserver_binary")
        if b is not None:
            said = "answered" if b["ok"] else f"refused: HTTP {b['status']}" if b["status"] else "failed"
            lines.append(f"  {LABELS['mlserver_binary'] + ':':<37} {said}" + (f": {b['error'][:110]}" if b["error"] else ""))
        mj = m["sides"].get("mlserver_json")
        if mj and "p50_x_edgefleet_binary" in mj:
            ej = m["sides"].get("edgefleet_json")
            lines.append(
                f"  MLServer JSON p50 = {mj['p50_x_edgefleet_binary']:,.1f}x edgefleet binary's"
                + (f", {mj['p50_ms'] / ej['p50_ms']:.2f}x edgefleet JSON's" if ej else "")
                + f"; edgefleet binary throughput = {mj['edgefleet_binary_throughput_x']:,.1f}x MLServer JSON's"
            )
    return lines


def goals(result: dict) -> dict:
    """Issue 11's goals for edgefleet's binary endpoint in this run: added p50 on every model, throughput on the larger
    one (the last). Reported, not gated: serving_bench.py gates them."""
    ours = [(m["model"], m["sides"]["edgefleet_binary"]) for m in result["models"]]
    return {
        "added_p50_ms_max": ADDED_P50_MS_GOAL,
        "throughput_ratio_min_large": THROUGHPUT_RATIO_GOAL,
        "added_p50_ms": {name: s["added_p50_ms"] for name, s in ours},
        "throughput_ratio_large": ours[-1][1]["throughput_ratio"],
        "met": all(s["added_p50_ms"] <= ADDED_P50_MS_GOAL for _, s in ours) and ours[-1][1]["throughput_ratio"] >= THROUGHPUT_RATIO_GOAL,
    }


def goals_line(g: dict) -> str:
    added = ", ".join(f"{name} {v:+.3f}" for name, v in g["added_p50_ms"].items())
    return (
        f"issue 11's goals for edgefleet binary (gated by serving_bench.py): added p50 <= {g['added_p50_ms_max']} ms: {added}; "
        f"throughput >= {g['throughput_ratio_min_large']}x on the larger model: {g['throughput_ratio_large']:.3f}x -> "
        + ("met" if g["met"] else "not met in this run")
    )


# -- measurement ---------------------------------------------------------------------------------------------------------
def binary_attempt(client: object, model: str, inp: object) -> dict:
    """One request with Triton's binary tensors: what the server answers (never raises)."""
    from tritonclient.utils import InferenceServerException

    try:
        client.infer(model, [inp])  # type: ignore[attr-defined]
        return {"ok": True, "status": 200, "error": "", "body": None}
    except InferenceServerException as exc:
        status = exc.status()
        return {"ok": False, "status": int(status) if status and str(status).isdigit() else None, **refusal(str(exc.message() or exc))}
    except Exception as exc:  # a closed connection or anything else: recorded, not fatal
        return {"ok": False, "status": None, "error": f"{type(exc).__name__}: {exc}"[:500], "body": None}


def refusal(message: str) -> dict:
    """The server's answer inside Triton's client's message ("...\nresponse: <body>"), and what it says in a line:
    FastAPI's validation errors are {"detail": [{"msg", "ctx": {"error"}}]}."""
    if "response: " not in message:
        return {"error": " ".join(message.split())[:500], "body": None}
    body = message.rsplit("response: ", 1)[1].strip()
    try:
        details = json.loads(body)["detail"]
        said = "; ".join(f"{d['msg']} ({d['ctx']['error']})" if d.get("ctx", {}).get("error") else d["msg"] for d in details)
    except (ValueError, KeyError, TypeError):
        said = " ".join(body.split())
    return {"error": said[:500], "body": body[:2000]}


def measure_model(name: str, model_dir: Path, key: Path, mlserver_url: str, rounds: int, per_round: int, json_per_round: int) -> dict:
    import numpy as np
    import serving_bench
    import tritonclient.http as triton
    from timing import interleaved, summarize
    from tritonclient.http._utils import _get_inference_request

    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.serving import open_session

    mdir = ModelDir(model_dir)
    manifest = mdir.load()
    spec = manifest.inputs[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    session = open_session(mdir.artifact_path(manifest), ["CPUExecutionProvider"])
    names = [o.name for o in manifest.outputs]
    expected = session.run(names, {spec.name: x})[0]

    def request(binary: bool) -> tuple[list, list]:
        inp = triton.InferInput(spec.name, shape, "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        return [inp], [triton.InferRequestedOutput(n, binary_data=binary) for n in names]

    bin_in, _ = request(True)
    json_in, json_out = request(False)
    proc, url = serving_bench.start_serve(model_dir, key)
    try:
        ours = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=300)
        theirs = triton.InferenceServerClient(mlserver_url.removeprefix("http://"), network_timeout=300)
        for side, got in (
            ("edgefleet_binary", ours.infer(manifest.name, bin_in).as_numpy(names[0])),
            ("edgefleet_json", ours.infer(manifest.name, json_in, outputs=json_out).as_numpy(names[0])),
            ("mlserver_json", theirs.infer(manifest.name, json_in, outputs=json_out).as_numpy(names[0])),
        ):
            try:
                np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
            except AssertionError as exc:
                raise SystemExit(f"{name}: {side}'s answer differs from session.run's: {exc}") from None
        attempt = binary_attempt(theirs, manifest.name, bin_in[0])
        sides = {
            "in_process": lambda: session.run(names, {spec.name: x}),
            "edgefleet_binary": lambda: ours.infer(manifest.name, bin_in),
            "edgefleet_json": lambda: ours.infer(manifest.name, json_in, outputs=json_out),
            "mlserver_json": lambda: theirs.infer(manifest.name, json_in, outputs=json_out),
            # what both JSON sides spend in Triton's client before sending: serialising the request
            "client_json_encode": lambda: _get_inference_request(json_in, "", json_out, 0, False, False, 0, None, None),
        }
        counts = {s: json_per_round if "json" in s else per_round for s in sides}
        warmup = {s: 2 if "json" in s else max(3, per_round // 10) for s in sides}
        lat, busy = interleaved(sides, rounds, counts, warmup)
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "model": name,
        "input": {"name": spec.name, "shape": shape, "datatype": "FP32"},
        "input_bytes": int(x.nbytes),
        "requests": {s: len(v) for s, v in lat.items()},
        "sides": compare({s: summarize(v, busy[s]) for s, v in lat.items()}),
        "mlserver_binary": attempt,
        "latencies_ms": {s: [round(v, 4) for v in values] for s, values in lat.items()},
    }


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(HERE))
    import onnx
    import onnxruntime
    import serving_bench

    from components.local.signer import LocalKeySigner, create_key_file, public_key_path
    from edgefleet_agent.contract.manifest import ModelDir
    from edgefleet_agent.serving import open_session

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    large_file = light / f"{args.large}.onnx"
    if not large_file.is_file():
        raise SystemExit(f"{large_file}: not found; pick one of {', '.join(p.stem for p in light.glob('*.onnx'))}")
    reqs = requirements(onnxruntime.__version__)
    venv_python = ensure_venv(args.venv, reqs)
    theirs = subprocess.run(
        [str(venv_python), "-c", "import importlib.metadata as m; print(m.version('mlserver'), m.version('onnxruntime'))"],
        capture_output=True,
        text=True,
    ).stdout.split()

    with tempfile.TemporaryDirectory(prefix="edgefleet-mlserver-bench-") as tmp:
        root = Path(tmp)
        key = create_key_file(root / "stack.pem")
        signer, pub = LocalKeySigner(key), public_key_path(key)
        large_name = args.large.replace("_", "-")
        copied = root / f"{large_name}.onnx"
        shutil.copyfile(large_file, copied)
        published = [
            ("detector", serving_bench.publish(root, signer, "detector", serving_bench.SAMPLE, "1.1.0")[0], args.requests),
            (large_name, serving_bench.publish(root, signer, large_name, copied, "1.0.0")[0], max(5, args.requests // 5)),
        ]
        # the session options every side uses: the agent's (open_session), read back from a session
        probe = open_session(ModelDir(published[0][1]).artifact_path(ModelDir(published[0][1]).load()), ["CPUExecutionProvider"])
        opts = probe.get_session_options()
        options = {"intra_op_num_threads": opts.intra_op_num_threads, "inter_op_num_threads": opts.inter_op_num_threads}
        options["providers"] = probe.get_providers()
        http_port, grpc_port = free_port(), free_port()
        settings = server_settings(http_port, grpc_port, args.mlserver_workers)
        files = []
        for name, model_dir, _ in published:
            mdir = ModelDir(model_dir)
            files.append(
                model_settings(
                    name,
                    mdir.artifact_path(mdir.load()),
                    options["intra_op_num_threads"],
                    options["inter_op_num_threads"],
                    options["providers"],
                )
            )
        repo = root / "mlserver"
        write_repository(repo, settings, files)
        print(f"starting mlserver {MLSERVER_VERSION} on 127.0.0.1:{http_port} …", flush=True)
        models = []
        with mlserver(args.venv, repo, http_port) as url:
            for name, model_dir, per_round in published:
                print(f"measuring {name}: {args.rounds} rounds × {per_round} requests (JSON sides {args.json_requests}) …", flush=True)
                models.append(measure_model(name, model_dir, pub, url, args.rounds, per_round, args.json_requests))

    return {
        "command": command_line(args),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "tritonclient": importlib.metadata.version("tritonclient"),
        "mlserver": {
            "version": theirs[0] if theirs else None,
            "onnxruntime": theirs[1] if len(theirs) > 1 else None,
            "venv": str(args.venv),
        },
        "mlserver_settings": {k: v for k, v in settings.items() if not k.endswith("_port")},
        "session_options": options,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rounds": args.rounds,
        "models": models,
    }


def command_line(args: argparse.Namespace) -> str:
    extra = f" --mlserver-workers {args.mlserver_workers}" if args.mlserver_workers else ""
    return f"benchmarks/mlserver_bench.py --rounds {args.rounds} --requests {args.requests} --json-requests {args.json_requests} --large {args.large}{extra}"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds per side (default 4)")
    ap.add_argument(
        "--requests",
        type=int,
        default=100,
        help="timed requests per round of in_process and edgefleet_binary on the sample model, a fifth of it on the larger one (default 100)",
    )
    ap.add_argument("--json-requests", type=int, default=4, help="timed requests per round of the JSON sides, on each model (default 4)")
    ap.add_argument(
        "--large",
        default="light_squeezenet",
        help="larger model from the onnx package's backend/test/data/light (default light_squeezenet)",
    )
    ap.add_argument(
        "--mlserver-workers", type=int, default=0, help="MLServer's parallel_workers (default 0: inference in the server's process)"
    )
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"the MLServer virtualenv, built once (default {DEFAULT_VENV})")
    ap.add_argument(
        "--skip-if-unavailable",
        action="store_true",
        help='print "skipped: <reason>" and exit 0 when MLServer cannot be installed or started',
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM too stops the servers through their finally blocks

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        result = run(args)
    except Unavailable as exc:
        if args.skip_if_unavailable:
            print(f"skipped: {exc}")
            return 0
        print(f"mlserver_bench: MLServer is not available here: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print("mlserver_bench: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"\nreproduce: .venv/bin/python {result['command']}   (load average {result['load_average'][0]:.2f} on {result['cpus']} CPUs)")
    print(
        f"onnxruntime {result['onnxruntime']} here and {result['mlserver']['onnxruntime']} in MLServer's venv; session options "
        f"intra {result['session_options']['intra_op_num_threads']}, inter {result['session_options']['inter_op_num_threads']} on every side; "
        f"MLServer parallel_workers {result['mlserver_settings']['parallel_workers']}\n"
    )
    result["goals"] = goals(result)
    print("\n".join(table(result)))
    print(f"\n{goals_line(result['goals'])}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwrote {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
