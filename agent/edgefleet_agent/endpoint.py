"""The device's inference endpoint: the Open Inference Protocol (KServe v2) over HTTP/1.1, one per device, serving
every model the agent process runs (protocol.py is the wire format; this module is the HTTP side).

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200 when live / when every model has a verified version loaded
    GET  /v2/models/{name}[/versions/{v}]      model metadata of the served version
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer
    GET  /v2/models/{name}[/versions/{v}]/config    Triton's model configuration extension (protocol.model_config)
    GET  /v2/models[/{name}[/versions/{v}]]/stats   Triton's statistics extension: counts and durations of the served
                                               versions since they began serving here (telemetry.Totals)
    POST /v2/models/{name}/defer               edgefleet's extension: {"seconds": N} holds the model's next swap back
                                               (bounded; never a rollback), answers {"name", "deferred_until"}
    GET  /v2/systemsharedmemory[/region/{r}]/status     Triton's system shared-memory extension (shm.py): register
    POST /v2/systemsharedmemory/region/{r}/register     {"key", "offset", "byte_size"}, then name the region in an
    POST /v2/systemsharedmemory[/region/{r}]/unregister input's or output's shared_memory_* parameters

A request always runs on the model's current verified version (`DeviceAgent.run`; its telemetry is recorded once the
answer is sent); a version in the path must
be that one, or the answer is 404. Health answers carry a JSON body ({"live": true}, {"ready": false}, {"name",
"ready"}) and say false with status 400, so both readings of the protocol (status code, body) agree. Errors are
`{"error": "..."}` with: 400 a request the protocol or the model's signature does not allow, 404 an unknown model,
version, shared-memory region or path, 405 a wrong method, 411 no Content-Length, 413 a body over the limit, 415 an
unknown Content-Encoding, 500 the model failed on valid inputs, 503 nothing verified is loaded for that model.

The standard library's ThreadingHTTPServer, one thread per connection, HTTP/1.1 keep-alive, Nagle off, every
response sent in one write when it is small. Bound to 127.0.0.1 by default: only the device's own applications
reach it. Payloads are never logged.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from time import perf_counter_ns
from typing import Any, Protocol
from urllib.parse import unquote

import numpy as np

from edgefleet_agent import __version__
from edgefleet_agent.contract.manifest import ModelManifest
from edgefleet_agent.protocol import (
    HEADER_LENGTH,
    InferRequest,
    ProtocolError,
    SharedMemoryRef,
    dumps,
    encode_infer_response,
    error_body,
    model_config,
    model_metadata,
    parse_infer_request,
    server_metadata,
    write_shared_output,
)
from edgefleet_agent.serving import ModelNotFound, NotReady, Prediction, RequestError, RequestTiming, VersionNotServed
from edgefleet_agent.shm import SharedMemoryRegions

log = logging.getLogger("edgefleet.agent.endpoint")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000  # the port Triton and KServe runtimes use for HTTP
DEFAULT_MAX_BODY_BYTES = 64 << 20
IDLE_SECONDS = 300.0  # a keep-alive connection idle this long is closed (each holds a thread)
SMALL_RESPONSE = 64 << 10  # binary sections up to this size are joined to the header: one send per response
MAX_HEADERS = 100
MAX_LINE = 65536
_PHRASES = {s.value: s.phrase for s in HTTPStatus}


class Answer(Protocol):
    """One request's outputs (DeviceAgent.run), sent before `settle` accounts for them."""

    @property
    def version(self) -> str: ...

    @property
    def outputs(self) -> dict[str, np.ndarray]: ...

    def settle(self, label: int | None = None, timing: RequestTiming | None = None, answered: bool = True) -> Prediction: ...


class Servable(Protocol):
    """What the endpoint needs of a model's agent (DeviceAgent)."""

    model: str

    def served(self) -> tuple[str, ModelManifest] | None: ...

    def run(self, inputs: dict[str, np.ndarray], version: str | None = None) -> Answer: ...

    def statistics(self) -> list[dict[str, Any]]: ...

    def defer(self, seconds: float) -> float: ...


