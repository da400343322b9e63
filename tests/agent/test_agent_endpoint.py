"""The inference endpoint, tested with Triton's own HTTP client (binary tensors, its default, and JSON) and with raw
HTTP for what a well-behaved client never sends. Bad requests get the protocol's errors and never disturb serving."""

from __future__ import annotations

import dataclasses
import gzip
import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
import tritonclient.http as triton
from agent_testkit import SHAPE, client, image, infer
from tritonclient.utils import InferenceServerException

from edgefleet_agent import protocol
from edgefleet_agent.contract.state import DesiredModel
from edgefleet_agent.core import DeviceAgent
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry
from edgefleet_agent.protocol import encode_infer_response, parse_infer_request


def raw(endpoint: InferenceEndpoint, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data
    finally:
        conn.close()


def binary_request(x: np.ndarray, declared: int | None = None, extra: bytes = b"", **params) -> tuple[bytes, dict]:
    header = json.dumps(
        {
            "inputs": [
                {"name": "image", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": declared or x.nbytes}}
            ],
            "parameters": {"binary_data_output": True, **params},
        }
    ).encode()
    return header + x.tobytes() + extra, {"Inference-Header-Content-Length": str(len(header))}


def test_triton_client_health_and_metadata(served):
    agent_, endpoint = served
    c = client(endpoint)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("detector")
    assert c.is_model_ready("detector", "1.1.0") and not c.is_model_ready("detector", "1.0.0") and not c.is_model_ready("other")
    meta = c.get_server_metadata()
    assert meta["name"] == "edgefleet-agent" and "binary_tensor_data" in meta["extensions"]
    model = c.get_model_metadata("detector")
    assert model == {
        "name": "detector",
        "versions": ["1.1.0"],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}],
    }
    with pytest.raises(InferenceServerException, match="version '1.0.0' is not served here") as err:
        c.get_model_metadata("detector", "1.0.0")
    assert err.value.status() == "404"
    status, _, body = raw(endpoint, "GET", "/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})
    status, _, body = raw(endpoint, "GET", "/v2/models/detector/versions/1.1.0/ready")
    assert (status, json.loads(body)) == (200, {"name": "detector", "ready": True})


def test_triton_client_reads_the_served_versions_model_configuration(served):
    """Triton's model configuration extension, which Triton's own tools (perf_analyzer, model_analyzer) read before
    they send a request: the served version's tensors in Triton's vocabulary, and no batching by the server."""
    agent_, endpoint = served
    c = client(endpoint)
    assert "model_configuration" in c.get_server_metadata()["extensions"]
    config = c.get_model_config("detector")
    assert config == {
        "name": "detector",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 0,
        "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": [-1, 3, 224, 224]}],
        "output": [{"name": "scores", "data_type": "TYPE_FP32", "dims": [-1, 3]}],
    }
    assert c.get_model_config("detector", "1.1.0") == config
    with pytest.raises(InferenceServerException, match="version '1.0.0' is not served here") as err:
        c.get_model_config("detector", "1.0.0")
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown model 'other'") as err:
        c.get_model_config("other")
    assert err.value.status() == "404"
    status, _, body = raw(endpoint, "POST", "/v2/models/detector/config", b"{}")
    assert status == 405 and "use GET" in json.loads(body)["error"]


