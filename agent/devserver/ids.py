"""Convex-shaped document IDs that encode their table, so arguments validate like `v.id(...)`.

An ID is 20 bytes written as 32 characters of Convex's lowercase base32 alphabet:

    prefix (8) | table tag (2) | random (6) | checksum (4)

`prefix` is random in "random" mode (IDs do not sort in insertion order; Convex does not promise
they do) and a big-endian counter in "ordered" mode; `/admin/next-ids` can choose it for the next
IDs of a table (the "sort key"). The alphabet is in ASCII order and every ID
has the same length, so string order equals byte order: ordered IDs sort in insertion order.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Literal

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_DECODE = {c: i for i, c in enumerate(ALPHABET)}
ID_BYTES = 20
ID_CHARS = ID_BYTES * 8 // 5  # 32

IdMode = Literal["random", "ordered"]

# Stable numbers: changing one invalidates every ID already stored.
TABLES: dict[str, int] = {
    "users": 1,
    "meetings": 2,
    "meetingParticipants": 3,
    "webrtcSessions": 4,
    "webrtcSignals": 5,
    "transcripts": 6,
}
_TABLE_BY_TAG = {tag: name for name, tag in TABLES.items()}


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=4, person=b"connvo-dev-id").digest()


def _b32encode(raw: bytes) -> str:
    value = int.from_bytes(raw, "big")
    chars = [ALPHABET[(value >> (5 * i)) & 31] for i in range(ID_CHARS)]
    return "".join(reversed(chars))


def _b32decode(text: str) -> bytes | None:
    if len(text) != ID_CHARS:
        return None
    value = 0
    for ch in text:
        digit = _DECODE.get(ch)
        if digit is None:
            return None
        value = (value << 5) | digit
    return value.to_bytes(ID_BYTES, "big")


def make_id(table: str, counter: int | None = None) -> str:
    """A new ID of `table`; with `counter` (ordered mode) the ID sorts by it."""
    if counter is None:
        prefix = secrets.token_bytes(8)
    else:
        prefix = counter.to_bytes(8, "big")
    body = prefix + TABLES[table].to_bytes(2, "big") + secrets.token_bytes(6)
    return _b32encode(body + _checksum(body))


def table_of(text: str) -> str | None:
    """The table an ID belongs to, or None when it is not one of ours."""
    raw = _b32decode(text)
    if raw is None:
        return None
    body, check = raw[:16], raw[16:]
    if _checksum(body) != check:
        return None
    return _TABLE_BY_TAG.get(int.from_bytes(body[8:10], "big"))


def sort_key_of(text: str) -> int | None:
    """The 8-byte prefix an ID sorts by (what `/admin/next-ids` chooses); None when the text is
    not an ID of this backend."""
    if table_of(text) is None:
        return None
    raw = _b32decode(text)
    assert raw is not None
    return int.from_bytes(raw[:8], "big")


def is_id_of(text: str, table: str) -> bool:
    """Whether `text` is an ID of `table` in this backend."""
    return table_of(text) == table
