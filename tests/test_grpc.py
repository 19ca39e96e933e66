"""The Open Inference Protocol over gRPC against a real `bentoml serve`: Triton's own client
(tritonclient.grpc, sync and asyncio), the standard health service, hostile calls (each with
the right status, the worker unharmed), deadlines and cancellation, tokens, a full queue, and
two workers sharing the port."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from google.protobuf import json_format
from tritonclient.utils import InferenceServerException

from loadtest.payloads import digits
from loadtest.servers import Server, start_server, wait_exit, worker_processes
from service.http.grpc_v2.proto import grpc_service_pb2 as pb
from service.http.grpc_v2.proto import health_pb2, model_config_pb2
from service.model.repository import discover_cards
from tests.conftest import ROOT, metric_value

pytestmark = pytest.mark.slow
MODELS = ROOT / "models"
TOKEN = "grpc-t0k"
INFER = "/inference.GRPCInferenceService/ModelInfer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("grpc"), model_dir=str(MODELS))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two workers, tokens on, a small digit queue (8 images) so that it fills."""
    started = start_server(
        tmp_path_factory.mktemp("grpc-guarded"),
        model_dir=str(MODELS),
        workers="2",
        api_tokens=TOKEN,
        max_queued_images="8",
    )
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(server.grpc_target)
    yield c
    c.close()


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    pool = digits()
    return np.array([d.pixels for d in pool], dtype=np.float32), np.array([d.label for d in pool])


def as_dict(message: Any) -> dict[str, Any]:
    """A message's content (tritonclient's classes and ours are different Python types)."""
    return dict(json_format.MessageToDict(message, preserving_proto_field_name=True))


