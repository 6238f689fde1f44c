"""User tokens: HS256 JWTs whose `sub` is the user's workosUserId (as WorkOS tokens carry it).

Error messages name the failure, never the token itself.
"""

from __future__ import annotations

import time

import jwt

ISSUER = "connvo-agent-devserver"
AUDIENCE = "connvo"
DEFAULT_TTL_S = 24 * 3600


class AuthError(Exception):
    """Missing, malformed, forged or expired credentials."""


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


def verify_token(secret: str, token: str) -> str:
    """The token's subject; AuthError when the signature, expiry or claims are wrong."""
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
    return subject
