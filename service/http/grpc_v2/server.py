"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService` and the
standard `grpc.health.v1.Health`, on RNNSERVE_GRPC_PORT, inside every BentoML worker.

Why inside the workers: BentoML 1.4 serves no gRPC for new-style services, and the pipeline
(batchers, the text loop, admission) lives in each worker's event loop; a gRPC server of its
own per worker, on the same loop (grpc.aio), reaches it with no hop between processes. The
workers share the port with SO_REUSEPORT: the kernel spreads new *connections* across them
(a gRPC channel is one HTTP/2 connection, so one channel's calls all go to one worker; a
client that wants every worker opens several channels, as a load balancer in front would).
A port held by another process is found before the workers start (`check_port_free`, run by
the arbiter), because SO_REUSEPORT would otherwise let a second server share it silently.

Each call goes through what its REST twin does (service/http/v2_app.py): the same model
lookup, metadata, configuration, inference code, pipeline, admission and limits, and the one
error table (service/errors.py, its `grpc` column): INVALID_ARGUMENT, NOT_FOUND,
RESOURCE_EXHAUSTED, UNAVAILABLE with `retry-after` and gRPC's own `grpc-retry-pushback-ms`
hint, INTERNAL (logged with its traceback, answered without it). With tokens set, a call needs
`authorization: Bearer <token>` metadata (UNAUTHENTICATED otherwise) unless the HTTP path of
the same operation is exempt (service/http/auth.py: one RNNSERVE_AUTH_EXEMPT for both), so
health checks stay open by default. A call whose client cancels it or whose deadline passes
is cancelled in the pipeline too: waiting work is dropped before it reaches the model.
Messages are bounded by RNNSERVE_MAX_REQUEST_BYTES (gRPC answers RESOURCE_EXHAUSTED before
the handler runs), metadata by RNNSERVE_MAX_HEADER_BYTES, calls held at once by
RNNSERVE_GRPC_MAX_CALLS, and a call's time by RNNSERVE_TIMEOUT_S (DEADLINE_EXCEEDED, as
HTTP's 504) as well as by the client's deadline. The repository calls (index, load, unload)
are model control as over HTTP (service/engine/control_plane.py), under the admin rule of
service/http/auth.py (PERMISSION_DENIED where HTTP says 403). Triton's calls we do not serve
(shared memory, statistics, tracing, logging, streaming) answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from service import __version__, errors
from service.engine.control_plane import ControlPlane, load_policy
from service.engine.pipeline import Pipelines, ServingState
from service.errors import ServiceError
from service.http.asgi import log_refusal
from service.http.auth import MISSING_TOKEN, BearerTokens, admin_refusal
from service.http.grpc_v2.proto import grpc_service_pb2 as pb
from service.http.grpc_v2.proto import health_pb2
from service.http.grpc_v2.proto import model_config_pb2 as config_pb
from service.http.grpc_v2.protocol import infer_response, metadata_response, parse_infer
from service.http.kernel import INTERNAL
from service.http.v2_app import find_model, infer, model_config, model_metadata
from service.metrics import GRPC_CALLS, GRPC_LATENCY, REQUESTS_IN_FLIGHT
from service.settings import PREFIX, Settings

SERVICE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"
GRACE_S = 5.0  # how long calls in flight may finish when the worker stops
HEALTH_WATCH_EVERY_S = 1.0  # how often Watch looks for a change of readiness
logger = logging.getLogger("rnnserve")
startup_log = logging.getLogger("bentoml.rnnserve")  # INFO reaches BentoML's log from here
Req = TypeVar("Req", bound=Message)
Res = TypeVar("Res", bound=Message)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    """grpc core's bounds, from the settings that bound HTTP."""
    return [
        ("grpc.so_reuseport", 1),  # the workers share the port (see the module docstring)
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_metadata_size", settings.max_header_bytes),
        # a connection that has not finished its handshake in time is dropped (slow clients)
        ("grpc.server_handshake_timeout_ms", settings.header_timeout_s * 1000),
        # an idle connection is closed as HTTP's are; gRPC clients reconnect on their own
        ("grpc.max_connection_idle_ms", max(settings.keep_alive_s, 60) * 1000),
    ]


