"""Text workload benchmark: next_char under concurrency, keystrokes with a state, fairness
next to generations, generation on both routes, and state-chain correctness.

    python -m loadtest.bench_text                       # starts its own server, ~4 minutes
    python -m loadtest.bench_text --quick               # smoke run: tiny sizes, ~10 s
    python -m loadtest.bench_text --sections keystroke correctness --url http://127.0.0.1:3000

Every text is real Tiny Shakespeare (--corpus), sliced at random places so that no two
requests of a level ask the same question. Clients are aiohttp (httpx for the plain-client
check), keep-alive connections opened before a level starts. Sections (--sections):

1. `next_char`: closed-loop clients (1, 8, 32) for --seconds after --warmup, texts of 40 and
   400 characters, two modes: `whole` (every request sends a whole text) and `state` (each
   client sends its text once, then one new character per request, the next character of the
   real text, with the state of its last answer, as an autocomplete does). Requests/s, p50/p99,
   and the most clients' requests/s over one client's (goal: >= 6x at 32 clients, 400 chars).
2. `keystroke`: one client, one keystroke at 20 / 200 / 2000 characters of context: one new
   character with the state of the context before it, against the whole text of that length;
   p50/p99 over --keystrokes each (each kind back to back, every length in turn); the state
   answers are checked against the whole-text ones. Goal: the with-state p50 at 2000 <= 1.5x
   that at 20.
3. `fairness`: one client probes next_char every 20 ms (a 40-character text, and a 1-character
   keystroke with a state, alternating), idle first, then while 40 clients keep /generate
   requests of 1000 characters running. Goal: the worst probe <= 5x the idle p50.
4. `generation`: 1, 8, 32, 64 clients, each sending 2 generations of 500 characters back to
   back (own seeds), on /generate and /v1/generate/stream alternately, and /generate from a
   plain httpx client at 1 and 32: characters/s, against one client on the same route (goal:
   32 clients >= 10x) and between the routes (goal: within 20%); same seed, same text on both.
5. `correctness`: next_char answers over a state chain (the text in pieces, each sent with the
   previous answer's state) against the whole-text answer: same candidates in the same order,
   probabilities within 1e-4; and /generate continued from a state against the whole prompt.

The state API (a `state` field in and out) is probed first; a server without it gets the
stateless parts measured and the rest marked as not run. Writes <name>.md/.json into --out
(default bench_text); only 127.0.0.1 is targeted, every request has a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import httpx
import numpy as np

from loadtest.bench_text_batching import default_corpus
from loadtest.servers import start_server

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["next_char", "keystroke", "fairness", "generation", "correctness"]
K = 5  # candidates asked for in the timed sections (the API's default)
TEMPERATURE = 0.8  # generation, as the demo page and bench_generation use
PROBE_EVERY_S = 0.02
REQUEST_TIMEOUT_S = 120  # a stuck request fails the level instead of hanging the run
SLOW_DOWN_S = 0.01  # after an error: a refusing server must not be hammered in a hot loop

QUICK: dict[str, Any] = {
    "seconds": 1.0,
    "warmup": 0.3,
    "clients": [1, 4],
    "lengths": [40],
    "keystrokes": 10,
    "contexts": [20, 200],
    "probes": 10,
    "fair_generations": 4,
    "fair_chars": 100,
    "fair_seconds": 1.0,
    "fair_spread_s": 0.2,
    "gen_clients": [1, 4],
    "gen_chars": 50,
    "httpx_clients": [1, 4],
}
FULL: dict[str, Any] = {
    "seconds": 8.0,
    "warmup": 1.0,
    "clients": [1, 8, 32],
    "lengths": [40, 400],
    "keystrokes": 200,
    "contexts": [20, 200, 2000],
    "probes": 100,
    "fair_generations": 40,
    "fair_chars": 1000,
    "fair_seconds": 8.0,
    "fair_spread_s": 1.0,
    "gen_clients": [1, 8, 32, 64],
    "gen_chars": 500,
    "httpx_clients": [1, 32],
}


class ApiError(RuntimeError):
    """A non-200 answer: the route, the status and the start of the body."""

    def __init__(self, path: str, status: int, body: str) -> None:
        super().__init__(f"{path} answered {status}: {body[:300]}")
        self.status = status


REQUEST_ERRORS = (ApiError, aiohttp.ClientError, asyncio.TimeoutError)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass(frozen=True)
class Corpus:
    """The real text every request is cut from."""

    text: str

    def start(self, rng: random.Random, span: int) -> int:
        """A random place with `span` characters after it."""
        return rng.randrange(0, len(self.text) - span)

    def piece(self, rng: random.Random, length: int) -> str:
        start = self.start(rng, length)
        return self.text[start : start + length]


async def post(session: aiohttp.ClientSession, url: str, path: str, body: Any) -> dict[str, Any]:
    async with session.post(url + path, json=body) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise ApiError(path, resp.status, raw.decode(errors="replace"))
        answer: dict[str, Any] = json.loads(raw)
        return answer


@asynccontextmanager
async def open_session(url: str, connections: int) -> AsyncIterator[aiohttp.ClientSession]:
    """A session with `connections` keep-alive connections already open, as long-lived
    clients have them: the levels measure the server, not TCP handshakes."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def ping() -> None:
            async with session.get(f"{url}/livez") as resp:
                await resp.read()

        await asyncio.gather(*(ping() for _ in range(connections)))
        yield session


