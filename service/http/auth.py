"""Bearer tokens: who may call which route, one rule for HTTP and gRPC.

Tokens are compared in constant time (`hmac.compare_digest`) against every configured token,
so neither a match nor its position leaks through timing. A caller must offer exactly one
credential (two are refused: proxies and frameworks disagree on which counts). Exempt paths
(health, metrics by default) stay open for probes and scrapers; an entry ending in `*` exempts
a prefix. gRPC calls are judged by the HTTP path of the same operation
(service/http/grpc_v2/server.py), so one RNNSERVE_AUTH_EXEMPT list covers both protocols.
Model control (`/v2/repository/...`) has a rule of its own: `admin_refusal`.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

MISSING_TOKEN = "missing or invalid bearer token: send 'Authorization: Bearer <token>'"
# The model-control routes (Triton's repository API): a separate secret, failing closed.
ADMIN_PREFIX = "/v2/repository"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def admin_refusal(
    admin: BearerTokens, api_tokens_set: bool, offered: Sequence[bytes], client: str | None
) -> tuple[int, str] | None:
    """Whether a model-control call may go on (None) or (status, reason) otherwise. Admin
    tokens set: one of them is needed (an inference token is not one). API tokens set and no
    admin token: the routes are closed. Neither set: only clients on this machine may call."""
    if admin.enabled:
        if admin.authorized(offered):
            return None
        return 401, (
            "model control needs an admin token (RNNSERVE_ADMIN_TOKENS): send "
            "'Authorization: Bearer <admin token>'"
        )
    if api_tokens_set:
        return 403, (
            "model control is closed: RNNSERVE_API_TOKENS is set and RNNSERVE_ADMIN_TOKENS is "
            "not (an inference token never controls models); set an admin token"
        )
    if client in LOOPBACK:
        return None
    return 403, (
        "model control without tokens answers clients on this machine only (loopback); set "
        "RNNSERVE_ADMIN_TOKENS to call it from elsewhere"
    )


class BearerTokens:
    def __init__(self, tokens: Sequence[str], exempt: Sequence[str]) -> None:
        self.tokens = [t.encode() for t in tokens]
        self.exempt = {p for p in exempt if not p.endswith("*")}
        self.exempt_prefixes = tuple(p[:-1] for p in exempt if p.endswith("*"))

    @property
    def enabled(self) -> bool:
        return bool(self.tokens)

    def open_path(self, path: str) -> bool:
        """Whether `path` needs no token (authentication off, or an exempt path)."""
        return not self.tokens or path in self.exempt or path.startswith(self.exempt_prefixes)

    def authorized(self, offered: Sequence[bytes]) -> bool:
        """Whether the Authorization values a caller sent hold one valid bearer token."""
        if len(offered) != 1:
            return False
        header = offered[0]
        if not header.lower().startswith(b"bearer "):
            return False
        candidate = header[7:].strip()
        matches = [hmac.compare_digest(candidate, token) for token in self.tokens]
        return any(matches)
