"""The KServe V2 wire format without HTTP: JSON and binary tensors, both ways."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from service.errors import BadInput
from service.http.v2_protocol import encode_infer_response, parse_infer_request


def binary_request(header: dict, *blobs: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(blobs), str(len(head))


def test_json_and_binary_tensors_decode_to_the_same_arrays() -> None:
    x = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28) % 256
    as_json = {
        "id": "1",
        "inputs": [
            {"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28], "data": x.tolist()}
        ],
    }
    a = parse_infer_request(json.dumps(as_json).encode(), None)
    body, length = binary_request(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": [2, 28, 28],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ]
        },
        x.tobytes(),
    )
    b = parse_infer_request(body, length)
    np.testing.assert_array_equal(a.inputs["pixels"], x)
    np.testing.assert_array_equal(b.inputs["pixels"], x)
    assert a.id == "1" and b.id is None


def test_two_binary_inputs_are_cut_in_order() -> None:
    ids = np.array([[1, 2, 3]], dtype=np.int64)
    state = np.ones((4, 1, 8), dtype=np.float32)
    body, length = binary_request(
        {
            "inputs": [
                {
                    "name": "ids",
                    "datatype": "INT64",
                    "shape": [1, 3],
                    "parameters": {"binary_data_size": ids.nbytes},
                },
                {
                    "name": "state",
                    "datatype": "FP32",
                    "shape": [4, 1, 8],
                    "parameters": {"binary_data_size": state.nbytes},
                },
            ]
        },
        ids.tobytes(),
        state.tobytes(),
    )
    request = parse_infer_request(body, length)
    np.testing.assert_array_equal(request.inputs["ids"], ids)
    np.testing.assert_array_equal(request.inputs["state"], state)


@pytest.mark.parametrize(
    ("header", "blob", "message"),
    [
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [2],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 4,
            "needs 8 bytes",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [2],
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"\0" * 4,
            "ends before",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0" * 8,
            "belong to no input",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "data": [1.5, 2]}]},
            b"",
            "INT64 numbers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]},
            b"",
            "ragged",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [300]}]},
            b"",
            "outside the UINT8 range",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]},
            b"",
            "at most 8 integers",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]},
            b"",
            "FP32 numbers",
        ),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}, b"", "neither"),
        (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                    {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},
                ]
            },
            b"",
            "twice",
        ),
        ({"input": []}, b"", "'inputs' list"),
        ({"id": 5, "inputs": []}, b"", "'id' must be a string"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(
    header: dict, blob: bytes, message: str
) -> None:
    body, length = binary_request(header, blob)
    with pytest.raises(BadInput, match=message):
        parse_infer_request(body, length if blob else None)


def test_header_length_must_fit_the_body() -> None:
    with pytest.raises(BadInput, match="Inference-Header-Content-Length"):
        parse_infer_request(b"{}", "10")
    with pytest.raises(BadInput, match="integer"):
        parse_infer_request(b"{}", "ten")


def test_response_encodes_requested_outputs_json_or_binary() -> None:
    body, _ = binary_request(
        {
            "id": "r",
            "inputs": [],
            "outputs": [
                {"name": "digit", "parameters": {"binary_data": True}},
                {"name": "probabilities"},
            ],
        }
    )
    request = parse_infer_request(body, None)
    outputs: dict[str, np.ndarray] = {
        "digit": np.array([3, 7], dtype=np.int64),
        "probabilities": np.full((2, 10), 0.1, dtype=np.float32),
    }
    payload, header_length = encode_infer_response("m", "1", request, outputs)
    assert header_length is not None
    header = json.loads(payload[:header_length])
    assert header["id"] == "r" and header["model_name"] == "m"
    digit, probabilities = header["outputs"]
    assert digit["parameters"]["binary_data_size"] == 16 and digit["datatype"] == "INT64"
    np.testing.assert_array_equal(np.frombuffer(payload[header_length:], "<i8"), [3, 7])
    assert probabilities["shape"] == [2, 10] and len(probabilities["data"]) == 20
    everything, none = encode_infer_response(
        "m", "1", parse_infer_request(b'{"inputs":[]}', None), outputs
    )
    assert none is None and {o["name"] for o in json.loads(everything)["outputs"]} == set(outputs)
    with pytest.raises(BadInput, match="unknown output"):
        request.outputs["logits"] = False
        encode_infer_response("m", "1", request, outputs)


def bytes_input(shape: list[int], size: int) -> dict:
    return {
        "name": "s",
        "datatype": "BYTES",
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


def test_bytes_tensors_decode_from_json_and_tritonclient_binary_alike() -> None:
    """BYTES as Triton and KServe define it: JSON strings, or per element a 4-byte
    little-endian length then the bytes (tritonclient's serialize_byte_tensor)."""
    strings = np.array([["rs1.abc", ""], ["é", "x" * 300]], dtype=object)
    as_json = parse_infer_request(
        json.dumps(
            {
                "inputs": [
                    {"name": "s", "datatype": "BYTES", "shape": [2, 2], "data": strings.tolist()}
                ]
            }
        ).encode(),
        None,
    )
    blob = serialize_byte_tensor(strings).item()
    ids = np.array([[1, 2]], dtype=np.int64)
    body, length = binary_request(
        {
            "inputs": [
                bytes_input([2, 2], len(blob)),
                {
                    "name": "ids",
                    "datatype": "INT64",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": ids.nbytes},
                },
            ]
        },
        blob,
        ids.tobytes(),
    )
    as_binary = parse_infer_request(body, length)
    for request in (as_json, as_binary):
        assert request.datatypes["s"] == "BYTES"
        assert request.inputs["s"].shape == (2, 2) and request.inputs["s"].dtype == object
    assert as_json.inputs["s"].tolist() == strings.tolist()  # str from JSON
    assert as_binary.inputs["s"].tolist() == [[s.encode() for s in r] for r in strings.tolist()]
    np.testing.assert_array_equal(as_binary.inputs["ids"], ids)  # cut after the strings
    empty = parse_infer_request(*binary_request({"inputs": [bytes_input([0], 0)]}))
    assert empty.inputs["s"].shape == (0,)


@pytest.mark.parametrize(
    ("shape", "blob", "size", "message"),
    [
        # the second element says 9 bytes, 5 are left
        (
            [2],
            struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"abcde",
            None,
            "element 1 has length 9, past the end",
        ),
        # FP32 values sent as BYTES: 1.0 read as a length
        ([1], np.array([1.0], "<f4").tobytes(), None, "element 0 has length 1065353216"),
        ([1], struct.pack("<I", 2**32 - 1), None, "past the end"),
        # binary_data_size larger than the elements: bytes left over
        (
            [1],
            struct.pack("<I", 1) + b"ab",
            None,
            "binary_data_size is 6 but its 1 BYTES element(s) take 5 bytes",
        ),
        # binary_data_size smaller than the elements: the length runs past it
        ([1], struct.pack("<I", 3) + b"abc", 6, "element 0 has length 3, past the end"),
        ([1], struct.pack("<I", 1) + b"a", 9, "ends before its binary data"),
        ([1], struct.pack("<I", 1) + b"a", -1, "must not be negative"),
        ([3], struct.pack("<I", 0) * 2, None, "needs 3 BYTES elements of at least 4 bytes"),
        # room for two lengths, but the first element's bytes took it
        ([2], struct.pack("<I", 2) + b"ab\0\0", None, "ends before element 1's 4-byte length"),
        ([2**31, 2**31], b"\0" * 8, None, "needs 4611686018427387904 BYTES elements"),
    ],
    ids=[
        "length-past-the-end",
        "fp32-under-bytes",
        "huge-length",
        "size-too-large",
        "size-too-small",
        "size-past-the-body",
        "size-negative",
        "too-few-elements",
        "no-room-for-a-length",
        "huge-shape",
    ],
)
def test_malformed_binary_bytes_are_refused_with_a_reason(
    shape: list[int], blob: bytes, size: int | None, message: str
) -> None:
    body, length = binary_request(
        {"inputs": [bytes_input(shape, len(blob) if size is None else size)]}, blob
    )
    with pytest.raises(BadInput, match=re.escape(message)):
        parse_infer_request(body, length)


LIST = "BYTES 'data' must be a list of strings; "


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1.5, "a"], LIST + "element 0 is a number"),
        (["a", 7], LIST + "element 1 is a number"),
        ([None, "a"], LIST + "element 0 is null"),
        (["a", True], LIST + "element 1 is true/false"),
        ([{"a": 1}, "b"], LIST + "element 0 is an object"),
        ([["a"], ["b", "c"]], LIST + "element 0 is a list (a ragged row"),
        ("ab", "BYTES 'data' must be a list of strings"),
        (["a", "b", "c"], "shape [2] needs 2 strings, 'data' has 3"),
    ],
)
def test_malformed_json_bytes_are_refused_with_a_reason(data: object, message: str) -> None:
    """Only strings: a number is not turned into its text (np.asarray would, silently)."""
    tensor = {"name": "carried_state", "datatype": "BYTES", "shape": [2], "data": data}
    with pytest.raises(BadInput, match=re.escape(f"input 'carried_state': {message}")):
        parse_infer_request(json.dumps({"inputs": [tensor]}).encode(), None)


