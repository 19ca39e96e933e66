"""Strict validation of KServe resources against the KServe Python SDK's models (PyPI `kserve`,
generated from KServe's OpenAPI document, the same Go types its CRDs are made from), with the
Kubernetes client's models for the pod spec inside them.

    python -m tests.kserve_schema < documents.json     # a JSON list of documents

Prints a JSON list of problems (empty: valid) and exits 0. An unknown field, a wrong type or a
missing required field is a problem, as `kubectl apply --validate=strict` would say. Run as a
process of its own: kserve and tritonclient.grpc cannot share one (docs/development.md).

Why not the CRD YAML itself: the project commits no file fetched from another repository, and
no package registry this project installs from carries KServe's CRDs; the SDK does carry the
types (docs/deployment.md says what this catches and what it cannot).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import kserve.models
import kubernetes.client.models

SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "date": (str,),
    "datetime": (str,),
}
KINDS = {("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService"}


def model_class(name: str) -> Any:
    return getattr(kserve.models, name, None) or getattr(kubernetes.client.models, name, None)


def check(value: Any, kind: str, path: str, problems: list[str]) -> None:
    """`value` against the SDK type string `kind`: a model name, list[...] or dict(str, ...)
    (kserve's spelling), List[...] or Dict[str, ...] (the Kubernetes client's)."""
    if value is None:
        return
    if match := re.fullmatch(r"[lL]ist\[(.+)\]", kind):
        if not isinstance(value, list):
            problems.append(f"{path}: a list expected, got {type(value).__name__}")
            return
        for index, item in enumerate(value):
            check(item, match.group(1), f"{path}[{index}]", problems)
        return
    if match := re.fullmatch(r"dict\(str, (.+)\)|Dict\[str, (.+)\]", kind):
        if not isinstance(value, dict):
            problems.append(f"{path}: a mapping expected, got {type(value).__name__}")
            return
        for key, item in value.items():
            check(item, match.group(1) or match.group(2), f"{path}.{key}", problems)
        return
    if kind == "object" or kind.endswith("Quantity"):  # int-or-string, quantities, free-form
        return
    if kind in SCALARS:
        if not isinstance(value, SCALARS[kind]) or (kind != "bool" and isinstance(value, bool)):
            problems.append(f"{path}: {kind} expected, got {value!r}")
        return
    cls = model_class(kind)
    if cls is None:
        problems.append(f"{path}: the SDK has no type {kind}")
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: an object ({kind}) expected, got {type(value).__name__}")
        return
    by_json_name = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    for key, item in value.items():
        if key not in by_json_name:
            problems.append(f"{path}.{key}: unknown field of {kind}")
            continue
        attr = by_json_name[key]
        check(item, cls.openapi_types[attr], f"{path}.{key}", problems)
    try:  # the models refuse a missing required field (and a value outside an enum) here
        cls(**{by_json_name[k]: v for k, v in value.items() if k in by_json_name})
    except (ValueError, TypeError) as exc:
        problems.append(f"{path}: {exc}")


def validate(document: dict[str, Any]) -> list[str]:
    key = (document.get("apiVersion"), document.get("kind"))
    if key not in KINDS:
        return [f"not a KServe kind this checks: {key}"]
    problems: list[str] = []
    check(document, KINDS[key], document["kind"], problems)
    return problems


def main() -> int:
    documents = json.load(sys.stdin)
    print(json.dumps([p for d in documents for p in validate(d)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
