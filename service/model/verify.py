"""Verification of a model version before it serves, beyond its checksums.

The card's sha256 proves the files are the exported ones (cards.py checks it on the very bytes
a runtime loads). This module proves the loaded model keeps the card's promises on this
machine and runtime: its graph has the card's inputs and outputs, and the examples recorded at
export give the recorded outputs within the card's tolerance, finite. Any failure is a
`CardError` with the reason, which the model-control layer reports and the service answers as
a refused load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.model.cards import CardError, ModelCard
from service.model.examples import ExampleError, read_cases
from service.model.runtime import Backend

ONNX_TYPES = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(uint8)": "uint8"}


def check_signature(card: ModelCard, backend: Backend) -> None:
    """The runtime's inputs and outputs (name, element type, rank, fixed sizes) against the
    card's. Backends that cannot list theirs (TorchScript) are checked by the examples."""
    signature = getattr(backend, "signature", None)
    if signature is None:
        return
    where = f"{card.directory}"
    for part, specs in (("inputs", card.data["inputs"]), ("outputs", card.data["outputs"])):
        found: list[tuple[str, str, list[Any]]] = signature()[part]
        names = [name for name, _, _ in found]
        wanted = [str(spec["name"]) for spec in specs]
        if names != wanted:
            raise CardError(f"{where}: the model's {part} are {names}, the card's {wanted}")
        for (name, dtype, shape), spec in zip(found, specs, strict=True):
            if ONNX_TYPES.get(dtype, dtype) != spec["dtype"]:
                raise CardError(
                    f"{where}: {part[:-1]} {name!r} is {dtype} in the model, {spec['dtype']} in "
                    "the card"
                )
            card_shape = list(spec["shape"])
            fixed = all(c == -1 or d == c for d, c in zip(shape, card_shape, strict=False))
            if len(shape) != len(card_shape) or not fixed:
                raise CardError(
                    f"{where}: {part[:-1]} {name!r} has shape {shape} in the model, "
                    f"{card_shape} in the card (-1: any size)"
                )


def check_examples(card: ModelCard, backend: Backend) -> float:
    """Run every recorded example; the largest difference from the recorded outputs (within
    the tolerance, or CardError)."""
    where = str(card.directory)
    try:
        tolerance, cases = read_cases(card.data.get("examples"), where)
    except ExampleError as exc:
        raise CardError(str(exc)) from None
    output_names = [str(spec["name"]) for spec in card.data["outputs"]]
    worst = 0.0
    for i, (inputs, expected) in enumerate(cases):
        try:
            outputs = backend.run(inputs)
        except Exception as exc:  # a runtime refusing the recorded inputs is a refused model
            raise CardError(f"{where}: example {i} does not run: {str(exc)[:300]}") from None
        got = dict(zip(output_names, outputs, strict=False))
        for name, want in expected.items():
            if name not in got:
                raise CardError(f"{where}: example {i}: the model gives no output {name!r}")
            out = np.asarray(got[name])
            if out.shape != want.shape:
                raise CardError(
                    f"{where}: example {i}: output {name!r} has shape {list(out.shape)}, "
                    f"recorded {list(want.shape)}"
                )
            if not np.isfinite(out).all():
                raise CardError(f"{where}: example {i}: output {name!r} holds NaN or infinity")
            diff = float(np.max(np.abs(out.astype(np.float64) - want), initial=0.0))
            if diff > tolerance:
                raise CardError(
                    f"{where}: example {i}: output {name!r} differs from the recorded one by "
                    f"{diff:.3g}, over the card's tolerance {tolerance:g}: the model does not "
                    "compute what was exported"
                )
            worst = max(worst, diff)
    return worst


def verify_loaded(card: ModelCard, backend: Backend) -> float:
    """Every check a loaded model passes before it may serve; the examples' worst difference."""
    check_signature(card, backend)
    return check_examples(card, backend)