def test_bytes_outputs_encode_as_json_strings_or_tritonclient_binary() -> None:
    strings = np.array(["rs1.abc", "", "é"], dtype=object)
    outputs = {"carried_state_out": strings, "logits": np.zeros((3, 1, 2), np.float32)}
    as_json, none = encode_infer_response(
        "m", "1", parse_infer_request(b'{"inputs":[]}', None), outputs
    )
    assert none is None
    tensor = json.loads(as_json)["outputs"][0]
    assert tensor == {
        "name": "carried_state_out",
        "datatype": "BYTES",
        "shape": [3],
        "data": ["rs1.abc", "", "é"],
    }
    payload, length = encode_infer_response(
        "m",
        "1",
        parse_infer_request(b'{"inputs":[],"parameters":{"binary_data_output":true}}', None),
        outputs,
    )
    assert length is not None
    header = json.loads(payload[:length])
    size = header["outputs"][0]["parameters"]["binary_data_size"]
    assert header["outputs"][0]["datatype"] == "BYTES"
    decoded = deserialize_bytes_tensor(payload[length : length + size])
    assert [x.decode() for x in decoded] == strings.tolist()
    # what this module writes, it reads back (a client may send a state as it got it)
    request, _ = binary_request(
        {"inputs": [bytes_input([3], size)]}, payload[length : length + size]
    )
    back = parse_infer_request(request, _)
    assert [x.decode() for x in back.inputs["s"]] == strings.tolist()
