"""The Open Inference Protocol over gRPC, as messages: Triton's ModelInferRequest in, our
InferRequest out (the REST decoder's result, service/http/v2_protocol.py), and back.

Pure functions, no server: what comes after decoding is the same code for REST and gRPC
(service/http/v2_app.py's infer_digits / infer_chars, then the pipeline).

A tensor's data comes one of two ways, as in Triton: `raw_input_contents` (one little-endian
buffer per input, in the inputs' order: what tritonclient sends) or the typed `contents` of the
tensor (int_contents for INT8/16/32, fp32_contents for FP32, ...; FP16 has none). Triton's
rule: when raw contents are used, every input uses them. Answers always carry raw output
contents, as Triton's do (tritonclient reads either). BYTES elements are length-prefixed in
raw contents (4-byte little-endian length, then the bytes), one `bytes_contents` entry each in
typed contents.

Every count and size is checked against the shape before anything is allocated, and each
refusal is a BadInput naming the tensor, which the server answers as INVALID_ARGUMENT.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.engine.validation import MAX_TENSOR_DIMS
from service.errors import BadInput, short
from service.http.grpc_v2.proto import grpc_service_pb2 as pb
from service.http.v2_protocol import (
    BYTES,
    DATATYPE_NAMES,
    DATATYPES,
    InferRequest,
    check_outputs,
    datatype_of,
    serialize_strings,
    strings_from_binary,
)

# InferTensorContents' field for each datatype (FP16: raw contents only, as in Triton)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _shape(tensor: pb.ModelInferRequest.InferInputTensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape)
    if len(shape) > MAX_TENSOR_DIMS or not all(0 <= d <= 2**31 for d in shape):
        raise BadInput(
            f"input {short(tensor.name)}: 'shape' must be at most {MAX_TENSOR_DIMS} integers in "
            "0..2^31"
        )
    return shape


def _from_raw(raw: bytes, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if datatype == BYTES:
        return strings_from_binary(memoryview(raw), shape, name)
    dtype = DATATYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise BadInput(
            f"input {short(name)}: shape {list(shape)} of {datatype} needs {expected} bytes of "
            f"raw_input_contents; it has {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_contents(
    contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], name: str
) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise BadInput(
            f"input {short(name)}: {datatype} data can only come as raw_input_contents "
            "(InferTensorContents has no field for it)"
        )
    given = [f.name for f, _ in contents.ListFields()]
    stray = [f for f in given if f != field]
    if stray:
        raise BadInput(
            f"input {short(name)}: a {datatype} tensor's data goes in contents.{field}; it has "
            f"{stray}"
        )
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise BadInput(
            f"input {short(name)}: shape {list(shape)} needs {count} values, contents.{field} "
            f"has {len(values)}"
        )
    if datatype == BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    dtype = DATATYPES[datatype]
    wide = np.array(list(values), dtype=np.float64 if dtype.kind == "f" else None)
    if dtype.kind in "iu" and wide.size:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise BadInput(f"input {short(name)}: values outside the {datatype} range")
    return wide.astype(dtype).reshape(shape)


def parse_infer(message: pb.ModelInferRequest) -> InferRequest:
    """A ModelInferRequest as the decoded request the V2 inference code takes."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadInput(
            f"raw_input_contents has {len(raw)} buffers for {len(message.inputs)} inputs: when "
            "raw contents are used, every input has one, in the inputs' order"
        )
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, tensor in enumerate(message.inputs):
        name = tensor.name
        if not name:
            raise BadInput("every input needs a 'name'")
        if name in inputs:
            raise BadInput(f"input {short(name)} appears twice")
        datatype = tensor.datatype
        if datatype not in DATATYPE_NAMES:
            raise BadInput(
                f"input {short(name)}: datatype {short(datatype)} is not supported; use one of "
                f"{DATATYPE_NAMES}"
            )
        shape = _shape(tensor)
        if raw:
            if tensor.HasField("contents"):
                raise BadInput(
                    f"input {short(name)} has both contents and raw_input_contents: use one"
                )
            inputs[name] = _from_raw(raw[i], datatype, shape, name)
        elif tensor.HasField("contents"):
            inputs[name] = _from_contents(tensor.contents, datatype, shape, name)
        else:
            raise BadInput(f"input {short(name)} has neither contents nor raw_input_contents")
        datatypes[name] = datatype
    request = InferRequest(message.id or None, inputs, datatypes)
    for output in message.outputs:
        if not output.name:
            raise BadInput("every requested output needs a 'name'")
        request.outputs[output.name] = True  # gRPC answers are always raw contents
    return request


def infer_response(
    model_name: str, model_version: str, request: InferRequest, outputs: dict[str, np.ndarray]
) -> pb.ModelInferResponse:
    """The answer: the requested outputs (all when none was named), as raw contents."""
    check_outputs(request, list(outputs))
    response = pb.ModelInferResponse(
        model_name=model_name, model_version=model_version, id=request.id or ""
    )
    for name in request.outputs or outputs:
        array = np.ascontiguousarray(outputs[name])
        strings = array.dtype == np.object_
        if not strings:
            array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        response.outputs.add(name=name, datatype=datatype_of(array), shape=array.shape)
        response.raw_output_contents.append(
            serialize_strings(array) if strings else array.tobytes()
        )
    return response


def metadata_response(meta: dict[str, Any]) -> pb.ModelMetadataResponse:
    """The REST metadata document (v2_app.model_metadata) as its gRPC message."""
    response = pb.ModelMetadataResponse(
        name=meta["name"], versions=meta["versions"], platform=meta["platform"]
    )
    for kind in ("inputs", "outputs"):
        for tensor in meta[kind]:
            getattr(response, kind).add(
                name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
            )
    return response
