"""Hostile requests: malformed, oversized and abusive input on every route, as an attacker or an
unlucky client sends it.

    python -m loadtest.hostile                    # starts its own server, prints a table
    python -m loadtest.hostile --url http://127.0.0.1:3000 --server-pid 1234

Each case must be answered with a 4xx (or a 503) in its route's error shape (`{"error",
"detail"}` on our routes, `{"error"}` on /v2) within 2 seconds, the worker's peak memory may
grow by at most 300 MB over the whole run, and the service must stay ready. tests/test_hostile.py
runs this catalogue; only 127.0.0.1 is ever targeted.
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from loadtest.servers import start_server, worker_peak_mb

MAX_SECONDS = 2.0
MAX_GROWTH_MB = 300.0
ZERO = [[0] * 28] * 28
V2_PIXELS = {"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28], "data": [0.0] * 784}


@dataclass
class Case:
    name: str
    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def v2(self) -> bool:
        return self.path.startswith("/v2")


@dataclass
class Answer:
    case: Case
    status: int
    seconds: float
    body: Any
    problem: str | None


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A valid, tiny 1-bit PNG of width x height (compresses to almost nothing)."""
    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    raw = zlib.compress(row * height, 9)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def bmp_declaring(width: int, height: int) -> bytes:
    """A BMP header promising width x height x 24 bits, with almost no pixel data."""
    header = struct.pack("<2sIHHI", b"BM", 54 + 16, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return header + info + b"\x00" * 16


def upload(data: bytes, name: str = "x.png", **fields: str) -> dict[str, Any]:
    return {"files": {"image": (name, data, "application/octet-stream")}, "data": fields}


def binary(shape: str, body: bytes, datatype: str = "UINT8") -> dict[str, Any]:
    return {
        "content": body,
        "headers": {
            "content-type": "application/octet-stream",
            "x-tensor-shape": shape,
            "x-tensor-datatype": datatype,
        },
    }


def raw_json(text: str | bytes) -> dict[str, Any]:
    body = text.encode() if isinstance(text, str) else text
    return {"content": body, "headers": {"content-type": "application/json"}}


def v2_binary(
    header: dict[str, Any], blob: bytes, header_length: str | None = None
) -> dict[str, Any]:
    head = json.dumps(header).encode()
    return {
        "content": head + blob,
        "headers": {
            "content-type": "application/octet-stream",
            "inference-header-content-length": header_length or str(len(head)),
        },
    }


def chunked(total: int) -> Iterator[bytes]:
    block = b"0," * 32768
    sent = 0
    while sent < total:
        yield block
        sent += len(block)


def image_cases() -> list[Case]:
    bomb_gif = encoded(
        Image.new("L", (64, 64)),
        "GIF",
        save_all=True,
        append_images=[Image.new("L", (64, 64), i % 250) for i in range(1, 2000)],
    )
    truncated = encoded(Image.new("L", (300, 300), 128), "PNG")[:200]
    return [
        Case("png 1 x 16,777,216", "POST", "/classify_image", upload(png_declaring(1, 16_777_216))),
        Case("png 16,777,216 x 1", "POST", "/classify_image", upload(png_declaring(16_777_216, 1))),
        Case(
            "png 20000 x 20000 bomb",
            "POST",
            "/classify_image",
            upload(png_declaring(20_000, 20_000)),
        ),
        Case("png 16000 x 16000", "POST", "/classify_image", upload(png_declaring(16_000, 16_000))),
        Case("png 8000 x 200 strip", "POST", "/classify_image", upload(png_declaring(8000, 200))),
        Case(
            "bmp 30000 x 30000 header",
            "POST",
            "/classify_image",
            upload(bmp_declaring(30_000, 30_000)),
        ),
        Case(
            "bmp 4000 x 4000 header, no pixels",
            "POST",
            "/classify_image",
            upload(bmp_declaring(4000, 4000)),
        ),
        Case(
            "bmp negative height", "POST", "/classify_image", upload(bmp_declaring(100, -(2**31)))
        ),
        Case("gif of 2000 frames", "POST", "/classify_image", upload(bomb_gif)),
        Case("truncated png", "POST", "/classify_image", upload(truncated)),
        Case("text file", "POST", "/classify_image", upload(b"hello, world", "a.txt")),
        Case("empty file", "POST", "/classify_image", upload(b"")),
        Case("tiff", "POST", "/classify_image", upload(encoded(Image.new("L", (10, 10)), "TIFF"))),
        Case(
            "svg", "POST", "/classify_image", upload(b"<svg xmlns='http://www.w3.org/2000/svg'/>")
        ),
        Case(
            "heic signature", "POST", "/classify_image", upload(b"\0\0\0\x18ftypheic" + b"\0" * 64)
        ),
        Case(
            "random bytes",
            "POST",
            "/classify_image",
            upload(np.random.default_rng(0).bytes(50_000)),
        ),
        Case(
            "blank 4000 x 3000 jpeg",
            "POST",
            "/classify_image",
            upload(encoded(Image.new("RGB", (4000, 3000), (240, 240, 235)), "JPEG")),
        ),
        Case(
            "unknown model",
            "POST",
            "/classify_image",
            upload(encoded(Image.new("L", (28, 28)), "PNG"), model="m" * 5000),
        ),
        Case("no file field", "POST", "/classify_image", {"files": {"other": ("a", b"x")}}),
        Case(
            "multipart without boundary",
            "POST",
            "/classify_image",
            {"content": b"abc", "headers": {"content-type": "multipart/form-data"}},
        ),
        Case(
            "multipart broken part",
            "POST",
            "/classify_image",
            {
                "content": b"--xx\r\nbroken",
                "headers": {"content-type": "multipart/form-data; boundary=xx"},
            },
        ),
        Case("json instead of a file", "POST", "/classify_image", {"json": {"image": "x"}}),
    ]


def pixel_cases() -> list[Case]:
    return [
        Case("not json", "POST", "/classify_pixels", raw_json("{images")),
        Case("nested 100,000 deep", "POST", "/classify_pixels", raw_json("[" * 100_000)),
        Case(
            "NaN",
            "POST",
            "/classify_pixels",
            raw_json(
                '{"images": [{"pixels": [[NaN'
                + ",0" * 27
                + "]"
                + (",[" + ",".join(["0"] * 28) + "]") * 27
                + "]}]}"
            ),
        ),
        Case(
            "1e400",
            "POST",
            "/classify_pixels",
            raw_json(
                '{"images": [{"pixels": [[1e400'
                + ",0" * 27
                + "]"
                + (",[" + ",".join(["0"] * 28) + "]") * 27
                + "]}]}"
            ),
        ),
        Case(
            "257 images", "POST", "/classify_pixels", {"json": {"images": [{"pixels": ZERO}] * 257}}
        ),
        Case(
            "ragged rows",
            "POST",
            "/classify_pixels",
            {"json": {"images": [{"pixels": [[0] * 28] * 27 + [[0] * 3]}]}},
        ),
        Case(
            "strings",
            "POST",
            "/classify_pixels",
            {"json": {"images": [{"pixels": [["0"] * 28] * 28}]}},
        ),
        Case("null images", "POST", "/classify_pixels", {"json": {"images": None}}),
        Case("empty body", "POST", "/classify_pixels", {"content": b""}),
        Case(
            "body over 4 MiB",
            "POST",
            "/classify_pixels",
            raw_json(b"[" + b"0," * 2_500_000 + b"0]"),
        ),
        Case(
            "chunked body over 4 MiB",
            "POST",
            "/classify_pixels",
            {"content": chunked(5_000_000), "headers": {"content-type": "application/json"}},
        ),
        Case(
            "xml",
            "POST",
            "/classify_pixels",
            {"content": b"<a/>", "headers": {"content-type": "application/xml"}},
        ),
        Case("GET on a POST route", "GET", "/classify_pixels"),
        Case("lean: binary 65 dims", "POST", "/v1/digits", binary(",".join(["1"] * 65), b"\0")),
        Case(
            "lean: shape beyond int64", "POST", "/v1/digits", binary("0,9223372036854775808", b"")
        ),
        Case("lean: negative shape", "POST", "/v1/digits", binary("-1,28,28", b"")),
        Case(
            "lean: shape header of 100 KB", "POST", "/v1/digits", binary("1," * 50_000 + "1", b"\0")
        ),
        Case(
            "lean: body shorter than shape", "POST", "/v1/digits", binary("256,28,28", b"\0" * 100)
        ),
        Case("lean: 257 images", "POST", "/v1/digits", binary("257,28,28", b"\0" * 257 * 784)),
        Case(
            "lean: NaN fp32",
            "POST",
            "/v1/digits",
            binary("1,28,28", np.full(784, np.nan, "<f4").tobytes(), "FP32"),
        ),
        Case("lean: fp64", "POST", "/v1/digits", binary("1,28,28", b"\0" * 784 * 8, "FP64")),
        Case("lean: json booleans", "POST", "/v1/digits", {"json": {"pixels": [[True] * 28] * 28}}),
        Case("lean: json 4 dims", "POST", "/v1/digits", {"json": {"pixels": [[ZERO]]}}),
        Case(
            "lean: json huge ints",
            "POST",
            "/v1/digits",
            raw_json('{"pixels": [[' + ",".join(["99999999999999999999999"] * 28) + "]]}"),
        ),
        Case(
            "lean: model of 10 KB in query",
            "POST",
            "/v1/digits?model=" + "m" * 10_000,
            {"json": {"pixels": ZERO}},
        ),
        Case("lean: form upload", "POST", "/v1/digits", {"files": {"image": ("a.png", b"x")}}),
        Case("lean: GET", "GET", "/v1/digits"),
    ]


def text_cases() -> list[Case]:
    return [
        Case("next_char: 100 KB of text", "POST", "/next_char", {"json": {"text": "a" * 100_000}}),
        Case("next_char: empty", "POST", "/next_char", {"json": {"text": ""}}),
        Case(
            "next_char: outside vocabulary",
            "POST",
            "/next_char",
            {"json": {"text": "日本語" * 500}},
        ),
        Case("next_char: k = 10^9", "POST", "/next_char", {"json": {"text": "ROMEO", "k": 10**9}}),
        Case(
            "next_char: temperature 0",
            "POST",
            "/next_char",
            {"json": {"text": "ROMEO", "temperature": 0}},
        ),
        Case(
            "next_char: temperature as string",
            "POST",
            "/next_char",
            {"json": {"text": "ROMEO", "temperature": "hot"}},
        ),
        Case(
            "generate: length 10^9",
            "POST",
            "/generate",
            {"json": {"prompt": "ROMEO", "length": 10**9}},
        ),
        Case("generate: length 0", "POST", "/generate", {"json": {"prompt": "ROMEO", "length": 0}}),
        Case("generate: top_k 0", "POST", "/generate", {"json": {"prompt": "ROMEO", "top_k": 0}}),
        Case(
            "generate: seed 2^64", "POST", "/generate", {"json": {"prompt": "ROMEO", "seed": 2**64}}
        ),
        Case(
            "generate: temperature 1e308",
            "POST",
            "/generate",
            {"json": {"prompt": "ROMEO", "temperature": 1e308}},
        ),
        Case("generate: prompt of 2,001", "POST", "/generate", {"json": {"prompt": "a" * 2001}}),
        Case("metadata: body junk", "POST", "/metadata", raw_json("[[[")),
    ]


def v2_cases() -> list[Case]:
    infer = "/v2/models/mnist-rnn/infer"
    chars = "/v2/models/char-rnn/infer"

    def ids(shape: list[int], n: int) -> dict[str, Any]:
        return {"inputs": [{"name": "ids", "datatype": "INT64", "shape": shape, "data": [0] * n}]}

    return [
        Case("v2: ids 256 x 2000", "POST", chars, {"json": ids([256, 2000], 256 * 2000)}),
        Case(
            "v2: ids 64 x 2000 (ids over limit)",
            "POST",
            chars,
            {"json": ids([64, 2000], 64 * 2000)},
        ),
        Case("v2: ids 1 x 2001 steps", "POST", chars, {"json": ids([1, 2001], 2001)}),
        Case(
            "v2: ids out of vocabulary",
            "POST",
            chars,
            {
                "json": {
                    "inputs": [
                        {"name": "ids", "datatype": "INT64", "shape": [1, 1], "data": [10**6]}
                    ]
                }
            },
        ),
        Case(
            "v2: state of the wrong shape",
            "POST",
            chars,
            {
                "json": {
                    "inputs": [
                        ids([1, 1], 1)["inputs"][0],
                        {"name": "state", "datatype": "FP32", "shape": [1], "data": [0.0]},
                    ]
                }
            },
        ),
        Case(
            "v2: binary ids 64 x 2000",
            "POST",
            chars,
            v2_binary(
                {
                    "inputs": [
                        {
                            "name": "ids",
                            "datatype": "INT64",
                            "shape": [64, 2000],
                            "parameters": {"binary_data_size": 64 * 2000 * 8},
                        }
                    ]
                },
                b"\0" * 64 * 2000 * 8,
            ),
        ),
        Case("v2: outputs = 5", "POST", infer, {"json": {"inputs": [V2_PIXELS], "outputs": 5}}),
        Case(
            "v2: output parameters = [1]",
            "POST",
            infer,
            {"json": {"inputs": [V2_PIXELS], "outputs": [{"name": "logits", "parameters": [1]}]}},
        ),
        Case(
            "v2: unknown output",
            "POST",
            infer,
            {"json": {"inputs": [V2_PIXELS], "outputs": [{"name": "x" * 10_000}]}},
        ),
        Case(
            "v2: binary_data = 'yes'",
            "POST",
            infer,
            {
                "json": {
                    "inputs": [V2_PIXELS],
                    "outputs": [{"name": "digit", "parameters": {"binary_data": "yes"}}],
                }
            },
        ),
        Case(
            "v2: parameters = []",
            "POST",
            infer,
            {"json": {"inputs": [V2_PIXELS], "parameters": []}},
        ),
        Case(
            "v2: datatype = []",
            "POST",
            infer,
            {"json": {"inputs": [{**V2_PIXELS, "datatype": []}]}},
        ),
        Case(
            "v2: shape of 65 dims",
            "POST",
            infer,
            {"json": {"inputs": [{**V2_PIXELS, "shape": [1] * 65, "data": [0.0]}]}},
        ),
        Case(
            "v2: shape of 2^70",
            "POST",
            infer,
            {"json": {"inputs": [{**V2_PIXELS, "shape": [0, 2**70], "data": []}]}},
        ),
        Case("v2: data = {}", "POST", infer, {"json": {"inputs": [{**V2_PIXELS, "data": {}}]}}),
        Case(
            "v2: data of strings",
            "POST",
            infer,
            {"json": {"inputs": [{**V2_PIXELS, "data": ["a"] * 784}]}},
        ),
        Case(
            "v2: data nested 40 deep",
            "POST",
            infer,
            {"json": {"inputs": [{**V2_PIXELS, "data": json.loads("[" * 40 + "0" + "]" * 40)}]}},
        ),
        Case("v2: inputs = null", "POST", infer, {"json": {"inputs": None}}),
        Case("v2: input = 3", "POST", infer, {"json": {"inputs": [3]}}),
        Case(
            "v2: 257 images",
            "POST",
            infer,
            {
                "json": {
                    "inputs": [{**V2_PIXELS, "shape": [257, 28, 28], "data": [0.0] * 257 * 784}]
                }
            },
        ),
        Case(
            "v2: fp16 pixels",
            "POST",
            infer,
            {"json": {"inputs": [{**V2_PIXELS, "datatype": "FP16"}]}},
        ),
        Case("v2: header length -5", "POST", infer, v2_binary({"inputs": [V2_PIXELS]}, b"", "-5")),
        Case(
            "v2: header length 10^30",
            "POST",
            infer,
            v2_binary({"inputs": [V2_PIXELS]}, b"", str(10**30)),
        ),
        Case(
            "v2: binary_data_size = 'x'",
            "POST",
            infer,
            v2_binary(
                {
                    "inputs": [
                        {
                            "name": "pixels",
                            "datatype": "FP32",
                            "shape": [1, 28, 28],
                            "parameters": {"binary_data_size": "x"},
                        }
                    ]
                },
                b"\0" * 3136,
            ),
        ),
        Case(
            "v2: binary shorter than declared",
            "POST",
            infer,
            v2_binary(
                {
                    "inputs": [
                        {
                            "name": "pixels",
                            "datatype": "FP32",
                            "shape": [1, 28, 28],
                            "parameters": {"binary_data_size": 3136},
                        }
                    ]
                },
                b"\0" * 10,
            ),
        ),
        Case("v2: not json", "POST", infer, raw_json("{nope")),
        Case(
            "v2: text/plain",
            "POST",
            infer,
            {"content": b"hello", "headers": {"content-type": "text/plain"}},
        ),
        Case(
            "v2: unknown model",
            "POST",
            "/v2/models/" + "m" * 5000 + "/infer",
            {"json": {"inputs": [V2_PIXELS]}},
        ),
        Case(
            "v2: unknown version",
            "POST",
            "/v2/models/mnist-rnn/versions/9/infer",
            {"json": {"inputs": [V2_PIXELS]}},
        ),
        Case("v2: GET infer", "GET", infer),
        Case("v2: unknown route", "GET", "/v2/nothing/here"),
    ]


def other_cases() -> list[Case]:
    return [
        Case("unknown route", "GET", "/nothing/here"),
        Case("unknown /v1 route", "GET", "/v1/nothing"),
        Case("DELETE metadata", "DELETE", "/v1/metadata"),
    ]


def cases() -> list[Case]:
    return image_cases() + pixel_cases() + text_cases() + v2_cases() + other_cases()


def check(case: Case, response: httpx.Response, seconds: float) -> Answer:
    problem = None
    try:
        body = response.json()
    except ValueError:
        body = response.text[:200]
    status = response.status_code
    keys = {"error"} if case.v2 else {"error", "detail"}
    if not (400 <= status < 500 or status == 503):
        problem = f"status {status}"
    elif not (isinstance(body, dict) and set(body) == keys and isinstance(body["error"], str)):
        problem = f"error body {str(body)[:120]!r} is not {sorted(keys)}"
    elif len(body["error"]) > 1000:
        problem = f"error message of {len(body['error'])} characters"
    elif status == 503 and "retry-after" not in response.headers:
        problem = "503 without Retry-After"
    elif seconds > MAX_SECONDS:
        problem = f"answered after {seconds:.2f} s"
    return Answer(case, status, seconds, body, problem)


def run(url: str) -> list[Answer]:
    if httpx.URL(url).host != "127.0.0.1":
        raise SystemExit("hostile requests target 127.0.0.1 only")
    answers = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for case in cases():
            started = time.perf_counter()
            response = client.request(case.method, case.path, **case.kwargs)
            answers.append(check(case, response, time.perf_counter() - started))
    return answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument("--server-pid", type=int, help="its arbiter's pid, to read memory")
    args = parser.parse_args(argv)
    server = None if args.url else start_server(Path(tempfile.mkdtemp(prefix="rnnserve-hostile-")))
    url = args.url or server.url  # type: ignore[union-attr]
    pid = args.server_pid or (server.process.pid if server else None)
    try:
        before = worker_peak_mb(pid) if pid else 0.0
        answers = run(url)
        after = worker_peak_mb(pid) if pid else 0.0
        ready = httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    finally:
        if server is not None:
            server.stop()
    for a in answers:
        mark = "FAIL " + a.problem if a.problem else "ok"
        message = a.body.get("error", "") if isinstance(a.body, dict) else a.body
        took = f"{a.seconds * 1000:7.1f} ms"
        print(f"{a.status} {took}  {a.case.name:40.40s} {mark:8.8s} {message[:90]}")
    failed = [a for a in answers if a.problem]
    print(
        f"{len(answers)} cases, {len(failed)} failed; slowest "
        f"{max(a.seconds for a in answers):.2f} s; worker peak {before:.0f} -> {after:.0f} MB; "
        f"ready after: {ready}"
    )
    return 0 if not failed and ready and after - before <= MAX_GROWTH_MB else 1


if __name__ == "__main__":
    sys.exit(main())
