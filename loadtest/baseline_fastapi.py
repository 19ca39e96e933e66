"""A minimal FastAPI + onnxruntime server: the baseline rnnserve is compared against.

    uvicorn loadtest.baseline_fastapi:app --port 8000

Same ONNX model, same request and response shape as rnnserve's /classify_pixels, the same
onnxruntime settings (1 intra-op thread), no batching, no extras: what a hand-written service
would look like. Benchmark-only: the service never imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

from service.model.cards import load_card
from service.model.numerics import normalize, softmax

MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", Path(__file__).parent.parent / "models"))
CARD = load_card(MODEL_DIR / os.environ.get("BASELINE_MODEL", "mnist-birnn") / "1")
_options = ort.SessionOptions()
_options.intra_op_num_threads = 1
_options.inter_op_num_threads = 1
SESSION = ort.InferenceSession(
    str(CARD.file_path("onnx")), _options, providers=["CPUExecutionProvider"]
)
NORMALIZATION = CARD.input_spec("pixels")["normalization"]


class Image(BaseModel):
    pixels: list[list[float]]
    model: str = "birnn"


class Request(BaseModel):
    images: list[Image]


app = FastAPI()


@app.post("/classify_pixels")
def classify_pixels(request: Request) -> list[dict[str, object]]:
    x = normalize(np.asarray([img.pixels for img in request.images], np.float32), NORMALIZATION)
    (logits,) = SESSION.run(None, {"pixels": x.astype(np.float32)})
    probs = softmax(logits)
    return [
        {
            "digit": int(p.argmax()),
            "probabilities": [round(float(v), 6) for v in p],
            "model": CARD.name,
            "provider": "CPUExecutionProvider",
        }
        for p in probs
    ]


@app.get("/readyz")
def readyz() -> dict[str, bool]:
    return {"ready": True}
