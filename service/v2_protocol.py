"""The Open Inference Protocol (KServe V2) REST wire format: tensors in, tensors out.

Pure functions, no HTTP framework: parse an inference request (JSON tensors, or the binary
tensor data extension: a JSON header of `Inference-Header-Content-Length` bytes followed by the
raw little-endian tensors, which is what `tritonclient` sends by default), and encode a response
the same two ways. Everything a client can get wrong raises V2Error with a message naming the
tensor and what to change; the routes turn it into `{"error": ...}` with status 400.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

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
HEADER_LENGTH = "inference-header-content-length"


class V2Error(ValueError):
    """A request the client must change (HTTP 400 unless `status` says otherwise)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    # requested output name -> wants binary data; empty: every output, as `binary_default`
    outputs: dict[str, bool] = field(default_factory=dict)
    binary_default: bool = False


def datatype_of(array: np.ndarray) -> str:
    return NAMES_OF[array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype]


def _shape(tensor: dict[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise V2Error(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return tuple(shape)


def _from_json_data(data: Any, dtype: np.dtype, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        raw = np.asarray(data)
    except ValueError:
        raise V2Error(f"input {name!r}: 'data' is ragged (rows of different lengths)") from None
    kind = raw.dtype.kind
    numeric = raw.size == 0 or kind in "iuf" or (kind == "b" and dtype.kind == "b")
    if not numeric or (dtype.kind in "iub" and kind == "f"):
        raise V2Error(f"input {name!r}: 'data' must hold {NAMES_OF[dtype]} numbers")
    if raw.size != math.prod(shape):
        raise V2Error(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, "
            f"'data' has {raw.size}"
        )
    if dtype.kind in "iu" and raw.size:
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise V2Error(f"input {name!r}: values outside the {NAMES_OF[dtype]} range")
    return raw.astype(dtype).reshape(shape)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode a V2 inference request body (JSON, or JSON header + binary tensors)."""
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            raise V2Error("Inference-Header-Content-Length must be an integer") from None
        if not 0 < size <= len(body):
            raise V2Error(
                f"Inference-Header-Content-Length is {size} but the body has {len(body)} bytes"
            )
        header_bytes, binary = body[:size], memoryview(body)[size:]
    else:
        header_bytes, binary = body, memoryview(b"")
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError as exc:
        raise V2Error(f"the request is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise V2Error("the request needs an 'inputs' list of tensors")
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error("'id' must be a string")
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise V2Error("every input needs a 'name'")
        name = tensor["name"]
        if name in inputs:
            raise V2Error(f"input {name!r} appears twice")
        datatype = tensor.get("datatype")
        if datatype not in DATATYPES:
            raise V2Error(
                f"input {name!r}: datatype {datatype!r} is not supported; use one of "
                f"{sorted(DATATYPES)}"
            )
        dtype = DATATYPES[datatype]
        shape = _shape(tensor, name)
        parameters = tensor.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise V2Error(f"input {name!r}: 'parameters' must be an object")
        binary_size = parameters.get("binary_data_size")
        if binary_size is not None:
            expected = math.prod(shape) * dtype.itemsize
            if binary_size != expected:
                raise V2Error(
                    f"input {name!r}: binary_data_size {binary_size} but shape {list(shape)} "
                    f"of {datatype} needs {expected} bytes"
                )
            if offset + expected > len(binary):
                raise V2Error(f"input {name!r}: the body ends before its binary data")
            chunk = binary[offset : offset + expected]
            offset += expected
            inputs[name] = np.frombuffer(chunk, dtype=dtype).reshape(shape)
        elif "data" in tensor:
            inputs[name] = _from_json_data(tensor["data"], dtype, shape, name)
        else:
            raise V2Error(f"input {name!r} has neither 'data' nor binary_data_size")
        datatypes[name] = datatype
    if offset != len(binary):
        raise V2Error(f"{len(binary) - offset} bytes of binary data belong to no input")
    request = InferRequest(request_id, inputs, datatypes)
    params = header.get("parameters") or {}
    request.binary_default = bool(isinstance(params, dict) and params.get("binary_data_output"))
    for out in header.get("outputs") or []:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise V2Error("every requested output needs a 'name'")
        out_params = out.get("parameters") or {}
        request.outputs[out["name"]] = bool(out_params.get("binary_data", False))
    return request


def encode_infer_response(
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: dict[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    unknown = sorted(set(request.outputs) - set(outputs))
    if unknown:
        raise V2Error(f"unknown output(s) {unknown}; this model has {sorted(outputs)}")
    chosen = request.outputs or dict.fromkeys(outputs, request.binary_default)
    tensors = []
    blobs = []
    for name, binary in chosen.items():
        array = np.ascontiguousarray(outputs[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array),
            "shape": list(array.shape),
        }
        if binary:
            blob = array.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
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
