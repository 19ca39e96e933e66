"""The gRPC front-end's pure parts: the committed protobuf modules, decoding Triton's
ModelInferRequest (raw and typed contents), encoding answers tritonclient reads, the model
configuration as Triton's ModelConfig message, and the error table's gRPC column."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from tritonclient.grpc import InferResult, service_pb2

from service import errors
from service.errors import BadInput
from service.http.grpc_v2.proto import grpc_service_pb2 as pb
from service.http.grpc_v2.proto import model_config_pb2
from service.http.grpc_v2.protocol import infer_response, parse_infer
from service.http.grpc_v2.server import http_path
from service.http.v2_protocol import serialize_strings
from service.model.repository import discover_cards
from tests.conftest import ROOT

if TYPE_CHECKING:
    from starlette.testclient import TestClient


def test_the_committed_protobuf_modules_are_what_protoc_writes() -> None:
    """`make protos` output is committed (installing needs no generator): it must be what
    the pinned grpcio-tools writes from the vendored .proto files."""
    run = subprocess.run(
        [sys.executable, "-m", "service.http.grpc_v2.proto.generate", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr


def test_kserve_and_tritonclient_grpc_cannot_share_a_process_and_ours_can() -> None:
    """Upstream: KServe's and tritonclient's generated modules both put `inference.*` in
    protobuf's default pool, so importing both fails (why tests/clients/ runs KServe's client
    in a process of its own). When this passes no longer, upstream fixed it: run KServe's
    client in-process again. Ours live in a pool of their own and import beside either."""
    both = subprocess.run(
        [sys.executable, "-c", "import tritonclient.grpc, kserve"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert both.returncode != 0 and "duplicate symbol" in both.stderr, both.stderr[-2000:]
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import kserve; from service.http.grpc_v2.proto import grpc_service_pb2, "
            "model_config_pb2, health_pb2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert alone.returncode == 0, alone.stderr[-2000:]


def request_with(*tensors: dict[str, Any], raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", id="req-1")
    for tensor in tensors:
        added = message.inputs.add(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"]
        )
        if "contents" in tensor:
            for field, values in tensor["contents"].items():
                getattr(added.contents, field).extend(values)
    message.raw_input_contents.extend(raw or [])
    return message


def test_raw_contents_decode_to_the_arrays_sent() -> None:
    pixels = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28)
    states = np.array([b"rs1.abc", b"rs1.defg"], dtype=object)
    message = request_with(
        {"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28]},
        {"name": "carried_state", "datatype": "BYTES", "shape": [2]},
        raw=[pixels.tobytes(), serialize_strings(states)],
    )
    parsed = parse_infer(message)
    assert parsed.id == "req-1"
    np.testing.assert_array_equal(parsed.inputs["pixels"], pixels)
    assert parsed.inputs["carried_state"].tolist() == [b"rs1.abc", b"rs1.defg"]
    assert parsed.datatypes == {"pixels": "FP32", "carried_state": "BYTES"}


@pytest.mark.parametrize(
    ("datatype", "field", "values", "dtype"),
    [
        ("FP32", "fp32_contents", [0.5, 1.5], np.float32),
        ("FP64", "fp64_contents", [0.25, 2.0], np.float64),
        ("INT64", "int64_contents", [1, -2], np.int64),
        ("INT32", "int_contents", [3, 4], np.int32),
        ("INT8", "int_contents", [-128, 127], np.int8),
        ("UINT8", "uint_contents", [0, 255], np.uint8),
        ("BOOL", "bool_contents", [True, False], np.bool_),
        ("BYTES", "bytes_contents", [b"a", b"bc"], object),
    ],
)
def test_typed_contents_decode_per_datatype(
    datatype: str, field: str, values: list[Any], dtype: Any
) -> None:
    message = request_with(
        {"name": "x", "datatype": datatype, "shape": [1, 2], "contents": {field: values}}
    )
    array = parse_infer(message).inputs["x"]
    assert array.shape == (1, 2) and array.dtype == np.dtype(dtype)
    assert array.ravel().tolist() == values


@pytest.mark.parametrize(
    ("message", "says"),
    [
        (
            request_with({"name": "x", "datatype": "FP32", "shape": [2, 3]}, raw=[b"\0" * 20]),
            "needs 24 bytes of raw_input_contents; it has 20",
        ),
        (
            request_with(
                {"name": "x", "datatype": "FP32", "shape": [1]},
                {"name": "y", "datatype": "FP32", "shape": [1]},
                raw=[b"\0" * 4],
            ),
            "raw_input_contents has 1 buffers for 2 inputs",
        ),
        (
            request_with(
                {"name": "x", "datatype": "FP32", "shape": [3], "contents": {"fp32_contents": [1]}}
            ),
            "shape [3] needs 3 values, contents.fp32_contents has 1",
        ),
        (
            request_with(
                {"name": "x", "datatype": "FP32", "shape": [1], "contents": {"int_contents": [1]}}
            ),
            "goes in contents.fp32_contents; it has ['int_contents']",
        ),
        (
            request_with(
                {"name": "x", "datatype": "FP16", "shape": [1], "contents": {"fp32_contents": [1]}}
            ),
            "FP16 data can only come as raw_input_contents",
        ),
        (
            request_with(
                {"name": "x", "datatype": "INT8", "shape": [1], "contents": {"int_contents": [300]}}
            ),
            "values outside the INT8 range",
        ),
        (request_with({"name": "x", "datatype": "FP32", "shape": [1]}), "has neither contents"),
        (
            request_with({"name": "x", "datatype": "COMPLEX", "shape": [1]}, raw=[b""]),
            "datatype 'COMPLEX' is not supported",
        ),
        (
            request_with({"name": "x", "datatype": "FP32", "shape": [-1, 28]}, raw=[b""]),
            "'shape' must be at most",
        ),
        (
            request_with(
                {"name": "x", "datatype": "FP32", "shape": [1]},
                {"name": "x", "datatype": "FP32", "shape": [1]},
                raw=[b"\0" * 4, b"\0" * 4],
            ),
            "appears twice",
        ),
        (
            request_with({"name": "s", "datatype": "BYTES", "shape": [2]}, raw=[b"\1\0\0\0a"]),
            "BYTES elements",
        ),
        (
            request_with({"name": "", "datatype": "FP32", "shape": [1]}, raw=[b"\0" * 4]),
            "every input needs a 'name'",
        ),
    ],
)
def test_malformed_tensors_are_refused_with_a_reason(
    message: pb.ModelInferRequest, says: str
) -> None:
    with pytest.raises(BadInput) as refused:
        parse_infer(message)
    assert says in refused.value.message


def test_a_huge_shape_over_little_data_costs_nothing() -> None:
    """The count comes from the shape and is compared with the data before any allocation."""
    message = request_with(
        {"name": "x", "datatype": "FP32", "shape": [2**31, 2**31]}, raw=[b"\0" * 4]
    )
    with pytest.raises(BadInput, match="raw_input_contents"):
        parse_infer(message)


def test_answers_are_raw_contents_that_tritonclient_reads() -> None:
    message = request_with({"name": "pixels", "datatype": "FP32", "shape": [1]}, raw=[b"\0" * 4])
    message.outputs.add(name="digit")
    parsed = parse_infer(message)
    outputs: dict[str, np.ndarray] = {
        "probabilities": np.full((2, 10), 0.1, dtype=np.float32),
        "digit": np.array([3, 7], dtype=np.int64),
        "carried_state_out": np.array(["rs1.x", "rs1.yz"], dtype=object),
    }
    only_digit = infer_response("m", "1", parsed, outputs)
    assert [o.name for o in only_digit.outputs] == ["digit"]
    parsed.outputs = {}  # none named: all of them
    answer = infer_response("m", "1", parsed, outputs)
    theirs = InferResult(service_pb2.ModelInferResponse.FromString(answer.SerializeToString()))
    np.testing.assert_array_equal(theirs.as_numpy("probabilities"), outputs["probabilities"])
    np.testing.assert_array_equal(theirs.as_numpy("digit"), outputs["digit"])
    assert theirs.as_numpy("carried_state_out").tolist() == [b"rs1.x", b"rs1.yz"]
    assert theirs.get_response().id == "req-1" and theirs.get_response().model_version == "1"
    parsed.outputs = {"nope": True}
    with pytest.raises(BadInput, match="unknown output"):
        infer_response("m", "1", parsed, outputs)


def test_every_model_configuration_is_a_valid_triton_model_config(
    app_client: TestClient,
) -> None:
    """The REST config route's JSON parses strictly (no unknown field, every enum name known)
    into Triton's ModelConfig message: what the gRPC ModelConfig call answers."""
    for card in discover_cards(ROOT / "models"):
        config = app_client.get(f"/v2/models/{card.name}/config").json()
        message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
        assert message.name == card.name
        assert len(message.input) == len(config["input"])
        back = json_format.MessageToDict(message, preserving_proto_field_name=True)
        assert back["max_batch_size" if config["max_batch_size"] else "name"]


def test_every_error_has_a_grpc_status() -> None:
    for cls, status in errors.STATUS.items():
        assert isinstance(grpc.StatusCode[status.grpc], grpc.StatusCode), cls
    assert errors.status_of(errors.Overloaded("x")).grpc == "UNAVAILABLE"
    assert errors.status_of(errors.UnknownModel("x")).grpc == "NOT_FOUND"


def test_grpc_calls_are_judged_by_the_http_path_of_the_same_operation() -> None:
    assert http_path("ServerLive", pb.ServerLiveRequest()) == "/v2/health/live"
    assert http_path("Check", None) == "/readyz"
    infer = pb.ModelInferRequest(model_name="mnist-rnn", model_version="1")
    assert http_path("ModelInfer", infer) == "/v2/models/mnist-rnn/versions/1/infer"
    assert http_path("ModelConfig", pb.ModelConfigRequest(name="a")) == "/v2/models/a/config"
    assert http_path("ModelMetadata", pb.ModelMetadataRequest(name="a")) == "/v2/models/a"
