"""The text benchmarks' own logic, without a server: the batching strategies of
loadtest/bench_text_batching.py on the committed char model at tiny sizes (the exact ones must
give lone's answer, so that their timings compare like with like), and bench_text's helpers
(the state-chain splits, the answer comparison, the event parser). The timings themselves are
the benchmarks' job, not the tests'."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from loadtest.bench_text import parse_event, same_candidates, splits
from loadtest.bench_text_batching import (
    Counted,
    load_char_model,
    lone,
    main,
    real_texts,
    run,
    segmented,
)
from service.model.inference import CharModel
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def model() -> CharModel:
    return load_char_model("cpu")


@pytest.fixture(scope="module")
def corpus() -> str:
    return (FIXTURES / "text" / "tinyshakespeare.txt").read_text()


def test_exact_strategies_agree_with_lone_and_padding_breaks_only_the_state(
    model: CharModel, corpus: str
) -> None:
    cases = run(
        model,
        corpus,
        batches=[1, 5],
        kinds=["mixed", "equal"],
        longest=24,
        chunks=[4, None],
        repeats=1,
    )
    names = {c.strategy for c in cases}
    assert names == {"lone", "buckets", "padded", "segmented 4", "segmented unlimited"}
    assert len(cases) == 2 * 2 * len(names)
    for case in cases:
        assert case.max_abs_logits_diff <= 1e-4, case  # padded too: its logits are exact
        if case.exact_state:
            assert case.max_abs_state_diff <= 1e-4, case
        assert case.ms_per_batch > 0 and case.speed_vs_lone > 0
    mixed_padded = next(
        c for c in cases if (c.lengths, c.batch, c.strategy) == ("1..24", 5, "padded")
    )
    assert mixed_padded.max_abs_state_diff > 1e-3  # the rows shorter than the longest
    # no padding anywhere but in `padded`: every other strategy computes each position once
    for batch in (1, 5):
        work = {c.strategy: c.row_steps for c in cases if (c.lengths, c.batch) == ("1..24", batch)}
        assert {work[n] for n in names - {"padded"}} == {work["lone"]}


def test_segmented_advances_rows_together_and_lets_each_leave_when_read(
    model: CharModel, corpus: str
) -> None:
    texts = [model.encode(t) for t in real_texts(corpus, [1, 7, 7, 20], seed=3)]
    counted = Counted()
    logits, states = segmented(5)(model, texts, counted)
    ref_logits, ref_states = lone(model, texts, Counted())
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4)
    np.testing.assert_allclose(states, ref_states, atol=1e-4)
    # steps of 1 (all four), 5 and 1 (three), then 5, 5, 3 (the last one alone)
    assert (counted.calls, counted.row_steps) == (6, 1 + 7 + 7 + 20)


def test_the_batching_benchmark_writes_its_results(tmp_path: Path) -> None:
    main(["--quick", "--batches", "2", "--kinds", "mixed", "--out", str(tmp_path)])
    report = (tmp_path / "bench_text_batching.md").read_text()
    assert report.startswith("# Batching next-character reads")
    assert "Command: `python -m loadtest.bench_text_batching --quick" in report
    assert report.count("| 1..40 | 2 |") == 5  # lone, buckets, padded, segmented 16, unlimited


def test_state_chain_splits_cover_the_text_and_never_start_empty() -> None:
    rng = random.Random(0)
    for length in (2, 3, 40, 2000):
        for name, pieces in splits(length, rng):
            assert sum(pieces) == length, name
            assert pieces[0] > 0 and all(p >= 0 for p in pieces), name


def test_answers_compare_by_characters_in_order_then_probabilities() -> None:
    def answer(*pairs: tuple[str, float]) -> dict[str, object]:
        return {"candidates": [{"char": c, "probability": p} for c, p in pairs]}

    a = answer(("u", 0.5), ("w", 0.3))
    assert same_candidates(a, answer(("u", 0.50005), ("w", 0.3)), 1e-4) == (
        True,
        pytest.approx(5e-5),
    )
    assert not same_candidates(a, answer(("u", 0.5002), ("w", 0.3)), 1e-4)[0]
    assert not same_candidates(a, answer(("w", 0.3), ("u", 0.5)), 1e-4)[0]


def test_server_sent_events_are_parsed_by_name() -> None:
    assert parse_event(b'data: {"text": "ab"}') == ("message", {"text": "ab"})
    assert parse_event(b'event: end\ndata: {"chars": 2}') == ("end", {"chars": 2})
