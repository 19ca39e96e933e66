"""KServe's InferenceRESTClient against a server: health bodies, readiness, inference.

    python -m tests.clients.kserve_check URL IMAGES.npy   # prints what it found, as JSON

Run by tests/test_v2.py in a process of its own (see tests/clients/__init__.py).
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def scenario(url: str, images: np.ndarray) -> dict[str, object]:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        found: dict[str, object] = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
            "model ready": await client.is_model_ready(url, "mnist-bigru"),
        }
        for binary in (False, True):
            pixels = InferInput("pixels", list(images.shape), "FP32")
            pixels.set_data_from_numpy(images, binary_data=binary)
            request = InferRequest(model_name="mnist-bigru", infer_inputs=[pixels])
            response = await client.infer(url, request, model_name="mnist-bigru")
            outputs = {o.name: o.as_numpy() for o in response.outputs}
            found[f"digits binary={binary}"] = outputs["digit"].tolist()
            found[f"rows binary={binary}"] = list(outputs["probabilities"].shape)
        ids = InferInput("ids", [1, 6], "INT64")
        ids.set_data_from_numpy(np.array([[0, 1, 2, 3, 4, 5]], dtype=np.int64))
        request = InferRequest(model_name="char-rnn", infer_inputs=[ids])
        response = await client.infer(url, request, model_name="char-rnn")
        found["logits"] = list({o.name: o.as_numpy().shape for o in response.outputs}["logits"])
        return found
    finally:
        await client.close()


def main() -> None:
    url, images_path = sys.argv[1], sys.argv[2]
    print(json.dumps(asyncio.run(scenario(url, np.load(images_path)))))


if __name__ == "__main__":
    main()
