"""Regenerate the small real-data fixtures under tests/fixtures from ../shared/data.

    python tests/make_fixtures.py [SOURCE_DATA_DIR]

The fixtures are byte-exact slices of the real data sets (the first N MNIST images of each
split, re-wrapped as valid gzipped IDX files, and the first 40 KB of Tiny Shakespeare), so the
test suite runs on real digits and real text without needing the shared data folder.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
COUNTS = {"train": 600, "t10k": 200}
TEXT_CHARS = 40_000


def slice_idx(src: Path, dst: Path, count: int) -> None:
    with gzip.open(src, "rb") as fh:
        blob = fh.read()
    ndim = blob[3]
    dims = list(struct.unpack(f">{ndim}I", blob[4 : 4 + 4 * ndim]))
    item = 1
    for d in dims[1:]:
        item *= d
    dims[0] = count
    header = blob[:4] + struct.pack(f">{ndim}I", *dims)
    body = blob[4 + 4 * ndim : 4 + 4 * ndim + count * item]
    # mtime=0: the same input always gives the same bytes
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(header + body)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data"
    raw_out = FIXTURES / "MNIST" / "raw"
    raw_out.mkdir(parents=True, exist_ok=True)
    for split, count in COUNTS.items():
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            slice_idx(source / "MNIST" / "raw" / name, raw_out / name, count)
    text_out = FIXTURES / "text"
    text_out.mkdir(parents=True, exist_ok=True)
    text = (source / "text" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    (text_out / "tinyshakespeare.txt").write_text(text[:TEXT_CHARS], encoding="utf-8")
    print(f"fixtures written to {FIXTURES}")


if __name__ == "__main__":
    main()
