"""The OpenAPI description of the Open Inference Protocol routes (service/http/v2_app.py).

BentoML documents only its own APIs; /docs.json gets these paths added (service/http/openapi.py), so
that the Swagger page shows them and the fuzzer (tests/test_fuzz.py) reaches them. The model
names and versions are the served ones, read from the cards.
"""

from __future__ import annotations

from typing import Any

from service.http.v2_app import BACKENDS, PLATFORMS
from service.http.v2_protocol import DATATYPE_NAMES

V2_ERROR: dict[str, Any] = {
    "type": "object",
    "title": "V2Error",
    "description": "The Open Inference Protocol's error body.",
    "required": ["error"],
    "properties": {"error": {"type": "string", "description": "what went wrong"}},
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/V2Error"}}}
_PARAMETERS = {
    "type": "object",
    "description": "binary_data_output (boolean): every output as binary data",
    "properties": {"binary_data_output": {"type": "boolean"}},
}
_TENSOR_IN: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string", "example": "pixels"},
        "datatype": {"type": "string", "enum": DATATYPE_NAMES, "example": "UINT8"},
        "shape": {
            "type": "array",
            "maxItems": 8,
            "items": {"type": "integer", "minimum": 0, "maximum": 2**31},
            "example": [1, 28, 28],
        },
        "data": {
            "type": "array",
            "description": "the values, row-major (nested lists are flattened); strings for "
            "BYTES; absent when the tensor comes as binary data after the JSON header (BYTES: "
            "each element a 4-byte little-endian length, then its bytes)",
            "items": {},
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
}
_OUTPUT_REQUEST = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
    },
}
INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "title": "V2InferRequest",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {"type": "array", "items": _TENSOR_IN},
        "outputs": {"type": "array", "items": _OUTPUT_REQUEST},
    },
    "example": {
        "id": "42",
        "inputs": [
            {"name": "pixels", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}
        ],
    },
}
_TENSOR_OUT = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array", "items": {}},
        "parameters": {"type": "object"},
    },
}
INFER_RESPONSE: dict[str, Any] = {
    "type": "object",
    "title": "V2InferResponse",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": _TENSOR_OUT},
    },
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": {"type": "object"}},
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
}

