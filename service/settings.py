"""Service settings, read once from environment variables with the `RNNSERVE_` prefix.

Every knob the service has is here, with its default and its limits; the README's settings
table mirrors `SETTINGS_DOC`. A malformed value stops start-up with a message naming the
variable, instead of being silently replaced by a default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

PREFIX = "RNNSERVE_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("onnx", "torchscript")
DEVICE_POLICIES = ("auto", "cpu", "cuda")


class SettingsError(ValueError):
    """An environment variable with a value the service cannot use."""


@dataclass(frozen=True)
class Settings:
    model_dir: Path = PROJECT_ROOT / "models"
    backend: str = "onnx"
    device: str = "auto"
    threads: int = 1
    default_digit_model: str = "mnist-bigru"
    batching: bool = True
    max_batch_size: int = 64
    max_latency_ms: int = 1000
    max_request_bytes: int = 4 * 1024 * 1024
    max_images_per_request: int = 256
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 2000
    max_generate_chars: int = 1000
    max_top_k: int = 20
    workers: int = 1
    timeout_s: int = 30
    tracing: bool = False
    api_tokens: str = ""
    auth_exempt: str = "/livez,/readyz,/healthz,/metrics,/v2/health/live,/v2/health/ready,/ui,/ui/*"

    @property
    def tokens(self) -> tuple[str, ...]:
        """The accepted bearer tokens (empty: authentication off)."""
        return tuple(t.strip() for t in self.api_tokens.split(",") if t.strip())

    @property
    def exempt_paths(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.auth_exempt.split(",") if p.strip())

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise SettingsError(f"{PREFIX}BACKEND={self.backend!r}: expected one of {BACKENDS}")
        if self.device not in DEVICE_POLICIES:
            raise SettingsError(
                f"{PREFIX}DEVICE={self.device!r}: expected one of {DEVICE_POLICIES}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue
            if isinstance(value, int) and value < (0 if f.name == "threads" else 1):
                raise SettingsError(f"{PREFIX}{f.name.upper()}={value}: must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            default = f.default
            if isinstance(default, bool):
                if raw.strip().lower() not in ("1", "0", "true", "false", "on", "off"):
                    raise SettingsError(
                        f"{PREFIX}{f.name.upper()}={raw!r}: expected on/off (or true/false, 1/0)"
                    )
                values[f.name] = raw.strip().lower() in ("1", "true", "on")
            elif isinstance(default, Path):
                values[f.name] = Path(raw).expanduser()
            elif isinstance(default, int):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise SettingsError(
                        f"{PREFIX}{f.name.upper()}={raw!r}: expected a whole number"
                    ) from None
            else:
                values[f.name] = raw.strip().lower() if f.name in ("backend", "device") else raw
        return cls(**values)  # type: ignore[arg-type]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return Settings.from_env()


SETTINGS_DOC: dict[str, str] = {
    "model_dir": "folder of exported models (one sub-folder with card.json per model)",
    "backend": "onnx (onnxruntime, no torch import) or torchscript (imports torch lazily)",
    "device": "auto (GPU when usable, else CPU), cpu (never touch the GPU), "
    "cuda (require a GPU: start-up fails instead of falling back)",
    "threads": "intra-op threads per model session (0: the runtime's default)",
    "default_digit_model": "classifier used when a request names none",
    "batching": "adaptive batching of /classify_pixels across requests (on/off)",
    "max_batch_size": "adaptive batching: most images one model call may take",
    "max_latency_ms": "adaptive batching: latency budget of a queued request before 503",
    "max_request_bytes": "largest request body accepted (413 beyond)",
    "max_images_per_request": "most 28x28 arrays in one pixel request",
    "max_image_pixels": "largest width x height of an uploaded image (decompression bombs)",
    "max_text_chars": "longest text for next-character prediction and generation prompts",
    "max_generate_chars": "most characters one generation request may ask for",
    "max_top_k": "largest k for next-character candidates and top-k sampling",
    "workers": "BentoML worker processes",
    "timeout_s": "seconds a request may wait for its response to start (504 beyond)",
    "tracing": "OpenTelemetry spans for the BentoML routes, with trace ids in the access log and "
    "an `x-bentoml-request-id` header (exporter and sample rate: BentoML's `tracing` config); "
    "off saves ~0.25 ms of CPU per request",
    "api_tokens": "comma-separated bearer tokens; when set, every other route needs "
    "`Authorization: Bearer <token>` (401 otherwise)",
    "auth_exempt": "paths open without a token when tokens are set (exact; `*` ends a prefix)",
}