def test_triton_clients_statistics_count_each_request_and_time_the_model_inside_it(served, monkeypatch):
    """Triton's statistics extension as its client reads it: every answered request counted once, the model's time
    inside the request's, a failed run counted as a failure, and nothing for a version not served here."""
    agent_, endpoint = served
    c = client(endpoint)
    assert "statistics" in c.get_server_metadata()["extensions"]
    for seed in range(4):
        infer(c, image(seed))
    [stat] = c.get_inference_statistics("detector")["model_stats"]
    assert (stat["name"], stat["version"], stat["inference_count"], stat["execution_count"]) == ("detector", "1.1.0", 4, 4)
    s = stat["inference_stats"]
    assert s["success"]["count"] == s["compute_infer"]["count"] == s["compute_input"]["count"] == 4
    assert 0 < s["compute_infer"]["ns"] < s["success"]["ns"] and s["compute_input"]["ns"] > 0 and s["compute_output"]["ns"] > 0
    assert s["compute_infer"]["ns"] + s["compute_input"]["ns"] + s["compute_output"]["ns"] <= s["success"]["ns"]
    assert s["fail"]["count"] == 0 and stat["last_inference"] == int(agent_.clock() * 1000)  # ms since the epoch
    assert c.get_inference_statistics()["model_stats"] == c.get_inference_statistics("detector", "1.1.0")["model_stats"]

    class Broken:
        def run(self, *args, **kwargs):
            raise RuntimeError("out of memory")

    serving = agent_._serving
    monkeypatch.setattr(agent_, "_serving", dataclasses.replace(serving, loaded=dataclasses.replace(serving.loaded, session=Broken())))
    with pytest.raises(InferenceServerException, match="out of memory") as err:
        infer(c, image(5))
    assert err.value.status() == "500"
    monkeypatch.setattr(agent_, "_serving", serving)
    [stat] = c.get_inference_statistics("detector")["model_stats"]
    assert (stat["inference_count"], stat["inference_stats"]["fail"]["count"]) == (4, 1)
    with pytest.raises(InferenceServerException, match="version '1.0.0' is not served here") as err:
        c.get_inference_statistics("detector", "1.0.0")
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException, match="unknown model 'other'"):
        c.get_inference_statistics("other")


@pytest.mark.parametrize("binary", [True, False])
def test_triton_client_infers_in_binary_and_json(served, binary):
    agent_, endpoint = served
    c = client(endpoint)
    for seed in range(3):
        x = image(seed)
        result = infer(c, x, binary=binary, request_id=f"r{seed}")
        expected = agent_._serving.loaded.session.run(["scores"], {"image": x})[0]
        np.testing.assert_allclose(result.as_numpy("scores"), expected, rtol=1e-6)
        response = result.get_response()
        assert (response["model_name"], response["model_version"], response["id"]) == ("detector", "1.1.0", f"r{seed}")
        assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary
    default = triton.InferInput("image", list(SHAPE), "FP32")
    default.set_data_from_numpy(image(9))
    result = c.infer("detector", [default])  # no outputs named: the client asks for all of them in binary
    assert result.as_numpy("scores").shape == (1, 3)
    versioned = c.infer("detector", [default], model_version="1.1.0")
    np.testing.assert_array_equal(versioned.as_numpy("scores"), result.as_numpy("scores"))
    gzipped = c.infer("detector", [default], request_compression_algorithm="gzip")
    np.testing.assert_array_equal(gzipped.as_numpy("scores"), result.as_numpy("scores"))
    assert agent_.build_report().inferences == 6


def test_a_label_counts_towards_live_accuracy(served):
    agent_, endpoint = served
    c = client(endpoint)
    answers = [int(infer(c, image(s), parameters={"label": 2}).as_numpy("scores").argmax()) for s in range(5)]
    report = agent_.build_report()
    assert report.labelled == {"n": 5, "correct": answers.count(2)}
    with pytest.raises(InferenceServerException, match="parameter 'label' must be a non-negative integer") as err:
        infer(c, image(), parameters={"label": "cat"})
    assert err.value.status() == "400"


def test_the_answer_does_not_wait_for_telemetry_and_the_next_report_still_counts_it(served, monkeypatch):
    """Telemetry (NaN check, top-1, the window, shadow, capture) runs after the response is sent: an application
    gets its answer while it is held up; a report taken meanwhile waits for it and counts the request."""
    import edgefleet_agent.core as core

    agent_, endpoint = served
    held, entered = threading.Event(), threading.Event()
    real = core.read_output

    def slow_read_output(watch, values):
        entered.set()
        assert held.wait(10), "telemetry was never released"
        return real(watch, values)

    monkeypatch.setattr(core, "read_output", slow_read_output)
    c = client(endpoint)
    start = time.monotonic()
    result = infer(c, image(3), parameters={"label": 1})  # would block for 10 s if telemetry came first
    assert time.monotonic() - start < 5 and result.as_numpy("scores").shape == (1, 3)
    assert entered.wait(5)
    threading.Timer(0.1, held.set).start()
    report = agent_.build_report()  # waits for the answer already sent
    assert report.inferences == 1 and report.labelled == {"n": 1, "correct": int(result.as_numpy("scores").argmax() == 1)}