def pixels_input(images: np.ndarray, datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput("pixels", list(images.shape), datatype)
    tensor.set_data_from_numpy(images)
    return tensor


def raw_call(target: str, message: bytes, method: str = INFER, **kwargs: Any) -> grpc.RpcError:
    """Send `message` (serialized already) and return the error it must end in."""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as ch:
        call = ch.unary_unary(method)
        with pytest.raises(grpc.RpcError) as failed:
            call(message, timeout=30, **kwargs)
    return failed.value


def test_health_metadata_and_config_are_the_http_answers_as_messages(
    server: Server, client: triton.InferenceServerClient
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "rnnserve" and "binary_tensor_data" in meta.extensions
    for card in discover_cards(MODELS):
        version = str(card.data["version"])
        assert client.is_model_ready(card.name) and client.is_model_ready(card.name, version)
        assert not client.is_model_ready(card.name, "999")  # Triton: false, not an error
        http_meta = httpx.get(f"{server.url}/v2/models/{card.name}", timeout=10).json()
        expected = json_format.ParseDict(http_meta, pb.ModelMetadataResponse())
        assert as_dict(client.get_model_metadata(card.name, version)) == as_dict(expected)
        http_config = httpx.get(f"{server.url}/v2/models/{card.name}/config", timeout=10).json()
        config = client.get_model_config(card.name).config
        assert as_dict(config) == as_dict(
            json_format.ParseDict(http_config, model_config_pb2.ModelConfig())
        )
    assert not client.is_model_ready("nope")


def test_digits_over_grpc_match_the_labels_and_the_http_answer(
    server: Server, client: triton.InferenceServerClient, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = batch
    answer = client.infer("mnist-bigru", [pixels_input(images[:64])], request_id="r-7")
    assert answer.as_numpy("digit").tolist() == labels[:64].tolist()
    assert answer.get_response().id == "r-7" and answer.get_response().model_version
    over_http = httpx.post(
        f"{server.url}/v2/models/mnist-bigru/infer",
        json={
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "FP32",
                    "shape": [8, 28, 28],
                    "data": images[:8].ravel().tolist(),
                }
            ]
        },
        timeout=30,
    ).json()
    http_probs = np.array(over_http["outputs"][0]["data"], dtype=np.float32).reshape(8, 10)
    np.testing.assert_allclose(answer.as_numpy("probabilities")[:8], http_probs, atol=1e-6)
    raw = images[:4].round().astype(np.uint8)  # the same 0..255 values, as bytes
    as_uint8 = client.infer("mnist-bigru", [pixels_input(raw, "UINT8")])
    assert as_uint8.as_numpy("digit").tolist() == labels[:4].tolist()
    only = client.infer(
        "mnist-rnn", [pixels_input(images[:2])], outputs=[triton.InferRequestedOutput("digit")]
    )
    assert only.as_numpy("probabilities") is None and only.as_numpy("digit").shape == (2,)


def test_a_carried_state_continues_a_text_over_grpc(client: triton.InferenceServerClient) -> None:
    ids = np.arange(1, 41, dtype=np.int64).reshape(1, 40) % 60
    whole = client.infer("char-rnn", [_ids(ids)]).as_numpy("logits")
    first = client.infer("char-rnn", [_ids(ids[:, :30])])
    state = triton.InferInput("carried_state", [1], "BYTES")
    state.set_data_from_numpy(first.as_numpy("carried_state_out"))
    rest = client.infer("char-rnn", [_ids(ids[:, 30:]), state]).as_numpy("logits")
    np.testing.assert_allclose(rest[0, -1], whole[0, -1], atol=1e-4)


def _ids(ids: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("ids", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    return tensor


def test_the_asyncio_client_with_many_concurrent_calls(
    server: Server, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    """64 calls at once, batched together by the server: each answer is its own image's."""
    images, labels = batch
    count = 64

    async def scenario() -> list[int]:
        async with triton_aio.InferenceServerClient(server.grpc_target) as c:
            answers = await asyncio.gather(
                *(c.infer("mnist-bigru", [pixels_input(images[i : i + 1])]) for i in range(count))
            )
        return [int(a.as_numpy("digit")[0]) for a in answers]

    assert asyncio.run(scenario()) == labels[:count].tolist()


def _infer_message(
    model: str = "mnist-rnn", name: str = "pixels", datatype: str = "FP32"
) -> pb.ModelInferRequest:
    """One blank 28x28 image, the way tritonclient sends it (raw contents)."""
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=[1, 28, 28])
    message.raw_input_contents.append(np.zeros((1, 28, 28), np.float32).tobytes())
    return message


def _hostile() -> list[tuple[str, bytes, grpc.StatusCode, str]]:
    cases = []
    big = _infer_message()
    big.raw_input_contents[0] = b"\0" * (5 * 2**20)
    cases.append(("oversized", big.SerializeToString(), grpc.StatusCode.RESOURCE_EXHAUSTED, ""))
    wrong_type = _infer_message(datatype="INT16")
    wrong_type.raw_input_contents[0] = b"\0" * (28 * 28 * 2)
    cases.append(
        ("datatype", wrong_type.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "FP32")
    )
    short = _infer_message()
    short.raw_input_contents[0] = b"\0" * 100
    cases.append(
        ("shape/data", short.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "bytes")
    )
    unknown = _infer_message("nope")
    cases.append(("model", unknown.SerializeToString(), grpc.StatusCode.NOT_FOUND, "nope"))
    version = _infer_message()
    version.model_version = "999"
    cases.append(("version", version.SerializeToString(), grpc.StatusCode.NOT_FOUND, "999"))
    renamed = _infer_message(name="image")
    cases.append(("input", renamed.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "pixels"))
    output = _infer_message()
    output.outputs.add(name="logits")
    cases.append(("output", output.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "logits"))
    nan = _infer_message()
    nan.raw_input_contents[0] = np.full((1, 28, 28), np.nan, np.float32).tobytes()
    cases.append(("nan", nan.SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "finite"))
    cases.append(("garbage", b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid"))
    return cases


@pytest.mark.parametrize(("case", "message", "code", "says"), _hostile(), ids=lambda c: "")
def test_hostile_calls_get_their_status_and_the_worker_is_unharmed(
    server: Server,
    client: triton.InferenceServerClient,
    case: str,
    message: bytes,
    code: grpc.StatusCode,
    says: str,
) -> None:
    error = raw_call(server.grpc_target, message)
    assert error.code() == code, (case, error.details())
    assert says in (error.details() or ""), (case, error.details())
    assert client.is_server_ready()
    zeros = np.zeros((1, 28, 28), np.float32)
    assert client.infer("mnist-rnn", [pixels_input(zeros)]).as_numpy("digit").shape == (1,)
    assert "Traceback" not in server.log()


def test_deadlines_and_cancellation_are_honoured(
    server: Server, client: triton.InferenceServerClient
) -> None:
    """The deadline and the moment of cancelling are fractions of how long the same call takes
    on this machine, measured first: nothing here assumes a machine's speed."""
    ids = np.ones((64, 128), dtype=np.int64)  # the largest character request
    started = time.perf_counter()
    client.infer("char-rnn", [_ids(ids)])
    takes = time.perf_counter() - started
    with pytest.raises(InferenceServerException) as late:
        client.infer("char-rnn", [_ids(ids)], client_timeout=takes / 10)
    assert late.value.status() == "StatusCode.DEADLINE_EXCEEDED"

    async def cancel_midway() -> bool:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            message = pb.ModelInferRequest(model_name="char-rnn")
            message.inputs.add(name="ids", datatype="INT64", shape=list(ids.shape))
            message.raw_input_contents.append(ids.tobytes())
            call = channel.unary_unary(INFER)(message.SerializeToString(), timeout=30)
            await asyncio.sleep(takes / 4)  # sent, and well before its answer
            call.cancel()
            try:
                await call
            except asyncio.CancelledError:
                return True
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.CANCELLED
            return False  # it finished first: nothing was cancelled

    assert all(asyncio.run(cancel_midway()) for _ in range(3))
    # the server saw its calls end early (the handler cancelled, the work dropped)
    assert metric_value(server.url, "rnnserve_grpc_calls_total", 'code="CANCELLED"') >= 1
    assert client.infer("char-rnn", [_ids(ids[:1, :5])]).as_numpy("logits").shape[:2] == (1, 5)
    assert "Traceback" not in server.log()


def test_the_standard_health_service(server: Server) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        serving = health_pb2.HealthCheckResponse.SERVING
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == serving
        named = health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService")
        assert check(named, timeout=10).status == serving
        with pytest.raises(grpc.RpcError) as unknown:
            check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        watch = channel.unary_stream(
            "/grpc.health.v1.Health/Watch",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        stream = watch(health_pb2.HealthCheckRequest(), timeout=10)
        assert next(stream).status == serving
        stream.cancel()
        statistics = channel.unary_unary("/inference.GRPCInferenceService/ModelStatistics")
        with pytest.raises(grpc.RpcError) as unserved:
            statistics(b"", timeout=10)
        assert unserved.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_calls_are_counted_by_method_and_code(
    server: Server, client: triton.InferenceServerClient
) -> None:
    client.infer("mnist-rnn", [pixels_input(np.zeros((1, 28, 28), np.float32))])
    assert metric_value(server.url, "rnnserve_grpc_calls_total", 'code="OK"') >= 1
    assert metric_value(server.url, "rnnserve_grpc_calls_total", 'method="ModelInfer"') >= 1


def test_tokens_guard_every_call_but_the_exempt_ones(guarded: Server) -> None:
    zeros = np.zeros((1, 28, 28), np.float32)
    anonymous = triton.InferenceServerClient(guarded.grpc_target)
    assert anonymous.is_server_live() and anonymous.is_server_ready()  # exempt, as over HTTP
    for attempt in (
        lambda c, h: c.infer("mnist-rnn", [pixels_input(zeros)], headers=h),
        lambda c, h: c.get_model_metadata("mnist-rnn", headers=h),
        lambda c, h: c.get_model_config("mnist-rnn", headers=h),
    ):
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            with pytest.raises(InferenceServerException) as refused:
                attempt(anonymous, headers)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
            assert "Bearer" in refused.value.message()
        assert attempt(anonymous, {"authorization": f"Bearer {TOKEN}"}) is not None
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        assert check(health_pb2.HealthCheckRequest(), timeout=10).status == 1  # a probe: open
    anonymous.close()


def test_a_full_queue_is_unavailable_with_a_retry_hint(
    guarded: Server, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    """8 images may wait per worker: 100 calls of 8 at once on one channel (one worker): a
    burst far bigger than what one model call takes, on any machine."""
    images = batch[0][:8]
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    message = pb.ModelInferRequest(model_name="mnist-bigru")
    message.inputs.add(name="pixels", datatype="FP32", shape=[8, 28, 28])
    message.raw_input_contents.append(images.tobytes())
    payload = message.SerializeToString()

    async def flood() -> list[grpc.aio.AioRpcError | bytes]:
        async with grpc.aio.insecure_channel(guarded.grpc_target) as channel:
            infer = channel.unary_unary(INFER)
            calls = [infer(payload, timeout=30, metadata=metadata) for _ in range(100)]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(flood())
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert refused and len(refused) < len(results), "the queue should fill, and some be served"
    for error in refused:
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        trailers = dict(error.trailing_metadata() or ())
        assert trailers.get("retry-after") == "1" and trailers.get("grpc-retry-pushback-ms")


def test_two_workers_share_the_port_and_connections_spread(guarded: Server) -> None:
    """SO_REUSEPORT: the kernel spreads connections; 16 connections reach both workers. (gRPC
    channels to one target share one connection unless each has its own subchannel pool.)"""
    workers = worker_processes(guarded.process.pid)
    assert len(workers) == 2
    # /readyz answers once one worker is up: wait for both to listen (each binds on start-up)
    deadline = time.monotonic() + 60
    while not all(_listens(w, guarded.grpc_port) for w in workers):
        assert time.monotonic() < deadline, "a worker never listened on the gRPC port"
        time.sleep(0.2)
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(guarded.grpc_target, own_connection) for _ in range(16)]
    try:
        for channel in channels:
            live = channel.unary_unary(
                "/inference.GRPCInferenceService/ServerLive",
                response_deserializer=pb.ServerLiveResponse.FromString,
            )
            assert live(b"", timeout=10).live
        held = [
            sum(
                1
                for conn in worker.connections(kind="tcp")
                if conn.laddr
                and conn.laddr.port == guarded.grpc_port
                and conn.status == "ESTABLISHED"
            )
            for worker in workers
        ]
    finally:
        for channel in channels:
            channel.close()
    assert sum(held) == 16 and min(held) >= 1, held


def _listens(worker: Any, port: int) -> bool:
    return any(
        conn.status == "LISTEN" and conn.laddr and conn.laddr.port == port
        for conn in worker.connections(kind="tcp")
    )


def test_a_taken_grpc_port_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = start_server(tmp_path, wait=False, grpc_port=str(port))
        assert wait_exit(server, timeout=90) != 0
    assert f"the gRPC port 127.0.0.1:{port} is not free" in server.log()
    assert "RNNSERVE_GRPC_PORT" in server.log()


def test_port_zero_serves_no_grpc(tmp_path: Path) -> None:
    """The worker listens on nothing but the HTTP socket the arbiter handed it."""
    server = start_server(tmp_path, model_dir=str(MODELS), grpc_port="0")
    try:
        listening = {
            conn.laddr.port
            for worker in worker_processes(server.process.pid)
            for conn in worker.connections(kind="tcp")
            if conn.status == "LISTEN"
        }
        assert listening <= {int(server.url.rsplit(":", 1)[1])}, listening
        assert "gRPC (Open Inference Protocol" not in server.log()
    finally:
        server.stop()