def check_port_free(settings: Settings) -> None:
    """Fail start-up when something already listens on the gRPC port. Run once, before the
    workers bind it: they share it through SO_REUSEPORT, which would also let them share it
    with a stranger (another server of the same user) without a word."""
    if settings.grpc_port == 0:
        return
    family = socket.AF_INET6 if ":" in settings.grpc_host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((settings.grpc_host, settings.grpc_port))
        except OSError as exc:
            raise SystemExit(
                f"rnnserve cannot start: the gRPC port {settings.grpc_host}:"
                f"{settings.grpc_port} is not free ({exc.strerror}); set {PREFIX}GRPC_PORT "
                f"to another port, or 0 to serve no gRPC"
            ) from None


class GrpcFrontEnd:
    """The worker's gRPC server: `start` when the worker is up, `stop` when it stops."""

    def __init__(self, state: ServingState, settings: Settings) -> None:
        self.state = state
        self.settings = settings
        self.auth = BearerTokens(settings.tokens, settings.exempt_paths)
        self.admin = BearerTokens(settings.admin_token_list, ())
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server(
            options=server_options(self.settings),
            maximum_concurrent_rpcs=self.settings.grpc_max_calls,
        )
        server.add_generic_rpc_handlers([self._inference_handlers(), self._health_handlers()])
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        if ":" in self.settings.grpc_host:
            address = f"[{self.settings.grpc_host}]:{self.settings.grpc_port}"
        try:
            server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc says only "Failed to bind"
            raise SystemExit(
                f"rnnserve cannot start: gRPC cannot listen on {address} ({exc}); set "
                f"{PREFIX}GRPC_PORT to a free port, or 0 to serve no gRPC"
            ) from None
        await server.start()
        self.server = server
        startup_log.info("gRPC (Open Inference Protocol, grpc.health.v1) on %s", address)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(GRACE_S)
            self.server = None

    # ------------------------------------------------------------------ wiring

    def _inference_handlers(self) -> grpc.GenericRpcHandler:
        rpc = self._unary
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": rpc(self.server_live, pb.ServerLiveRequest, "ServerLive"),
                "ServerReady": rpc(self.server_ready, pb.ServerReadyRequest, "ServerReady"),
                "ModelReady": rpc(self.model_ready, pb.ModelReadyRequest, "ModelReady"),
                "ServerMetadata": rpc(
                    self.server_metadata, pb.ServerMetadataRequest, "ServerMetadata"
                ),
                "ModelMetadata": rpc(self.model_metadata, pb.ModelMetadataRequest, "ModelMetadata"),
                "ModelConfig": rpc(self.model_config, pb.ModelConfigRequest, "ModelConfig"),
                "ModelInfer": rpc(self.model_infer, pb.ModelInferRequest, "ModelInfer"),
                "RepositoryIndex": rpc(
                    self.repository_index, pb.RepositoryIndexRequest, "RepositoryIndex"
                ),
                "RepositoryModelLoad": rpc(
                    self.repository_load, pb.RepositoryModelLoadRequest, "RepositoryModelLoad"
                ),
                "RepositoryModelUnload": rpc(
                    self.repository_unload, pb.RepositoryModelUnloadRequest, "RepositoryModelUnload"
                ),
            },
        )

    def _health_handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            HEALTH,
            {
                "Check": self._unary(self.health_check, health_pb2.HealthCheckRequest, "Check"),
                "List": self._unary(self.health_list, health_pb2.HealthListRequest, "List"),
                "Watch": grpc.unary_stream_rpc_method_handler(
                    self.health_watch,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                ),
            },
        )

    def _unary(
        self,
        handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Message]],
        request_type: type[Message],
        method: str,
    ) -> grpc.RpcMethodHandler:
        async def call(data: bytes, context: grpc.aio.ServicerContext) -> Message:
            started = time.perf_counter()
            code = "OK"
            in_flight = REQUESTS_IN_FLIGHT.labels(protocol="grpc")
            in_flight.inc()
            try:
                request = decode(request_type, data)
                self._authenticate(method, request, context)
                # the server's own bound, as for HTTP's 504 (a client may set a shorter one)
                async with asyncio.timeout(self.settings.timeout_s):
                    return await handler(request, context)
            except TimeoutError:
                code = "DEADLINE_EXCEEDED"
                message = (
                    f"no answer within {self.settings.timeout_s} s ({PREFIX}TIMEOUT_S); the "
                    "work was dropped"
                )
                log_refusal(f"gRPC {method}", 504, message)
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, message)
                raise
            except ServiceError as exc:
                code = errors.status_of(exc).grpc
                log_refusal(f"gRPC {method}", errors.status_of(exc).v2, exc.message)
                trailers: tuple[tuple[str, str], ...] = ()
                if code == "UNAVAILABLE":
                    trailers = (
                        ("retry-after", str(errors.RETRY_AFTER_S)),
                        ("grpc-retry-pushback-ms", str(errors.RETRY_AFTER_S * 1000)),
                    )
                await context.abort(grpc.StatusCode[code], exc.message, trailers)
                raise  # unreachable: abort raises
            except _UnauthenticatedError as exc:
                status, reason = exc.args if exc.args else (401, MISSING_TOKEN)
                code = "UNAUTHENTICATED" if status == 401 else "PERMISSION_DENIED"
                log_refusal(f"gRPC {method}", status, reason)
                await context.abort(grpc.StatusCode[code], reason)
                raise
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed
                code = "CANCELLED"
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                code = "INTERNAL"
                logger.exception("gRPC %s: internal error", method)
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL)
                raise
            finally:
                in_flight.dec()
                GRPC_CALLS.labels(method=method, code=code).inc()
                GRPC_LATENCY.labels(method=method).observe(time.perf_counter() - started)

        # no request_deserializer: grpc would answer a message that does not parse with
        # INTERNAL ("Exception deserializing request!"); `decode` makes it INVALID_ARGUMENT
        return grpc.unary_unary_rpc_method_handler(
            call, response_serializer=lambda message: message.SerializeToString()
        )

    def _authenticate(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> None:
        offered = [
            value.encode() if isinstance(value, str) else value
            for key, value in (context.invocation_metadata() or ())
            if key == "authorization"
        ]
        if method.startswith("Repository"):  # model control: the admin rule, as over HTTP
            refusal = admin_refusal(self.admin, self.auth.enabled, offered, peer_host(context))
            if refusal is not None:
                raise _UnauthenticatedError(*refusal)
            return
        if not self.auth.enabled or self.auth.open_path(http_path(method, request)):
            return
        if not self.auth.authorized(offered):
            raise _UnauthenticatedError

    # ------------------------------------------------------------------ server and health

    async def server_live(self, _: pb.ServerLiveRequest, __: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, _: pb.ServerReadyRequest, __: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.state.pipelines is not None)

    async def server_metadata(
        self, _: pb.ServerMetadataRequest, __: Any
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="rnnserve", version=__version__, extensions=["binary_tensor_data"]
        )

    def _status(self, service: str) -> health_pb2.HealthCheckResponse.ServingStatus:
        if service not in ("", SERVICE):
            raise errors.UnknownModel(
                f"no health status for service {errors.short(service)}; this server has "
                f"'' (the whole server) and {SERVICE!r}"
            )
        ready = self.state.pipelines is not None
        return (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def health_check(
        self, request: health_pb2.HealthCheckRequest, _: Any
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self._status(request.service))

    async def health_list(
        self, _: health_pb2.HealthListRequest, __: Any
    ) -> health_pb2.HealthListResponse:
        response = health_pb2.HealthListResponse()
        for service in ("", SERVICE):
            response.statuses[service].status = self._status(service)
        return response

    async def health_watch(
        self, data: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The status now, then each change, until the client leaves (grpc.health.v1: an
        unknown service is SERVICE_UNKNOWN, not an error)."""
        try:
            request = decode(health_pb2.HealthCheckRequest, data)
            self._authenticate("Watch", request, context)
        except errors.BadInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        except _UnauthenticatedError:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN)
        last = None
        while True:
            try:
                status = self._status(request.service)
            except errors.UnknownModel:
                status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            await asyncio.sleep(HEALTH_WATCH_EVERY_S)

    # ------------------------------------------------------------------ models

    async def model_ready(self, request: pb.ModelReadyRequest, _: Any) -> pb.ModelReadyResponse:
        """Ready or not, never an error: Triton answers `ready: false` for a model (or
        version) it does not serve, and tritonclient's is_model_ready expects that."""
        pipelines = self.state.pipelines
        if pipelines is None:
            return pb.ModelReadyResponse(ready=False)
        try:
            find_model(pipelines, request.name, request.version or None)
        except errors.UnknownModel:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, _: Any
    ) -> pb.ModelMetadataResponse:
        pipelines = self.state.require()
        model = find_model(pipelines, request.name, request.version or None)
        versions = None if request.version else pipelines.registry.version_list(model.name)
        return metadata_response(model_metadata(model, versions))

    async def model_config(self, request: pb.ModelConfigRequest, _: Any) -> pb.ModelConfigResponse:
        pipelines = self.state.require()
        model = find_model(pipelines, request.name, request.version or None)
        config = model_config(model, pipelines.settings, pipelines.registry.device.device)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, config_pb.ModelConfig()))

    async def model_infer(self, request: pb.ModelInferRequest, _: Any) -> pb.ModelInferResponse:
        pipelines: Pipelines = self.state.require()
        model = find_model(pipelines, request.model_name, request.model_version or None)
        parsed = parse_infer(request)
        outputs = await infer(pipelines, model, parsed)
        return infer_response(model.name, str(model.version), parsed, outputs)

    # ------------------------------------------------------------------ model control

    def _control(self) -> ControlPlane:
        self.state.require()
        if self.state.control is None:
            raise errors.NotReady("model control is starting; retry shortly")
        return self.state.control

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, _: Any
    ) -> pb.RepositoryIndexResponse:
        _no_other_repository(request.repository_name)
        rows = self._control().index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**row) for row in rows]
        )

    async def repository_load(
        self, request: pb.RepositoryModelLoadRequest, _: Any
    ) -> pb.RepositoryModelLoadResponse:
        _no_other_repository(request.repository_name)
        _no_parameters(request.parameters, {"config"})
        config = request.parameters.get("config")
        policy = load_policy(None if config is None else config.string_param)
        await self._control().load(request.model_name, policy)
        return pb.RepositoryModelLoadResponse()

    async def repository_unload(
        self, request: pb.RepositoryModelUnloadRequest, _: Any
    ) -> pb.RepositoryModelUnloadResponse:
        _no_other_repository(request.repository_name)
        _no_parameters(request.parameters, {"unload_dependents"})
        await self._control().unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _no_other_repository(name: str) -> None:
    if name:
        raise errors.BadInput(
            f"this server has one repository (RNNSERVE_MODEL_DIR); leave repository_name empty, "
            f"not {errors.short(name)}"
        )


