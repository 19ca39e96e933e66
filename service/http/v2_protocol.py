"""The Open Inference Protocol (KServe V2) REST wire format: tensors in, tensors out.

Pure functions, no HTTP framework: parse an inference request (JSON tensors, or the binary
tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes followed by the
raw little-endian tensors, which is what `tritonclient` sends by default), and encode a response
the same two ways.

BYTES tensors (variable-length strings: the character model's carried states) follow Triton and
KServe: in JSON, `data` is a list of strings; as binary data, each element is a 4-byte
little-endian length then its bytes (tritonclient's `serialize_byte_tensor`), and
`binary_data_size` is the total. They decode to numpy object arrays (`str` from JSON, `bytes`
from binary data) of the declared shape, so the routes check their shapes like any tensor's;
what the bytes must say is the route's business.

Everything a client can get wrong raises a domain error (service/errors.py: BadInput, with a
message naming the tensor and what to change); the routes turn it into `{"error": ...}` with
its status (400) through the route kernel (service/http/kernel.py). Every field is checked for
its type before it is used, so no request shape can reach a Python error.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.engine.validation import MAX_TENSOR_DIMS, parse_count
from service.errors import BadInput, short

DATATYPES: dict[str, np.dtype] = {
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
}
NAMES_OF = {dtype: name for name, dtype in DATATYPES.items()}
# Variable-length strings: no numpy dtype of fixed size (decoded to object arrays)
BYTES = "BYTES"
DATATYPE_NAMES = sorted([*DATATYPES, BYTES])
LENGTH = struct.Struct("<I")  # the length before each binary BYTES element
HEADER_LENGTH = "inference-header-content-length"


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    # requested output name -> wants binary data; empty: every output, as `binary_default`
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def datatype_of(array: np.ndarray) -> str:
    if array.dtype == np.object_:
        return BYTES
    return NAMES_OF[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]


def _shape(tensor: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_TENSOR_DIMS
        or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 2**31 for d in shape
        )
    ):
        raise BadInput(
            f"input {short(name)}: 'shape' must be a list of at most {MAX_TENSOR_DIMS} integers "
            "in 0..2^31"
        )
    return tuple(shape)


def _object(value: Any, what: str) -> dict[str, Any]:
    """An optional JSON object field (absent or null: empty)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be an object")
    return value


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool:
    value = parameters.get(key, False)
    if not isinstance(value, bool):
        raise BadInput(f"{what}: '{key}' must be true or false")
    return value


