"""Regenerate the protobuf modules beside the vendored .proto files (`make protos`).

    python -m service.http.grpc_v2.proto.generate [--check]

The generated `*_pb2.py` (and `.pyi` stubs, for mypy) are committed, so that installing the
serving core needs no code generator: grpcio-tools is a development tool (the `dev` extra) and
is pinned there to the version that wrote them. protoc writes `import model_config_pb2` for
the .proto's `import "model_config.proto"`, a top-level module that does not exist inside a
package: the imports are made relative here. `--check` regenerates into a scratch folder and
fails when the committed files differ (tests/test_grpc_protocol.py runs it).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ["model_config.proto", "grpc_service.proto", "health.proto"]
_TOP_LEVEL_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(into: Path) -> list[Path]:
    """protoc over PROTOS into `into`; the generated files, imports made relative."""
    from grpc_tools import protoc  # dev only (grpcio-tools)

    args = ["protoc", f"-I{HERE}", f"--python_out={into}", f"--pyi_out={into}"]
    if protoc.main([*args, *(str(HERE / p) for p in PROTOS)]) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in into.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))
    for path in written:
        text = _TOP_LEVEL_IMPORT.sub(r"from . import \1 as \2", path.read_text())
        if path.suffix == ".py":
            text = _private_pool(text)
        path.write_text(text)
    return written


def _private_pool(text: str) -> str:
    """The messages go into this package's own descriptor pool, not protobuf's default one:
    tritonclient and KServe register their copies of the same protocol (package `inference`)
    there, and a second definition of a symbol in one pool is an error, so a process that
    imports a client and these modules (the test suite; any embedding) would fail."""
    default = "_descriptor_pool.Default().AddSerializedFile("
    if default not in text:
        raise SystemExit("protoc's output changed: no default-pool registration found")
    return text.replace(default, "_POOL.AddSerializedFile(").replace(
        "from google.protobuf.internal import builder as _builder\n",
        "from google.protobuf.internal import builder as _builder\n"
        "from service.http.grpc_v2.proto import POOL as _POOL\n",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        written = generate(Path(scratch))
        stale = [
            p.name
            for p in written
            if not (HERE / p.name).exists() or (HERE / p.name).read_bytes() != p.read_bytes()
        ]
        if args.check:
            if stale:
                print(f"stale generated files: {stale} (run `make protos`)", file=sys.stderr)
                return 1
            return 0
        for path in written:
            shutil.copy(path, HERE / path.name)
        print(f"wrote {[p.name for p in written]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
