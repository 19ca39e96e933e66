"""Batching next-character reads of different lengths: the model alone, in this process.

    python -m loadtest.bench_text_batching                  # about a minute on 2 cores
    python -m loadtest.bench_text_batching --quick          # seconds: tiny batches, 1 repeat
    python -m loadtest.bench_text_batching --batches 32 --repeats 9 --chunks 32 64

A server that batches /next_char across clients gets texts of different lengths at once; an
LSTM reads a text one position after the other, so the texts cannot simply be stacked. This
measures the ways to read B texts (real Tiny Shakespeare slices, lengths uniform in 1..400 or
all 400) with the committed char model (`CharModel.step`/`run`, onnxruntime, the service's
own settings):

- `lone`: one model call per text, as an unbatched server does (the reference);
- `buckets`: one call per distinct length (rows of equal length stacked);
- `padded`: right-padded to the longest, each row's logits taken at its last real position:
  exact for the logits (a position never sees what follows it), but the returned state is the
  state after the padding, wrong for every row shorter than the longest: useless to a caller
  that keeps the state, and the padding is computed for nothing;
- `segmented`: all rows advance together, in calls of min(remaining over the rows, chunk)
  steps, each row carrying its state from call to call, a row leaving the batch when its text
  is read: exact (no padding), for chunk 16, 32, 64, 128 and unlimited.

Reported per case: ms per batch and per text (median over alternating repeats), speed against
`lone`, the model calls and row-steps computed, and the largest absolute difference of each
strategy's last logits and states from `lone`'s (0 or ~1e-6 expected; `padded` states differ).
Writes bench_text_batching.md/.json into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.model.inference import CharModel, ModelRegistry
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CORPUS_NAME = Path("text") / "tinyshakespeare.txt"

# (last logits (B, V), states (layers*2, B, H)) of B texts, in the order they were given
Result = tuple[np.ndarray, np.ndarray]


@dataclass
class Counted:
    """What a strategy asked of the model: calls, and row-steps (one row, one position)
    computed, padding included; the work a batching scheme trades against call overhead."""

    calls: int = 0
    row_steps: int = 0

    def add(self, ids: np.ndarray) -> None:
        self.calls += 1
        self.row_steps += int(ids.shape[0] * ids.shape[1])


Strategy = Callable[[CharModel, list[np.ndarray], Counted], Result]


def default_corpus() -> Path:
    """Tiny Shakespeare: $RNNSERVE_DATA_DIR's copy, else the shared data folder's, else the
    committed 40 KB test fixture (its first 40,000 characters), so that a checkout without
    the data set still runs."""
    candidates = [
        *(
            [Path(os.environ["RNNSERVE_DATA_DIR"]) / CORPUS_NAME]
            if "RNNSERVE_DATA_DIR" in os.environ
            else []
        ),
        Path("/work/shared/data") / CORPUS_NAME,
        ROOT / "tests" / "fixtures" / CORPUS_NAME,
    ]
    return next((p for p in candidates if p.is_file()), candidates[-1])


def load_char_model(device: str = "cpu", models: Path = ROOT / "models") -> CharModel:
    """The committed char model as the service loads it (same backend and thread settings),
    from explicit settings so that nothing leaks in from this shell's RNNSERVE_* variables."""
    settings = Settings.from_env({"RNNSERVE_DEVICE": device, "RNNSERVE_MODEL_DIR": str(models)})
    model = ModelRegistry.load(settings).char
    if model is None:
        raise SystemExit(f"no next-character model under {models}")
    return model


