"""A small Open Inference Protocol client for applications on the device: the agent's endpoint, standard library only.

Applications may use any KServe v2 client (Triton's tritonclient is tested against the endpoint); this one is for
devices that install only the agent, and for the local fleet's simulated applications. It speaks HTTP/1.1 with
keep-alive, sends inputs as binary tensors (Triton's extension) and reads JSON or binary outputs.

    client = InferenceClient.from_state_dir("/var/lib/edgefleet")   # <state-dir>/endpoint.json says where
    answer = client.infer("detector", {"image": frame}, label=2)     # label: the true class, if the app knows it
    answer.version, answer.outputs["scores"]
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, urlsplit

import numpy as np

from edgefleet_agent.protocol import HEADER_LENGTH, InferResponse, ProtocolError, encode_infer_request, parse_infer_response

ENDPOINT_FILE = "endpoint.json"  # <state-dir>/endpoint.json: {"url", "models", "pid", "protocol"}, written by `run`


class InferenceError(Exception):
    """The endpoint refused or failed the request (`status` is its HTTP status; 0: it could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message

    @property
    def unreachable(self) -> bool:
        return self.status == 0


class InferenceClient:
    """One keep-alive connection to an agent's endpoint; not thread-safe (one client per thread)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: the agent's endpoint is plain http://host:port (it listens on the device only)")
        self.url = url.rstrip("/")
        self._host, self._port, self._timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def from_state_dir(cls, state_dir: str | Path, timeout: float = 10.0) -> "InferenceClient":
        """The endpoint the agent process serving `state_dir` wrote down (it may listen on a port chosen at start)."""
        path = Path(state_dir) / ENDPOINT_FILE
        try:
            url = json.loads(path.read_text())["url"]
        except FileNotFoundError:
            raise InferenceError(0, f"{path} does not exist: no agent serves this state directory yet") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InferenceError(0, f"{path} is unreadable ({exc}); the agent rewrites it when it starts") from None
        return cls(url, timeout)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "InferenceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes, str | None]:
        # A keep-alive connection the server closed while idle fails on first use: retry once on a new one.
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, data, resp.getheader(HEADER_LENGTH)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt:
                    raise InferenceError(0, f"{self.url}: the connection was closed: {exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise InferenceError(0, f"{self.url}: {exc.strerror if isinstance(exc, OSError) and exc.strerror else exc}") from None
        raise AssertionError("unreachable")

    def ready(self, model: str) -> bool:
        """The model has a verified version loaded (GET /v2/models/{model}/ready)."""
        status, _, _ = self._request("GET", f"/v2/models/{quote(model, safe='')}/ready")
        return status == 200

    def defer(self, model: str, seconds: float) -> float:
        """Holds the model's next swap back `seconds` more while the application is busy (edgefleet's extension; the
        agent bounds it and never holds back a rollback). Returns until when (Unix time)."""
        status, data, _ = self._request(
            "POST",
            f"/v2/models/{quote(model, safe='')}/defer",
            json.dumps({"seconds": seconds}).encode(),
            {"Content-Type": "application/json"},
        )
        _raise_for(status, data)
        return float(json.loads(data)["deferred_until"])

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], label: int | None = None, version: str | None = None, binary: bool = True
    ) -> InferResponse:
        """One request; `version`, if given, must be the one served (404 otherwise). Raises InferenceError: 400 inputs
        the model does not take, 404 unknown model or version, 500 the model failed, 503 nothing verified loaded yet,
        status 0 the endpoint is unreachable."""
        head, sections, header_length = encode_infer_request(inputs, label=label, binary=binary)
        body = b"".join([head, *(bytes(s) for s in sections)])
        path = f"/v2/models/{quote(model, safe='')}"
        if version is not None:
            path += f"/versions/{quote(version, safe='')}"
        headers = {"Content-Type": "application/octet-stream" if header_length is not None else "application/json"}
        if header_length is not None:
            headers[HEADER_LENGTH] = str(header_length)
        status, data, answer_length = self._request("POST", path + "/infer", body, headers)
        _raise_for(status, data)
        try:
            return parse_infer_response(data, int(answer_length) if answer_length is not None else None)
        except (ProtocolError, ValueError) as exc:
            raise InferenceError(502, str(getattr(exc, "message", exc))) from None


def _raise_for(status: int, data: bytes) -> None:
    """An answer other than 200 as InferenceError, with the endpoint's own message."""
    if status == 200:
        return
    try:
        message = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        message = data[:200].decode("utf-8", "replace")
    raise InferenceError(status, message)