async def probe_server(url: str) -> tuple[dict[str, Any], str | None]:
    """The model and provider a next_char answer names, and None when the server carries
    state (an answer has one, and a request with it and an empty text is taken), else why
    not. A server that fails a plain next_char is broken, not stateless: that raises."""
    async with open_session(url, 1) as session:
        first = await post(session, url, "/next_char", {"text": "ROMEO:", "k": 1})
        info = {"model": first.get("model"), "provider": first.get("provider")}
        if not isinstance(first.get("state"), str):
            return info, "next_char answers carry no state"
        try:
            await post(session, url, "/next_char", {"text": "", "k": 1, "state": first["state"]})
        except ApiError as exc:
            return info, f"a request with a state is refused: {exc}"
    return info, None


# --- 1. next_char throughput ------------------------------------------------------------


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    reseeds: int = 0
    last_error: str = ""


@dataclass
class Typist:
    """One autocomplete client: where it is in the corpus (the next character it types) and
    the state of what it has sent so far."""

    rng: random.Random
    length: int
    position: int = 0
    end: int = 0  # where the room left for this chain's keystrokes ends
    state: str = ""
    context: int = 0

    async def seed(
        self, session: aiohttp.ClientSession, url: str, corpus: Corpus, max_context: int
    ) -> None:
        """Send a fresh text once (untimed) to get a state; room is left for the keystrokes."""
        start = corpus.start(self.rng, self.length + max_context)
        text = corpus.text[start : start + self.length]
        answer = await post(session, url, "/next_char", {"text": text, "k": K})
        self.position, self.state = start + self.length, answer["state"]
        self.end = start + self.length + max_context
        self.context = int(answer.get("context_chars", self.length))


async def next_char_client(
    session: aiohttp.ClientSession,
    url: str,
    corpus: Corpus,
    mode: str,
    length: int,
    typist: Typist,
    stop_at: float,
    tally: Tally,
    max_context: int,
) -> None:
    """Closed loop until `stop_at`: each request is sent when the previous one answered."""
    while time.perf_counter() < stop_at:
        if mode == "state":
            if not typist.state or max_context <= typist.context or typist.position >= typist.end:
                try:  # a new chain: the context stays within what the server takes
                    await typist.seed(session, url, corpus, max_context)
                    tally.reseeds += 1
                except REQUEST_ERRORS as exc:
                    tally.errors, tally.last_error = tally.errors + 1, str(exc)
                    await asyncio.sleep(SLOW_DOWN_S)
                    continue
            body = {"text": corpus.text[typist.position], "k": K, "state": typist.state}
        else:
            body = {"text": corpus.piece(typist.rng, length), "k": K}
        started = time.perf_counter()
        try:
            answer = await post(session, url, "/next_char", body)
        except REQUEST_ERRORS as exc:
            tally.errors, tally.last_error = tally.errors + 1, str(exc)
            typist.state = ""  # start a fresh chain: the state may be what was refused
            await asyncio.sleep(SLOW_DOWN_S)
            continue
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        if mode == "state":
            typist.state = answer["state"]
            typist.position += 1
            typist.context = int(answer.get("context_chars", typist.context + 1))


async def next_char_level(
    url: str,
    corpus: Corpus,
    mode: str,
    length: int,
    clients: int,
    seconds: float,
    warmup: float,
    max_context: int,
    seed: int,
) -> dict[str, Any]:
    async with open_session(url, clients) as session:
        typists = [Typist(random.Random(seed + c), length) for c in range(clients)]
        if mode == "state":
            await asyncio.gather(*(t.seed(session, url, corpus, max_context) for t in typists))
        if warmup:  # the same clients, their chains continuing into the measured part
            stop_at = time.perf_counter() + warmup
            await asyncio.gather(
                *(
                    next_char_client(
                        session, url, corpus, mode, length, t, stop_at, Tally(), max_context
                    )
                    for t in typists
                )
            )
        tallies = [Tally() for _ in typists]
        started = time.perf_counter()
        await asyncio.gather(
            *(
                next_char_client(
                    session, url, corpus, mode, length, t, started + seconds, tally, max_context
                )
                for t, tally in zip(typists, tallies, strict=True)
            )
        )
        elapsed = time.perf_counter() - started
    latencies = [ms for t in tallies for ms in t.latencies_ms]
    return {
        "length": length,
        "mode": mode,
        "clients": clients,
        "requests": len(latencies),
        "errors": sum(t.errors for t in tallies),
        "last_error": next((t.last_error for t in tallies if t.last_error), ""),
        "reseeds": sum(t.reseeds for t in tallies),
        "rps": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
    }


async def bench_next_char(
    url: str, corpus: Corpus, args: argparse.Namespace, state_ok: bool
) -> dict[str, Any]:
    """Every (length, mode) at each client count in turn: the levels a ratio compares run
    one after the other."""
    rows = []
    modes = [m for m in args.modes if m == "whole" or state_ok]
    for length in args.lengths:
        for mode in modes:
            for clients in args.clients:
                row = await next_char_level(
                    url,
                    corpus,
                    mode,
                    length,
                    clients,
                    args.seconds,
                    args.warmup,
                    args.max_context,
                    seed=args.seed + 1000 * clients + length,
                )
                rows.append(row)
                print(
                    f"next_char {length:4d} chars {mode:5s} {clients:3d} clients: "
                    f"{row['rps']:7.1f} req/s p50 {row['p50_ms']:6.1f} p99 {row['p99_ms']:6.1f} "
                    f"ms errors {row['errors']}",
                    flush=True,
                )
    most = max(args.clients)
    ratios = []
    for length in args.lengths:
        for mode in modes:
            by = {
                r["clients"]: r["rps"] for r in rows if (r["length"], r["mode"]) == (length, mode)
            }
            if 1 in by and most != 1:
                ratios.append(
                    {
                        "length": length,
                        "mode": mode,
                        "clients": most,
                        "ratio": ratio(by[most], by[1]),
                    }
                )
    return {
        "levels": rows,
        "ratios": ratios,
        "skipped_modes": [m for m in args.modes if m not in modes],
    }


