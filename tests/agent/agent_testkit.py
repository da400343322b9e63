"""Helpers shared by the agent tests: signed sample models published the way the fleet publishes them,
a transport and a clock the test controls, and a small HTTP model store that can misbehave."""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as triton

import edgefleet_agent.core
from components.local.signer import LocalKeySigner
from edgefleet.model_add import add_version
from edgefleet.signing import sign_model_dir
from edgefleet_agent.contract.manifest import HardwareProfile, ModelDir
from edgefleet_agent.contract.signing import rollback_order, sign_bytes
from edgefleet_agent.contract.state import DesiredModel, DeviceReport
from edgefleet_agent.endpoint import InferenceEndpoint

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "models" / "samples"
MODEL = "detector"
SHAPE = (1, 3, 224, 224)  # the detector's image
TARGET = HardwareProfile(name="x86-gateway", arch="amd64", execution_providers=["CPUExecutionProvider"], memory_mb=256, storage_mb=64)


@dataclass(frozen=True)
class Keys:
    signer: LocalKeySigner
    pem: bytes
    pem_path: Path
    other: LocalKeySigner  # a key the devices do not trust


class Publisher:
    """Records versions with `edgefleet model add`, signs them, and returns the DesiredModel the hub would carry."""

    def __init__(self, root: Path, keys: Keys) -> None:
        self.root = root
        self.keys = keys
        self.count = 0

    def publish(self, version: str, onnx: str, signer: LocalKeySigner | None = None, model: str = MODEL, **add_kwargs) -> DesiredModel:
        self.count += 1
        model_dir = self.root / f"{self.count:03d}-{version}" / model
        add_version(model_dir, SAMPLES / onnx, version, metrics=[], targets=[TARGET], **add_kwargs)
        mdir = ModelDir(model_dir)
        sign_model_dir(mdir, signer or self.keys.signer)
        manifest = mdir.load()
        return DesiredModel(
            model=model,
            version=version,
            sha256=manifest.sha256,
            size=manifest.size,
            uri=mdir.artifact_path(manifest).as_uri(),
            manifest=mdir.manifest_bytes().decode(),
            signature=mdir.signature_path.read_text(),
            rollout="detector-rollout",
        )

    def rollback(
        self,
        desired: DesiredModel,
        off: DesiredModel,
        signer: LocalKeySigner | None = None,
        version: str | None = None,
        sha256: str | None = None,
    ) -> DesiredModel:
        """`desired` under a rollback order that moves devices off `off` (the version that failed)."""
        order = rollback_order(
            MODEL, version or desired.version, sha256 or desired.sha256, "ring canary failed its gate", off.version, off.sha256
        )
        envelope = sign_bytes(signer or self.keys.signer, order)
        return dataclasses.replace(desired, rollback_order=order.decode(), rollback_signature=envelope.to_bytes().decode())


class FakeTransport:
    def __init__(self, desired: DesiredModel | None = None) -> None:
        self.desired_model = desired
        self.reports: list[DeviceReport] = []

    def desired(self, device_id: str, model: str) -> DesiredModel | None:
        return self.desired_model

    def report(self, report: DeviceReport) -> None:
        self.reports.append(report)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def artifact_path(desired: DesiredModel) -> Path:
    return Path(desired.uri.removeprefix("file://"))


def artifact_bytes(desired: DesiredModel) -> bytes:
    return artifact_path(desired).read_bytes()


def copy_to(desired: DesiredModel, dest: Path, data: bytes | None = None) -> DesiredModel:
    """The same desired state, with its artifact served from `dest` (holding `data` if given)."""
    dest.write_bytes(artifact_bytes(desired) if data is None else data)
    return dataclasses.replace(desired, uri=dest.as_uri())


class HttpStore:
    """An HTTP model store on localhost. `claim` sends a Content-Length larger than the body, then hangs up."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, int | None]] = {}
        store = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                entry = store.files.get(self.path)
                if entry is None:
                    self.send_error(404, "Not Found")
                    return
                body, claim = entry
                self.send_response(200)
                self.send_header("Content-Length", str(claim or len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, body: bytes, claim: int | None = None) -> str:
        self.files[f"/{name}"] = (body, claim)
        return f"http://127.0.0.1:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def client(endpoint: InferenceEndpoint) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(endpoint.url.removeprefix("http://"))


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def infer(c: triton.InferenceServerClient, x: np.ndarray, binary: bool = True, **kwargs) -> triton.InferResult:
    inp = triton.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return c.infer("detector", [inp], outputs=[triton.InferRequestedOutput("scores", binary_data=binary)], **kwargs)


def oip_infer(url: str, model: str, image: np.ndarray, label: int | None = None, timeout: float = 30.0) -> tuple[int, dict[str, Any]]:
    """One JSON inference request to an Open Inference Protocol endpoint (the detector's `image` input), without
    tritonclient: (HTTP status, the response document)."""
    doc: dict[str, Any] = {
        "inputs": [{"name": "image", "shape": list(image.shape), "datatype": "FP32", "data": image.reshape(-1).tolist()}]
    }
    if label is not None:
        doc["parameters"] = {"label": label}
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", json.dumps(doc), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def spy_rates(monkeypatch) -> list[object]:
    """The download cap each call of the agent's downloader was given, in order (the real download still runs)."""
    rates: list[object] = []
    real = edgefleet_agent.core.download

    def spy(*args, **kwargs):
        rates.append(kwargs.get("max_bytes_per_second"))
        return real(*args, **kwargs)

    monkeypatch.setattr(edgefleet_agent.core, "download", spy)
    return rates
