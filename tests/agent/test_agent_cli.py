"""The command line: `serve` (one signed model directory, no fleet), `run` with several models on one endpoint, and
the old form without a command, which deployed recipes and manifests still run."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.utils.shared_memory as shm
from agent_testkit import MODEL, REPO, artifact_path, oip_infer
from tritonclient.utils import InferenceServerException

from components.local.hub import LocalHub
from components.rollout.types import RingTarget

pytestmark = pytest.mark.slow
SERVING = re.compile(r"serving (\S+) (\S+) at (http://\S+)/v2/models/")


def agent(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "agent", *args], cwd=REPO, stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for_line(proc: subprocess.Popen, pattern: re.Pattern, timeout: float = 60) -> re.Match:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if found := pattern.search(line):
            return found
    proc.kill()
    pytest.fail("no line matching the pattern:\n" + "".join(seen))


def infer(url: str, model: str) -> dict:
    c = triton.InferenceServerClient(url.removeprefix("http://"))
    inp = triton.InferInput("image", [1, 3, 224, 224], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 224, 224), np.float32))
    return c.infer(model, [inp]).get_response()


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    proc.stderr.close()
    return code


def test_serve_verifies_a_signed_directory_and_serves_it(keys, v110):
    proc = agent("serve", "--model-dir", str(artifact_path(v110).parent), "--public-key", str(keys.pem_path), "--port", "0")
    try:
        found = wait_for_line(proc, SERVING)
        assert found.group(1, 2) == (MODEL, "1.1.0")
        url = found.group(3)
        response = infer(url, MODEL)
        assert (response["model_name"], response["model_version"]) == (MODEL, "1.1.0")
        status, body = oip_infer(url, MODEL, np.zeros((1, 3, 8, 8), np.float32))  # a bad request …
        assert status == 400 and "the model expects [batch, 3, 224, 224]" in body["error"]
        assert infer(url, MODEL)["model_version"] == "1.1.0" and proc.poll() is None  # … and the process serves on
    finally:
        assert stop(proc) == 0


def test_serve_takes_tensors_in_shared_memory_within_its_limits(keys, v110):
    x = np.random.default_rng(4).standard_normal((1, 3, 224, 224)).astype(np.float32)
    key = f"/edgefleet-cli-test-{uuid.uuid4().hex[:12]}"
    region = shm.create_shared_memory_region("frame", key, x.nbytes + 12, create_only=True)
    proc = agent(
        "serve", "--model-dir", str(artifact_path(v110).parent), "--public-key", str(keys.pem_path), "--port", "0",
        "--shm-max-regions", "1",
    )  # fmt: skip
    try:
        c = triton.InferenceServerClient(wait_for_line(proc, SERVING).group(3).removeprefix("http://"))
        shm.set_shared_memory_region(region, [x])
        c.register_system_shared_memory("frame", key, x.nbytes + 12)
        with pytest.raises(InferenceServerException, match="1 regions are registered, this endpoint's limit"):
            c.register_system_shared_memory("scores", key, 12, offset=x.nbytes)
        image = triton.InferInput("image", list(x.shape), "FP32").set_shared_memory("frame", x.nbytes)
        scores = triton.InferRequestedOutput("scores")
        scores.set_shared_memory("frame", 12, offset=x.nbytes)
        c.infer(MODEL, [image], outputs=[scores])
        binary = triton.InferInput("image", list(x.shape), "FP32").set_data_from_numpy(x)
        expected = c.infer(MODEL, [binary]).as_numpy("scores")
        np.testing.assert_array_equal(shm.get_contents_as_numpy(region, np.float32, [1, 3], offset=x.nbytes), expected)
    finally:
        assert stop(proc) == 0
        shm.destroy_shared_memory_region(region)


def serve_once(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "serve", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_serve_refuses_what_does_not_verify_with_file_problem_and_fix(tmp_path, keys, publisher, v110):
    tampered = tmp_path / "tampered" / MODEL
    shutil.copytree(artifact_path(v110).parent, tampered)
    onnx = next(tampered.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    proc = serve_once("--model-dir", str(tampered), "--public-key", str(keys.pem_path), "--port", "0")
    assert proc.returncode == 3, proc.stderr
    assert f"refusing {tampered}: {tampered / 'model.yaml'}: artifact does not match the signed manifest" in proc.stderr
    assert "fix: " in proc.stderr

    other_key = tmp_path / "other.pub.pem"
    other_key.write_bytes(keys.other.public_key_pem())
    proc = serve_once("--model-dir", str(artifact_path(v110).parent), "--public-key", str(other_key), "--port", "0")
    assert proc.returncode == 3 and "model.yaml: signed by key sha256:" in proc.stderr and "fix: " in proc.stderr, proc.stderr

    unsigned = tmp_path / "unsigned" / MODEL
    shutil.copytree(artifact_path(v110).parent, unsigned)
    (unsigned / "model.yaml.sig").unlink()
    proc = serve_once("--model-dir", str(unsigned), "--public-key", str(keys.pem_path), "--port", "0")
    assert proc.returncode == 3 and "no signature file" in proc.stderr and "edgefleet model sign" in proc.stderr, proc.stderr

    newer = publisher.publish("1.5.0", "detector-1.1.0.onnx", min_agent_version="9.0.0")
    proc = serve_once("--model-dir", str(artifact_path(newer).parent), "--public-key", str(keys.pem_path), "--port", "0")
    assert proc.returncode == 3 and "needs agent 9.0.0 or newer" in proc.stderr and "fix: upgrade edgefleet-agent" in proc.stderr


def test_serve_help_says_revocation_is_not_checked_and_names_the_exit_codes():
    proc = serve_once("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Revocation is NOT checked" in text and "--model-dir" in text and "--port" in text and "--host" in text
    assert "3 the directory does not verify" in text and "2 cannot start" in text


def test_an_address_in_use_exits_2(keys, v110):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = serve_once("--model-dir", str(artifact_path(v110).parent), "--public-key", str(keys.pem_path), "--port", str(port))
    assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_run_serves_several_models_on_one_endpoint_and_updates_them_without_restarting(tmp_path, keys, publisher, v100, v110):
    hub = LocalHub(tmp_path / "hub.db")
    classifier = publisher.publish("2.0.0", "detector-1.0.0.onnx", model="classifier")
    hub.set_desired(RingTarget("detector-rollout", "canary", 0, ["dev-1"]), v100)
    hub.set_desired(RingTarget("classifier-rollout", "canary", 0, ["dev-1"]), classifier)
    state = tmp_path / "state"
    # `run` spelled out, then the old form the deployed recipes use: both are `run`
    for argv in (["run"], []):
        proc = agent(
            *argv,
            "--hub",
            str(hub.path),
            "--device-id",
            "dev-1",
            "--model",
            MODEL,
            "--model",
            "classifier",
            "--state-dir",
            str(state),
            "--public-key",
            str(keys.pem_path),
            "--sync-seconds",
            "0.05",
            "--report-seconds",
            "0.05",
        )
        try:
            deadline = time.monotonic() + 60
            while not (state / "endpoint.json").exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            endpoint = json.loads((state / "endpoint.json").read_text())
            assert endpoint["models"] == [MODEL, "classifier"] and endpoint["pid"] == proc.pid
            url = endpoint["url"]
            c = triton.InferenceServerClient(url.removeprefix("http://"))
            while not c.is_server_ready():  # 503 for a model until its first sync has installed it
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            assert infer(url, "classifier")["model_version"] == "2.0.0"
            if argv:
                assert infer(url, MODEL)["model_version"] == "1.0.0"
                hub.set_desired(RingTarget("detector-rollout", "canary", 0, ["dev-1"]), v110)
            while infer(url, MODEL)["model_version"] != "1.1.0":  # a new version, same process, same endpoint
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            while not ((r := hub.reports(MODEL, ["dev-1"]).get("dev-1")) and r.version == "1.1.0" and r.inferences > 0):
                infer(url, MODEL)
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert r.p50_latency_ms is not None and r.predictions["kind"] == "classes"
        finally:
            assert stop(proc) == 0
        assert not (state / "endpoint.json").exists()


def test_greengrass_takes_one_model_from_its_environment_or_every_handed_over_model(tmp_path, keys):
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--transport", "greengrass", "--device-id", "t", "--model", "a", "--model", "b"]
        + ["--model-dir", str(tmp_path), "--state-dir", str(tmp_path / "s"), "--public-key", str(keys.pem_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--transport greengrass takes at most one --model" in proc.stderr


def test_run_help_keeps_the_old_form_and_names_serve():
    proc = subprocess.run([sys.executable, "-m", "agent", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    for phrase in ("--synthetic-traffic", "--port", "127.0.0.1", "edgefleet-agent serve --help", "Without a command"):
        assert phrase in text
    assert Path(REPO / "agent" / "__main__.py").exists()