# --- 2. keystroke cost ------------------------------------------------------------------


def same_candidates(a: dict[str, Any], b: dict[str, Any], tolerance: float) -> tuple[bool, float]:
    """Same characters in the same order, probabilities within `tolerance`; and the largest
    probability difference."""
    ca, cb = a["candidates"], b["candidates"]
    if [c["char"] for c in ca] != [c["char"] for c in cb]:
        return False, float("inf")
    gap = max(
        (abs(x["probability"] - y["probability"]) for x, y in zip(ca, cb, strict=True)), default=0.0
    )
    return gap <= tolerance, gap


async def bench_keystroke(
    url: str, corpus: Corpus, args: argparse.Namespace, state_ok: bool
) -> dict[str, Any]:
    """At each context length L, `keystrokes` places of the corpus: with a state, the state of
    its first L-1 characters is fetched first (untimed, all of them before any timing), then
    the keystroke sends the L-th character with it; without, the keystroke sends all L
    characters. Every keystroke is a different question with exactly L characters of context.

    The timed requests of one kind run back to back, in ROUNDS rounds that visit every context
    length in turn (so that a slow patch of the machine is shared by all lengths, and no
    with-state keystroke follows a long whole-text request, whose work would still be
    settling); the answers of the two kinds are compared afterwards."""
    rng = random.Random(args.seed + 2)
    gate = asyncio.Semaphore(8)  # the untimed prefixes, 8 at a time
    places = {c: [corpus.start(rng, c) for _ in range(args.keystrokes)] for c in args.contexts}
    timings: dict[tuple[str, int], list[float]] = {}
    answers: dict[tuple[str, int], list[dict[str, Any]]] = {}
    async with open_session(url, 8) as session:
        states: dict[int, list[str]] = {}
        if state_ok:
            for context, starts in places.items():

                async def prefix(start: int, context: int = context) -> str:
                    async with gate:
                        body = {"text": corpus.text[start : start + context - 1], "k": K}
                        answer = await post(session, url, "/next_char", body)
                    return str(answer["state"])

                states[context] = list(await asyncio.gather(*(prefix(s) for s in starts)))
        kinds = ["state", "whole"] if state_ok else ["whole"]
        for kind in kinds:
            for context, starts in places.items():  # warm-up, untimed
                await post(
                    session, url, "/next_char", _keystroke(corpus, kind, starts[0], context, states)
                )
            for round_ in range(ROUNDS):
                for context, starts in places.items():
                    for i in range(round_, len(starts), ROUNDS):
                        body = _keystroke(corpus, kind, starts[i], context, states, i)
                        began = time.perf_counter()
                        answer = await post(session, url, "/next_char", body)
                        timings.setdefault((kind, context), []).append(
                            (time.perf_counter() - began) * 1000
                        )
                        answers.setdefault((kind, context), [None] * len(starts))[i] = answer  # type: ignore[list-item]
    rows = []
    for context in args.contexts:
        with_state = timings.get(("state", context), [])
        whole = timings[("whole", context)]
        agree, context_ok, gap = 0, 0, 0.0
        for a_state, a_whole in zip(
            answers.get(("state", context), []), answers[("whole", context)], strict=False
        ):
            same, difference = same_candidates(a_state, a_whole, 1e-4)
            agree += same
            gap = max(gap, difference)
            context_ok += a_state.get("context_chars") == context
        row = {
            "context": context,
            "keystrokes": len(places[context]),
            "state_p50_ms": percentile(with_state, 50),
            "state_p99_ms": percentile(with_state, 99),
            "whole_p50_ms": percentile(whole, 50),
            "whole_p99_ms": percentile(whole, 99),
            "state_equals_whole": agree if state_ok else None,
            "context_chars_right": context_ok if state_ok else None,
            "max_probability_gap": gap if state_ok else None,
        }
        rows.append(row)
        print(
            f"keystroke at {context:4d} chars: with state p50 {row['state_p50_ms']:.1f} p99 "
            f"{row['state_p99_ms']:.1f} ms, whole p50 {row['whole_p50_ms']:.1f} p99 "
            f"{row['whole_p99_ms']:.1f} ms",
            flush=True,
        )
    lo, hi = rows[0], rows[-1]
    return {
        "rows": rows,
        "state_ratio": ratio(hi["state_p50_ms"], lo["state_p50_ms"]),
        "whole_ratio": ratio(hi["whole_p50_ms"], lo["whole_p50_ms"]),
        "from_context": lo["context"],
        "to_context": hi["context"],
    }


ROUNDS = 4  # the keystroke section visits every context length this many times, in turn


