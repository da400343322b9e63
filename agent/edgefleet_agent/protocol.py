"""The Open Inference Protocol (KServe v2, HTTP/REST) as bytes in and out: request parsing, response encoding and the
metadata documents, with Triton's binary tensor data extension. No sockets here: endpoint.py is the HTTP side.

Followed exactly (kserve/open-inference-protocol, specification/protocol/inference_rest.md; Triton's
docs/protocol/extension_binary_data.md):

- Tensors in JSON: `{"name", "shape", "datatype", "parameters"?, "data"}`, data flat or nested, row-major.
- Binary tensors: an input (or response output) with parameter `binary_data_size` is not in the JSON; its bytes
  follow the JSON object, in the order of the inputs (outputs), little-endian, row-major, without padding; BOOL is
  one byte per element, BYTES is each element as a 4-byte little-endian length then its bytes. The
  `Inference-Header-Content-Length` header gives the JSON object's length whenever binary data follows it.
- An output is returned as binary when its request output says `"binary_data": true`, or, without that, when the
  request's `"binary_data_output"` parameter is true; otherwise as JSON. No `outputs` in the request means every
  output, with the request's default.
- Shared memory (Triton's docs/protocol/extension_shared_memory.md, system memory only): an input with parameters
  `shared_memory_region` and `shared_memory_byte_size` (and optionally `shared_memory_offset`) is read from that
  registered region, its bytes laid out as a binary tensor's; a requested output with them is written there, and its
  response output carries no data. The regions themselves are shm.py's.
- Errors are `{"error": "<message>"}` with an HTTP error status (ProtocolError.status).

Extensions to the protocol, as its Parameters section allows: the request parameter `label` (an integer) is the true
class of a classifier's input, which the agent counts as live accuracy. Other request parameters (Triton's
`priority`, `timeout`, `sequence_*`, custom ones) are accepted and ignored.
"""

from __future__ import annotations

import json
import math
import struct
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from edgefleet_agent.contract.manifest import ModelManifest, TensorSpec

PLATFORM = "onnx_onnxv1"
EXTENSIONS = ("binary_tensor_data", "system_shared_memory", "statistics", "model_configuration")
LABEL_PARAMETER = "label"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the JSON object's length when binary tensors follow it

DATATYPE_OF_ELEMENT: dict[str, str] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
    "bfloat16": "BF16",
    "string": "BYTES",
}
# little-endian on the wire, whatever the device's byte order
NUMPY_OF_DATATYPE: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
_DATATYPE_OF_NUMPY: dict[tuple[str, int], str] = {(dt.kind, dt.itemsize): name for name, dt in NUMPY_OF_DATATYPE.items() if name != "BYTES"}
_LENGTH = struct.Struct("<I")