def test_an_answer_that_fails_to_encode_is_still_accounted_for_and_answers_500(served, monkeypatch):
    """The model ran: its run counts in the report, which does not wait for an answer that was never sent; the
    statistics (Triton's extension) count a failed request, not a success."""
    import edgefleet_agent.endpoint as endpoint_module

    agent_, endpoint = served

    def broken(*args, **kwargs):
        raise RuntimeError("encoder bug")

    monkeypatch.setattr(endpoint_module, "encode_infer_response", broken)
    with pytest.raises(InferenceServerException, match="internal error: RuntimeError: encoder bug") as err:
        infer(client(endpoint), image(4))
    assert err.value.status() == "500"
    start = time.monotonic()
    report = agent_.build_report()
    assert time.monotonic() - start < 0.25 and report.inferences == 1
    monkeypatch.undo()
    [stat] = client(endpoint).get_inference_statistics("detector")["model_stats"]
    assert (stat["inference_stats"]["success"]["count"], stat["inference_stats"]["fail"]["count"]) == (0, 1)


def test_a_version_other_than_the_served_one_is_404(served):
    _, endpoint = served
    with pytest.raises(InferenceServerException, match="version '1.0.0' is not served here; this device serves 1.1.0") as err:
        infer(client(endpoint), image(), model_version="1.0.0")
    assert err.value.status() == "404"
    body, headers = binary_request(image())
    status, _, data = raw(endpoint, "POST", "/v2/models/detector/versions/2.0.0/infer", body, headers)
    assert status == 404 and "error" in json.loads(data)


def test_percent_encoded_paths_name_the_same_model_and_version(served):
    _, endpoint = served
    status, _, data = raw(endpoint, "GET", "/v2/models/%64etector/versions/1%2E1%2E0/ready")
    assert status == 200 and json.loads(data) == {"name": "detector", "ready": True}
    status, _, data = raw(endpoint, "GET", "/v2/models/de%2Ftector/ready")
    assert status == 404 and "unknown model 'de/tector'" in json.loads(data)["error"]


