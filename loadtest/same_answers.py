"""Do two revisions answer the same? Every case of loadtest/hostile.py and a set of ordinary
requests on every route go to a server of each revision, and each pair of answers is compared:
status, content type and body (JSON compared as data; a few fields that differ by nature, like
a drawn seed, are left out). A refactoring should change nothing here.

    python -m loadtest.same_answers --baseline 2641d09
    python -m loadtest.same_answers --baseline HEAD~3 --out loadtest/results/same_answers.md

The baseline is checked out into a temporary git worktree (as loadtest/ab.py does) and served
from there with the same settings; only 127.0.0.1 is targeted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from loadtest import hostile
from loadtest.ab import worktree
from loadtest.payloads import digits
from loadtest.servers import ROOT, start_server

# Fields whose values differ between any two runs, not between revisions.
VOLATILE = {"seed", "seconds", "first_char_ms", "chars_per_s"}


def ordinary_cases() -> list[hostile.Case]:
    """One good request (or a few) per route and protocol."""
    digit = digits()[0]
    pixels = {"images": [{"pixels": digit.pixels}]}
    return [
        hostile.Case("classify_pixels", "POST", "/classify_pixels", {"json": pixels}),
        hostile.Case("lean digits", "POST", "/v1/digits", {"json": {"pixels": digit.pixels}}),
        hostile.Case("next_char", "POST", "/next_char", {"json": {"text": "ROMEO:\n", "k": 3}}),
        hostile.Case(
            "generate seeded",
            "POST",
            "/generate",
            {"json": {"prompt": "ROMEO:", "length": 40, "seed": 7, "top_k": 5}},
        ),
        hostile.Case(
            "stream seeded",
            "POST",
            "/v1/generate/stream",
            {"json": {"prompt": "ROMEO:", "length": 40, "seed": 7}},
        ),
        hostile.Case("metadata", "GET", "/v1/metadata"),
        hostile.Case("v2 server", "GET", "/v2"),
        hostile.Case("v2 model", "GET", "/v2/models/mnist-rnn"),
        hostile.Case(
            "v2 infer",
            "POST",
            "/v2/models/mnist-rnn/infer",
            {
                "json": {
                    "inputs": [
                        {
                            "name": "pixels",
                            "datatype": "FP32",
                            "shape": [1, 28, 28],
                            "data": [float(v) for row in digit.pixels for v in row],
                        }
                    ]
                }
            },
        ),
        hostile.Case("readyz", "GET", "/readyz"),
        hostile.Case("unknown path", "GET", "/nope"),
    ]


def scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def comparable(response: httpx.Response) -> tuple[int, str, Any]:
    kind = response.headers.get("content-type", "").split(";")[0]
    if kind == "application/json":
        try:
            return response.status_code, kind, scrub(response.json())
        except json.JSONDecodeError:
            pass
    if kind == "text/event-stream":
        events = [
            scrub(json.loads(line[6:]))
            for line in response.text.splitlines()
            if line.startswith("data: ")
        ]
        return response.status_code, kind, "".join(e.get("text", "") for e in events)
    return response.status_code, kind, response.content


def answers(source: Path, scratch: Path) -> dict[str, tuple[int, str, Any]]:
    server = start_server(scratch, cwd=source, model_dir=str(source / "models"))
    found = {}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for case in [*ordinary_cases(), *hostile.cases()]:
                response = client.request(case.method, case.path, **case.kwargs)
                found[case.name] = comparable(response)
    finally:
        server.stop()
    return found


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--out", type=Path, help="write the markdown report here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="rnnserve-same-") as tmp:
        base = worktree(args.baseline, Path(tmp) / "baseline")
        try:
            before = answers(base, Path(tmp) / "b")
            after = answers(ROOT, Path(tmp) / "c")
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
            )
    differ = [name for name in before if before[name] != after.get(name)]
    lines = [
        "# Same answers: baseline vs candidate",
        "",
        f"Command: `python -m loadtest.same_answers {' '.join(argv or sys.argv[1:])}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}  ",
        f"Baseline: `{args.baseline}`; candidate: this checkout. {len(before)} requests "
        f"(every case of loadtest/hostile.py and {len(ordinary_cases())} ordinary ones); "
        f"{len(differ)} answered differently.",
        "",
    ]
    if differ:
        lines += ["| case | baseline | candidate |", "| --- | --- | --- |"]
        lines += [f"| {n} | {short(before[n])} | {short(after.get(n))} |" for n in differ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
