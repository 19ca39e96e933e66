"""Bounded log lines (service/log_bounds.py): every record's arguments are cut and escaped so a
client's value cannot make a huge or multi-line log line, and refusal lines are limited per
second while every refusal is still counted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from service import log_bounds
from service.log_bounds import (
    RefusalLog,
    configure_refusal_log,
    install_bounded_log_records,
    install_bounded_logs,
    refusal_log,
)

LIMIT = 512


class ListHandler(logging.Handler):
    """Keeps each record and its line as a real handler's formatter writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.lines.append(self.format(record))


@pytest.fixture(autouse=True)
def original_factory() -> Iterator[Callable[..., logging.LogRecord]]:
    """Every test leaves the process's record factory as it found it."""
    original = logging.getLogRecordFactory()
    yield original
    logging.setLogRecordFactory(original)


@pytest.fixture()
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[logging.Logger, ListHandler]]:
    logger = logging.getLogger(f"test_log_bounds.{request.node.name}")
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


@pytest.fixture()
def bounded(
    captured: tuple[logging.Logger, ListHandler],
) -> tuple[logging.Logger, ListHandler]:
    install_bounded_log_records(LIMIT)
    return captured


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """A counter's value in this process (prometheus_client's multiprocess mode included)."""
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_a_huge_argument_makes_a_short_line(bounded: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = bounded
    logger.info("%s", "x" * 5_000_000)
    (line,) = handler.lines
    assert len(line) <= LIMIT + 40
    assert line == "x" * LIMIT + f"…[+{5_000_000 - LIMIT} chars]"


def test_an_access_line_keeps_its_other_fields(bounded: tuple[logging.Logger, ListHandler]) -> None:
    """As BentoML's access log writes one: the long field is cut, the others are whole."""
    logger, handler = bounded
    request = "scheme=http,method=POST,path=/v1/digits,type=" + "t" * 5_000_000
    logger.info("%s (%s) (%s) %.3fms", "127.0.0.1:5000", request, "status=415", 1.25)
    (line,) = handler.lines
    assert line.startswith("127.0.0.1:5000 (scheme=http,method=POST,path=/v1/digits,type=ttt")
    assert line.endswith(" chars]) (status=415) 1.250ms")
    assert len(line) <= LIMIT + 80


def test_bytes_arguments_are_decoded_and_cut(bounded: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = bounded
    logger.info("type=%s", b"y" * 5_000_000)
    logger.info("type=%s", b"text/plain\xff\n")
    long_line, short_line = handler.lines
    assert len(long_line) <= len("type=") + LIMIT + 40
    assert long_line == "type=" + "y" * LIMIT + f"…[+{5_000_000 - LIMIT} bytes]"
    assert short_line == "type=text/plain\ufffd\\n"


def test_control_characters_are_escaped(bounded: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = bounded
    logger.warning("path=%s", "/a\nFAKE LINE\rb\x1b[31mred\x00\x7f\x85\u2028\tz")
    (line,) = handler.lines
    assert line == "path=/a\\nFAKE LINE\\rb\\x1b[31mred\\x00\\x7f\\x85\\u2028\\tz"
    assert len(line.splitlines()) == 1
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in line)


def test_the_message_is_escaped_but_for_one_trailing_newline(
    bounded: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = bounded
    logger.info("one\ntwo\x1b]0;title\x07\n")
    logger.info("%s\n\n", "arg")
    assert handler.lines == ["one\\ntwo\\x1b]0;title\\x07\n", "arg\\n\n"]


def test_a_long_message_is_formatted_then_cut(bounded: tuple[logging.Logger, ListHandler]) -> None:
    """A format cut in the middle would lose placeholders (a logging error instead of a line),
    so a too-long message is formatted with its bounded arguments first, then cut."""
    logger, handler = bounded
    logger.info("%s " * (4 * LIMIT) + "%d", *(["a"] * (4 * LIMIT)), 7)
    logger.info("z" * 5_000_000)
    formatted, plain = handler.lines
    assert formatted.startswith("a a a ")
    assert len(formatted) <= 4 * LIMIT + 40
    assert formatted.endswith(f"…[+{2 * 4 * LIMIT + 1 - 4 * LIMIT} chars]")
    assert plain == "z" * (4 * LIMIT) + f"…[+{5_000_000 - 4 * LIMIT} chars]"


def test_mapping_style_records_are_bounded(bounded: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = bounded
    logger.info("%(a)s %(n)d", {"a": "x" * 10_000 + "\n", "n": 3})
    (line,) = handler.lines
    assert line == "x" * LIMIT + f"…[+{10_001 - LIMIT} chars] 3"
    assert isinstance(handler.records[0].args, dict)


def test_short_records_are_unchanged(bounded: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = bounded
    thing = object()
    args = ("GET", "/v1/digits", 200, 1.5, thing, "é ü ∑")
    logger.info("%s %s %d %.1f %r %s", *args)
    logger.info("no arguments")
    logger.info("%(x)s", {"x": "short"})
    with_args, without, mapping = handler.records
    assert with_args.args == args
    assert isinstance(with_args.args, tuple) and with_args.args[4] is thing
    assert without.msg == "no arguments" and without.args == ()
    assert mapping.args == {"x": "short"}
    assert handler.lines[0] == f"GET /v1/digits 200 1.5 {thing!r} é ü ∑"


@pytest.mark.usefixtures("bounded")
def test_other_objects_are_not_stringified() -> None:
    """str() of an arbitrary object is not called to bound it: that would cost every record."""
    calls: list[int] = []

    class Costly:
        def __str__(self) -> str:
            calls.append(1)
            return "costly"

    costly = Costly()
    record = logging.getLogRecordFactory()("n", logging.INFO, __file__, 1, "%s", (costly,), None)
    assert record.args == (costly,) and not calls


def test_tracebacks_are_left_whole(bounded: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = bounded
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed: %s", "x\ny")
    (line,) = handler.lines
    assert line.startswith("failed: x\\ny\nTraceback (most recent call last):\n")
    assert "RuntimeError: boom" in line


def test_installing_twice_does_not_nest(captured: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = captured
    calls: list[int] = []
    base = logging.getLogRecordFactory()

    def counting(*args: Any, **kwargs: Any) -> logging.LogRecord:
        calls.append(1)
        return base(*args, **kwargs)

    logging.setLogRecordFactory(counting)
    install_bounded_log_records(100)
    installed = logging.getLogRecordFactory()
    install_bounded_log_records(50)  # a second call changes the limit, nothing else
    assert logging.getLogRecordFactory() is installed
    logger.info("%s", "q" * 1000)
    assert len(calls) == 1
    assert handler.lines == ["q" * 50 + "…[+950 chars]"]


def test_a_factory_set_above_keeps_one_bounding(
    captured: tuple[logging.Logger, ListHandler],
) -> None:
    """Another wrapper set after ours, then a second installation: the record is still bounded
    once (bounding twice would cut the first marker)."""
    logger, handler = captured
    install_bounded_log_records(100)
    ours = logging.getLogRecordFactory()

    def other(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return ours(*args, **kwargs)

    logging.setLogRecordFactory(other)
    install_bounded_log_records(20)
    logger.info("%s", "q" * 1000)
    assert handler.lines == ["q" * 20 + "…[+980 chars]"]


def test_installing_again_after_a_restore(
    captured: tuple[logging.Logger, ListHandler],
    original_factory: Callable[..., logging.LogRecord],
) -> None:
    logger, handler = captured
    install_bounded_log_records(10)
    logging.setLogRecordFactory(original_factory)
    logger.info("%s", "w" * 100)
    install_bounded_log_records(10)
    logger.info("%s", "w" * 100)
    assert handler.lines == ["w" * 100, "w" * 10 + "…[+90 chars]"]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        install_bounded_log_records(0)
    with pytest.raises(ValueError):
        RefusalLog(per_second=-1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_refusal_lines_are_limited_and_counted(
    captured: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = captured
    clock = FakeClock()
    limiter = RefusalLog(per_second=5, clock=clock)
    refusals = sample("rnnserve_refusals_total", {"status": "400"})
    suppressed = sample("rnnserve_refusal_log_suppressed_total")

    for number in range(100):
        limiter.refused(logger, 400, "refused %s: %s", number, "bad input")
        clock.now += 0.001  # all within one second
    assert handler.lines == [f"refused {number}: bad input" for number in range(5)]
    assert all(record.levelno == logging.WARNING for record in handler.records)
    assert sample("rnnserve_refusals_total", {"status": "400"}) - refusals == 100
    assert sample("rnnserve_refusal_log_suppressed_total") - suppressed == 95

    clock.now += 1.0  # the next window
    limiter.refused(logger, 400, "refused %s: %s", 100, "bad input")
    limiter.refused(logger, 400, "refused %s: %s", 101, "bad input")
    assert handler.lines[5:] == [
        "refused 100: bad input (95 similar lines suppressed since the last one)",
        "refused 101: bad input",
    ]
    assert sample("rnnserve_refusals_total", {"status": "400"}) - refusals == 102


def test_the_suppressed_note_with_a_format_without_arguments(
    captured: tuple[logging.Logger, ListHandler],
) -> None:
    logger, handler = captured
    clock = FakeClock()
    limiter = RefusalLog(per_second=1, clock=clock)
    limiter.refused(logger, 503, "queue 100% full")
    limiter.refused(logger, 503, "queue 100% full")
    clock.now += 1.5
    limiter.refused(logger, 503, "queue 100% full")
    assert handler.lines == [
        "queue 100% full",
        "queue 100% full (1 similar lines suppressed since the last one)",
    ]


def test_a_zero_rate_writes_nothing(captured: tuple[logging.Logger, ListHandler]) -> None:
    logger, handler = captured
    limiter = RefusalLog(per_second=0, clock=FakeClock())
    limiter.refused(logger, 431, "too large")
    assert handler.lines == []


def test_the_shared_refusal_log(original_factory: Callable[..., logging.LogRecord]) -> None:
    shared = refusal_log()
    assert refusal_log() is shared
    before = shared.per_second
    try:
        configure_refusal_log(3)
        assert shared.per_second == 3
        install_bounded_logs(64, 7)
        assert shared.per_second == 7
        assert isinstance(logging.getLogRecordFactory(), log_bounds._BoundedFactory)
        record = logging.getLogRecordFactory()("n", logging.INFO, "", 1, "%s", ("v" * 100,), None)
        assert record.getMessage() == "v" * 64 + "…[+36 chars]"
    finally:
        configure_refusal_log(before)