class ModelRegistry:
    """The models one endpoint serves, by name. Models come and go while it serves (IoT Edge's twin, `run`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Servable] = {}  # replaced, never mutated: readers need no lock

    def add(self, agent: Servable) -> None:
        with self._lock:
            self._models = {**self._models, agent.model: agent}

    def remove(self, name: str) -> None:
        with self._lock:
            self._models = {k: v for k, v in self._models.items() if k != name}

    def get(self, name: str) -> Servable | None:
        return self._models.get(name)

    def names(self) -> list[str]:
        return sorted(self._models)

    def all(self) -> list[Servable]:
        return list(self._models.values())


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    wbits = {"gzip": 31, "x-gzip": 31, "deflate": 15}.get(encoding)
    if wbits is None:
        raise ProtocolError(415, f"Content-Encoding {encoding!r} is not supported (use gzip, deflate or none)")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"the {encoding} body does not decompress: {exc}") from None
    if len(out) > limit:
        raise ProtocolError(413, f"the request body decompresses to more than this endpoint's limit of {limit} bytes")
    if not d.eof:
        raise ProtocolError(400, f"the {encoding} body is truncated")
    return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"edgefleet-agent/{__version__}"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = IDLE_SECONDS
    server: _Server

    fields: dict[str, str]  # the request's headers, names lower-cased
    raw_requestline: bytes

    # -- plumbing ---------------------------------------------------------------------------------------------------
    def parse_request(self) -> bool:
        """http.server's parse_request with a small header reader: the email package's costs about 0.1 ms a request
        on a device-class CPU, a fifth of the whole protocol overhead. HTTP/1.0 and 1.1 only."""
        self.command = None  # type: ignore[assignment]  # as the base class does until the request line parses
        self.request_version = self.default_request_version
        self.close_connection = True
        self.fields = {}
        requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        self.requestline = requestline
        words = requestline.split()
        if not words:
            return False
        if len(words) != 3:
            self.send_error(400, f"Bad request syntax ({requestline!r})")
            return False
        command, path, version = words
        if version == "HTTP/1.1":
            self.close_connection = False
        elif version != "HTTP/1.0":
            major = version[5:].split(".", 1)[0] if version.startswith("HTTP/") else ""
            if major.isdigit() and len(major) <= 10 and int(major) >= 2:
                self.send_error(505, f"Invalid HTTP version ({version[5:]})")
            else:
                self.send_error(400, f"Bad request version ({version!r})")
            return False
        self.request_version = version
        self.command, self.path = command, "/" + path.lstrip("/") if path.startswith("//") else path
        fields = self.fields
        for _ in range(MAX_HEADERS + 1):
            line = self.rfile.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                self.send_error(431, "Line too long")
                return False
            if line in (b"\r\n", b"\n", b""):
                break
            name, colon, value = line.partition(b":")
            if not colon or not name.strip():
                self.send_error(400, f"Bad header line ({line[:100]!r})")
                return False
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        else:
            self.send_error(431, "Too many headers")
            return False
        connection = fields.get("connection", "").lower()
        if connection == "close":
            self.close_connection = True
        elif connection == "keep-alive":
            self.close_connection = False
        if fields.get("expect", "").lower() == "100-continue" and version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors http.server itself raises (bad request line, oversized headers, unknown method) in the protocol's JSON."""
        self.close_connection = True
        self._send(code, error_body(message or _PHRASES.get(code, "error")), close=True)

    def _send(
        self,
        status: int,
        body: bytes,
        binary: list[bytes | memoryview] | None = None,
        content_type: str = "application/json",
        close: bool = False,
        extra: str = "",
    ) -> None:
        length = len(body) + (sum(len(b) if isinstance(b, bytes) else b.nbytes for b in binary) if binary else 0)
        head = (
            f"HTTP/1.1 {status} {_PHRASES.get(status, '')}\r\nServer: {self.server_version}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {length}\r\n"
        )
        if binary:
            head += f"{HEADER_LENGTH}: {len(body)}\r\n"
        if close:
            self.close_connection = True
        if self.close_connection:
            head += "Connection: close\r\n"
        head += extra + "\r\n"
        out = head.encode("latin-1") + body
        if binary and length - len(body) <= SMALL_RESPONSE:
            self.wfile.write(b"".join([out, *binary]))
        else:
            self.wfile.write(out)
            for b in binary or ():
                self.wfile.write(b)
        self.log_request(status, length)

    def _json(self, status: int, document: dict[str, Any], close: bool = False) -> None:
        self._send(status, dumps(document), close=close)

    def _error(self, status: int, message: str, close: bool = False) -> None:
        self._send(status, error_body(message), close=close)

    # -- routing ----------------------------------------------------------------------------------------------------
    def _route(self) -> tuple[str, str | None, str | None]:
        """(what, model, version) for a path; what is "" when no route matches."""
        path = self.path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        if "%" in path:
            parts = [unquote(p) for p in parts]
        if parts == ["v2"]:
            return "server", None, None
        if parts in (["v2", "health", "live"], ["v2", "health", "ready"]):
            return "health-" + parts[2], None, None
        if parts == ["v2", "models", "stats"]:
            return "stats", None, None
        if parts[:2] == ["v2", "systemsharedmemory"]:
            if parts[2:] in (["status"], ["unregister"]):
                return "shm-" + parts[2], None, None
            if len(parts) == 5 and parts[2] == "region" and parts[3] and parts[4] in ("status", "register", "unregister"):
                return "shm-" + parts[4], parts[3], None
        if len(parts) >= 3 and parts[:2] == ["v2", "models"] and parts[2]:
            name, rest, version = parts[2], parts[3:], None
            if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
                version, rest = rest[1], rest[2:]
            if rest == []:
                return "metadata", name, version
            if rest in (["ready"], ["infer"], ["stats"], ["config"]) or (rest == ["defer"] and version is None):
                return rest[0], name, version
        return "", None, None

    def _model(self, name: str) -> Servable:
        agent = self.server.registry.get(name)
        if agent is None:
            served = ", ".join(self.server.registry.names()) or "none"
            raise ModelNotFound(f"unknown model {name!r}; this device serves: {served}")
        return agent

    def _statistics(self, name: str | None, version: str | None) -> list[dict[str, Any]]:
        """$model_stat of every served version, of one model's, or of one version (404 if not served here)."""
        if name is None:
            return [stat for agent in self.server.registry.all() for stat in agent.statistics()]
        agent = self._model(name)
        if version is not None:
            self._served(agent, version)
        return agent.statistics()

    @staticmethod
    def _served(agent: Servable, version: str | None) -> tuple[str, ModelManifest]:
        served = agent.served()
        if served is None:
            raise NotReady(f"model {agent.model!r} has no verified version loaded on this device")
        if version is not None and version != served[0]:
            raise VersionNotServed(f"model {agent.model!r} version {version!r} is not served here; this device serves {served[0]}")
        return served

    def do_GET(self) -> None:  # noqa: N802 - http.server's dispatch name
        if self.fields.get("content-length", "0").strip() not in ("", "0") or "transfer-encoding" in self.fields:
            self.close_connection = True  # a body nobody reads: the connection cannot carry another request
        what, name, version = self._route()
        try:
            if what == "server":
                self._json(200, server_metadata(__version__))
            elif what == "health-live":
                self._json(200, {"live": True})
            elif what == "health-ready":
                agents = self.server.registry.all()
                ready = bool(agents) and all(a.served() is not None for a in agents)
                self._json(200 if ready else 400, {"ready": ready})
            elif what == "metadata" and name is not None:
                agent = self._model(name)
                served_version, manifest = self._served(agent, version)
                self._json(200, model_metadata(name, [served_version], manifest))
            elif what == "config" and name is not None:
                agent = self._model(name)
                self._json(200, model_config(name, self._served(agent, version)[1]))
            elif what == "ready" and name is not None:
                agent = self._model(name)
                try:
                    self._served(agent, version)
                except NotReady:
                    self._json(400, {"name": name, "ready": False})
                else:
                    self._json(200, {"name": name, "ready": True})
            elif what == "stats":
                self._json(200, {"model_stats": self._statistics(name, version)})
            elif what == "shm-status":
                self._send(200, dumps(self.server.regions.status(name)))
            elif what == "infer":
                self._error(405, f"{self.path}: use POST for inference", close=False)
            elif what in ("shm-register", "shm-unregister"):
                self._error(405, f"{self.path}: use POST here", close=False)
            else:
                self._error(404, f"no such endpoint: GET {self.path}")
        except (ProtocolError, RequestError) as exc:
            self._error(exc.status, exc.message)

    def do_POST(self) -> None:  # noqa: N802
        what, name, version = self._route()
        received = perf_counter_ns()
        body = self._read_body()
        if body is None:
            return
        if what == "defer" and name is not None:
            self._defer(name, body)
            return
        if what in ("shm-register", "shm-unregister"):
            self._shared_memory(what, name, body)
            return
        if what != "infer" or name is None:
            if what:
                self._error(405, f"{self.path}: use GET here")
            else:
                self._error(404, f"no such endpoint: POST {self.path}")
            return
        try:
            agent = self._model(name)
            header = self.fields.get("inference-header-content-length")
            try:
                header_length = int(header) if header is not None else None
            except ValueError:
                raise ProtocolError(400, f"{HEADER_LENGTH} must be an integer, got {header!r}") from None
            regions = self.server.regions
            parsing = perf_counter_ns()
            request = parse_infer_request(body, header_length, regions)
            input_ns = perf_counter_ns() - parsing
            served_version, manifest = self._served(agent, version)
            wanted = self._outputs(request, manifest, name)
            destinations = {n: regions.view(ref, f"output {n!r}") for n, _, ref in wanted if ref is not None}
            answer = agent.run(request.inputs, version=version)
            try:
                encoding = perf_counter_ns()
                json_part, binary_parts = self._encode(name, wanted, destinations, answer, request.id)
                output_ns = perf_counter_ns() - encoding
            except BaseException:
                answer.settle(request.label, answered=False)
                raise
        except (ProtocolError, RequestError) as exc:
            self._error(exc.status, exc.message)
            return
        except Exception as exc:  # noqa: BLE001 - a bug must answer 500, never take the endpoint down
            log.exception("inference request to %s failed unexpectedly", name)
            self._error(500, f"internal error: {type(exc).__name__}: {exc}")
            return
        content_type = "application/octet-stream" if binary_parts else "application/json"
        try:
            self._send(200, json_part, binary_parts, content_type)
        finally:
            # once the application has its answer (DeviceAgent.run)
            answer.settle(request.label, (input_ns, output_ns, perf_counter_ns() - received))

    @staticmethod
    def _encode(
        name: str,
        wanted: list[tuple[str, bool, SharedMemoryRef | None]],
        destinations: dict[str, memoryview],
        answer: Answer,
        request_id: str | None,
    ) -> tuple[bytes, list[bytes | memoryview]]:
        """The response's JSON and binary sections; outputs named in shared memory are written into their regions."""
        values = answer.outputs
        outputs: list[tuple[str, np.ndarray, bool | None]] = []
        for out_name, binary, ref in wanted:
            value = values.get(out_name)
            if value is None:  # the version changed between the check and the request: its outputs did too
                raise ProtocolError(400, f"model {name!r} {answer.version} has no output {out_name!r}")
            if ref is not None:
                write_shared_output(destinations[out_name], value, f"output {out_name!r}")
            outputs.append((out_name, value, None if ref is not None else binary))
        return encode_infer_response(name, answer.version, request_id, outputs)

    def _defer(self, name: str, body: bytes) -> None:
        try:
            agent = self._model(name)
            try:
                seconds = json.loads(body or b"{}").get("seconds")
            except (ValueError, AttributeError):
                seconds = None
            if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= 86400:
                raise ProtocolError(400, 'defer takes {"seconds": N} with N a number from 0 to 86400')
            until = agent.defer(float(seconds))
        except (ProtocolError, RequestError) as exc:
            self._error(exc.status, exc.message)
            return
        self._json(200, {"name": name, "deferred_until": until})

    def _shared_memory(self, what: str, name: str | None, body: bytes) -> None:
        regions = self.server.regions
        try:
            if what == "shm-unregister":
                regions.unregister(name)
            elif name is not None:
                try:
                    document = json.loads(body or b"null")
                except ValueError:
                    document = None
                regions.register(name, document)
        except ProtocolError as exc:
            self._error(exc.status, exc.message)
            return
        self._send(200, b"")

    @staticmethod
    def _outputs(request: InferRequest, manifest: ModelManifest, name: str) -> list[tuple[str, bool, SharedMemoryRef | None]]:
        names = [o.name for o in manifest.outputs]
        if request.outputs is None:
            return [(n, request.output_binary(None), None) for n in names]
        chosen: list[tuple[str, bool, SharedMemoryRef | None]] = []
        for requested in request.outputs:
            if requested.name not in names:
                raise ProtocolError(400, f"model {name!r} has no output {requested.name!r}; its outputs are {', '.join(map(repr, names))}")
            chosen.append((requested.name, request.output_binary(requested), requested.shared_memory))
        return chosen

    def _read_body(self) -> bytes | None:
        """The request body (decompressed), or None after answering an error (and closing: the rest is unread)."""
        limit = self.server.max_body_bytes
        if self.fields.get("transfer-encoding", "").lower() not in ("", "identity"):
            self._error(411, "chunked requests are not supported: send a Content-Length", close=True)
            return None
        raw = self.fields.get("content-length")
        try:
            length = int(raw) if raw is not None else 0
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, f"Content-Length {raw!r} is not a byte count", close=True)
            return None
        if length > limit:
            self._error(413, f"the request body is {length} bytes, over this endpoint's limit of {limit} bytes", close=True)
            return None
        try:
            body = self.rfile.read(length) if length else b""
        except (OSError, ValueError):
            self.close_connection = True
            return None
        if len(body) < length:
            self._error(400, f"the request body ended after {len(body)} of its {length} bytes (Content-Length)", close=True)
            return None
        encoding = self.fields.get("content-encoding", "").strip().lower()
        if encoding and encoding != "identity":
            try:
                body = _decompress(body, encoding, limit)
            except ProtocolError as exc:
                self._error(exc.status, exc.message)
                return None
        return body

    def do_PUT(self) -> None:  # noqa: N802
        self._not_allowed()

    def do_DELETE(self) -> None:  # noqa: N802
        self._not_allowed()

    def do_PATCH(self) -> None:  # noqa: N802
        self._not_allowed()

    def _not_allowed(self) -> None:
        self.close_connection = True  # a body may follow that is not read
        self._error(405, f"{self.command} is not used by the Open Inference Protocol", close=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], registry: ModelRegistry, max_body_bytes: int, regions: SharedMemoryRegions) -> None:
        self.registry = registry
        self.max_body_bytes = max_body_bytes
        self.regions = regions
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.warning("connection from %s ended with an error", client_address, exc_info=True)


class InferenceEndpoint:
    """One endpoint for the device: binds at construction (OSError if it cannot), serves from start() to close()."""

    def __init__(
        self,
        registry: ModelRegistry,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        regions: SharedMemoryRegions | None = None,
    ) -> None:
        self.registry = registry
        self.regions = regions if regions is not None else SharedMemoryRegions()
        self._server = _Server((host, port), registry, max_body_bytes, self.regions)
        self._thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> InferenceEndpoint:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="endpoint", daemon=True)
        self._thread.start()
        log.info("Open Inference Protocol endpoint at %s/v2 (models: %s)", self.url, ", ".join(self.registry.names()) or "none yet")
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()
        self.regions.unregister()

    def __enter__(self) -> InferenceEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
