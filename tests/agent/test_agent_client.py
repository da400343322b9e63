"""The agent's own inference client (edgefleet_agent.client), for applications on devices that install only the agent:
what it sends reads exactly as Triton's client's request does, what it reads matches Triton's client's reading of the
same answer, and each refusal reaches the application as a status it can act on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton
from agent_testkit import image
from tritonclient.http._utils import _get_inference_request

from edgefleet_agent.client import InferenceClient, InferenceError
from edgefleet_agent.endpoint import InferenceEndpoint, ModelRegistry
from edgefleet_agent.protocol import encode_infer_request, parse_infer_request


@pytest.mark.parametrize("binary", [True, False])
def test_the_request_reads_as_tritons_does(binary):
    x = image(3)
    ids = np.array([[1, 2**40]], np.int64)
    head, sections, length = encode_infer_request({"image": x, "ids": ids}, label=2, request_id="r1", binary=binary)
    ours = parse_infer_request(head + b"".join(bytes(s) for s in sections), length)

    inputs = []
    for name, array, kind in (("image", x, "FP32"), ("ids", ids, "INT64")):
        inp = triton.InferInput(name, list(array.shape), kind)
        inp.set_data_from_numpy(array, binary_data=binary)
        inputs.append(inp)
    body, json_size = _get_inference_request(inputs, "r1", None, 0, False, False, 0, None, {"label": 2})
    theirs = parse_infer_request(body, json_size)

    assert ours.id == theirs.id == "r1" and ours.label == theirs.label == 2
    assert ours.inputs.keys() == theirs.inputs.keys()
    for name in ours.inputs:
        np.testing.assert_array_equal(ours.inputs[name], theirs.inputs[name])
        assert ours.inputs[name].dtype == theirs.inputs[name].dtype


@pytest.mark.parametrize("binary", [True, False])
def test_answers_match_tritons_reading_and_the_model(served, binary):
    agent_, endpoint = served
    triton_client = triton.InferenceServerClient(endpoint.url.removeprefix("http://"))
    with InferenceClient(endpoint.url) as client:
        assert client.ready("detector")
        for seed in range(3):
            x = image(seed)
            answer = client.infer("detector", {"image": x}, binary=binary)
            inp = triton.InferInput("image", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            theirs = triton_client.infer("detector", [inp]).as_numpy("scores")
            expected = agent_._serving.loaded.session.run(["scores"], {"image": x})[0]
            assert (answer.model, answer.version) == ("detector", "1.1.0")
            np.testing.assert_array_equal(answer.outputs["scores"], theirs)
            np.testing.assert_allclose(answer.outputs["scores"], expected, rtol=1e-6)


def test_labels_reach_live_accuracy_over_one_connection(served):
    agent_, endpoint = served
    with InferenceClient(endpoint.url) as client:
        said = [int(client.infer("detector", {"image": image(s)}, label=1).outputs["scores"].argmax()) for s in range(6)]
    assert agent_.build_report().labelled == {"n": 6, "correct": said.count(1)}


def test_refusals_reach_the_application_with_their_status(served, tmp_path):
    _, endpoint = served
    with InferenceClient(endpoint.url) as client:
        with pytest.raises(InferenceError, match="version '1.0.0' is not served here") as err:
            client.infer("detector", {"image": image()}, version="1.0.0")
        assert err.value.status == 404
        with pytest.raises(InferenceError) as err:
            client.infer("detector", {"image": np.zeros((1, 3, 8, 8), np.float32)})
        assert err.value.status == 400 and "image" in err.value.message
        with pytest.raises(InferenceError) as err:
            client.infer("other", {"image": image()})
        assert err.value.status == 404
        assert client.infer("detector", {"image": image()}).version == "1.1.0"  # the connection survives refusals
    endpoint.close()
    with pytest.raises(InferenceError) as err:
        InferenceClient(endpoint.url, timeout=2).infer("detector", {"image": image()})
    assert err.value.unreachable


def test_a_model_not_yet_verified_is_503(make_agent):
    registry = ModelRegistry()
    registry.add(make_agent())  # no desired state yet: nothing verified to serve
    endpoint = InferenceEndpoint(registry, port=0).start()
    try:
        with InferenceClient(endpoint.url) as client:
            assert not client.ready("detector")
            with pytest.raises(InferenceError) as err:
                client.infer("detector", {"image": image()})
            assert err.value.status == 503
    finally:
        endpoint.close()


def test_the_endpoint_file_names_the_address(served, tmp_path):
    _, endpoint = served
    with pytest.raises(InferenceError, match="no agent serves this state directory yet"):
        InferenceClient.from_state_dir(tmp_path)
    (tmp_path / "endpoint.json").write_text("{not json")
    with pytest.raises(InferenceError, match="unreadable"):
        InferenceClient.from_state_dir(tmp_path)
    (tmp_path / "endpoint.json").write_text(json.dumps({"url": endpoint.url, "models": ["detector"]}))
    with InferenceClient.from_state_dir(tmp_path) as client:
        assert client.infer("detector", {"image": image()}).version == "1.1.0"
    with pytest.raises(ValueError, match="plain http"):
        InferenceClient("https://device:8000")
