"""Service settings, read once from environment variables with the `RNNSERVE_` prefix
(pydantic-settings).

Every knob the service has is here, with its default and its limits; the settings table of
docs/configuration.md mirrors `SETTINGS_DOC` (a test keeps them equal). A malformed value
stops start-up with a message naming the variable, instead of being silently replaced by a
default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "RNNSERVE_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The routes that run a model: authentication, when on, can never be waived for them.
INFERENCE_ROUTES = (
    "/classify_pixels",
    "/classify_image",
    "/next_char",
    "/generate",
    "/v1/digits",
    "/v2/models/",
)


class SettingsError(ValueError):
    """An environment variable with a value the service cannot use."""


ON_OFF = {"on": True, "off": False, "true": True, "false": False, "1": True, "0": False}
# A count or size: at least 1 (0 would refuse everything, or mean "unbounded" by accident)
Count = Annotated[int, Field(ge=1)]


class Settings(BaseSettings):
    """Every setting with its default; `RNNSERVE_<NAME>` in the environment overrides it.

    pydantic-settings reads and converts the variables (whole numbers, on/off, paths); the
    rules beyond types (authentication fails closed) are the validators below.
    """

    model_config = SettingsConfigDict(
        env_prefix=PREFIX,
        case_sensitive=False,
        env_ignore_empty=True,  # RNNSERVE_X= (empty) means the default, as unset
        extra="ignore",
        frozen=True,
        protected_namespaces=(),  # `model_dir` is ours, not pydantic's
    )

    model_dir: Path = PROJECT_ROOT / "models"
    version_policy: str = "latest"
    model_control: Literal["none", "explicit", "poll"] = "none"
    poll_interval_s: Count = 5
    control_dir: Path | None = None
    admin_tokens: str = ""
    backend: Literal["onnx", "torchscript"] = "onnx"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Annotated[int, Field(ge=0)] = 1
    default_digit_model: str = "mnist-bigru"
    batching: bool = True
    max_batch_size: Count = 64
    max_queued_images: Count = 1024
    max_queue_wait_ms: Count = 1000
    max_request_bytes: Count = 4 * 1024 * 1024
    max_buffered_bytes: Count = 64 * 1024 * 1024
    min_body_rate: Count = 16 * 1024
    body_timeout_s: Count = 10
    max_header_bytes: Count = 32 * 1024
    max_header_count: Count = 100
    max_url_bytes: Count = 8 * 1024
    header_timeout_s: Count = 10
    keep_alive_s: Count = 5
    max_connections: Count = 4096
    max_log_field_chars: Count = 512
    refusal_log_per_s: Count = 10
    max_images_per_request: Count = 256
    max_image_pixels: Count = 4096 * 4096
    max_image_side: Count = 16384
    max_image_aspect: Count = 20
    max_queued_decodes: Count = 16
    max_text_chars: Count = 2000
    max_char_rows: Count = 64
    max_char_ids: Count = 8192
    max_queued_text: Count = 64
    max_generate_chars: Count = 1000
    max_top_k: Count = 20
    max_active_generations: Count = 64
    max_queued_generations: Count = 64
    generation_joins_per_step: Count = 16
    workers: Count = 1
    timeout_s: Count = 30
    grpc_port: Annotated[int, Field(ge=0, le=65535)] = 8001
    grpc_host: str = "0.0.0.0"
    grpc_max_calls: Count = 256
    tracing: bool = False
    api_tokens: str = ""
    state_keys: str = ""
    auth_exempt: str = (
        "/livez,/readyz,/healthz,/metrics,/v2/health/live,/v2/health/ready,/ui,/ui/*,"
        "/,/docs.json,/static_content/*"
    )

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        """The form of a policy (service/model/repository.py's VersionPolicy reads it)."""
        word = value.strip().lower().replace(" ", "")
        if not re.fullmatch(
            r"latest(:[1-9][0-9]{0,8})?|all|specific:[1-9][0-9]{0,8}(,[1-9][0-9]{0,8})*", word
        ):
            raise ValueError(
                "expected latest, latest:N (the newest N), all, or specific:1,3 (those versions)"
            )
        return word

    @field_validator("backend", "device", "model_control", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("batching", "tracing", mode="before")
    @classmethod
    def _on_off(cls, value: object) -> object:
        """The six spellings the docs give, with spaces and any case (pydantic alone would
        also take yes/no/y/n/t/f, and refuse " on ")."""
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word not in ON_OFF:
            raise ValueError("expected on/off (or true/false, 1/0)")
        return ON_OFF[word]

    @field_validator("model_dir", "control_dir", mode="before")
    @classmethod
    def _home(cls, value: object) -> object:
        return Path(value).expanduser() if isinstance(value, str) else value

    @property
    def tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens (empty: authentication off)."""
        return tuple(t.strip() for t in self.api_tokens.split(",") if t.strip())

    @property
    def admin_token_list(self) -> tuple[str, ...]:
        """The tokens that may call model control (service/http/auth.py has the rule)."""
        return tuple(t.strip() for t in self.admin_tokens.split(",") if t.strip())

    @property
    def state_key_list(self) -> tuple[str, ...]:
        """Keys that sign carried text states: the first signs, any verifies (rotation).
        Empty: states carry a checksum, not a signature (service/engine/carried_state.py)."""
        return tuple(k.strip() for k in self.state_keys.split(",") if k.strip())

    @property
    def exempt_paths(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.auth_exempt.split(",") if p.strip())

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        """Authentication fails closed: a token setting that yields no token, or an exempt
        list that opens an inference route, is a start-up error, never a silent open door."""
        if self.api_tokens.strip() and not self.tokens:
            raise ValueError(
                f"{PREFIX}API_TOKENS={self.api_tokens!r} holds no token (only commas and "
                "spaces); set real tokens, or leave it empty to run without authentication"
            )
        if self.admin_tokens.strip() and not self.admin_token_list:
            raise ValueError(
                f"{PREFIX}ADMIN_TOKENS={self.admin_tokens!r} holds no token (only commas and "
                "spaces)"
            )
        if set(self.admin_token_list) & set(self.tokens):
            raise ValueError(
                f"a token is in both {PREFIX}API_TOKENS and {PREFIX}ADMIN_TOKENS: the admin "
                "token must be a separate secret (whoever may infer must not load models)"
            )
        for entry in self.exempt_paths:
            prefix = entry.removesuffix("*")
            if not entry.startswith("/") or (entry.endswith("*") and prefix in ("", "/")):
                raise ValueError(
                    f"{PREFIX}AUTH_EXEMPT entry {entry!r} would exempt every route; name paths "
                    "that start with '/' (a trailing '*' exempts a sub-tree, e.g. /ui/*)"
                )
            opened = [
                route
                for route in INFERENCE_ROUTES
                if route == entry or (entry.endswith("*") and route.startswith(prefix))
            ]
            if opened:
                raise ValueError(
                    f"{PREFIX}AUTH_EXEMPT entry {entry!r} would open inference route(s) "
                    f"{opened} to anyone; exempt probes, metrics and static pages only"
                )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings from the process environment (`env` None), or from `env` alone (tests
        and scripts: nothing leaks in from the process). Raises SettingsError naming every
        variable that cannot be used."""
        try:
            if env is None:
                return cls()
            values: dict[str, Any] = {  # strings: pydantic converts them as from os.environ
                name: env[PREFIX + name.upper()]
                for name in cls.model_fields
                if env.get(PREFIX + name.upper(), "") != ""
            }
            explicit = _FROM_GIVEN_VALUES.set(True)
            try:
                return cls(**values)
            finally:
                _FROM_GIVEN_VALUES.reset(explicit)
        except ValidationError as exc:
            raise SettingsError(readable(exc)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The process environment, unless `from_env` was given the values (then those
        alone). No .env or secrets files: the environment is the one place settings live."""
        if _FROM_GIVEN_VALUES.get():
            return (init_settings,)
        return (init_settings, env_settings)


# Set while `from_env` builds settings from a mapping it was given: the sources skip os.environ.
_FROM_GIVEN_VALUES: ContextVar[bool] = ContextVar("rnnserve_settings_given", default=False)


def readable(exc: ValidationError) -> str:
    """pydantic's errors as lines a person can act on: the variable, its value, what it needs."""
    lines = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if not error["loc"]:  # a rule over several settings: its message names them
            lines.append(message)
            continue
        variable = PREFIX + str(error["loc"][0]).upper()
        if error["type"] == "bool_parsing":
            message = "expected on/off (or true/false, 1/0)"
        elif error["type"] == "int_parsing":
            message = "expected a whole number"
        lines.append(f"{variable}={error['input']!r}: {message}")
    return "; ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings.from_env()


SETTINGS_DOC: dict[str, str] = {
    "model_dir": "the model repository: <name>/<version>/card.json (Triton's layout; versions "
    "are positive integers)",
    "version_policy": "which versions of each model are served: latest (the newest), latest:N "
    "(the newest N), all, or specific:1,3; requests that name no version get the newest served",
    "model_control": "none (the models are fixed at start-up), explicit (the repository API "
    "loads and unloads: POST /v2/repository/...), or poll (the repository folder is watched "
    "and changes applied within `poll_interval_s`)",
    "poll_interval_s": "model_control=poll: seconds between two looks at the repository",
    "control_dir": "where the workers of one server agree on what is loaded (model control "
    "with several workers; default: a folder of the server's own under the temp dir)",
    "admin_tokens": "comma-separated bearer tokens for the repository API (load, unload, index); "
    "required there whenever `api_tokens` is set; with neither set, only clients on this "
    "machine (loopback) may call it",
    "backend": "onnx (onnxruntime, no torch import) or torchscript (imports torch lazily)",
    "device": "auto (GPU when usable, else CPU), cpu (never touch the GPU), "
    "cuda (require a GPU: start-up fails instead of falling back)",
    "threads": "intra-op threads per model session (0: the runtime's default)",
    "default_digit_model": "classifier used when a request names none",
    "batching": "continuous batching of concurrent digit requests into one model call (on/off)",
    "max_batch_size": "continuous batching: most images one model call may take",
    "max_queued_images": "images that may wait for one digit model; a request beyond gets 503",
    "max_queue_wait_ms": "longest a digit request may wait for its model call (503 beyond)",
    "max_request_bytes": "largest request body accepted (413 beyond), chunked bodies included",
    "max_buffered_bytes": "request-body bytes one worker holds at once, all requests together, "
    "counted as they arrive (503 beyond; readiness is not affected)",
    "min_body_rate": "slowest average rate, in bytes/s, of a request body that has taken longer "
    "than `body_timeout_s` (408 and the connection closed beyond)",
    "body_timeout_s": "longest pause within a request body, and the time before "
    "`min_body_rate` applies (a body that stalls is answered 408 and gives its bytes back)",
    "max_header_bytes": "largest header block of one request (431 and the connection closed "
    "beyond), trailers included",
    "max_header_count": "most header fields in one request (431 beyond)",
    "max_url_bytes": "longest request target, path and query (414 beyond)",
    "header_timeout_s": "seconds from a request's first byte to the end of its headers (408 and "
    "the connection closed beyond)",
    "keep_alive_s": "seconds an open connection may sit idle, new or between requests, before "
    "the server closes it",
    "max_connections": "open connections per worker (at most the process's file limit less a "
    "reserve); beyond, the longest-idle connection is closed to make room, or the new one is "
    "answered 503 when none is idle",
    "max_log_field_chars": "longest value a log line quotes (a path, a header, a reason); longer "
    "values are cut, control characters escaped",
    "refusal_log_per_s": "refusal log lines (4xx, refused connections) one worker writes per "
    "second; the rest are counted (rnnserve_refusals) and summed up in the next line written",
    "max_images_per_request": "most 28x28 arrays in one pixel request (400 beyond)",
    "max_image_pixels": "largest width x height of an uploaded image as decoded (JPEGs are "
    "decoded reduced, so a 12-megapixel photo counts ~0.2 MP); 413 beyond",
    "max_image_side": "longest side an uploaded image may declare (413 beyond)",
    "max_image_aspect": "most an uploaded image's longest side may exceed its shortest, as a "
    "ratio (413 beyond)",
    "max_queued_decodes": "uploaded images and large JSON bodies (over 64 KiB) that may wait "
    "for the decoding thread (503 beyond)",
    "max_text_chars": "longest text for next-character prediction and generation prompts, and "
    "longest V2 id sequence",
    "max_char_rows": "most sequences in one V2 request to the character model",
    "max_char_ids": "most ids (sequences x steps) in one V2 request to the character model",
    "max_queued_text": "next-character requests (and V2 character requests) that may wait for "
    "the text loop (503 beyond; `max_queue_wait_ms` bounds their wait, as for digits)",
    "max_generate_chars": "most characters one generation request may ask for",
    "max_top_k": "largest k for next-character candidates and top-k sampling",
    "max_active_generations": "generations stepped together by the text loop (continuous "
    "batching, on a thread of its own, shared with next-character reads)",
    "max_queued_generations": "generations that may wait to join the text loop (503 beyond)",
    "generation_joins_per_step": "join policy: waiting generations that join between two steps "
    "(their prompts are read with the other texts)",
    "workers": "BentoML worker processes",
    "grpc_port": "port of the Open Inference Protocol over gRPC (Triton's GRPCInferenceService "
    "and grpc.health.v1), served by every worker; 0 turns it off",
    "grpc_host": "interface the gRPC port listens on (as `bentoml serve --host` for HTTP)",
    "grpc_max_calls": "gRPC calls one worker holds at once, each with its message of at most "
    "`max_request_bytes` (RESOURCE_EXHAUSTED beyond)",
    "timeout_s": "seconds a request may wait for its response to start (504 beyond)",
    "tracing": "OpenTelemetry spans for the BentoML routes, with trace ids in the access log and "
    "an `x-bentoml-request-id` header (exporter and sample rate: BentoML's `tracing` config); "
    "off skips that work on every request",
    "api_tokens": "comma-separated bearer tokens; when set, every other route needs "
    "`Authorization: Bearer <token>` (401 otherwise)",
    "auth_exempt": "paths open without a token when tokens are set (exact; `*` ends a prefix): "
    "probes, metrics, the demo page's files and the API description (the Swagger page, "
    "/docs.json and their assets: they hold no data, and every call made from them needs a "
    "token)",
    "state_keys": "comma-separated secrets that sign carried text states (HMAC-SHA256; the "
    "first signs, any verifies); the same on every worker and replica. Unset: states carry a "
    "checksum, not a signature",
}