class ProtocolError(Exception):
    """A request the protocol answers with `{"error": message}` and this HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad_request(message: str) -> ProtocolError:
    return ProtocolError(400, message)


def datatype_of(array: np.ndarray) -> str:
    """The protocol's datatype of a numpy array (object and string arrays are BYTES)."""
    dt = array.dtype
    if dt.kind in "OSU":
        return "BYTES"
    found = _DATATYPE_OF_NUMPY.get((dt.kind, dt.itemsize))
    if found is None:
        raise ValueError(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return found


def shape_text(shape: Sequence[int | str]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# -- metadata -------------------------------------------------------------------------------------------------------
def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    """$metadata_tensor: variable-size dimensions are -1."""
    return {
        "name": spec.name,
        "datatype": DATATYPE_OF_ELEMENT[spec.element_type],
        "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
    }


def model_metadata(name: str, versions: Sequence[str], manifest: ModelManifest) -> dict[str, Any]:
    """$metadata_model_response."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": PLATFORM,
        "inputs": [tensor_metadata(s) for s in manifest.inputs],
        "outputs": [tensor_metadata(s) for s in manifest.outputs],
    }


def model_config(name: str, manifest: ModelManifest) -> dict[str, Any]:
    """Triton's model configuration extension (its ModelConfig in JSON), which Triton's tools read before they send
    anything (perf_analyzer, model_analyzer). max_batch_size 0: the agent batches nothing across requests, so dims are
    the model's whole shape, -1 where it varies. In Triton's vocabulary: platform onnxruntime_onnx, TYPE_* datatypes."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        meta = tensor_metadata(spec)
        datatype = "STRING" if meta["datatype"] == "BYTES" else meta["datatype"]
        return {"name": spec.name, "data_type": f"TYPE_{datatype}", "dims": meta["shape"]}

    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 0,
        "input": [tensor(s) for s in manifest.inputs],
        "output": [tensor(s) for s in manifest.outputs],
    }


def server_metadata(version: str) -> dict[str, Any]:
    """$metadata_server_response."""
    return {"name": "edgefleet-agent", "version": version, "extensions": list(EXTENSIONS)}


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps would build this encoder again for every response


def dumps(document: Mapping[str, Any] | Sequence[Any]) -> bytes:
    """Compact JSON. NaN and infinities are written as NaN/Infinity (as Python's and rapidjson's readers accept):
    a model's invalid output reaches the application as it is, and is counted in the telemetry."""
    return _COMPACT.encode(document).encode("utf-8")


def error_body(message: str) -> bytes:
    return dumps({"error": message})


# -- requests -------------------------------------------------------------------------------------------------------
class SharedMemoryRef(NamedTuple):
    """Where a tensor's bytes are in a registered shared-memory region (the shared_memory_* parameters)."""

    region: str
    offset: int
    byte_size: int


class SharedMemory(Protocol):
    """The registered regions a request may name (shm.SharedMemoryRegions)."""

    def view(self, ref: SharedMemoryRef, where: str) -> memoryview: ...


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None  # None: the request's default (binary_data_output)
    shared_memory: SharedMemoryRef | None = None


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None: every output
    binary_output: bool = False  # the request's "binary_data_output"
    label: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def output_binary(self, requested: RequestedOutput | None) -> bool:
        if requested is not None and requested.binary is not None:
            return requested.binary
        return self.binary_output


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{where}parameters must be a JSON object, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool)):
            raise bad_request(f"{where}parameter {k!r} must be a string, number or boolean, got {type(v).__name__}")
    return value


def _flag(params: Mapping[str, Any], name: str, where: str) -> bool | None:
    if name not in params:
        return None
    value = params[name]
    if not isinstance(value, bool):
        raise bad_request(f"{where}parameter {name!r} must be true or false, got {value!r}")
    return value


def _shared_memory(params: Mapping[str, Any], where: str) -> SharedMemoryRef | None:
    region = params.get("shared_memory_region")
    size = params.get("shared_memory_byte_size")
    if region is None and size is None:
        if "shared_memory_offset" in params:
            raise bad_request(f"{where}shared_memory_offset is given without shared_memory_region and shared_memory_byte_size")
        return None
    if region is None or size is None:
        raise bad_request(f"{where}shared memory takes both shared_memory_region and shared_memory_byte_size; only one is given")
    if not isinstance(region, str) or not region:
        raise bad_request(f"{where}shared_memory_region must be the name of a registered region, got {region!r}")
    offset = params.get("shared_memory_offset", 0)
    for what, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad_request(f"{where}{what} must be a non-negative integer, got {value!r}")
    return SharedMemoryRef(region, offset, size)


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise bad_request(f"{where}: shape must be a list of non-negative integers, got {json.dumps(value)[:100]}")
    return tuple(value)


def _decode_bytes_elements(buf: memoryview, count: int, where: str, size_name: str = "binary_data_size") -> np.ndarray:
    """BYTES in binary: each element a 4-byte little-endian length, then that many bytes."""
    out = np.empty(count, dtype=object)
    pos, end = 0, len(buf)
    for i in range(count):
        if pos + 4 > end:
            raise bad_request(f"{where}: binary BYTES data ends after {i} of {count} elements")
        (n,) = _LENGTH.unpack_from(buf, pos)
        pos += 4
        if pos + n > end:
            raise bad_request(f"{where}: element {i} of the binary BYTES data is {n} bytes, past the end of its {end} bytes")
        out[i] = bytes(buf[pos : pos + n])
        pos += n
    if pos != end:
        raise bad_request(f"{where}: {size_name} is {end} bytes, but its {count} BYTES elements take {pos}")
    return out


