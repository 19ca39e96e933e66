"""The carried state of a text: an opaque string that lets a client continue a text where the
last answer left it, on any worker or replica (no sticky sessions).

A recurrent model's whole context is its state (char-rnn: 2 layers x (h, c) x 256 floats), so a
client that sends the state back needs to send only the characters that follow it, and one
keystroke costs one step whatever the length of the text. The string holds that state, the
next-character logits after it (so a request may send no new characters at all: the candidates,
or a generation, continue straight from the state), how many characters it has read, and the
model it belongs to. It is checked before anything is queued: a state that would not fit the
model, or that was changed, never reaches a batch.

Format, version 1: "rs1." then URL-safe base64 (no padding) of

    magic "RNST" | format 1 (u8) | flags (u8: 1 = signed) | name (u8 length + UTF-8)
    | version (u8 length + UTF-8) | model fingerprint (8 bytes) | characters read (u64)
    | state rows, hidden, vocabulary (3 x u16) | state float32[rows x hidden]
    | logits float32[vocabulary] | tag (32 bytes)

all little-endian. The tag covers every byte before it: HMAC-SHA256 with the first of
RNNSERVE_STATE_KEYS when keys are set (flag 1; any listed key verifies, so keys can be
rotated), else plain SHA-256. Without keys a changed byte is still caught, but a client able
to compute SHA-256 can craft a state; it can only change its own answers (the values must be
finite, within bounds, of the exact shape), never another request's. With keys a forged state
is refused; every worker and replica must then share the keys, or a state from one is refused
by another (that is the message it gets).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.errors import BadInput

PREFIX = "rs1."
MAGIC = b"RNST"
FORMAT = 1
SIGNED = 1
TAG_BYTES = 32
# Longer than any state of any model this service could load (a 4-layer LSTM with hidden
# 2,048 is under 90,000 characters): a longer string is refused before it is decoded.
MAX_STATE_CHARS = 131_072
# No state value of a trained model comes near this; it keeps a crafted state from pushing
# a row's arithmetic towards overflow.
MAX_MAGNITUDE = 1e6
RESEND = "send the whole text again without a state"


class StateError(BadInput):
    """A carried state this server cannot continue from: the message says why and what to do."""


@dataclass(frozen=True)
class Carried:
    """Where a text continues from."""

    state: np.ndarray  # (rows, hidden) float32: the recurrent state after `chars` characters
    logits: np.ndarray  # (vocab,) float32: the next-character scores after them
    chars: int  # how many characters the state has read in all


@dataclass(frozen=True)
class ModelIdentity:
    """What a state must match: the model it came from and its shape."""

    name: str
    version: str
    fingerprint: bytes  # 8 bytes: a digest of the model's files (a retrained model differs)
    rows: int
    hidden: int
    vocab: int

    @staticmethod
    def fingerprint_of(file_digests: Sequence[str]) -> bytes:
        return hashlib.sha256("\n".join(sorted(file_digests)).encode()).digest()[:8]

    def describe(self) -> str:
        return f"{self.name} {self.version} (fingerprint {self.fingerprint.hex()})"


class StateCodec:
    """Encodes and checks the carried states of one model under one set of keys."""

    def __init__(self, model: ModelIdentity, keys: Sequence[str] = ()) -> None:
        self.model = model
        self.keys = [k.encode() for k in keys]
        self.header = self._header(
            model.name, model.version, model.fingerprint, SIGNED if self.keys else 0
        )
        self.floats = model.rows * model.hidden + model.vocab
        self.payload_bytes = len(self.header) + 8 + 6 + 4 * self.floats + TAG_BYTES
        self.chars = 4 + (4 * self.payload_bytes + 2) // 3  # prefix + unpadded base64

    @staticmethod
    def _header(name: str, version: str, fingerprint: bytes, flags: int) -> bytes:
        name_bytes, version_bytes = name.encode()[:255], version.encode()[:255]
        return (
            MAGIC
            + bytes([FORMAT, flags, len(name_bytes)])
            + name_bytes
            + bytes([len(version_bytes)])
            + version_bytes
            + fingerprint
        )

    def _tag(self, body: bytes, key: bytes | None) -> bytes:
        if key is None:
            return hashlib.sha256(body).digest()
        return hmac.new(key, body, hashlib.sha256).digest()

    # ------------------------------------------------------------------ encode

    def encode(self, state: np.ndarray, logits: np.ndarray, chars: int) -> str:
        """state (rows, hidden), logits (vocab,) -> the string a client carries."""
        m = self.model
        body = b"".join(
            (
                self.header,
                struct.pack("<QHHH", min(chars, 2**64 - 1), m.rows, m.hidden, m.vocab),
                np.ascontiguousarray(state, dtype="<f4").tobytes(),
                np.ascontiguousarray(logits, dtype="<f4").tobytes(),
            )
        )
        tag = self._tag(body, self.keys[0] if self.keys else None)
        return PREFIX + base64.urlsafe_b64encode(body + tag).rstrip(b"=").decode("ascii")

    # ------------------------------------------------------------------ decode

    @staticmethod
    def peek_version(token: object) -> int | None:
        """The model version a state names, read without any check (None when unreadable):
        only to choose the codec that then checks the state whole."""
        if not isinstance(token, str) or not token.startswith(PREFIX):
            return None
        text = token[len(PREFIX) : len(PREFIX) + 700]  # the header's most: 518 bytes
        text = text[: len(text) - len(text) % 4]
        try:
            raw = base64.b64decode(text.translate(_TO_STANDARD), validate=True)
            if not raw.startswith(MAGIC):
                return None
            _, at = _short_string(raw, 6)  # the model's name
            version, _ = _short_string(raw, at)
        except (binascii.Error, ValueError, IndexError, UnicodeDecodeError):
            return None
        return int(version) if version.isdecimal() and len(version) < 10 else None

    def decode(self, token: object) -> Carried:
        """The state a client sent back, or StateError saying what is wrong with it: its
        length bound and encoding first, then the tag (so a truncated state fails its
        integrity check), then the model, then the values."""
        raw = self._bytes(token)
        body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
        flags, name, version, fingerprint, at = self._read_header(body)
        self._check_tag(body, tag, flags)
        if (name, version, fingerprint) != (
            self.model.name,
            self.model.version,
            self.model.fingerprint,
        ):
            raise StateError(
                f"this state belongs to {name} {version} (fingerprint {fingerprint.hex()}); "
                f"this server's text model is {self.model.describe()}: {RESEND}"
            )
        chars, rows, hidden, vocab = struct.unpack_from("<QHHH", body, at)
        m = self.model
        if (rows, hidden, vocab) != (m.rows, m.hidden, m.vocab):
            raise StateError(
                f"this state has shape {rows}x{hidden} with {vocab} logits; the model needs "
                f"{m.rows}x{m.hidden} with {m.vocab}: {RESEND}"
            )
        values = np.frombuffer(body, dtype="<f4", offset=at + 14)
        if len(values) != self.floats:
            raise StateError(f"this state is truncated or extended: {RESEND}")
        if not np.isfinite(values).all() or float(np.abs(values).max()) > MAX_MAGNITUDE:
            raise StateError(
                f"this state holds values that are not finite or out of range: {RESEND}"
            )
        state = values[: m.rows * m.hidden].reshape(m.rows, m.hidden).astype(np.float32)
        return Carried(state, values[m.rows * m.hidden :].astype(np.float32), int(chars))

    def _bytes(self, token: object) -> bytes:
        if not isinstance(token, str):
            raise StateError("'state' must be a string, exactly as an earlier answer gave it")
        if len(token) > MAX_STATE_CHARS:
            raise StateError(
                f"this state has {len(token)} characters, over the limit of {MAX_STATE_CHARS} "
                f"(a state of {self.model.name} has {self.chars}): {RESEND}"
            )
        if not token.startswith(PREFIX):
            if token[:2] == "rs" and token[2:3].isdigit():
                raise StateError(
                    f"this state has format version {token[2:].split('.')[0][:8]!r}; this "
                    f"server reads version {FORMAT} ({PREFIX!r}): {RESEND}"
                )
            raise StateError(
                f"this is not a state from this service (states start with {PREFIX!r})"
            )
        text = token[len(PREFIX) :]
        if not text.isascii():
            raise StateError(f"this state holds characters that are not base64url: {RESEND}")
        if len(text) % 4 == 1:  # no string of whole bytes has this length: cut or extended
            raise StateError(
                "this state failed its integrity check: it is truncated or extended (send it "
                f"back exactly as received), or {RESEND}"
            )
        try:  # validate: b64decode would otherwise skip characters outside the alphabet
            raw = base64.b64decode(
                text.translate(_TO_STANDARD) + "=" * (-len(text) % 4), validate=True
            )
        except (binascii.Error, ValueError):
            raise StateError(
                f"this state is not valid base64url (damaged in transit?): {RESEND}"
            ) from None
        if len(raw) < len(MAGIC) + 3 + TAG_BYTES or not raw.startswith(MAGIC):
            raise StateError(f"this state is truncated or not a state from this service: {RESEND}")
        return raw

    def _read_header(self, body: bytes) -> tuple[int, str, str, bytes, int]:
        """flags, model name, version, fingerprint and the offset after them."""
        fmt, flags = body[4], body[5]
        if fmt != FORMAT:
            raise StateError(
                f"this state has format version {fmt}; this server reads {FORMAT}: {RESEND}"
            )
        try:
            at = 6
            name, at = _short_string(body, at)
            version, at = _short_string(body, at)
            fingerprint = body[at : at + 8]
            if len(fingerprint) != 8 or len(body) < at + 8 + 14:
                raise ValueError
        except (ValueError, IndexError, UnicodeDecodeError):
            raise StateError(f"this state is truncated or damaged: {RESEND}") from None
        return flags, name, version, fingerprint, at + 8

    def _check_tag(self, body: bytes, tag: bytes, flags: int) -> None:
        signed = bool(flags & SIGNED)
        if signed and not self.keys:
            raise StateError(
                "this state is signed, and this server has no RNNSERVE_STATE_KEYS to check it "
                f"(every worker and replica needs the same keys): {RESEND}"
            )
        if not signed and self.keys:
            raise StateError(
                "this server accepts signed states only (RNNSERVE_STATE_KEYS is set) and this "
                f"one is unsigned: {RESEND}"
            )
        keys: list[bytes | None] = list(self.keys) if signed else [None]
        if not any(hmac.compare_digest(self._tag(body, key), tag) for key in keys):
            raise StateError(
                "this state failed its integrity check (a byte was changed or lost, or it was "
                "signed with a key this server does not have): send it back exactly as "
                f"received, or {RESEND}"
            )


_TO_STANDARD = str.maketrans("-_", "+/")


def _short_string(data: bytes, at: int) -> tuple[str, int]:
    length = data[at]
    end = at + 1 + length
    if end > len(data):
        raise ValueError("truncated")
    return data[at + 1 : end].decode("utf-8"), end