def bad_requests(x: np.ndarray) -> list[tuple[str, str, bytes | None, dict, int, str]]:
    good, good_headers = binary_request(x)
    short, short_headers = binary_request(x, declared=x.nbytes + 16)
    extra, extra_headers = binary_request(x, extra=b"\0" * 8)
    return [
        ("POST", "/v2/models/nope/infer", good, good_headers, 404, "unknown model 'nope'; this device serves: detector"),
        ("POST", "/v2/models/detector/infer", b'{"inputs": [', {}, 400, "not valid JSON"),
        ("POST", "/v2/models/detector/infer", b"[]", {}, 400, "must be a JSON object"),
        ("POST", "/v2/models/detector/infer", b"", {}, 400, "not valid JSON"),
        ("POST", "/v2/models/detector/infer", short, short_headers, 400, "the request is truncated"),
        ("POST", "/v2/models/detector/infer", extra, extra_headers, 400, "8 bytes follow the JSON"),
        ("POST", "/v2/models/detector/infer", good, {"Inference-Header-Content-Length": "99999999"}, 400, "but the body is"),
        ("POST", "/v2/models/detector/infer", good, {"Inference-Header-Content-Length": "x"}, 400, "must be an integer"),
        (
            "POST",
            "/v2/models/detector/infer",
            json.dumps({"inputs": [{"name": "image", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": [0.0] * 12}]}).encode(),
            {},
            400,
            r"input 'image' has shape [1, 3, 2, 2]; the model expects [batch, 3, 224, 224]",
        ),
        (
            "POST",
            "/v2/models/detector/infer",
            json.dumps({"inputs": [{"name": "image", "shape": [1, 2], "datatype": "INT32", "data": [1, 2]}]}).encode(),
            {},
            400,
            "input 'image' is INT32; the model expects FP32",
        ),
        (
            "POST",
            "/v2/models/detector/infer",
            json.dumps({"inputs": [{"name": "image", "shape": [2], "datatype": "FP32", "data": [1.0]}]}).encode(),
            {},
            400,
            "data has 1 elements, but shape [2] has 2",
        ),
        (
            "POST",
            "/v2/models/detector/infer",
            json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "FP99", "data": [1.0]}]}).encode(),
            {},
            400,
            "datatype 'FP99' is not one of",
        ),
        (
            "POST",
            "/v2/models/detector/infer",
            json.dumps(
                {
                    "inputs": [{"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}],
                    "outputs": [{"name": "boxes"}],
                }
            ).encode(),
            {},
            400,
            "has no output 'boxes'",
        ),
        ("POST", "/v2/models/detector/infer", good, {"Content-Encoding": "br"}, 415, "Content-Encoding 'br' is not supported"),
        ("POST", "/v2/models/detector/infer", b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"}, 400, "does not decompress"),
        ("POST", "/v2/models/detector/infer", gzip.compress(b"\0" * (5 << 20)), {"Content-Encoding": "gzip"}, 413, "limit"),
        ("GET", "/v2/models/detector/infer", None, {}, 405, "use POST"),
        ("POST", "/v2/models/detector", good, good_headers, 405, "use GET"),
        ("GET", "/v3", None, {}, 404, "no such endpoint"),
        ("DELETE", "/v2/models/detector", None, {}, 405, "not used by the Open Inference Protocol"),
    ]


def test_bad_requests_get_the_protocols_errors_and_the_next_request_succeeds(served):
    agent_, endpoint = served
    x = image()
    c = client(endpoint)
    for method, path, body, headers, status, message in bad_requests(x):
        got, response_headers, data = raw(endpoint, method, path, body, headers)
        assert got == status, (path, message, data)
        assert response_headers["Content-Type"] == "application/json"
        assert message in json.loads(data)["error"], data
        result = infer(c, x)  # serving is undisturbed
        assert result.get_response()["model_version"] == "1.1.0"
    assert c.is_server_live() and c.is_server_ready()
    report = agent_.build_report()
    assert report.errors == 0 and report.inferences == len(bad_requests(x))


def test_oversized_and_unframed_bodies_are_refused_without_reading_them(served):
    _, endpoint = served
    for headers, body, status, message in (
        ({"Content-Length": str(64 << 20)}, b"", 413, f"over this endpoint's limit of {4 << 20} bytes"),
        ({"Transfer-Encoding": "chunked"}, b"5\r\nhello\r\n0\r\n\r\n", 411, "send a Content-Length"),
        ({"Content-Length": "100"}, b"{}", 400, "ended after 2 of its 100 bytes"),
    ):
        with socket.create_connection((endpoint.host, endpoint.port), timeout=30) as s:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            s.sendall(f"POST /v2/models/detector/infer HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body)
            if status == 400:
                s.shutdown(socket.SHUT_WR)  # the client gives up half-way through its body
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head_text, _, payload = reply.partition(b"\r\n\r\n")
        assert head_text.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
        assert b"Connection: close" in head_text
        assert message in json.loads(payload)["error"]
    assert infer(client(endpoint), image()).as_numpy("scores").shape == (1, 3)


def test_keep_alive_connections_carry_many_requests(served):
    _, endpoint = served
    body, headers = binary_request(image())
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    try:
        for _ in range(5):
            conn.request("POST", "/v2/models/detector/infer", body, headers)
            response = conn.getresponse()
            data = response.read()
            assert response.status == 200 and response.getheader("Connection") is None
            header_length = int(response.getheader("Inference-Header-Content-Length"))
            document = json.loads(data[:header_length])
            size = document["outputs"][0]["parameters"]["binary_data_size"]
            assert size == 12 and len(data) == header_length + size
        conn.request("GET", "/v2/health/live")
        assert json.loads(conn.getresponse().read()) == {"live": True}
    finally:
        conn.close()


def test_a_swap_is_invisible_to_applications_but_the_version(make_agent, transport, publisher, v100, v110):
    agent_ = make_agent()
    transport.desired_model = v100
    agent_.sync()
    registry = ModelRegistry()
    registry.add(agent_)
    versions: list[str] = []
    failures: list[Exception] = []
    stop = threading.Event()
    with InferenceEndpoint(registry, port=0) as endpoint:

        def application() -> None:
            c = client(endpoint)
            x = image()
            while not stop.is_set():
                try:
                    versions.append(infer(c, x).get_response()["model_version"])
                except Exception as exc:  # noqa: BLE001 - every failure is a test failure
                    failures.append(exc)

        thread = threading.Thread(target=application)
        thread.start()
        try:
            for i in range(6):
                transport.desired_model = v110 if i % 2 == 0 else publisher.rollback(v100, v110)
                assert agent_.sync() is True
                time.sleep(0.1)
        finally:
            stop.set()
            thread.join(30)
    assert failures == []
    assert set(versions) == {"1.0.0", "1.1.0"} and len(versions) > 20


def test_one_endpoint_serves_every_model_of_the_device(tmp_path, keys, publisher, transport, v110):
    other = publisher.publish("2.0.0", "detector-1.0.0.onnx", model="classifier")
    desired = {"detector": v110, "classifier": other}

    class PerModel:
        def desired(self, device_id: str, model: str) -> DesiredModel | None:
            return desired.get(model)

        def report(self, report) -> None:
            pass

    registry = ModelRegistry()
    agents = [DeviceAgent("dev-1", m, tmp_path / "state", keys.pem, PerModel()) for m in ("detector", "classifier")]
    try:
        for a in agents:
            a.sync()
            registry.add(a)
        with InferenceEndpoint(registry, port=0) as endpoint:
            c = client(endpoint)
            x = image()
            inp = triton.InferInput("image", list(SHAPE), "FP32")
            inp.set_data_from_numpy(x)
            assert c.infer("detector", [inp]).get_response()["model_version"] == "1.1.0"
            assert c.infer("classifier", [inp]).get_response()["model_version"] == "2.0.0"
            assert c.is_server_ready()
            del desired["classifier"]
            agents[1].sync()  # nothing served for it now: the server is not ready, the other model still is
            assert not c.is_server_ready() and not c.is_model_ready("classifier") and c.is_model_ready("detector")
            with pytest.raises(InferenceServerException) as err:
                c.infer("classifier", [inp])
            assert err.value.status() == "503"
    finally:
        for a in agents:
            a.close()


@pytest.mark.parametrize(
    "datatype, values",
    [
        ("BOOL", np.array([[True, False, True]])),
        ("UINT8", np.array([[0, 255, 7]], np.uint8)),
        ("INT16", np.array([[-3, 0, 3]], np.int16)),
        ("UINT64", np.array([[1, 2, 2**63]], np.uint64)),
        ("INT64", np.array([[-(2**62), 0, 5]], np.int64)),
        ("FP16", np.array([[0.5, -1.25, 8.0]], np.float16)),
        ("FP64", np.array([[0.1, 1e300, -3.5]], np.float64)),
        ("BYTES", np.array([[b"a", b"", "é".encode()]], dtype=object)),
    ],
)
def test_every_datatype_reads_the_same_in_binary_and_json(datatype, values):
    """The protocol's datatypes: binary (little-endian, BOOL one byte, BYTES length-prefixed) and JSON agree."""
    inp = triton.InferInput("t", list(values.shape), datatype)
    inp.set_data_from_numpy(values, binary_data=True)
    from tritonclient.http._utils import _get_inference_request

    body, header_length = _get_inference_request([inp], "", None, 0, False, False, 0, None, None)
    from_binary = parse_infer_request(body, header_length).inputs["t"]
    json_data = values.tolist() if datatype != "BYTES" else [[b.decode() for b in row] for row in values.tolist()]
    document = {"inputs": [{"name": "t", "shape": list(values.shape), "datatype": datatype, "data": json_data}]}
    from_json = parse_infer_request(json.dumps(document).encode(), None).inputs["t"]
    for parsed in (from_binary, from_json):
        assert parsed.shape == values.shape
        assert parsed.tolist() == values.tolist()
        assert parsed.dtype == values.dtype


def test_json_data_that_does_not_fit_its_datatype_is_refused():
    for datatype, data, message in (
        ("UINT8", [256], "outside UINT8's range"),
        ("INT32", [1.5], "must be integers"),
        ("BOOL", [1], "true or false"),
        ("FP32", ["x"], "must be numbers"),
        ("FP32", [[1.0], [2.0, 3.0]], "cannot be read as FP32"),
    ):
        document = {"inputs": [{"name": "t", "shape": [1], "datatype": datatype, "data": data}]}
        with pytest.raises(Exception, match=message):
            parse_infer_request(json.dumps(document).encode(), None)


def test_a_repeated_header_reads_each_bodys_own_tensors_and_checks_its_framing():
    """The second request with a header is read from the memo of the first: its own bytes, the same refusals."""
    header = json.dumps(
        {
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}},
                {"name": "b", "shape": [1], "datatype": "INT64", "parameters": {"binary_data_size": 8}},
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": False}}],
            "parameters": {"label": 3, "binary_data_output": True, "custom": "x"},
        }
    ).encode()
    for seed in range(3):
        a, b = np.arange(2, dtype=np.float32) + seed, np.array([seed], np.int64)
        request = parse_infer_request(header + a.tobytes() + b.tobytes(), len(header))
        assert request.inputs["a"].tolist() == a.tolist() and request.inputs["b"].tolist() == b.tolist()
        assert (request.id, request.label, request.binary_output) == (None, 3, True)
        assert header in protocol._plans
        assert request.outputs is not None and request.output_binary(request.outputs[0]) is False
        assert request.parameters == {"label": 3, "binary_data_output": True, "custom": "x"}
        request.parameters["custom"] = "changed by the application's handler"
        request.outputs.clear()
    with pytest.raises(Exception, match="input 'b': its 8 bytes of binary data run past the end of the body"):
        parse_infer_request(header + a.tobytes() + b"\0" * 4, len(header))
    with pytest.raises(Exception, match="4 bytes follow the JSON"):
        parse_infer_request(header + a.tobytes() + b.tobytes() + b"\0" * 4, len(header))


def test_a_remembered_response_header_describes_each_responses_own_outputs():
    def encoded(scores: np.ndarray, request_id: str | None = None, binary: bool | None = True) -> tuple[dict, bytes]:
        head, sections = encode_infer_response("m", "1.0.0", request_id, [("scores", scores, binary), ("n", np.arange(2), True)])
        return json.loads(head), b"".join(bytes(s) for s in sections)

    first, data = encoded(np.zeros((1, 3), np.float32))
    again, data_again = encoded(np.ones((1, 3), np.float32))
    assert again == first and data_again[:12] == np.ones(3, np.float32).tobytes() and data != data_again
    assert [o["parameters"]["binary_data_size"] for o in first["outputs"]] == [12, 16]
    wider, _ = encoded(np.zeros((2, 3), np.float32))
    assert wider["outputs"][0]["shape"] == [2, 3] and wider["outputs"][0]["parameters"]["binary_data_size"] == 24
    assert encoded(np.zeros((1, 3), np.float64))[0]["outputs"][0]["datatype"] == "FP64"
    with_id, _ = encoded(np.zeros((1, 3), np.float32), request_id="r-1")
    assert with_id["id"] == "r-1" and "id" not in encoded(np.zeros((1, 3), np.float32))[0]
    as_json, _ = encoded(np.full((1, 3), 2.0, np.float32), binary=False)
    assert as_json["outputs"][0]["data"] == [2.0, 2.0, 2.0] and "parameters" not in as_json["outputs"][0]
    for _ in range(2):  # an output written to shared memory is described without data, remembered or not
        in_shm, data = encoded(np.zeros((1, 3), np.float32), binary=None)
        assert in_shm["outputs"][0] == {"name": "scores", "datatype": "FP32", "shape": [1, 3]} and data == np.arange(2).tobytes()
