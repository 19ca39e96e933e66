"""The KServe V2 wire format without HTTP: JSON and binary tensors, both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