def real_texts(corpus: str, lengths: list[int], seed: int) -> list[str]:
    """Slices of real text of the given lengths, at random places of the corpus."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(corpus) - max(lengths), len(lengths))
    return [corpus[int(s) : int(s) + n] for s, n in zip(starts, lengths, strict=True)]


def lone(model: CharModel, texts: list[np.ndarray], counted: Counted) -> Result:
    """One call per text from a fresh state: what an unbatched server does."""
    logits, states = [], []
    for ids in texts:
        counted.add(ids[None, :])
        last, state = model.step(ids[None, :], model.fresh_state(1))
        logits.append(last[0])
        states.append(state[:, 0])
    return np.stack(logits), np.stack(states, axis=1)


def buckets(model: CharModel, texts: list[np.ndarray], counted: Counted) -> Result:
    """One call per distinct length, the rows of that length stacked: exact, and as good as
    a batch gets when lengths repeat (the all-400 case: one call)."""
    logits = np.empty((len(texts), len(model.vocab)), dtype=np.float32)
    states = np.empty((model.state_rows, len(texts), model.hidden), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(texts):
        by_length.setdefault(len(ids), []).append(i)
    for rows in by_length.values():
        ids = np.stack([texts[i] for i in rows])
        counted.add(ids)
        last, state = model.step(ids, model.fresh_state(len(rows)))
        logits[rows] = last
        states[:, rows] = state
    return logits, states


def padded(model: CharModel, texts: list[np.ndarray], counted: Counted) -> Result:
    """Right-padded to the longest, each row's logits at its last real position. The logits
    are exact (position t never sees t+1..), the state is not: it is the state after the
    padding for every row shorter than the longest. Kept to show what padding costs."""
    longest = max(len(ids) for ids in texts)
    ids = np.zeros((len(texts), longest), dtype=np.int64)
    for i, row in enumerate(texts):
        ids[i, : len(row)] = row
    counted.add(ids)
    all_logits, state = model.run({"ids": ids, "state": model.fresh_state(len(texts))}, len(texts))
    last = np.array([len(row) - 1 for row in texts])
    return all_logits[np.arange(len(texts)), last], state


def segmented(chunk: int | None) -> Strategy:
    """All rows advance together in calls of m = min(remaining over the active rows, chunk)
    steps, carrying their states; a row whose text is read leaves the batch. Exact, without
    padding: every active row has at least m positions left. The chunk bounds one call's
    time (a new text could join between two calls); None: as long as the shortest remainder."""

    def run(model: CharModel, texts: list[np.ndarray], counted: Counted) -> Result:
        logits = np.empty((len(texts), len(model.vocab)), dtype=np.float32)
        states = model.fresh_state(len(texts))
        lengths = np.array([len(ids) for ids in texts])
        width = int(lengths.max())
        ids = np.zeros((len(texts), width), dtype=np.int64)
        for i, row in enumerate(texts):
            ids[i, : len(row)] = row
        active = np.arange(len(texts))
        offset = 0  # all rows start together and advance by the same m: one offset for all
        while len(active):
            m = int(lengths[active].min()) - offset
            if chunk is not None:
                m = min(m, chunk)
            block = np.ascontiguousarray(ids[active, offset : offset + m])
            counted.add(block)
            last, state = model.step(block, np.ascontiguousarray(states[:, active]))
            states[:, active] = state
            offset += m
            done = lengths[active] == offset
            logits[active[done]] = last[done]
            active = active[~done]
        return logits, states

    return run


def strategies(chunks: list[int | None]) -> dict[str, Strategy]:
    out: dict[str, Strategy] = {"lone": lone, "buckets": buckets, "padded": padded}
    for chunk in chunks:
        out[f"segmented {chunk if chunk is not None else 'unlimited'}"] = segmented(chunk)
    return out


@dataclass
class Case:
    """One strategy on one batch: the medians over the repeats and the gap to `lone`."""

    lengths: str
    batch: int
    strategy: str
    ms_per_batch: float
    ms_per_text: float
    speed_vs_lone: float
    calls: int
    row_steps: int
    max_abs_logits_diff: float
    max_abs_state_diff: float
    exact_state: bool  # False for padded: its states are not meant to be right


def measure(
    model: CharModel,
    texts: list[str],
    named: dict[str, Strategy],
    repeats: int,
    lengths_name: str,
) -> list[Case]:
    """Every strategy on the same batch, `repeats` rounds, the strategies alternating within
    each round so that they share the machine's mood; differences from `lone`'s first answer."""
    encoded = [model.encode(t) for t in texts]
    times: dict[str, list[float]] = {name: [] for name in named}
    answers: dict[str, Result] = {}
    counts: dict[str, Counted] = {}
    for name, strategy in named.items():  # one untimed run each: first-call costs, answers
        counts[name] = Counted()
        answers[name] = strategy(model, encoded, counts[name])
    for _ in range(repeats):
        for name, strategy in named.items():
            started = time.perf_counter()
            strategy(model, encoded, Counted())
            times[name].append((time.perf_counter() - started) * 1000)
    reference = answers["lone"]
    lone_ms = statistics.median(times["lone"])
    cases = []
    for name in named:
        ms = statistics.median(times[name])
        logits, states = answers[name]
        cases.append(
            Case(
                lengths=lengths_name,
                batch=len(texts),
                strategy=name,
                ms_per_batch=ms,
                ms_per_text=ms / len(texts),
                speed_vs_lone=lone_ms / ms,
                calls=counts[name].calls,
                row_steps=counts[name].row_steps,
                max_abs_logits_diff=float(np.abs(logits - reference[0]).max()),
                max_abs_state_diff=float(np.abs(states - reference[1]).max()),
                exact_state=name != "padded",
            )
        )
    return cases


def batch_lengths(kind: str, batch: int, longest: int, seed: int) -> list[int]:
    """`mixed`: uniform in 1..longest; `equal`: all `longest`."""
    if kind == "equal":
        return [longest] * batch
    return [int(n) for n in np.random.default_rng(seed).integers(1, longest + 1, batch)]


def run(
    model: CharModel,
    corpus: str,
    batches: list[int],
    kinds: list[str],
    longest: int,
    chunks: list[int | None],
    repeats: int,
    seed: int = 0,
) -> list[Case]:
    named = strategies(chunks)
    cases: list[Case] = []
    for kind in kinds:
        for batch in batches:
            lengths = batch_lengths(kind, batch, longest, seed + batch)
            texts = real_texts(corpus, lengths, seed + 1000 + batch)
            name = f"1..{longest}" if kind == "mixed" else f"all {longest}"
            for case in measure(model, texts, named, repeats, name):
                cases.append(case)
                print(
                    f"{name:>8s} B={batch:3d} {case.strategy:22s} {case.ms_per_batch:9.2f} ms "
                    f"({case.ms_per_text:7.3f} ms/text, {case.speed_vs_lone:5.2f}x lone, "
                    f"{case.calls} calls) logits diff {case.max_abs_logits_diff:.1e} state diff "
                    f"{case.max_abs_state_diff:.1e}",
                    flush=True,
                )
    return cases


def step_costs(model: CharModel, batches: list[int], steps: int) -> list[dict[str, Any]]:
    """One generation step (ids (B, 1) from a state) at each batch size: the model's own cost
    of stepping B sequences together, which bounds what batching generations can give on this
    device (B rows in one step cost `ms`, against B steps of one row)."""
    rows = []
    for batch in batches:
        ids = np.zeros((batch, 1), np.int64)
        state = model.fresh_state(batch)
        for _ in range(20):
            model.step(ids, state)
        runs = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(steps):
                model.step(ids, state)
            runs.append((time.perf_counter() - started) / steps * 1000)
        rows.append({"batch": batch, "ms_per_step": float(np.median(runs))})
    alone = rows[0]["ms_per_step"]
    for row in rows:
        row["ceiling_vs_one"] = row["batch"] * alone / row["ms_per_step"]
    return rows


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Batching next-character reads of different lengths",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}",
        "",
        f"The committed char model ({result['model']}, {result['provider']}) in this process, "
        f"no server. A batch: B slices of real text ({result['corpus']}), their lengths uniform "
        f"in 1..{result['longest']} or all {result['longest']}. Median of {result['repeats']} "
        "alternating repeats; differences against `lone` (one call per text) over the last "
        "logits and the returned states. `padded` takes each row's logits at its last real "
        "position (exact) but returns the state after the padding: wrong for every row "
        "shorter than the longest (its state difference says by how much). `segmented N`: "
        "all rows advance in calls of min(remaining, N) steps with their states carried, a row "
        "leaving when read (exact, no padding). Row-steps: positions computed, padding included.",
        "",
        "| lengths | B | strategy | ms per batch | ms per text | vs lone | model calls "
        "| row-steps | max abs diff, logits | max abs diff, state |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["cases"]:
        state = f"{c['max_abs_state_diff']:.1e}"
        if not c["exact_state"] and c["max_abs_state_diff"] > 1e-4:
            state += " (padded rows: wrong)"
        lines.append(
            f"| {c['lengths']} | {c['batch']} | {c['strategy']} | {c['ms_per_batch']:.2f} | "
            f"{c['ms_per_text']:.3f} | {c['speed_vs_lone']:.2f}x | {c['calls']} | "
            f"{c['row_steps']} | {c['max_abs_logits_diff']:.1e} | {state} |"
        )
    steps = result.get("steps") or []
    if steps:
        lines += [
            "",
            "## One generation step by batch size",
            "",
            "ids (B, 1) from a state, the model alone (median of 5 runs of "
            f"{result['step_repeats']} steps). The ceiling: characters/s of B sequences stepped "
            "together over one sequence alone, if nothing but the model cost anything (B x "
            "the one-row step over the B-row step); batching generations cannot beat it on "
            "this device.",
            "",
            "| B | ms per step | ceiling vs one alone |",
            "| ---: | ---: | ---: |",
        ]
        for row in steps:
            lines.append(
                f"| {row['batch']} | {row['ms_per_step']:.3f} | {row['ceiling_vs_one']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


QUICK = {"batches": [1, 4], "longest": 40, "repeats": 1, "chunks": [16, 0], "step_repeats": 20}
FULL = {
    "batches": [1, 8, 32],
    "longest": 400,
    "repeats": 7,
    "chunks": [16, 32, 64, 128, 0],
    "step_repeats": 500,
}
STEP_BATCHES = [1, 8, 32, 64]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"tiny sizes for a smoke run or a test: {QUICK}"
    )
    parser.add_argument(
        "--batches", type=int, nargs="+", help=f"batch sizes B (default {FULL['batches']})"
    )
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=["mixed", "equal"],
        default=["mixed", "equal"],
        help="mixed: lengths uniform in 1..longest; equal: all longest (default both)",
    )
    parser.add_argument("--longest", type=int, help=f"longest text (default {FULL['longest']})")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="+",
        help=f"segmented chunk sizes, 0 for unlimited (default {FULL['chunks']})",
    )
    parser.add_argument(
        "--repeats", type=int, help=f"timed repeats per case (default {FULL['repeats']})"
    )
    parser.add_argument(
        "--step-repeats",
        type=int,
        help=f"generation steps timed per run and batch size (default {FULL['step_repeats']})",
    )
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda (default cpu)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=default_corpus(),
        help="Tiny Shakespeare (default %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "loadtest" / "results", help="(default %(default)s)"
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    chunks: list[int | None] = [c or None for c in args.chunks]

    model = load_char_model(args.device)
    corpus = args.corpus.read_text()
    cases = run(model, corpus, args.batches, args.kinds, args.longest, chunks, args.repeats)
    steps = step_costs(model, STEP_BATCHES, args.step_repeats)
    command = " ".join(
        ["python -m loadtest.bench_text_batching", *(argv if argv is not None else sys.argv[1:])]
    )
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, the model in this process",
        "model": model.name,
        "backend": model.backend_name,
        "provider": model.backend.provider,
        "corpus": f"{args.corpus.name}, {len(corpus):,} characters",
        "longest": args.longest,
        "repeats": args.repeats,
        "cases": [asdict(c) for c in cases],
        "steps": steps,
        "step_repeats": args.step_repeats,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_text_batching.json").write_text(json.dumps(result, indent=2) + "\n")
    report = render(result)
    (args.out / "bench_text_batching.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