def _from_binary(buf: memoryview, datatype: str, shape: tuple[int, ...], where: str, size_name: str = "binary_data_size") -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        return _decode_bytes_elements(buf, count, where, size_name).reshape(shape)
    dtype = NUMPY_OF_DATATYPE[datatype]
    need = count * dtype.itemsize
    if len(buf) != need:
        raise bad_request(f"{where}: {size_name} is {len(buf)} bytes, but shape {shape_text(shape)} of {datatype} takes {need}")
    array = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
    if datatype == "BOOL" and count and np.frombuffer(buf, dtype=np.uint8).max() > 1:
        raise bad_request(f"{where}: BOOL elements must be bytes 0 or 1")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _from_json(data: object, datatype: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise bad_request(f"{where}: data must be a JSON array (or send it as binary data with binary_data_size)")
    count = math.prod(shape)
    try:
        array: np.ndarray
        if datatype == "BYTES":
            strings = np.asarray(data, dtype=object).reshape(-1)
            if not all(isinstance(x, str) for x in strings):
                raise ValueError("BYTES elements in JSON must be strings")
            array = np.empty(strings.size, dtype=object)
            for i, x in enumerate(strings):
                array[i] = x.encode("utf-8")
        else:
            target = NUMPY_OF_DATATYPE[datatype].newbyteorder("=")
            if target.kind in "iu":  # exact: JSON integers up to UINT64's range, no floats, no booleans
                nested = np.asarray(data, dtype=object)
                ints = nested.reshape(-1).tolist()
                if any(type(v) is not int for v in ints):
                    raise ValueError(f"{datatype} elements in JSON must be integers")
                try:
                    array = np.array(ints, dtype=target).reshape(nested.shape)
                except OverflowError:
                    info = np.iinfo(target)
                    raise ValueError(f"an element is outside {datatype}'s range {info.min}..{info.max}") from None
            else:
                array = np.asarray(data)
                if array.size:
                    if datatype == "BOOL" and array.dtype != np.bool_:
                        raise ValueError("BOOL elements in JSON must be true or false")
                    if datatype != "BOOL" and array.dtype.kind not in "iuf":
                        raise ValueError(f"{datatype} elements in JSON must be numbers")
                array = array.astype(target)
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad_request(f"{where}: data cannot be read as {datatype}: {exc}") from None
    if array.size != count:
        raise bad_request(f"{where}: data has {array.size} elements, but shape {shape_text(shape)} has {count}")
    return array.reshape(shape)


class _Binary(NamedTuple):
    name: str
    datatype: str
    shape: tuple[int, ...]
    size: int
    where: str
    shared: SharedMemoryRef | None = None  # in a shared-memory region, not in the body


class _Plan(NamedTuple):
    """What a valid request header without an id says when every input is binary or in shared memory: all but the
    tensors' bytes, so a repeated header (a client sends the same one for every request of a shape) skips the JSON and
    its checks."""

    inputs: tuple[_Binary, ...]
    outputs: tuple[RequestedOutput, ...] | None
    binary_output: bool
    label: int | None
    parameters: dict[str, Any]


PLAN_HEADER_BYTES = 4096  # longer headers are parsed every time (they are the memo's keys)
PLANS = 64  # request (and response) headers remembered, the oldest forgotten first
_plans: dict[bytes, _Plan] = {}  # read without the lock: a dict lookup is atomic
_plans_lock = threading.Lock()


def parse_infer_request(body: bytes | memoryview, header_length: int | None, shared: SharedMemory | None = None) -> InferRequest:
    """$inference_request, with its binary tensors when `header_length` (Inference-Header-Content-Length) is given and
    its shared-memory inputs read from `shared`'s regions (a view, not a copy). Raises ProtocolError (400; 404 for an
    unregistered region) for anything the protocol does not allow, saying which field and why."""
    view = memoryview(body)
    if header_length is None:
        head, binary = view, view[:0]
    else:
        if header_length < 0 or header_length > len(view):
            raise bad_request(f"Inference-Header-Content-Length is {header_length}, but the body is {len(view)} bytes")
        head, binary = view[:header_length], view[header_length:]
    key = bytes(head) if len(head) <= PLAN_HEADER_BYTES else None
    plan = _plans.get(key) if key is not None else None
    if plan is None:
        return _parse(head, binary, key, shared)
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for b in plan.inputs:
        offset = _take_binary(inputs, b, binary, offset, shared)
    _check_consumed(binary, offset)
    return InferRequest(
        inputs=inputs,
        outputs=list(plan.outputs) if plan.outputs is not None else None,
        binary_output=plan.binary_output,
        label=plan.label,
        parameters=dict(plan.parameters),
    )


def _take_binary(inputs: dict[str, np.ndarray], b: _Binary, binary: memoryview, offset: int, shared: SharedMemory | None) -> int:
    if b.shared is not None:
        if shared is None:
            raise bad_request(f"{b.where}: this endpoint has no shared memory")
        inputs[b.name] = _from_binary(shared.view(b.shared, b.where), b.datatype, b.shape, b.where, "shared_memory_byte_size")
        return offset
    if offset + b.size > len(binary):
        raise bad_request(
            f"{b.where}: its {b.size} bytes of binary data run past the end of the body "
            f"({len(binary) - offset} bytes left after the JSON and earlier tensors): the request is truncated"
        )
    inputs[b.name] = _from_binary(binary[offset : offset + b.size], b.datatype, b.shape, b.where)
    return offset + b.size


def _check_consumed(binary: memoryview, offset: int) -> None:
    if offset != len(binary):
        raise bad_request(
            f"{len(binary) - offset} bytes follow the JSON and the inputs' binary data: "
            "Inference-Header-Content-Length or a binary_data_size is wrong"
        )


def _parse(head: memoryview, binary: memoryview, key: bytes | None, shared: SharedMemory | None) -> InferRequest:
    try:
        doc = json.loads(bytes(head))
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("the inference request must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad_request(f"id must be a string, got {json.dumps(request_id)[:50]}")
    params = _parameters(doc.get("parameters"), "request ")
    label = params.get(LABEL_PARAMETER)
    if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label < 0):
        raise bad_request(f"parameter {LABEL_PARAMETER!r} must be a non-negative integer (the true class index), got {label!r}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise bad_request("inputs must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    described: list[_Binary] | None = []
    offset = 0
    for n, raw in enumerate(raw_inputs):
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise bad_request(f"inputs[{n}] must be an object with a string name")
        name = raw["name"]
        where = f"input {name!r}"
        if name in inputs:
            raise bad_request(f"{where} is given twice")
        datatype = raw.get("datatype")
        if datatype not in NUMPY_OF_DATATYPE:
            hint = " (numpy has no bfloat16: this agent cannot take BF16 tensors)" if datatype == "BF16" else ""
            raise bad_request(f"{where}: datatype {datatype!r} is not one of {', '.join(NUMPY_OF_DATATYPE)}{hint}")
        shape = _shape(raw.get("shape"), where)
        tparams = _parameters(raw.get("parameters"), f"{where}: ")
        size = tparams.get("binary_data_size")
        ref = _shared_memory(tparams, f"{where}: ")
        if ref is not None:
            if "data" in raw or size is not None:
                raise bad_request(f"{where} is in shared memory: it takes neither data nor binary_data_size")
            b = _Binary(name, datatype, shape, ref.byte_size, where, ref)
            offset = _take_binary(inputs, b, binary, offset, shared)
            if described is not None:
                described.append(b)
        elif size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise bad_request(f"{where}: binary_data_size must be a non-negative integer, got {size!r}")
            if "data" in raw:
                raise bad_request(f"{where} has both data and binary_data_size")
            b = _Binary(name, datatype, shape, size, where)
            offset = _take_binary(inputs, b, binary, offset, shared)
            if described is not None:
                described.append(b)
        else:
            if "data" not in raw:
                raise bad_request(f"{where} has neither data nor a binary_data_size parameter")
            inputs[name] = _from_json(raw["data"], datatype, shape, where)
            described = None
    _check_consumed(binary, offset)
    outputs: list[RequestedOutput] | None = None
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise bad_request("outputs must be a list")
        outputs = []
        for n, raw in enumerate(raw_outputs):
            if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
                raise bad_request(f"outputs[{n}] must be an object with a string name")
            oparams = _parameters(raw.get("parameters"), f"output {raw['name']!r}: ")
            if "classification" in oparams:
                raise bad_request(f"output {raw['name']!r}: the classification extension is not supported by this server")
            where = f"output {raw['name']!r}: "
            outputs.append(RequestedOutput(raw["name"], _flag(oparams, "binary_data", where), _shared_memory(oparams, where)))
    binary_output = bool(_flag(params, "binary_data_output", "request "))
    if key is not None and described is not None and request_id is None:  # ids differ request by request
        frozen = tuple(outputs) if outputs is not None else None
        plan = _Plan(tuple(described), frozen, binary_output, label, dict(params))
        with _plans_lock:
            if len(_plans) >= PLANS:
                del _plans[next(iter(_plans))]
            _plans[key] = plan
    return InferRequest(
        inputs=inputs,
        id=request_id,
        outputs=outputs,
        binary_output=binary_output,
        label=label,
        parameters=params,
    )


# -- responses ------------------------------------------------------------------------------------------------------
def _binary(array: np.ndarray) -> bytes | memoryview:
    if array.dtype.kind in "OSU":
        parts = []
        for x in array.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode("utf-8")
            parts.append(_LENGTH.pack(len(b)))
            parts.append(b)
        return b"".join(parts)
    wire = array.dtype.newbyteorder("<") if array.dtype.byteorder not in ("|", "<") else array.dtype
    contiguous = np.ascontiguousarray(array, dtype=wire)
    return contiguous.data.cast("B")


def _json_data(array: np.ndarray) -> list[Any]:
    if array.dtype.kind in "OSU":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in array.reshape(-1)]
    data: list[Any] = array.reshape(-1).tolist()
    return data


def write_shared_output(dest: memoryview, array: np.ndarray, where: str) -> None:
    """An output's bytes (laid out as a binary tensor's) into its shared-memory destination, which must hold them."""
    section = _binary(array)
    n = len(section) if isinstance(section, bytes) else section.nbytes
    if n > len(dest):
        raise bad_request(
            f"{where}: shared_memory_byte_size is {len(dest)} bytes, but the output of shape {shape_text(array.shape)} takes {n}: "
            "ask for at least that many"
        )
    dest[:n] = section


_IN_SHARED_MEMORY = -1
# name, datatype, shape, binary_data_size (None: JSON data, _IN_SHARED_MEMORY: no data)
_Described = tuple[str, str, tuple[int, ...], int | None]
_heads: dict[tuple[str, str, tuple[_Described, ...]], bytes] = {}  # read without the lock: a dict lookup is atomic
_heads_lock = threading.Lock()


def encode_infer_response(
    model: str, version: str, request_id: str | None, outputs: Sequence[tuple[str, np.ndarray, bool | None]]
) -> tuple[bytes, list[bytes | memoryview]]:
    """$inference_response as (JSON, binary sections in output order); each output is binary (True), JSON data
    (False) or already written to shared memory (None: described, no data). When there are binary sections the caller
    sends `Inference-Header-Content-Length: len(JSON)`. Without an id, the JSON of binary and shared-memory outputs
    depends only on the model, its version and each output's name, datatype, shape and size: it is remembered, not
    encoded again."""
    binary: list[bytes | memoryview] = []
    described: list[_Described] = []
    for name, array, as_binary in outputs:
        size = None
        if as_binary is None:
            size = _IN_SHARED_MEMORY
        elif as_binary:
            section = _binary(array)
            binary.append(section)
            size = len(section) if isinstance(section, bytes) else section.nbytes
        described.append((name, datatype_of(array), array.shape, size))
    if request_id is not None or any(size is None for _, _, _, size in described):
        return _response_json(model, version, request_id, outputs, described), binary
    key = (model, version, tuple(described))
    head = _heads.get(key)
    if head is None:
        head = _response_json(model, version, None, outputs, described)
        with _heads_lock:
            if len(_heads) >= PLANS:
                del _heads[next(iter(_heads))]
            _heads[key] = head
    return head, binary


def _response_json(
    model: str, version: str, request_id: str | None, outputs: Sequence[tuple[str, np.ndarray, bool | None]], described: list[_Described]
) -> bytes:
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        doc["id"] = request_id
    entries: list[dict[str, Any]] = []
    for (name, datatype, shape, size), (_, array, _) in zip(described, outputs, strict=True):
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(shape)}
        if size is None:
            entry["data"] = _json_data(array)
        elif size != _IN_SHARED_MEMORY:
            entry["parameters"] = {"binary_data_size": size}
        entries.append(entry)
    doc["outputs"] = entries
    return dumps(doc)


