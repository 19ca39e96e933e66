"""The README and docs/ quote only figures that have a source (DESIGN.md, "Figures").

Every measured figure (a number with a unit: %, ms, s, min, MB, req/s, chars/s, x, nats, ...)
in README.md, CHANGELOG.md and docs/*.md must appear in a results file under loadtest/results/
or in a model card (models/*/<N>/card.json), or be one of the few settings and limits listed in
ALLOWED below. Results tables usually name their unit in the column header (`p99 ms`,
`req/s`), so a table cell is read with its column's unit; a figure written with its own unit
is read as written. Also: relative links resolve, every docs page is linked from the README,
and the README stays short.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
RESULTS = sorted((ROOT / "loadtest" / "results").glob("*.md"))
CARDS = sorted((ROOT / "models").glob("*/[0-9]*/card.json"))
README_MAX_LINES = 200

# How a unit may be written -> the unit it is compared as.
UNITS = {
    "requests/s": "req/s",
    "req/s": "req/s",
    "chars/s": "chars/s",
    "samples/s": "samples/s",
    "nats/char": "nats",
    "nats": "nats",
    "bits/char": "bits",
    "minutes": "min",
    "min": "min",
    "seconds": "s",
    "s": "s",
    "ms": "ms",
    "KB": "KB",
    "MB": "MB",
    "GB": "GB",
    "KiB": "KiB",
    "MiB": "MiB",
    "GiB": "GiB",
    "%": "%",
}
_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
# A number, or a range/pair of them ("1.7-2.1", "168.1 -> 171.5", "3.4 / 5.4"), then a unit
# after at most one space, or an "x" written against it (2.82x; 28x28 is not a ratio).
FIGURE = re.compile(
    rf"(?<![\w.,/])(?P<nums>(?:{_NUM})(?:\s*(?:->|\u2192|\u2013|-|/|to)\s*(?:{_NUM}))*)"
    rf"(?:\s?(?P<unit>{_UNIT})(?![\w])|(?P<x>x)(?![\w]))"
)
NUMBER = re.compile(rf"(?<![\w.,])(?:{_NUM})(?![\w])")
# The unit a table column is in, from its header ("p99 ms (worst round)", "size MB").
HEADER_UNIT = re.compile(rf"(?<![\w/])({_UNIT})(?![\w])")
SEPARATOR_ROW = re.compile(r"^\|(?:\s*:?-{3,}:?\s*\|)+\s*$")
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")

# Settings, limits and defaults the docs quote: configuration, not measurements. Nothing
# measured belongs here; a measurement goes into a results file and is quoted from there.
ALLOWED = {
    "4 MiB": "RNNSERVE_MAX_REQUEST_BYTES default (service/settings.py)",
    "64 MiB": "RNNSERVE_MAX_BUFFERED_BYTES default (service/settings.py)",
    "64 KiB": "JSON bodies above this are parsed off the event loop (service/engine/pipeline.py)",
    "1,000 ms": "RNNSERVE_MAX_QUEUE_WAIT_MS default (service/settings.py)",
    "30 s": "RNNSERVE_TIMEOUT_S default (service/settings.py)",
    "0.1 s": "how often a worker looks for a new model-control generation, WATCH_S "
    "(service/engine/coordination.py)",
    "60 s": "the least idle time of a gRPC connection (service/http/grpc_v2/server.py)",
    "20 ms": "a stream gets an event at most every STREAM_EVERY_S (service/engine/text_loop.py)",
    "5 ms": "the text loop looks for departed clients every CHECK_EVERY_S "
    "(service/engine/text_loop.py)",
    "2 s": "the hostile-input run's bound per answer, MAX_SECONDS (loadtest/hostile.py)",
    "65%": "the HorizontalPodAutoscaler's CPU target (deploy/k8s/base/hpa.yaml)",
    "550 MB": "the CPU image's ceiling, MAX_IMAGE_MB (tests/test_container.py)",
    "15%": "the share of the frame over which marks are a texture, MAX_INK_COVER "
    "(service/imaging/photo.py)",
    "32 KiB": "RNNSERVE_MAX_HEADER_BYTES default (service/settings.py)",
    "8 KiB": "RNNSERVE_MAX_URL_BYTES default (service/settings.py)",
    "16 KiB": "RNNSERVE_MIN_BODY_RATE default, per second (service/settings.py)",
}


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    text: str  # as written, for the message
    where: str  # file:line

    @property
    def key(self) -> tuple[float, str]:
        return (self.value, self.unit)


def _value(number: str) -> float:
    return float(number.replace(",", ""))


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def inline_figures(markdown: str, name: str = "") -> Iterator[Figure]:
    """Numbers written with their unit: '3.52 ms', '1.7-2.1 s', '2.82x', '99.58%'."""
    for match in FIGURE.finditer(markdown):
        if match["unit"] == "s" and not markdown[match.end("nums")].isspace():
            continue  # "503s" is a plural, not seconds
        unit = "x" if match["x"] else UNITS[match["unit"]]
        where = f"{name}:{_line(markdown, match.start())}"
        for number in re.findall(_NUM, match["nums"]):
            yield Figure(_value(number), unit, match.group(0).strip(), where)


def table_figures(markdown: str, name: str = "") -> Iterator[Figure]:
    """Numbers in a table cell under a header that names a unit ('p99 ms', 'size MB'), when
    the cell does not write a unit of its own."""
    lines = markdown.splitlines()
    for i in range(1, len(lines)):
        if not (SEPARATOR_ROW.match(lines[i]) and lines[i - 1].startswith("|")):
            continue
        units = []
        for header in _cells(lines[i - 1]):
            found = HEADER_UNIT.findall(CODE_SPAN.sub("", header))
            units.append(UNITS[found[-1]] if found else None)
        for j in range(i + 1, len(lines)):
            if not lines[j].startswith("|"):
                break
            for unit, cell in zip(units, _cells(lines[j]), strict=False):
                plain = CODE_SPAN.sub("", cell)
                if unit is None or FIGURE.search(plain):
                    continue
                for number in NUMBER.findall(plain):
                    yield Figure(_value(number), unit, f"{cell} ({unit})", f"{name}:{j + 1}")


def figures(markdown: str, name: str = "") -> list[Figure]:
    return [*inline_figures(markdown, name), *table_figures(markdown, name)]


def card_figures(card: Mapping[str, Any]) -> set[tuple[float, str]]:
    """A card's measurements, in the forms the docs print them: accuracy 0.9958 -> 99.58%,
    1.5706... nats -> 1.571 nats, wall_time_s 937.1 -> 937.1 s or 15.6 min, the exporters'
    latencies in ms."""
    out: set[tuple[float, str]] = set()

    def add(value: float, unit: str, digits: Iterable[int]) -> None:
        out.add((value, unit))
        out.update((round(value, d), unit) for d in digits)

    for key, value in card.get("metrics", {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if "accuracy" in key:
            add(value * 100, "%", (1, 2))
        elif "nats" in key:
            add(value, "nats", (2, 3))
        elif "bits" in key:
            add(value, "bits", (2, 3))
    stage = card.get("training", {})
    while isinstance(stage, Mapping):  # a fine-tuned model's earlier stages, last to first
        wall = stage.get("wall_time_s")
        if isinstance(wall, int | float):
            add(wall, "s", (0, 1))
            add(wall / 60, "min", (0, 1))
        accuracy = stage.get("test_accuracy")
        if isinstance(accuracy, int | float):
            add(accuracy * 100, "%", (1, 2))
        stage = stage.get("started_from")
    calibration = card.get("calibration") or {}
    for key in ("confident_share", "accuracy_when_confident"):
        if isinstance(calibration.get(key), int | float):
            add(calibration[key] * 100, "%", (1, 2))
    for candidate in card.get("export", {}).get("onnx", {}).get("candidates", []):
        for latency in (candidate.get("latency_ms") or {}).values():
            add(latency, "ms", ())
    return out


def sources(results: Iterable[str], cards: Iterable[Mapping[str, Any]]) -> set[tuple[float, str]]:
    found = {f.key for text in results for f in figures(text)}
    for card in cards:
        found |= card_figures(card)
    return found


def unsourced(
    pages: Mapping[str, str], known: set[tuple[float, str]], allowed: Iterable[str]
) -> list[Figure]:
    """The figures of `pages` found neither in `known` nor among `allowed`."""
    ok = known | {f.key for text in allowed for f in figures(text)}
    return [f for name, text in pages.items() for f in figures(text, name) if f.key not in ok]


def _read(paths: Iterable[Path]) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in paths if p.exists()}


def _repository_sources() -> set[tuple[float, str]]:
    cards = [json.loads(p.read_text(encoding="utf-8")) for p in CARDS]
    return sources(_read(RESULTS).values(), cards)


# ---------------------------------------------------------------------- the checker itself


def test_the_checker_flags_an_unsourced_figure_and_passes_a_sourced_one() -> None:
    results = (
        "| scenario | req/s | p99 ms | worker RSS (MB) |\n| --- | ---: | ---: | ---: |\n"
        "| lean | 1,870 | 25.5 | 172 |\n\nbatching on vs off: 2.74x\n"
    )
    card = {"metrics": {"test_accuracy": 0.9958}, "training": {"wall_time_s": 937.1}}
    page = (
        "The lean route serves 1,870 requests/s (p99 25.5 ms), on vs off 2.74x, 99.58% test,\n"
        "trained in 15.6 min, wait at most 1,000 ms; and it does 9,999 req/s, 12 ms p50.\n"
        "| target | p50 / p99 ms | size MB |\n| --- | --- | ---: |\n| lean | 3.0 / 25.5 | 172 |\n"
    )
    known = sources([results], [card])
    missing = unsourced({"page.md": page}, known, ["1,000 ms"])
    assert [(f.value, f.unit, f.where) for f in missing] == [
        (9999.0, "req/s", "page.md:2"),
        (12.0, "ms", "page.md:2"),
        (3.0, "ms", "page.md:5"),  # the table cell, read with its column's unit
    ]


def test_the_extractor_reads_ranges_ratios_and_units_but_not_names() -> None:
    text = "1.7-2.1 s, 168.1 -> 171.5 MB, +2.0%, 2.66-2.94x, 3,035 chars/s, 600 s"
    assert [f.key for f in figures(text)] == [
        (1.7, "s"),
        (2.1, "s"),
        (168.1, "MB"),
        (171.5, "MB"),
        (2.0, "%"),
        (2.66, "x"),
        (2.94, "x"),
        (3035.0, "chars/s"),
        (600.0, "s"),
    ]
    not_figures = "28x28 pixels, 2x128, x86_64, torch==2.14.1, k8s, 5 steps, 1 x 16,384, 503s"
    assert figures(not_figures) == []


def test_card_values_are_formatted_as_the_docs_print_them() -> None:
    card = {
        "metrics": {"test_accuracy": 0.991, "val_loss_nats_per_char": 1.5706853866577148},
        "training": {"wall_time_s": 2633.6},
        "export": {"onnx": {"candidates": [{"latency_ms": {"batch 1": 0.061}}]}},
    }
    found = card_figures(card)
    for figure in ("99.10%", "1.571 nats/char", "43.9 min", "2633.6 s", "0.061 ms"):
        assert {f.key for f in figures(figure)} <= found, figure


# ---------------------------------------------------------------------- the repository


def test_every_figure_in_the_docs_has_a_source() -> None:
    pages = _read(PAGES)
    assert "README.md" in pages and any(name.startswith("docs/") for name in pages)
    missing = unsourced(pages, _repository_sources(), list(ALLOWED))
    listed = "\n".join(f"  {f.where}: {f.value:g} {f.unit} (in '{f.text}')" for f in missing)
    assert not missing, (
        "figures found in no loadtest/results/*.md and no models/*/card.json (quote the "
        f"results file, or run the command that writes one):\n{listed}"
    )


def test_the_allowlist_holds_only_figures_the_docs_use() -> None:
    used = {f.key for text in _read(PAGES).values() for f in figures(text)}
    for figure in list(ALLOWED):
        assert {f.key for f in figures(figure)} <= used, f"{figure!r} is no longer quoted"


def test_links_between_the_pages_resolve() -> None:
    broken = []
    for name, text in _read(PAGES).items():
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:|#", target):  # http:, mailto:, an anchor
                continue
            if not (ROOT / name).parent.joinpath(target.split("#")[0]).exists():
                broken.append(f"{name}: {target}")
    assert not broken, "links to nothing: " + ", ".join(broken)


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES, "move detail into docs/"
    assert "## Documentation" in text
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in text, f"README's Documentation list lacks {page.name}"
