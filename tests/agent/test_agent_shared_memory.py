"""Triton's system shared-memory extension on the endpoint, driven by Triton's own HTTP client and its shared_memory
utilities as an application on the device would: the answer through shared memory is the answer through binary
tensors, every mistake gets the protocol's error without disturbing serving, and a region is bounded and refused once
unregistered."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.utils.shared_memory as shm
from agent_testkit import SHAPE, client, image, infer
from tritonclient.utils import InferenceServerException

import edgefleet_agent.serving
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry
from edgefleet_agent.protocol import SharedMemoryRef, parse_infer_request
from edgefleet_agent.shm import SharedMemoryRegions

IMAGE_BYTES = int(np.prod(SHAPE)) * 4
SCORES_BYTES = 3 * 4


@pytest.fixture
def regions():
    """Shared-memory objects this test creates (unique keys), destroyed after it: [(name, key, handle)]."""
    made: list = []

    def create(name: str, byte_size: int) -> tuple[str, object]:
        key = f"/edgefleet-test-{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, key, byte_size, create_only=True)
        made.append(handle)
        return key, handle

    yield create
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def shm_infer(c: triton.InferenceServerClient, region_in: str, region_out: str, in_offset: int = 0, out_offset: int = 0):
    inp = triton.InferInput("image", list(SHAPE), "FP32")
    inp.set_shared_memory(region_in, IMAGE_BYTES, offset=in_offset)
    out = triton.InferRequestedOutput("scores", binary_data=True)
    out.set_shared_memory(region_out, SCORES_BYTES, offset=out_offset)
    return c.infer("detector", [inp], outputs=[out])


def test_inputs_and_outputs_in_shared_memory_answer_as_binary_tensors_do(served, regions):
    agent_, endpoint = served
    c = client(endpoint)
    assert "system_shared_memory" in c.get_server_metadata()["extensions"]
    in_key, in_handle = regions("in", IMAGE_BYTES)
    out_key, out_handle = regions("out", 4096 + SCORES_BYTES)
    c.register_system_shared_memory("in", in_key, IMAGE_BYTES)
    c.register_system_shared_memory("out", out_key, 4096 + SCORES_BYTES)
    assert sorted(c.get_system_shared_memory_status(), key=lambda r: r["name"]) == [
        {"name": "in", "key": in_key, "offset": 0, "byte_size": IMAGE_BYTES},
        {"name": "out", "key": out_key, "offset": 0, "byte_size": 4096 + SCORES_BYTES},
    ]
    assert c.get_system_shared_memory_status("out") == [{"name": "out", "key": out_key, "offset": 0, "byte_size": 4096 + SCORES_BYTES}]
    for seed in range(3):  # the application reuses its regions request after request
        x = image(seed)
        shm.set_shared_memory_region(in_handle, [x])
        result = shm_infer(c, "in", "out", out_offset=4096 if seed else 0)
        output = result.get_output("scores")
        assert output == {"name": "scores", "datatype": "FP32", "shape": [1, 3]}  # described, no data: it is in the region
        scores = shm.get_contents_as_numpy(out_handle, np.float32, [1, 3], offset=4096 if seed else 0)
        np.testing.assert_array_equal(scores, infer(c, x).as_numpy("scores"))
    assert agent_.build_report().inferences == 6


def test_an_input_in_shared_memory_can_come_back_as_a_binary_output(served, regions):
    _, endpoint = served
    c = client(endpoint)
    key, handle = regions("in", 100 + IMAGE_BYTES)
    x = image(5)
    shm.set_shared_memory_region(handle, [x], offset=100)
    c.register_system_shared_memory("in", key, IMAGE_BYTES, offset=100)  # not page-aligned: allowed
    inp = triton.InferInput("image", list(SHAPE), "FP32").set_shared_memory("in", IMAGE_BYTES)
    result = c.infer("detector", [inp], outputs=[triton.InferRequestedOutput("scores")])
    np.testing.assert_array_equal(result.as_numpy("scores"), infer(c, x).as_numpy("scores"))


def test_registration_mistakes_get_the_protocols_errors_and_serving_goes_on(served, regions):
    agent_, endpoint = served
    c = client(endpoint)
    key, _ = regions("in", IMAGE_BYTES)
    c.register_system_shared_memory("in", key, IMAGE_BYTES)
    mistakes = [
        (("in", key, IMAGE_BYTES), "400", "already in manager"),
        (("other", "/edgefleet-test-does-not-exist", 16), "400", "Unable to open shared memory region"),
        (("other", key, IMAGE_BYTES + 1), "400", re.escape(f"past the end of '{key}' ({IMAGE_BYTES} bytes)")),
        (("other", key, 16, IMAGE_BYTES), "400", "past the end"),
        (("other", "/../etc/passwd", 16), "400", "directly under /dev/shm"),
        (("other", "/a/b", 16), "400", "directly under /dev/shm"),
        (("other", "..", 16), "400", "directly under /dev/shm"),
        (("other", key, 0), "400", "byte_size must be positive"),
        (("other", key, -1), "400", "byte_size must be a non-negative integer"),
    ]
    for args, status, message in mistakes:
        with pytest.raises(InferenceServerException, match=message) as err:
            c.register_system_shared_memory(*args)
        assert err.value.status() == status
        assert infer(c, image()).get_response()["model_version"] == "1.1.0"
    with pytest.raises(InferenceServerException, match="Unable to find system shared memory region: 'other'") as err:
        c.get_system_shared_memory_status("other")
    assert err.value.status() == "404"
    assert [r["name"] for r in c.get_system_shared_memory_status()] == ["in"]  # nothing half-registered
    assert agent_.build_report().errors == 0


def test_request_mistakes_with_shared_memory_get_the_protocols_errors_and_serving_goes_on(served, regions):
    agent_, endpoint = served
    c = client(endpoint)
    key, handle = regions("both", IMAGE_BYTES + SCORES_BYTES)
    shm.set_shared_memory_region(handle, [image()])
    c.register_system_shared_memory("both", key, IMAGE_BYTES + SCORES_BYTES)

    def request(region_in="both", in_size=IMAGE_BYTES, in_offset=0, region_out="both", out_size=SCORES_BYTES, out_offset=IMAGE_BYTES):
        inp = triton.InferInput("image", list(SHAPE), "FP32").set_shared_memory(region_in, in_size, offset=in_offset)
        out = triton.InferRequestedOutput("scores")
        out.set_shared_memory(region_out, out_size, offset=out_offset)
        return c.infer("detector", [inp], outputs=[out])

    mistakes = [
        ({"region_in": "nowhere"}, "404", "input 'image': Unable to find shared memory region: 'nowhere'"),
        ({"region_out": "nowhere"}, "404", "output 'scores': Unable to find shared memory region: 'nowhere'"),
        ({"in_offset": SCORES_BYTES + 4}, "400", "Invalid offset \\+ byte size for shared memory region: 'both'"),
        ({"in_size": IMAGE_BYTES - 4}, "400", f"shared_memory_byte_size is {IMAGE_BYTES - 4} bytes, but shape"),
        ({"out_size": 4, "out_offset": 0}, "400", "shared_memory_byte_size is 4 bytes, but the output of shape \\[1, 3\\] takes 12"),
        ({"out_offset": IMAGE_BYTES + 4}, "400", "Invalid offset \\+ byte size"),
    ]
    for kwargs, status, message in mistakes:
        with pytest.raises(InferenceServerException, match=message) as err:
            request(**kwargs)
        assert err.value.status() == status
        assert infer(c, image()).get_response()["model_version"] == "1.1.0"
    request()
    np.testing.assert_array_equal(
        shm.get_contents_as_numpy(handle, np.float32, [1, 3], offset=IMAGE_BYTES), infer(c, image()).as_numpy("scores")
    )
    assert agent_.build_report().errors == 0


def test_an_unregistered_region_is_refused(served, regions):
    _, endpoint = served
    c = client(endpoint)
    in_key, in_handle = regions("in", IMAGE_BYTES)
    out_key, _ = regions("out", SCORES_BYTES)
    shm.set_shared_memory_region(in_handle, [image()])
    c.register_system_shared_memory("in", in_key, IMAGE_BYTES)
    c.register_system_shared_memory("out", out_key, SCORES_BYTES)
    shm_infer(c, "in", "out")
    c.unregister_system_shared_memory("in")
    c.unregister_system_shared_memory("in")  # a second time is no error, as in Triton
    assert [r["name"] for r in c.get_system_shared_memory_status()] == ["out"]
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'in'; register it first"):
        shm_infer(c, "in", "out")
    c.unregister_system_shared_memory()  # every region
    assert c.get_system_shared_memory_status() == []
    with pytest.raises(InferenceServerException, match="Unable to find shared memory region: 'out'"):
        infer_out = triton.InferRequestedOutput("scores")
        infer_out.set_shared_memory("out", SCORES_BYTES)
        inp = triton.InferInput("image", list(SHAPE), "FP32").set_data_from_numpy(image())
        c.infer("detector", [inp], outputs=[infer_out])
    c.register_system_shared_memory("in", in_key, IMAGE_BYTES)  # the name is free again
    assert c.get_system_shared_memory_status("in")[0]["key"] == in_key


def test_regions_are_bounded_in_count_and_mapped_bytes(make_agent, transport, v110, regions):
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    registry = ModelRegistry()
    registry.add(agent_)
    bounded = SharedMemoryRegions(max_regions=2, max_mapped_bytes=IMAGE_BYTES + 8192)
    with InferenceEndpoint(registry, port=0, regions=bounded) as endpoint:
        c = client(endpoint)
        key, _ = regions("r", IMAGE_BYTES + 8192)
        c.register_system_shared_memory("a", key, IMAGE_BYTES)
        with pytest.raises(
            InferenceServerException, match="over this endpoint's limit of .* \\(unregister regions, or raise --shm-max-mib\\)"
        ):
            c.register_system_shared_memory("b", key, 8192 + 1)
        c.register_system_shared_memory("b", key, 4096, offset=IMAGE_BYTES)
        with pytest.raises(InferenceServerException, match="2 regions are registered, this endpoint's limit"):
            c.register_system_shared_memory("c", key, 16)
        c.unregister_system_shared_memory("a")
        c.register_system_shared_memory("c", key, 16)
        assert sorted(r["name"] for r in c.get_system_shared_memory_status()) == ["b", "c"]


def test_shared_memory_routes_answer_the_protocols_methods(served):
    _, endpoint = served
    conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=30)
    for method, path, body, status, message in (
        ("GET", "/v2/systemsharedmemory/region/a/register", None, 405, "use POST here"),
        ("POST", "/v2/systemsharedmemory/status", b"", 405, "use GET here"),
        ("POST", "/v2/systemsharedmemory/region/a/register", b"[1]", 400, 'register takes {"key"'),
        ("POST", "/v2/systemsharedmemory/region/a/register", b"{", 400, 'register takes {"key"'),
        ("POST", "/v2/systemsharedmemory/region/a/register", json.dumps({"key": 7, "byte_size": 8}).encode(), 400, "key must be a string"),
    ):
        conn.request(method, path, body)
        response = conn.getresponse()
        assert (response.status, message in json.loads(response.read())["error"]) == (status, True), path
    conn.close()


def test_an_input_in_shared_memory_is_read_in_place_not_copied():
    memory = bytearray(64)
    np.frombuffer(memory, np.float32)[4:8] = [1, 2, 3, 4]

    class Regions:
        def view(self, ref: SharedMemoryRef, where: str) -> memoryview:
            return memoryview(memory)[ref.offset : ref.offset + ref.byte_size]

    header = {
        "inputs": [
            {
                "name": "x",
                "shape": [2, 2],
                "datatype": "FP32",
                "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": 16},
            }
        ]
    }
    x = parse_infer_request(json.dumps(header).encode(), None, Regions()).inputs["x"]
    assert x.tolist() == [[1, 2], [3, 4]]
    assert np.shares_memory(x, np.frombuffer(memory, np.uint8))


# -- a region unregistered while a request uses it -----------------------------------------------------------------------
class HeldSession:
    """A session whose runs, once `hold` is set, say so (`running`) and wait for `release`: a request held in flight
    after its shared-memory input has been read in place and its output's destination looked up."""

    def __init__(self, session) -> None:
        self.session = session
        self.hold = False
        self.running = threading.Event()
        self.release = threading.Event()

    def run(self, names, feeds):
        if self.hold:
            self.running.set()
            assert self.release.wait(20)
        return self.session.run(names, feeds)

    def get_providers(self):
        return self.session.get_providers()


