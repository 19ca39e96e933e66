"""Bounded log lines: no request can make the service write a huge, multi-line or flooding log.

Log lines quote what clients send (a path, a Content-Type, a reason), and BentoML's access log
(`bentoml.access`) and uvicorn's quote them whole: a header of megabytes became a log line of
megabytes, and a value with a newline or a terminal escape could forge lines or repaint an
operator's terminal. Refusals come in floods too, one line each.

Two defences, installed once at start-up (`install_bounded_logs`):

- a log-record factory that bounds every record the process creates, whoever logs it: each
  string (or bytes) argument is cut to a limit with a marker saying how much was left out, and
  control characters are escaped, so one record is one line of bounded length. Bounding
  arguments when the record is made, rather than in a formatter, covers every handler and
  formatter (BentoML's, uvicorn's, ours) without knowing them;
- `RefusalLog`: refusal lines are limited per second; the rest are counted (every refusal is in
  `rnnserve_refusals`) and the next line written says how many were left out.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from service.metrics import REFUSAL_LOG_SUPPRESSED, REFUSALS

__all__ = [
    "RefusalLog",
    "bound_text",
    "configure_refusal_log",
    "install_bounded_log_records",
    "install_bounded_logs",
    "refusal_log",
]

# What is escaped: C0 controls, DEL, C1 controls (NEL among them), the Unicode line and
# paragraph separators (str.splitlines and some log viewers break lines there) and lone
# surrogates (a UTF-8 stream cannot encode them: the handler would fail on the whole record).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_UNDECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of bad bytes
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _escape(text: str) -> str:
    return _CONTROL.sub(_escape_one, text)


def _cut(text: str, limit: int) -> tuple[str, int]:
    """The escaped form of `text`'s longest prefix whose escaped form fits in `limit`
    characters, and how many of `text`'s characters that prefix holds: escapes grow the text,
    and none is ever cut in half."""
    head = text[:limit]
    escaped = _escape(head)
    if len(escaped) <= limit:
        return escaped, len(head)
    # The escaped length of head[:k] is k plus what the escapes before k add: walk the escapes
    # until the next character (plain or escaped) no longer fits.
    grown = 0
    kept = -1
    for match in _CONTROL.finditer(head):
        at = match.start()
        if at + grown > limit:  # plain characters before this escape already fill the limit
            kept = limit - grown
            break
        extra = len(_escape_one(match)) - 1
        if at + 1 + grown + extra > limit:
            kept = at
            break
        grown += extra
    if kept < 0:
        kept = limit - grown
    return _escape(head[:kept]), kept


def bound_text(text: str, limit: int) -> str:
    """`text` as one log line's field: control characters escaped and at most `limit`
    characters, plus a marker of what was left out when it was longer. Text that is short and
    printable comes back as it is, after one cheap check."""
    size = len(text)
    if size <= limit and text.isprintable():
        return text
    escaped, kept = _cut(text, limit)
    if kept == size:
        return escaped
    return f"{escaped}…[+{size - kept} chars]"


def _bound_bytes(data: bytes | bytearray, limit: int) -> str:
    """Bytes (a raw header value) as text, bounded like a string. Only the head that can show
    is decoded, so megabytes cost no more than the limit; the marker then counts bytes, exactly,
    since the characters of the rest are never decoded."""
    window = 4 * (limit + 1)  # a UTF-8 character is at most 4 bytes: `limit + 1` whole ones
    if len(data) <= window:
        return bound_text(bytes(data).decode("utf-8", "replace"), limit)
    # surrogateescape keeps one character per undecodable byte, so the bytes kept are known
    head = bytes(data[:window]).decode("utf-8", "surrogateescape")
    # measured as shown: each undecodable byte as one replacement character
    _, kept = _cut(_UNDECODED.sub("\ufffd", head), limit)
    used = head[:kept].encode("utf-8", "surrogateescape")
    # shown as `replace` decodes them; it yields no more characters than surrogateescape did
    escaped = _escape(used.decode("utf-8", "replace"))
    return f"{escaped}…[+{len(data) - len(used)} bytes]"


def _bound_value(value: object, limit: int) -> object:
    """One argument bounded: str and bytes; anything else is left alone. Calling str() on an
    arbitrary object here would cost every record the object's formatting, even records no
    handler writes."""
    if type(value) is str:
        if len(value) <= limit and value.isprintable():
            return value
        return bound_text(value, limit)
    if isinstance(value, str):
        return bound_text(value, limit)
    if isinstance(value, bytes | bytearray):
        return _bound_bytes(value, limit)
    return value


def _needs_bounding(value: object, limit: int) -> bool:
    if type(value) is str:
        return len(value) > limit or not value.isprintable()
    return isinstance(value, str | bytes | bytearray)


def _bound_args(args: Any, limit: int) -> Any:
    """A record's arguments bounded, as a tuple or (for "%(name)s" messages) a mapping. New
    containers only when a value needs bounding: most records need one cheap check per value."""
    if isinstance(args, tuple):
        for value in args:  # a plain loop: the common case, nothing to bound, stays cheap
            if type(value) is str:
                if len(value) <= limit and value.isprintable():
                    continue
            elif not isinstance(value, str | bytes | bytearray):
                continue
            return tuple(_bound_value(value, limit) for value in args)
        return args
    if isinstance(args, Mapping) and any(_needs_bounding(v, limit) for v in args.values()):
        return {key: _bound_value(value, limit) for key, value in args.items()}
    return args


def _bound_message(message: str, limit: int) -> str:
    """A message bounded and escaped, except one trailing newline: some code ends messages with
    one, and escaping it would only add a visible "\\n" to an ordinary line."""
    if message.endswith("\n"):
        return bound_text(message[:-1], limit) + "\n"
    return bound_text(message, limit)


class _BoundedFactory:
    """The record factory that bounds records: it wraps the factory found at installation."""

    def __init__(self, inner: Callable[..., logging.LogRecord], max_field_chars: int) -> None:
        self.inner = inner
        self.limit = max_field_chars
        self.message_limit = 4 * max_field_chars

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.inner(*args, **kwargs)
        if self is not _active:
            # a wrapper left deeper in a chain by an earlier installation: the active one (above
            # it) bounds the record, and bounding twice would cut the first one's markers
            return record
        limit = self.limit
        if record.args:
            record.args = _bound_args(record.args, limit)
        message = record.msg
        if type(message) is str and (
            len(message) > self.message_limit or not message.isprintable()
        ):
            self._bound_message(record, message)
        return record

    def _bound_message(self, record: logging.LogRecord, message: str) -> None:
        if len(message) > self.message_limit and record.args:
            # a format cut short could lose its placeholders or end in half of one, and logging
            # would print an error instead of the line: format first (the arguments are
            # bounded already), then cut the result
            try:
                text = message % record.args
            except Exception:
                # a broken format: cut it anyway, and let logging report the error as usual,
                # with what is now a bounded message
                record.msg = _bound_message(message, self.message_limit)
                return
            record.msg = _bound_message(text, self.message_limit)
            record.args = ()
            return
        record.msg = _bound_message(message, self.message_limit)


_active: _BoundedFactory | None = None
_install_lock = threading.Lock()


def install_bounded_log_records(max_field_chars: int) -> None:
    """Make every log record this process creates from now on bounded: string and bytes
    arguments cut to `max_field_chars` characters with a marker, control characters escaped, and
    messages (formats) longer than four times that cut, so that a record is one line of bounded
    length whatever a client sent. Tracebacks (exc_info) are left whole: they are ours, not a
    client's, and they are meant to span lines.

    Installing again changes the limit without wrapping twice. A factory someone sets later
    wraps this one and keeps it working; one that replaces it (a test restoring the original)
    ends it, and the next call installs it again around that one. Records made by
    `logging.makeLogRecord` get their fields after the factory has run, so they are not bounded.
    """
    global _active
    if max_field_chars < 1:
        raise ValueError(f"max_field_chars must be at least 1, got {max_field_chars}")
    with _install_lock:
        current = logging.getLogRecordFactory()
        if current is _active and _active is not None:
            _active.limit = max_field_chars
            _active.message_limit = 4 * max_field_chars
            return
        factory = _BoundedFactory(current, max_field_chars)
        _active = factory
        logging.setLogRecordFactory(factory)


class RefusalLog:
    """Refusal log lines, at most `per_second` written per second; the rest are counted.

    A flood of bad requests must not become a flood of log lines (disk, log shipping, and the
    one line that matters lost among the others), yet every refusal is still counted in
    `rnnserve_refusals`, and the first line written after a pause in writing says how many lines
    were left out, so the log never hides that a flood happened. Windows are fixed: one starts
    at the first refusal after the last one ended.
    """

    _SUPPRESSED_NOTE = " (%d similar lines suppressed since the last one)"

    def __init__(self, per_second: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_second = _check_rate(per_second)
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = float("-inf")
        self._written = 0  # lines written in the current window
        self._suppressed = 0  # lines left out since the last one written

    @property
    def per_second(self) -> int:
        return self._per_second

    @per_second.setter
    def per_second(self, value: int) -> None:
        self._per_second = _check_rate(value)

    def refused(self, logger: logging.Logger, status: int, fmt: str, *args: object) -> None:
        """Count one refusal answered with `status`, and log `logger.warning(fmt, *args)` unless
        this second's lines are spent. `fmt` is a constant format; the request's values go in
        `args`, where the record factory bounds them."""
        REFUSALS.labels(status=str(status)).inc()
        now = self._clock()
        with self._lock:
            if not self._window_start <= now < self._window_start + 1.0:
                self._window_start = now
                self._written = 0
            if self._written >= self._per_second:
                self._suppressed += 1
                write = False
            else:
                self._written += 1
                suppressed, self._suppressed = self._suppressed, 0
                write = True
        if not write:
            REFUSAL_LOG_SUPPRESSED.inc()
            return
        if not suppressed:
            logger.warning(fmt, *args)
        elif args:
            logger.warning(fmt + self._SUPPRESSED_NOTE, *args, suppressed)
        else:
            # without arguments logging writes `fmt` as it is: keep it so now that there is one
            logger.warning(fmt.replace("%", "%%") + self._SUPPRESSED_NOTE, suppressed)


def _check_rate(per_second: int) -> int:
    if per_second < 0:
        raise ValueError(f"per_second must not be negative, got {per_second}")
    return per_second


# the settings' default (RNNSERVE_REFUSAL_LOG_PER_S); start-up sets the configured one
_REFUSAL_LOG = RefusalLog(per_second=10)


def refusal_log() -> RefusalLog:
    """The process's one refusal log: one budget of lines per second for all refusals, so that
    floods of different kinds cannot each take a full budget."""
    return _REFUSAL_LOG


def configure_refusal_log(per_second: int) -> None:
    """Set the shared refusal log's lines per second (start-up, from the settings)."""
    _REFUSAL_LOG.per_second = per_second


def install_bounded_logs(max_field_chars: int, refusal_log_per_s: int) -> None:
    """Both defences at start-up: bounded records and the refusal log's rate."""
    install_bounded_log_records(max_field_chars)
    configure_refusal_log(refusal_log_per_s)
