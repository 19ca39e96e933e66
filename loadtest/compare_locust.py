"""Locust users for the side-by-side comparison: one real digit per request, answer checked.

The payload kind comes from COMPARE_PAYLOAD (set by loadtest.compare). Every kind sends the
same real MNIST test digits (one 1x28x28 image per request) and checks the digit in the answer;
a wrong digit, a malformed body or a non-2xx is a failure. No think time: each user sends its
next request as soon as the previous one is answered.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from locust import FastHttpUser, constant, task

from loadtest.payloads import digits

KIND = os.environ.get("COMPARE_PAYLOAD", "lean-json")
MODEL = os.environ.get("COMPARE_MODEL", "mnist-rnn")
SHORT = MODEL.removeprefix("mnist-")
DIGITS = digits()


def _v2_digit(answer: dict[str, Any]) -> int:
    out = {o["name"]: o for o in answer["outputs"]}
    return int(out["digit"]["data"][0])


# kind -> (path, content type, body builder, answer -> digit)
Request = tuple[str, str, Callable[[Any], bytes], Callable[[Any], int]]
KINDS: dict[str, Request] = {
    "native": (
        "/classify_pixels",
        "application/json",
        lambda d: json.dumps({"images": [{"pixels": d.pixels, "model": SHORT}]}).encode(),
        lambda a: int(a[0]["digit"]),
    ),
    "lean-json": (
        "/v1/digits",
        "application/json",
        lambda d: json.dumps({"pixels": d.pixels, "model": SHORT}).encode(),
        lambda a: int(a["digits"][0]),
    ),
    "lean-uint8": (
        "/v1/digits",
        "application/json",
        lambda d: json.dumps(
            {"pixels": np.asarray(d.pixels, np.uint8).tolist(), "model": SHORT}
        ).encode(),
        lambda a: int(a["digits"][0]),
    ),
    "lean-binary": (
        f"/v1/digits?model={SHORT}",
        "application/octet-stream",
        lambda d: np.asarray(d.pixels, np.uint8).tobytes(),
        lambda a: int(a["digits"][0]),
    ),
    "fastapi": (
        "/classify_pixels",
        "application/json",
        lambda d: json.dumps({"images": [{"pixels": d.pixels}]}).encode(),
        lambda a: int(a[0]["digit"]),
    ),
    "v2-json": (
        f"/v2/models/{MODEL}/infer",
        "application/json",
        lambda d: json.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1, 28, 28],
                        "datatype": "FP32",
                        "data": np.asarray(d.pixels, np.float32).ravel().tolist(),
                    }
                ],
                "outputs": [{"name": "digit"}],
            }
        ).encode(),
        _v2_digit,
    ),
}


def _v2_binary_header() -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "shape": [1, 28, 28],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 28 * 28 * 4},
                }
            ],
            "outputs": [{"name": "digit", "parameters": {"binary_data": False}}],
        }
    ).encode()


V2_BINARY_HEADER = _v2_binary_header()
KINDS["v2-binary"] = (
    f"/v2/models/{MODEL}/infer",
    "application/octet-stream",
    lambda d: V2_BINARY_HEADER + np.asarray(d.pixels, "<f4").tobytes(),
    _v2_digit,
)
PATH, CONTENT_TYPE, BUILD, READ = KINDS[KIND]
BODIES = [(BUILD(d), d.label) for d in DIGITS]
HEADERS = {"content-type": CONTENT_TYPE}
if KIND == "lean-binary":
    HEADERS.update({"x-tensor-shape": "1,28,28", "x-tensor-datatype": "UINT8"})
if KIND == "v2-binary":  # Triton's binary tensor data extension: JSON header, then raw FP32
    HEADERS["inference-header-content-length"] = str(len(V2_BINARY_HEADER))


class DigitClient(FastHttpUser):
    wait_time = constant(0)

    @task
    def classify(self) -> None:
        body, label = random.choice(BODIES)
        data: Any = body  # FastHttpSession sends bytes as they are (its hint says str)
        with self.client.post(
            PATH, data=data, headers=HEADERS, catch_response=True, name=KIND
        ) as resp:
            try:
                got = READ(resp.json())
                if got != label:
                    resp.failure(f"wrong digit {got} for a {label}")
            except Exception as exc:  # malformed or error answer
                resp.failure(f"HTTP {resp.status_code}: {exc}: {resp.text[:200]}")
