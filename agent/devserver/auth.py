"""User tokens: HS256 JWTs whose `sub` is the user's workosUserId (as WorkOS tokens carry it).

Error messages name the failure, never the token itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

ISSUER = "connvo-agent-devserver"
AUDIENCE = "connvo"
DEFAULT_TTL_S = 24 * 3600


class AuthError(Exception):
    """Malformed, forged or expired credentials (a request without any has no identity)."""


def issue_token(secret: str, subject: str, ttl_s: float = DEFAULT_TTL_S) -> str:
    now = int(time.time())
    claims = {"sub": subject, "iat": now, "exp": now + int(ttl_s), "iss": ISSUER, "aud": AUDIENCE}
    return jwt.encode(claims, secret, algorithm="HS256")


def bearer_token(header: str | None) -> str:
    if not header:
        raise AuthError("missing Authorization header")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header is not a Bearer token")
    return token.strip()


class TokenVerifier:
    """Checks bearer tokens, and remembers the ones it has accepted until they expire.

    Every request carries its bearer token, and a load run's participants poll many times a second
    with the same few tokens: decoding and checking each one again (PyJWT) took a third of the
    backend's time per poll. A remembered token is the same string with the same secret, so only
    its expiry needs checking again. Refused tokens are not remembered: each costs a full check.
    """

    def __init__(
        self, secret: str, *, max_tokens: int = 4096, clock: Callable[[], float] = time.time
    ) -> None:
        self._secret = secret
        self._max_tokens = max_tokens
        self._clock = clock
        self._accepted: dict[str, tuple[str, float]] = {}  # token -> (subject, exp)

    def subject(self, token: str) -> str:
        """The token's subject; AuthError when the signature, expiry or claims are wrong."""
        known = self._accepted.get(token)
        if known is None:
            claims = _decode(self._secret, token)
            known = (str(claims["sub"]), float(claims["exp"]))
            if len(self._accepted) >= self._max_tokens:
                del self._accepted[next(iter(self._accepted))]  # the oldest one
            self._accepted[token] = known
        subject, expires = known
        if expires <= self._clock():  # as PyJWT: expired from the second `exp` names
            del self._accepted[token]
            raise AuthError("token expired")
        return subject


def _decode(secret: str, token: str) -> dict[str, Any]:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["sub", "exp", "iat"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidSignatureError:
        raise AuthError("token signature is invalid") from None
    except jwt.PyJWTError as exc:
        # PyJWT's messages describe claims, not the token text.
        raise AuthError(f"invalid token: {exc}") from None
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise AuthError("invalid token: no subject")
    return claims