def _no_parameters(parameters: Any, allowed: frozenset[str] | set[str] = frozenset()) -> None:
    unknown = sorted(set(parameters) - set(allowed))
    if unknown:
        raise errors.BadInput(
            f"parameters {unknown[:5]} not supported: a version is loaded from the repository "
            "folder, as exported and verified (no configuration or files in the request)"
        )


def peer_host(context: grpc.aio.ServicerContext) -> str | None:
    """The client's address from gRPC's peer string ('ipv4:127.0.0.1:5000', 'ipv6:[::1]:5000')."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    return None


def decode(request_type: type[Req], data: bytes) -> Req:
    """The call's message, or a BadInput that says which message it should have been."""
    try:
        return request_type.FromString(data)
    except DecodeError:
        raise errors.BadInput(
            f"the message is not a valid {request_type.DESCRIPTOR.full_name} (protobuf could "
            "not parse it)"
        ) from None


class _UnauthenticatedError(Exception):
    """A call without a valid token where one is needed."""


def http_path(method: str, request: Any) -> str:
    """The HTTP path of the operation a gRPC call performs: what RNNSERVE_AUTH_EXEMPT is
    matched against, so that one list governs both protocols."""
    fixed = {
        "ServerLive": "/v2/health/live",
        "ServerReady": "/v2/health/ready",
        "ServerMetadata": "/v2",
        "Check": "/readyz",
        "List": "/readyz",
        "Watch": "/readyz",
    }
    if method in fixed:
        return fixed[method]
    name = getattr(request, "model_name", "") or getattr(request, "name", "")
    version = getattr(request, "model_version", "") or getattr(request, "version", "")
    base = f"/v2/models/{name}" + (f"/versions/{version}" if version else "")
    if method.startswith("Repository"):
        return "/v2/repository" + (f"/models/{name}" if name else "/index")
    suffix = {"ModelReady": "/ready", "ModelConfig": "/config", "ModelInfer": "/infer"}
    return base + suffix.get(method, "")