# -- the client's side ----------------------------------------------------------------------------------------------
def encode_infer_request(
    inputs: Mapping[str, np.ndarray], label: int | None = None, request_id: str | None = None, binary: bool = True
) -> tuple[bytes, list[bytes | memoryview], int | None]:
    """$inference_request as (JSON, binary sections, Inference-Header-Content-Length or None). Inputs go as binary
    tensors (Triton's extension) unless `binary` is False; every output comes back binary when they do."""
    doc: dict[str, Any] = {}
    if request_id is not None:
        doc["id"] = request_id
    params: dict[str, Any] = {"binary_data_output": True} if binary else {}
    if label is not None:
        params[LABEL_PARAMETER] = int(label)
    if params:
        doc["parameters"] = params
    described: list[dict[str, Any]] = []
    sections: list[bytes | memoryview] = []
    for name, array in inputs.items():
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array)}
        if binary:
            section = _binary(array)
            sections.append(section)
            entry["parameters"] = {"binary_data_size": len(section) if isinstance(section, bytes) else section.nbytes}
        else:
            entry["data"] = _json_data(array)
        described.append(entry)
    doc["inputs"] = described
    head = dumps(doc)
    return head, sections, len(head) if binary else None


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: str | None
    outputs: dict[str, np.ndarray]
    id: str | None = None