def _keystroke(
    corpus: Corpus,
    kind: str,
    start: int,
    context: int,
    states: dict[int, list[str]],
    index: int = 0,
) -> dict[str, Any]:
    """One keystroke's body: the L-th character with the state of the L-1 before it, or the
    whole text of L characters."""
    text = corpus.text[start : start + context]
    if kind == "state":
        return {"text": text[-1], "k": K, "state": states[context][index]}
    return {"text": text, "k": K}


# --- 3. fairness next to generations ----------------------------------------------------


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    corpus: Corpus,
    states: list[tuple[str, str]],
    rng: random.Random,
    stop_at: float,
    count: int,
    found: dict[str, list[float]],
    errors: dict[str, int],
) -> None:
    """Every 20 ms one next_char, the kinds alternating: a 40-character text without state,
    and one character with a state (a pool of 40-character prefixes, the same kind of work
    each time), until `stop_at` or `count` probes of each kind. A refused probe is counted,
    not timed: a fair server answers it, so the errors are part of the result."""
    i = 0
    while time.perf_counter() < stop_at and min(len(v) for v in found.values()) < count:
        if states and i % 2:
            char, state = states[(i // 2) % len(states)]
            kind, body = "keystroke", {"text": char, "k": K, "state": state}
        else:
            kind, body = "whole 40", {"text": corpus.piece(rng, 40), "k": K}
        i += 1
        started = time.perf_counter()
        try:
            await post(session, url, "/next_char", body)
            found[kind].append((time.perf_counter() - started) * 1000)
        except REQUEST_ERRORS:
            errors[kind] += 1
        await asyncio.sleep(PROBE_EVERY_S)


async def bench_fairness(
    url: str, corpus: Corpus, args: argparse.Namespace, state_ok: bool
) -> dict[str, Any]:
    """Twice: the generations started together (equal lengths, so they keep ending and
    arriving together: bursts of requests the event loop takes in one go), then their starts
    spread over --fair-spread-s (as independent clients would be)."""
    runs = []
    for spread in (0.0, args.fair_spread_s):
        runs.append(await _fairness(url, corpus, args, state_ok, spread))
    return {**runs[0], "rows": [row for run in runs for row in run["rows"]], "runs": runs}


async def _fairness(
    url: str, corpus: Corpus, args: argparse.Namespace, state_ok: bool, spread: float
) -> dict[str, Any]:
    rng = random.Random(args.seed + 3)
    kinds = ["whole 40", "keystroke"] if state_ok else ["whole 40"]
    async with open_session(url, args.fair_generations + 1) as session:
        states = []
        if state_ok:
            for _ in range(20):
                start = corpus.start(rng, 41)
                body = {"text": corpus.text[start : start + 40], "k": K}
                answer = await post(session, url, "/next_char", body)
                states.append((corpus.text[start + 40], str(answer["state"])))
        idle: dict[str, list[float]] = {k: [] for k in kinds}
        idle_errors = dict.fromkeys(kinds, 0)
        bound = time.perf_counter() + 30 + args.probes * len(kinds) * 0.1  # refusals end too
        await probe(session, url, corpus, states, rng, bound, args.probes, idle, idle_errors)

        loaded: dict[str, list[float]] = {k: [] for k in kinds}
        generated, errors = [0], [0]
        stop_at = time.perf_counter() + args.fair_seconds

        async def generator(index: int) -> None:
            seed = args.seed + 100_000 + index * 1000
            await asyncio.sleep(spread * index / args.fair_generations)
            while time.perf_counter() < stop_at:  # a new one as soon as the last ended
                body = {
                    "prompt": corpus.piece(rng, 40),
                    "length": args.fair_chars,
                    "temperature": TEMPERATURE,
                    "seed": seed,
                }
                seed += 1
                try:
                    answer = await post(session, url, "/generate", body)
                    generated[0] += len(answer["text"])
                except REQUEST_ERRORS:
                    errors[0] += 1
                    await asyncio.sleep(SLOW_DOWN_S)

        started = time.perf_counter()
        tasks = [asyncio.create_task(generator(i)) for i in range(args.fair_generations)]
        await asyncio.sleep(0.2 + spread)  # the generations have joined the text loop
        loaded_errors = dict.fromkeys(kinds, 0)
        await probe(session, url, corpus, states, rng, stop_at, 1 << 30, loaded, loaded_errors)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
    rows = []
    for kind in kinds:
        idle_p50 = percentile(idle[kind], 50)
        worst = max(loaded[kind], default=float("nan"))
        rows.append(
            {
                "probe": kind,
                "generations": f"spread over {spread:g} s" if spread else "together",
                "idle_probes": len(idle[kind]),
                "idle_p50_ms": idle_p50,
                "idle_p99_ms": percentile(idle[kind], 99),
                "probes": len(loaded[kind]),
                "probe_errors": idle_errors[kind] + loaded_errors[kind],
                "p50_ms": percentile(loaded[kind], 50),
                "p99_ms": percentile(loaded[kind], 99),
                "worst_ms": worst,
                "worst_vs_idle_p50": ratio(worst, idle_p50),
            }
        )
        print(
            f"fairness {kind} ({rows[-1]['generations']}): idle p50 {idle_p50:.1f} ms; "
            f"during p50 {rows[-1]['p50_ms']:.1f} "
            f"p99 {rows[-1]['p99_ms']:.1f} worst {worst:.1f} ms "
            f"({rows[-1]['worst_vs_idle_p50']:.1f}x)",
            flush=True,
        )
    return {
        "rows": rows,
        "generations": args.fair_generations,
        "chars": args.fair_chars,
        "generated_chars_per_s": generated[0] / elapsed,
        "generation_errors": errors[0],
    }


# --- 4. generation on both routes -------------------------------------------------------


def parse_event(block: bytes) -> tuple[str, Any]:
    """One Server-Sent Event block -> (event name, decoded data)."""
    event, data = "message", []
    for line in block.decode().split("\n"):
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    return event, json.loads("\n".join(data)) if data else None


async def generate_once(
    session: aiohttp.ClientSession, url: str, route: str, body: dict[str, Any]
) -> str:
    """The generated text, by the one-shot route or read from the stream's events."""
    if route == "generate":
        return str((await post(session, url, "/generate", body))["text"])
    parts: list[str] = []
    buffer = b""
    async with session.post(f"{url}/v1/generate/stream", json=body) as resp:
        if resp.status != 200:
            raise ApiError("/v1/generate/stream", resp.status, await resp.text())
        async for data in resp.content.iter_any():
            buffer = (buffer + data).replace(b"\r\n", b"\n")
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                event, payload = parse_event(block)
                if event == "error":
                    raise ApiError("/v1/generate/stream", 200, json.dumps(payload))
                if event == "message" and payload is not None:
                    parts.append(payload["text"])
    return "".join(parts)


def generation_body(corpus: Corpus, seed: int, chars: int) -> dict[str, Any]:
    """A real 40-character prompt chosen by the seed: the same seed, the same request."""
    return {
        "prompt": corpus.piece(random.Random(seed), 40),
        "length": chars,
        "temperature": TEMPERATURE,
        "seed": seed,
    }


async def generation_level(
    url: str, corpus: Corpus, route: str, clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    seed0 = args.seed + 10_000 * clients
    async with open_session(url, clients) as session:

        async def client(index: int) -> list[tuple[int, str]]:
            seeds = [seed0 + index * args.gen_requests + j for j in range(args.gen_requests)]
            body = [generation_body(corpus, s, args.gen_chars) for s in seeds]
            return [
                (s, await generate_once(session, url, route, b))
                for s, b in zip(seeds, body, strict=True)
            ]

        started = time.perf_counter()
        per = await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    texts = dict(pair for pairs in per for pair in pairs)
    return {
        "route": route,
        "clients": clients,
        "generations": len(texts),
        "chars_per_s": sum(len(t) for t in texts.values()) / elapsed,
        "all_full_length": all(len(t) == args.gen_chars for t in texts.values()),
        "texts": texts,
    }


async def httpx_level(
    url: str, corpus: Corpus, clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    """/generate from httpx.AsyncClient, a plain Python client, connections opened first."""
    seed0 = args.seed + 10_000 * clients
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=REQUEST_TIMEOUT_S) as http:
        await asyncio.gather(*(http.get("/livez") for _ in range(clients)))

        async def client(index: int) -> int:
            done = 0
            for j in range(args.gen_requests):
                body = generation_body(
                    corpus, seed0 + index * args.gen_requests + j, args.gen_chars
                )
                resp = await http.post("/generate", json=body)
                if resp.status_code != 200:
                    raise ApiError("/generate", resp.status_code, resp.text)
                done += len(resp.json()["text"])
            return done

        started = time.perf_counter()
        chars = await asyncio.gather(*(client(i) for i in range(clients)))
        elapsed = time.perf_counter() - started
    return {"route": "generate (httpx)", "clients": clients, "chars_per_s": sum(chars) / elapsed}


async def bench_generation(url: str, corpus: Corpus, args: argparse.Namespace) -> dict[str, Any]:
    """At each level the two routes one after the other, the same seeds on both."""
    rows: list[dict[str, Any]] = []
    same: dict[int, bool] = {}
    for clients in args.gen_clients:
        pair = {}
        for route in ("generate", "stream"):
            pair[route] = await generation_level(url, corpus, route, clients, args)
            print(
                f"generation {route:8s} {clients:3d} clients: "
                f"{pair[route]['chars_per_s']:8.0f} chars/s",
                flush=True,
            )
        same[clients] = pair["generate"]["texts"] == pair["stream"]["texts"]
        for route in ("generate", "stream"):
            row = pair[route]
            del row["texts"]
            rows.append(row)
    plain = []
    for clients in args.httpx_clients:
        plain.append(await httpx_level(url, corpus, clients, args))
        print(
            f"generation httpx    {clients:3d} clients: {plain[-1]['chars_per_s']:8.0f} chars/s",
            flush=True,
        )
    lone = {r["route"]: r["chars_per_s"] for r in rows if r["clients"] == 1}
    for row in rows:
        row["vs_one"] = ratio(row["chars_per_s"], lone.get(row["route"], float("nan")))
    plain_one = next((p["chars_per_s"] for p in plain if p["clients"] == 1), float("nan"))
    for row in plain:
        row["vs_one"] = ratio(row["chars_per_s"], plain_one)
    levels = []
    for clients in args.gen_clients:
        by = {r["route"]: r for r in rows if r["clients"] == clients}
        levels.append(
            {
                "clients": clients,
                "generate_chars_per_s": by["generate"]["chars_per_s"],
                "stream_chars_per_s": by["stream"]["chars_per_s"],
                "generate_vs_one": by["generate"]["vs_one"],
                "stream_vs_one": by["stream"]["vs_one"],
                "stream_vs_generate": ratio(
                    by["stream"]["chars_per_s"], by["generate"]["chars_per_s"]
                ),
                "same_texts": same[clients],
                "all_full_length": by["generate"]["all_full_length"]
                and by["stream"]["all_full_length"],
            }
        )
    return {
        "levels": levels,
        "httpx": plain,
        "chars": args.gen_chars,
        "requests_per_client": args.gen_requests,
    }


# --- 5. correctness of state chains -----------------------------------------------------


def splits(length: int, rng: random.Random) -> list[tuple[str, list[int]]]:
    """Named ways to cut a text of `length` into pieces (the first never empty: a request
    without state needs a text; later ones may be empty)."""
    cuts = sorted(rng.sample(range(1, length), min(3, length - 1)))
    random_pieces = [b - a for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
    out = [
        ("1 + rest", [1, length - 1]),
        ("halves, an empty piece between", [length // 2, 0, length - length // 2]),
        ("random cuts", random_pieces),
    ]
    tail = min(20, length - 1)
    out.append(("one char at a time (last 20)", [length - tail] + [1] * tail))
    return out


async def bench_correctness(
    url: str, corpus: Corpus, args: argparse.Namespace, state_ok: bool
) -> dict[str, Any]:
    if not state_ok:
        return {"rows": [], "skipped": True}
    rng = random.Random(args.seed + 5)
    rows = []
    k = 10
    async with open_session(url, 1) as session:
        for length in args.correctness_lengths:
            text = corpus.piece(rng, length)
            whole = await post(session, url, "/next_char", {"text": text, "k": k})
            for name, pieces in splits(length, rng):
                state, offset, answer = None, 0, None
                for size in pieces:
                    body: dict[str, Any] = {"text": text[offset : offset + size], "k": k}
                    if state is not None:
                        body["state"] = state
                    answer = await post(session, url, "/next_char", body)
                    state, offset = answer["state"], offset + size
                assert answer is not None
                same, gap = same_candidates(answer, whole, 1e-4)
                rows.append(
                    {
                        "case": f"next_char, {length} chars, {name}",
                        "pieces": len(pieces),
                        "same": same,
                        "max_probability_gap": gap,
                        "context_chars": answer.get("context_chars"),
                        "context_chars_right": answer.get("context_chars") == length,
                    }
                )
        # a generation continued from a state against the same generation from the whole prompt
        for seed in (1, 2):
            prompt = corpus.piece(rng, 200)
            body = {"prompt": prompt, "length": 100, "temperature": TEMPERATURE, "seed": seed}
            whole_gen = await post(session, url, "/generate", body)
            head = await post(session, url, "/next_char", {"text": prompt[:150], "k": 1})
            cont = await post(
                session, url, "/generate", {**body, "prompt": prompt[150:], "state": head["state"]}
            )
            rows.append(
                {
                    "case": f"generate, 200-char prompt: 150 as a state + 50, seed {seed}",
                    "pieces": 2,
                    "same": cont["text"] == whole_gen["text"],
                    "max_probability_gap": None,
                    "context_chars": cont.get("context_chars"),
                    "context_chars_right": cont.get("context_chars")
                    == whole_gen.get("context_chars"),
                }
            )
    for row in rows:
        print(f"correctness {row['case']}: {'yes' if row['same'] else 'NO'}", flush=True)
    return {"rows": rows, "skipped": False}


# --- the run and the report -------------------------------------------------------------


async def run(url: str, corpus: Corpus, args: argparse.Namespace) -> dict[str, Any]:
    info, no_state = await probe_server(url)
    if no_state:
        print(f"no state API ({no_state}): the parts that need it are skipped", flush=True)
    state_ok = no_state is None
    result: dict[str, Any] = {"state_api": state_ok, "no_state_reason": no_state, **info}
    for section in args.sections:
        try:
            if section == "next_char":
                result[section] = await bench_next_char(url, corpus, args, state_ok)
            elif section == "keystroke":
                result[section] = await bench_keystroke(url, corpus, args, state_ok)
            elif section == "fairness":
                result[section] = await bench_fairness(url, corpus, args, state_ok)
            elif section == "generation":
                result[section] = await bench_generation(url, corpus, args)
            elif section == "correctness":
                result[section] = await bench_correctness(url, corpus, args, state_ok)
        except REQUEST_ERRORS as exc:  # one section's failure must not lose the others
            print(f"{section} failed: {exc}", flush=True)
            result.setdefault("failed", {})[section] = str(exc)
    return result


def num(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def times(value: float | None, digits: int = 1) -> str:
    """A ratio as '2.5x', or n/a."""
    shown = num(value, digits)
    return shown if shown == "n/a" else shown + "x"


def render(result: dict[str, Any]) -> str:
    state_api = "yes" if result["state_api"] else f"no ({result['no_state_reason']})"
    lines = [
        "# Text workload benchmark",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date']}  ",
        f"Machine: {result['machine']}  ",
        f"Server: {result['server']}; model {result.get('model')}, {result.get('provider')}; "
        f"state API: {state_api}",
        "",
        f"Texts: real slices of {result['corpus']}. Latencies are client-side, in ms.",
    ]
    if "next_char" in result:
        nc = result["next_char"]
        lines += [
            "",
            "## next_char throughput",
            "",
            f"Closed-loop clients, {result['args']['seconds']} s per level after "
            f"{result['args']['warmup']} s of warm-up. `whole`: each request a whole text (a "
            "new slice each time); `state`: each client sent its text once, then each request "
            "is the next character of the real text with the last answer's state (a chain "
            f"restarts, untimed, at {result['args']['max_context']} characters of context: "
            "'restarts').",
            "",
            "| text chars | mode | clients | req/s | p50 ms | p99 ms | requests | errors "
            "| restarts |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in nc["levels"]:
            lines.append(
                f"| {r['length']} | {r['mode']} | {r['clients']} | {num(r['rps'])} | "
                f"{num(r['p50_ms'])} | {num(r['p99_ms'])} | {r['requests']} | {r['errors']} | "
                f"{r['reseeds'] if r['mode'] == 'state' else ''} |"
            )
        lines += [
            "",
            "| text chars | mode | req/s, most clients / one | goal |",
            "| ---: | --- | ---: | --- |",
        ]
        for q in nc["ratios"]:
            goal = ">= 6x" if (q["length"], q["clients"]) == (400, 32) else ""
            lines.append(
                f"| {q['length']} | {q['mode']} | {times(q['ratio'])} ({q['clients']} / 1) "
                f"| {goal} |"
            )
        if nc["skipped_modes"]:
            lines += ["", f"Not run (no state API): {', '.join(nc['skipped_modes'])}."]
        errors = [r["last_error"] for r in nc["levels"] if r["last_error"]]
        if errors:
            lines += ["", f"An error seen: `{errors[0][:200]}`"]
    if "keystroke" in result:
        ks = result["keystroke"]
        lines += [
            "",
            "## One keystroke",
            "",
            "One client. With a state: one new character sent with the state of the context "
            "before it (fetched untimed); whole: the whole text of that length. Each keystroke "
            "at a different place of the text; each kind's keystrokes back to back (all states "
            f"fetched first), visiting every length in turn, {ROUNDS} rounds; 'same answer': the "
            "state answer's candidates equal the whole-text answer's (order, probabilities "
            "within 1e-4).",
            "",
            "| context chars | keystrokes | with state p50 / p99 ms | whole p50 / p99 ms "
            "| same answer | context_chars right |",
            "| ---: | ---: | --- | --- | --- | --- |",
        ]
        for r in ks["rows"]:
            same = (
                "n/a"
                if r["state_equals_whole"] is None
                else f"{r['state_equals_whole']}/{r['keystrokes']}"
            )
            ctx = (
                "n/a"
                if r["context_chars_right"] is None
                else f"{r['context_chars_right']}/{r['keystrokes']}"
            )
            lines.append(
                f"| {r['context']} | {r['keystrokes']} | {num(r['state_p50_ms'])} / "
                f"{num(r['state_p99_ms'])} | {num(r['whole_p50_ms'])} / {num(r['whole_p99_ms'])} | "
                f"{same} | {ctx} |"
            )
        lines += [
            "",
            f"p50 at {ks['to_context']} over p50 at {ks['from_context']} characters: with a "
            f"state {times(ks['state_ratio'], 2)} (goal <= 1.5x), whole text "
            f"{times(ks['whole_ratio'], 2)}.",
        ]
        if not result["state_api"]:
            lines += ["", "With a state: not run (the server has no state API)."]
    if "fairness" in result:
        fa = result["fairness"]
        lines += [
            "",
            "## next_char next to generations",
            "",
            f"One client probes next_char every {PROBE_EVERY_S * 1000:.0f} ms (the kinds "
            f"alternating), idle, then while {fa['generations']} clients keep /generate "
            f"requests of {fa['chars']} characters running ({num(fa['generated_chars_per_s'], 0)} "
            f"characters/s generated meanwhile, {fa['generation_errors']} errors).",
            "",
            "Twice: the generations started together (equal lengths: they keep ending and "
            "arriving together, bursts of 40 requests the event loop takes in one go), then "
            "their starts spread out (as independent clients would be).",
            "",
            "| probe | generations | idle p50 / p99 ms (probes) | during p50 ms | p99 ms "
            "| worst ms | probes | worst / idle p50 | refused |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in fa["rows"]:
            lines.append(
                f"| {r['probe']} | {r['generations']} | {num(r['idle_p50_ms'])} / "
                f"{num(r['idle_p99_ms'])} "
                f"({r['idle_probes']}) | {num(r['p50_ms'])} | {num(r['p99_ms'])} | "
                f"{num(r['worst_ms'])} | {r['probes']} | {times(r['worst_vs_idle_p50'])} | "
                f"{r['probe_errors']} |"
            )
        lines += ["", "Goal: worst <= 5x the idle p50."]
    if "generation" in result:
        ge = result["generation"]
        lines += [
            "",
            "## Generation on both routes",
            "",
            f"N clients, each sending {ge['requests_per_client']} generations of {ge['chars']} "
            "characters back to back (own seeds, a real 40-character prompt each); /generate "
            "and /v1/generate/stream one after the other at each level with the same seeds. "
            "Goals: 32 clients >= 10x one alone on the same route; the routes within 20%.",
            "",
            "| clients | /generate chars/s | vs one | stream chars/s | vs one "
            "| stream / generate | same texts | full length |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in ge["levels"]:
            lines.append(
                f"| {r['clients']} | {num(r['generate_chars_per_s'], 0)} | "
                f"{times(r['generate_vs_one'])} | "
                f"{num(r['stream_chars_per_s'], 0)} | {times(r['stream_vs_one'])} | "
                f"{num(r['stream_vs_generate'], 2)} | {'yes' if r['same_texts'] else 'NO'} | "
                f"{'yes' if r['all_full_length'] else 'NO'} |"
            )
        if ge["httpx"]:
            lines += [
                "",
                "/generate from httpx.AsyncClient (a plain Python client):",
                "",
                "| clients | chars/s | vs one |",
                "| ---: | ---: | ---: |",
            ]
            lines += [
                f"| {p['clients']} | {num(p['chars_per_s'], 0)} | {times(p['vs_one'])} |"
                for p in ge["httpx"]
            ]
    if "correctness" in result:
        co = result["correctness"]
        lines += ["", "## State chains give the whole-text answer", ""]
        if co["skipped"]:
            lines.append("Not run: the server has no state API.")
        else:
            lines += [
                "next_char: the text sent in pieces, each with the previous answer's state, "
                "against the whole text at once (10 candidates: same characters in the same "
                "order, probabilities within 1e-4). generate: the prompt's head read into a "
                "state by next_char, the rest sent with it, against the whole prompt (same "
                "seed: same text).",
                "",
                "| case | pieces | same answer | max probability gap | context_chars | right |",
                "| --- | ---: | --- | ---: | ---: | --- |",
            ]
            for r in co["rows"]:
                gap = "" if r["max_probability_gap"] is None else f"{r['max_probability_gap']:.1e}"
                lines.append(
                    f"| {r['case']} | {r['pieces']} | {'yes' if r['same'] else 'NO'} | {gap} | "
                    f"{r['context_chars']} | {'yes' if r['context_chars_right'] else 'NO'} |"
                )
    for section, error in result.get("failed", {}).items():
        lines += ["", f"## {section}: failed", "", f"`{error[:300]}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])

    def option(name: str, kind: type, help_: str, many: bool = False) -> None:
        """An option whose default comes from FULL, or QUICK under --quick; the help says both."""
        key = name.lstrip("-").replace("-", "_")
        parser.add_argument(
            name,
            type=kind,
            nargs="+" if many else None,
            help=f"{help_} (default {FULL[key]}; --quick: {QUICK[key]})",
        )

    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=SECTIONS, help="(default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    parser.add_argument("--url", help="a running server on 127.0.0.1 (default: start one)")
    parser.add_argument(
        "--source",
        type=Path,
        help="serve this checkout of the project instead of this one, e.g. a git worktree of "
        "an older revision (its own models/): before/after figures with one command",
    )
    option("--seconds", float, "next_char: measured seconds per level")
    option("--warmup", float, "next_char: warm-up seconds per level")
    option("--clients", int, "next_char: concurrent clients", many=True)
    option("--lengths", int, "next_char: text lengths", many=True)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["whole", "state"],
        default=["whole", "state"],
        help="next_char modes (default both)",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=2000,
        help="state mode: a chain restarts at this much context (default %(default)s)",
    )
    option("--keystrokes", int, "keystroke: keystrokes per context length and kind")
    option("--contexts", int, "keystroke: context lengths", many=True)
    option("--probes", int, "fairness: idle probes of each kind")
    option("--fair-generations", int, "fairness: concurrent /generate requests")
    option("--fair-chars", int, "fairness: characters per generation")
    option("--fair-seconds", float, "fairness: seconds the generations are kept running")
    option("--fair-spread-s", float, "fairness, second run: the generations' starts spread over")
    option("--gen-clients", int, "generation: concurrent clients", many=True)
    option("--gen-chars", int, "generation: characters per generation")
    parser.add_argument(
        "--gen-requests",
        type=int,
        default=2,
        help="generation: generations per client, back to back (default %(default)s)",
    )
    option("--httpx-clients", int, "generation: httpx client levels", many=True)
    parser.add_argument(
        "--correctness-lengths",
        type=int,
        nargs="+",
        default=[40, 400, 2000],
        help="correctness: text lengths (default %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="(default %(default)s)")
    parser.add_argument(
        "--corpus",
        type=Path,
        default=default_corpus(),
        help="Tiny Shakespeare (default %(default)s)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "loadtest" / "results", help="(default %(default)s)"
    )
    parser.add_argument(
        "--name", default="bench_text", help="results file stem (default %(default)s)"
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick and args.correctness_lengths == [40, 400, 2000]:
        args.correctness_lengths = [40]
    if args.url and urlparse(args.url).hostname != "127.0.0.1":
        parser.error("only a server on 127.0.0.1 is benchmarked")

    corpus = Corpus(args.corpus.read_text())
    scratch = Path(tempfile.mkdtemp(prefix="rnnserve-text-"))
    source = {"cwd": args.source, "model_dir": str(args.source / "models")} if args.source else {}
    server = None if args.url else start_server(scratch, **source)
    try:
        url = args.url or server.url  # type: ignore[union-attr]
        result = asyncio.run(run(url, corpus, args))
    finally:
        if server is not None:
            server.stop()
    command = " ".join(
        ["python -m loadtest.bench_text", *(argv if argv is not None else sys.argv[1:])]
    )
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, client and server on the same machine",
        "server": f"given: {args.url}" if args.url else "started by the benchmark (defaults)",
        "corpus": f"{args.corpus.name}, {len(corpus.text):,} characters",
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    report = render(result)
    (args.out / f"{args.name}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