@pytest.fixture
def held(make_agent, transport, v110, monkeypatch):
    """(endpoint factory, the served version's HeldSession): detector 1.1.0 whose requests can be held in flight."""
    opened: list[HeldSession] = []
    real = edgefleet_agent.serving.open_session
    monkeypatch.setattr(
        edgefleet_agent.serving, "open_session", lambda path, providers: opened.append(HeldSession(real(path, providers))) or opened[-1]
    )
    agent_ = make_agent()
    transport.desired_model = v110
    agent_.sync()
    registry = ModelRegistry()
    registry.add(agent_)
    endpoints: list[InferenceEndpoint] = []

    def endpoint(regions: SharedMemoryRegions | None = None) -> InferenceEndpoint:
        endpoints.append(InferenceEndpoint(registry, port=0, regions=regions).start())
        return endpoints[-1]

    yield endpoint, opened[-1]
    for e in endpoints:
        e.close()


def mappings(key: str) -> int:
    """How many times this process (the agent, and Triton's client for the application) maps shared-memory `key`."""
    path = f"/dev/shm/{key.lstrip('/')}"
    return sum(1 for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(" " + path))


def eventually(condition, seconds: float = 10.0) -> bool:
    """A request's views are released when its handler returns, just after the answer is sent."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def in_flight(endpoint: InferenceEndpoint, session: HeldSession, region_in: str, region_out: str) -> tuple[threading.Thread, list]:
    """A shared-memory request sent on its own connection and held in the model; its result (or error) lands in the list."""
    answer: list = []

    def send() -> None:
        try:
            answer.append(shm_infer(client(endpoint), region_in, region_out))
        except Exception as exc:  # noqa: BLE001 - the test reads it
            answer.append(exc)

    session.hold = True
    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    assert session.running.wait(20), "the request never reached the model"
    return thread, answer


def test_unregistering_or_reregistering_a_region_a_request_uses_keeps_it_mapped_until_the_request_ends(held, regions):
    """The race: the application unregisters (or registers again, smaller, elsewhere) the regions a request reads its
    input from and writes its output into while the model runs. Unmapped then, the model would read freed memory and
    the output write would fault (SIGBUS or SIGSEGV ends the agent). Expected: unregister answers at once, the names are
    free, the request finishes in the regions it named when it arrived (its output where it asked), the agent unmaps
    them after it, and serving goes on with the new registrations."""
    make_endpoint, session = held
    endpoint = make_endpoint()
    c = client(endpoint)
    in_key, in_handle = regions("in", IMAGE_BYTES)
    out_key, out_handle = regions("out", SCORES_BYTES)
    new_key, new_handle = regions("new", 4096)
    x = image(3)
    expected = infer(c, x).as_numpy("scores")
    shm.set_shared_memory_region(in_handle, [x])
    application = mappings(in_key), mappings(out_key)
    c.register_system_shared_memory("in", in_key, IMAGE_BYTES)
    c.register_system_shared_memory("out", out_key, SCORES_BYTES)
    assert (mappings(in_key), mappings(out_key)) == (application[0] + 1, application[1] + 1)

    thread, answer = in_flight(endpoint, session, "in", "out")
    c.unregister_system_shared_memory("in")
    c.unregister_system_shared_memory()
    assert c.get_system_shared_memory_status() == []
    c.register_system_shared_memory("out", new_key, 4)  # the name again, another object, too small for the output
    assert (mappings(in_key), mappings(out_key)) == (application[0] + 1, application[1] + 1), "unmapped under the request"
    session.release.set()
    thread.join(20)

    assert not isinstance(answer[0], Exception), answer[0]
    assert answer[0].get_output("scores") == {"name": "scores", "datatype": "FP32", "shape": [1, 3]}
    np.testing.assert_array_equal(shm.get_contents_as_numpy(out_handle, np.float32, [1, 3]), expected)
    assert shm.get_contents_as_numpy(new_handle, np.uint8, [4096]).max() == 0  # not the region registered since
    assert eventually(lambda: (mappings(in_key), mappings(out_key)) == application), "still mapped after the request"
    session.hold = False
    with pytest.raises(InferenceServerException, match="input 'image': Unable to find shared memory region: 'in'"):
        shm_infer(c, "in", "out")
    c.register_system_shared_memory("in", in_key, IMAGE_BYTES)
    with pytest.raises(InferenceServerException, match="Invalid offset \\+ byte size for shared memory region: 'out'"):
        shm_infer(c, "in", "out")
    assert infer(c, x).get_response()["model_version"] == "1.1.0"


def test_a_region_unregistered_under_a_request_counts_against_the_mapped_bytes_until_unmapped(held, regions):
    """The attack: hold requests in flight on a region, unregister it and register another, again and again. Were the
    region's bytes no longer counted once unregistered, each held request would let the application map another
    --shm-max-mib. Expected: registration is refused while the unregistered region is still mapped, and accepted
    once the request that held it has ended."""
    make_endpoint, session = held
    endpoint = make_endpoint(SharedMemoryRegions(max_mapped_bytes=IMAGE_BYTES + 4096))
    c = client(endpoint)
    in_key, in_handle = regions("in", IMAGE_BYTES)
    out_key, _ = regions("out", SCORES_BYTES)
    shm.set_shared_memory_region(in_handle, [image(4)])
    application = mappings(in_key)
    c.register_system_shared_memory("in", in_key, IMAGE_BYTES)
    c.register_system_shared_memory("out", out_key, SCORES_BYTES)

    thread, answer = in_flight(endpoint, session, "in", "out")
    c.unregister_system_shared_memory("in")
    with pytest.raises(InferenceServerException, match="over this endpoint's limit .* still mapped for requests in flight") as err:
        c.register_system_shared_memory("again", in_key, IMAGE_BYTES)
    assert err.value.status() == "400"
    session.release.set()
    thread.join(20)
    assert not isinstance(answer[0], Exception), answer[0]
    assert eventually(lambda: mappings(in_key) == application)
    c.register_system_shared_memory("again", in_key, IMAGE_BYTES)
    assert sorted(r["name"] for r in c.get_system_shared_memory_status()) == ["again", "out"]