def parse_infer_response(body: bytes | memoryview, header_length: int | None) -> InferResponse:
    """$inference_response, JSON or binary outputs. Raises ProtocolError (status 502: the server answered badly)."""
    view = memoryview(body)
    head, binary = (view, view[:0]) if header_length is None else (view[:header_length], view[header_length:])
    try:
        doc = json.loads(bytes(head))
        raw_outputs = doc["outputs"]
        outputs: dict[str, np.ndarray] = {}
        offset = 0
        for raw in raw_outputs:
            name, datatype, shape = raw["name"], raw["datatype"], _shape(raw["shape"], f"output {raw['name']!r}")
            if datatype not in NUMPY_OF_DATATYPE:
                raise bad_request(f"output {name!r}: datatype {datatype!r} is not one of {', '.join(NUMPY_OF_DATATYPE)}")
            size = (raw.get("parameters") or {}).get("binary_data_size")
            if size is None:
                outputs[name] = _from_json(raw.get("data"), datatype, shape, f"output {name!r}")
            else:
                outputs[name] = _from_binary(binary[offset : offset + size], datatype, shape, f"output {name!r}")
                offset += size
        return InferResponse(doc["model_name"], doc.get("model_version"), outputs, doc.get("id"))
    except ProtocolError as exc:
        raise ProtocolError(502, f"the inference response is malformed: {exc.message}") from None
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ProtocolError(502, f"the inference response is malformed: {type(exc).__name__}: {exc}") from None