def _from_json_data(data: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise BadInput(f"input {short(name)}: 'data' must be a list of numbers")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise BadInput(
            f"input {short(name)}: 'data' is ragged (rows of different lengths)"
        ) from None
    kind = raw.dtype.kind
    numeric = raw.size == 0 or kind in "iuf" or (kind == "b" and dtype.kind == "b")
    if not numeric or (dtype.kind in "iub" and kind == "f"):
        raise BadInput(f"input {short(name)}: 'data' must hold {NAMES_OF[dtype]} numbers")
    if raw.size != math.prod(shape):
        raise BadInput(
            f"input {short(name)}: shape {list(shape)} needs {math.prod(shape)} values, "
            f"'data' has {raw.size}"
        )
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise BadInput(f"input {short(name)}: values outside the {NAMES_OF[dtype]} range")
    return raw.astype(dtype).reshape(shape)


def _json_kind(value: Any) -> str:
    """A JSON value's kind, for a message about what stood where a string belongs."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list (a ragged row, or nested deeper than the rows)"
    return "an object"


def _strings_from_json(data: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON `data` of a BYTES tensor: strings, flat or nested row by row; nothing else
    (a number is not turned into its text, which would hide a client's mistake)."""
    if not isinstance(data, list):
        raise BadInput(f"input {short(name)}: BYTES 'data' must be a list of strings")
    try:
        raw = np.array(data, dtype=object)  # ragged rows stay lists, caught below
    except (ValueError, TypeError):
        raise BadInput(f"input {short(name)}: 'data' is ragged or nested too deep") from None
    for i, item in enumerate(raw.flat):
        if not isinstance(item, str):
            raise BadInput(
                f"input {short(name)}: BYTES 'data' must be a list of strings; element {i} "
                f"is {_json_kind(item)}"
            )
    if raw.size != math.prod(shape):
        raise BadInput(
            f"input {short(name)}: shape {list(shape)} needs {math.prod(shape)} strings, "
            f"'data' has {raw.size}"
        )
    return raw.reshape(shape)


def strings_from_binary(chunk: memoryview, shape: tuple[int, ...], name: str) -> np.ndarray:
    """Binary data of a BYTES tensor: per element a 4-byte little-endian length then the
    bytes. The element count comes from the shape and is checked against the size before
    anything is read, so a huge shape over a few bytes costs nothing; every length, and the
    room for it, is checked against what is left, and nothing may be left over."""
    count = math.prod(shape)
    if count * LENGTH.size > len(chunk):
        raise BadInput(
            f"input {short(name)}: shape {list(shape)} needs {count} BYTES elements of at least "
            f"{LENGTH.size} bytes each (a length, then the bytes); binary_data_size is "
            f"{len(chunk)}"
        )
    elements = np.empty(count, dtype=object)
    at = 0
    for i in range(count):
        if len(chunk) - at < LENGTH.size:  # the elements before took the room of its length
            raise BadInput(
                f"input {short(name)}: the tensor's binary data (binary_data_size "
                f"{len(chunk)}) ends before element {i}'s 4-byte length; shape {list(shape)} "
                f"needs {count} elements"
            )
        (length,) = LENGTH.unpack_from(chunk, at)
        at += LENGTH.size
        if length > len(chunk) - at:
            raise BadInput(
                f"input {short(name)}: element {i} has length {length}, past the end of the "
                f"tensor's binary data ({len(chunk) - at} bytes left of binary_data_size "
                f"{len(chunk)}); each element is a 4-byte little-endian length then the bytes"
            )
        elements[i] = bytes(chunk[at : at + length])
        at += length
    if at != len(chunk):
        raise BadInput(
            f"input {short(name)}: binary_data_size is {len(chunk)} but its {count} BYTES "
            f"element(s) take {at} bytes"
        )
    return elements.reshape(shape)


def serialize_strings(array: np.ndarray) -> bytes:
    """A BYTES output as binary data: what `strings_from_binary` reads."""
    parts = []
    for item in array.flat:
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts += [LENGTH.pack(len(data)), data]
    return b"".join(parts)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode a V2 inference request body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        size = parse_count(header_length.strip())
        if size is None:
            raise BadInput("Inference-Header-Content-Length must be a non-negative integer")
        if not 0 < size <= len(body):
            raise BadInput(
                f"Inference-Header-Content-Length is {size} but the body has {len(body)} bytes"
            )
        header_bytes, binary = body[:size], memoryview(body)[size:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"the request is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise BadInput("the request needs an 'inputs' list of tensors")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadInput("'id' must be a string")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise BadInput("every input needs a 'name'")
        name = tensor["name"]
        if name in inputs:
            raise BadInput(f"input {short(name)} appears twice")
        datatype = tensor.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPE_NAMES:
            raise BadInput(
                f"input {short(name)}: datatype {short(datatype)} is not supported; use one of "
                f"{DATATYPE_NAMES}"
            )
        shape = _shape(tensor, name)
        parameters = _object(tensor.get("parameters"), f"input {short(name)}: 'parameters'")
        binary_size = parameters.get("binary_data_size")
        if binary_size is not None and (
            not isinstance(binary_size, int) or isinstance(binary_size, bool)
        ):
            raise BadInput(f"input {short(name)}: 'binary_data_size' must be an integer")
        if datatype == BYTES and binary_size is not None:
            if binary_size < 0:
                raise BadInput(f"input {short(name)}: 'binary_data_size' must not be negative")
            if offset + binary_size > len(binary):
                raise BadInput(f"input {short(name)}: the body ends before its binary data")
            chunk = binary[offset : offset + binary_size]
            offset += binary_size
            inputs[name] = strings_from_binary(chunk, shape, name)
        elif datatype == BYTES and "data" in tensor:
            inputs[name] = _strings_from_json(tensor["data"], shape, name)
        elif binary_size is not None:
            dtype = DATATYPES[datatype]
            expected = math.prod(shape) * dtype.itemsize
            if binary_size != expected:
                raise BadInput(
                    f"input {short(name)}: binary_data_size {binary_size} but shape {list(shape)} "
                    f"of {datatype} needs {expected} bytes"
                )
            if offset + expected > len(binary):
                raise BadInput(f"input {short(name)}: the body ends before its binary data")
            chunk = binary[offset : offset + expected]
            offset += expected
            inputs[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        elif "data" in tensor:
            inputs[name] = _from_json_data(tensor["data"], DATATYPES[datatype], shape, name)
        else:
            raise BadInput(f"input {short(name)} has neither 'data' nor binary_data_size")
        datatypes[name] = datatype
    if offset != len(binary):
        raise BadInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    request = InferRequest(request_id, inputs, datatypes)
    params = _object(header.get("parameters"), "'parameters'")
    request.binary_default = _flag(params, "binary_data_output", "'parameters'")
    outputs = header.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise BadInput("'outputs' must be a list of {\"name\": ...} objects")
    for out in outputs or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise BadInput("every requested output needs a 'name'")
        what = f"output {short(out['name'])}: 'parameters'"
        request.outputs[out["name"]] = _flag(
            _object(out.get("parameters"), what), "binary_data", what
        )
    return request


def check_outputs(request: InferRequest, available: list[str]) -> None:
    """Requested outputs must exist: checked before the model runs, not after."""
    unknown = sorted(set(request.outputs) - set(available))
    if unknown:
        raise BadInput(f"unknown output(s) {short(unknown)}; this model has {sorted(available)}")


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    check_outputs(request, list(outputs))
    chosen = request.outputs or dict.fromkeys(outputs, request.binary_default)
    tensors = []
    blobs = []
    for name, binary in chosen.items():
        array = np.ascontiguousarray(outputs[name])
        strings = array.dtype == np.object_  # BYTES: str (or bytes) elements
        if not strings:
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = serialize_strings(array) if strings else array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif strings:  # JSON holds text: bytes elements must be UTF-8 (ours are ASCII)
            tensor["data"] = [x if isinstance(x, str) else bytes(x).decode() for x in array.flat]
        else:
            tensor["data"] = array.ravel()  # orjson writes numpy arrays natively
        tensors.append(tensor)
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": tensors,
    }
    if request.id is not None:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
