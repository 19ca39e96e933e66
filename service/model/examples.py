"""Recorded examples: a few inputs and the outputs PyTorch gave for them, kept in the card.

Export records them (training/export.py); the service runs them through every model it loads
and compares (service/model/verify.py). Checksums prove the files are the ones exported; the
examples prove that what the runtime computes with them on this machine is what training
computed, within the card's tolerance, before the model takes traffic.

Arrays travel as `{"dtype", "shape", "data"}` with `data` the base64 of the little-endian
bytes, or `{"dtype", "shape", "fill"}` for a constant array (a fresh recurrent state).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

DTYPES = ("float32", "int64", "uint8")
# A card's examples may hold at most this many array elements in all: they are read and run
# on every load, and a card is not a data set.
MAX_ELEMENTS = 1 << 20


class ExampleError(ValueError):
    """Examples that are missing, malformed, or that the model does not reproduce."""


def encode_array(array: np.ndarray) -> dict[str, Any]:
    dtype = str(array.dtype)
    if dtype not in DTYPES:
        raise ExampleError(f"example arrays are {DTYPES}, not {dtype}")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    if array.size and np.all(array == array.flat[0]):
        return {"dtype": dtype, "shape": list(array.shape), "fill": array.flat[0].item()}
    return {
        "dtype": dtype,
        "shape": list(array.shape),
        "data": base64.b64encode(little.tobytes()).decode("ascii"),
    }


def decode_array(entry: object, where: str) -> np.ndarray:
    """One recorded array, checked: known dtype, a shape of non-negative ints, exactly the
    bytes that shape needs."""
    if not isinstance(entry, dict):
        raise ExampleError(f"{where}: expected an object with dtype, shape and data")
    dtype, shape = entry.get("dtype"), entry.get("shape")
    if dtype not in DTYPES:
        raise ExampleError(f"{where}: dtype {dtype!r} is not one of {DTYPES}")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ExampleError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    size = int(np.prod(shape, dtype=np.int64))
    if size > MAX_ELEMENTS:
        raise ExampleError(f"{where}: {size} elements, more than examples may hold")
    if "fill" in entry:
        fill = entry["fill"]
        if isinstance(fill, bool) or not isinstance(fill, int | float):
            raise ExampleError(f"{where}: fill {fill!r} is not a number")
        return np.full(shape, fill, dtype=dtype)
    data = entry.get("data")
    if not isinstance(data, str):
        raise ExampleError(f"{where}: no 'data' (base64) or 'fill'")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ExampleError(f"{where}: 'data' is not base64") from None
    expected = size * np.dtype(dtype).itemsize
    if len(raw) != expected:
        raise ExampleError(f"{where}: {len(raw)} bytes of data for shape {shape} ({expected})")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype).reshape(shape)


def examples_section(
    cases: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]], tolerance: float, about: str
) -> dict[str, Any]:
    """The card's `examples`: each case's graph inputs and the reference outputs."""
    return {
        "about": about,
        "tolerance": tolerance,
        "cases": [
            {
                "inputs": {name: encode_array(a) for name, a in inputs.items()},
                "outputs": {name: encode_array(a) for name, a in outputs.items()},
            }
            for inputs, outputs in cases
        ],
    }


def read_cases(
    section: object, where: str
) -> tuple[float, list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]]:
    """The tolerance and the decoded cases of a card's `examples`."""
    if not isinstance(section, dict):
        raise ExampleError(f"{where}: 'examples' must be an object with tolerance and cases")
    tolerance = section.get("tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or tolerance <= 0:
        raise ExampleError(f"{where}: examples' tolerance {tolerance!r} is not a positive number")
    cases = section.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ExampleError(f"{where}: examples hold no cases")
    decoded = []
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or not all(
            isinstance(case.get(part), dict) and case.get(part) for part in ("inputs", "outputs")
        ):
            raise ExampleError(f"{where}: example {i} needs 'inputs' and 'outputs' objects")
        decoded.append(
            tuple(
                {
                    str(name): decode_array(entry, f"{where}: example {i} {part} {name!r}")
                    for name, entry in case[part].items()
                }
                for part in ("inputs", "outputs")
            )
        )
    return float(tolerance), decoded  # type: ignore[return-value]