_CONFIG_TENSOR = {
    "type": "object",
    "required": ["name", "data_type", "dims"],
    "properties": {
        "name": {"type": "string"},
        "data_type": {"type": "string", "example": "TYPE_FP32"},
        "dims": {"type": "array", "items": {"type": "integer"}},
        "reshape": {
            "type": "object",
            "description": "a scalar per batch item: dims [1] reshaped to shape []",
            "properties": {"shape": {"type": "array", "items": {"type": "integer"}}},
        },
        "optional": {"type": "boolean"},
    },
}
MODEL_CONFIG = {
    "type": "object",
    "title": "TritonModelConfig",
    "description": "Triton's model configuration (its ModelConfig protobuf as JSON), derived "
    "from the model card and the settings.",
    "required": ["name", "platform", "backend", "max_batch_size", "input", "output"],
    "properties": {
        "name": {"type": "string"},
        "platform": {"type": "string", "enum": sorted(PLATFORMS.values())},
        "backend": {"type": "string", "enum": sorted(BACKENDS.values())},
        "max_batch_size": {
            "type": "integer",
            "minimum": 0,
            "description": "0: no batch axis, the dims are whole shapes",
        },
        "input": {"type": "array", "items": _CONFIG_TENSOR},
        "output": {"type": "array", "items": _CONFIG_TENSOR},
        "dynamic_batching": {
            "type": "object",
            "properties": {
                "max_queue_delay_microseconds": {"type": "integer", "minimum": 0},
                "default_queue_policy": {"type": "object"},
            },
        },
        "version_policy": {"type": "object"},
        "instance_group": {"type": "array", "items": {"type": "object"}},
        "parameters": {"type": "object"},
    },
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    why = {
        400: "Invalid request (the message says what to change)",
        401: "Missing or invalid bearer token (only when RNNSERVE_API_TOKENS is set)",
        404: "Unknown model or version",
        413: "Body over RNNSERVE_MAX_REQUEST_BYTES",
        415: "Neither JSON nor binary tensor data",
        503: "Not ready, or overloaded (retry after the Retry-After header's seconds)",
    }
    return {str(s): {"description": why[s], "content": _ERROR_CONTENT} for s in statuses}


def _get(
    operation_id: str,
    description: str,
    ok: dict[str, Any],
    *errors: int,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "tags": ["Open Inference Protocol (KServe V2)"],
        "operationId": operation_id,
        "description": description,
        "responses": {"200": ok, **_errors(*errors)},
    }
    if parameters:
        operation["parameters"] = parameters
    return {"get": operation}


def v2_paths(models: dict[str, str]) -> dict[str, Any]:
    """OpenAPI path items for the V2 routes; `models` maps each served model to its version."""
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(models)},
    }
    version = {
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": sorted(set(models.values()))},
    }
    paths: dict[str, Any] = {
        "/v2": _get(
            "v2_server_metadata",
            "Server name, version and protocol extensions.",
            _json({"type": "object", "required": ["name", "version", "extensions"]}, "metadata"),
            401,
        ),
        "/v2/health/live": _get(
            "v2_live",
            'Liveness: `{"live": true}` while the process serves.',
            _json({"type": "object", "required": ["live"]}, "alive"),
        ),
        "/v2/health/ready": _get(
            "v2_ready",
            'Readiness: `{"ready": true}` once every model is loaded and warmed up (503 and '
            '`{"ready": false}` before).',
            _json({"type": "object", "required": ["ready"]}, "ready"),
            503,
        ),
    }
    for prefix, params, suffix in (
        ("/v2/models/{name}", [name], ""),
        ("/v2/models/{name}/versions/{version}", [name, version], "_version"),
    ):
        paths[prefix] = _get(
            f"v2_model_metadata{suffix}",
            "The model's tensors: names, datatypes and shapes (-1: any size).",
            _json(MODEL_METADATA, "model metadata"),
            401,
            404,
            503,
            parameters=params,
        )
        paths[f"{prefix}/ready"] = _get(
            f"v2_model_ready{suffix}",
            "Model readiness.",
            _json({"type": "object", "required": ["name", "ready"]}, "ready"),
            401,
            404,
            503,
            parameters=params,
        )
        paths[f"{prefix}/config"] = _get(
            f"v2_model_config{suffix}",
            "Triton's model configuration, as Triton's HTTP API answers it (what perf_analyzer "
            "and Triton's clients read first): platform and backend, `max_batch_size` (what "
            "the batcher takes, RNNSERVE_MAX_BATCH_SIZE for a digit model while batching is "
            "on; 0 for the character model, whose `state` has its rows on axis 1, so its dims "
            "are whole shapes), inputs and outputs with Triton's `data_type` names (BYTES is "
            "TYPE_STRING) and dims without the batch axis, `optional` inputs, and "
            "`dynamic_batching` while batching is on (no added delay; a request that waited "
            "RNNSERVE_MAX_QUEUE_WAIT_MS is rejected: `default_queue_policy`).",
            _json(MODEL_CONFIG, "model configuration"),
            401,
            404,
            503,
            parameters=params,
        )
        paths[f"{prefix}/infer"] = {
            "post": {
                "tags": ["Open Inference Protocol (KServe V2)"],
                "operationId": f"v2_infer{suffix}",
                "description": "Inference. Digit classifiers take `pixels` [N, 28, 28] (UINT8 "
                "or FP32 raw 0..255 values, white ink on black) and answer `probabilities` "
                "[N, 10] and `digit` [N]; the character model takes `ids` [rows, steps] "
                "(INT64 vocabulary indices) and optionally either `state` (FP32 [layers, rows, "
                "hidden]) or `carried_state` (BYTES [rows]: one carried-state string per row, "
                "as `carried_state_out` or the native routes' `state` gave it; then `ids` hold "
                "only the characters that follow), and answers `logits` [rows, steps, vocab], "
                "`state_out` (feed it back as `state`) and `carried_state_out` (BYTES [rows]: "
                "feed it back as `carried_state`, or as `state` to /next_char and /generate; "
                "computed only when the request names no outputs or names it). Binary tensor "
                "data: send `application/octet-stream` with `Inference-Header-Content-Length`.",
                "parameters": params,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": INFER_REQUEST}},
                },
                "responses": {
                    "200": {
                        "description": "the outputs (binary: a JSON header of "
                        "Inference-Header-Content-Length bytes, then the tensors)",
                        "content": {
                            "application/json": {"schema": INFER_RESPONSE},
                            "application/octet-stream": {
                                "schema": {"type": "string", "format": "binary"}
                            },
                        },
                    },
                    **_errors(400, 401, 404, 413, 415, 503),
                },
            }
        }
    return paths
