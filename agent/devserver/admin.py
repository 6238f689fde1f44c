"""Direct database operations behind the `token` and `meeting` commands (also used by tests, the
demo and benchmarks). They write to the same SQLite file a running server reads."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from agent.devserver import auth
from agent.devserver.store import Store, unprovisioned_subject_for

MeetingStartState = Literal["active", "scheduled"]

MAX_NAME_CHARS = 64


def check_name(name: str) -> str:
    """A user name: 1-64 printable characters without '@' or whitespace at the ends."""
    if not name or len(name) > MAX_NAME_CHARS:
        raise ValueError(f"user name must be 1-{MAX_NAME_CHARS} characters")
    if not name.isprintable() or "@" in name or name != name.strip():
        raise ValueError(f"invalid user name {name!r}")
    return name


def user_id(db_path: Path | str, name: str) -> str:
    """The ID of user `name` (created if missing: displayName NAME, email NAME@example.com)."""
    store = Store(db_path)
    try:
        with store.transaction():
            return str(store.ensure_user(check_name(name))["id"])
    finally:
        store.close()


def issue_token(db_path: Path | str, user: str, ttl_s: float = auth.DEFAULT_TTL_S) -> str:
    """A bearer token for user `user` (created if missing), valid for `ttl_s` seconds."""
    store = Store(db_path)
    try:
        with store.transaction():
            row = store.ensure_user(check_name(user))
        return auth.issue_token(store.jwt_secret(), str(row["workos_user_id"]), ttl_s)
    finally:
        store.close()


def issue_unprovisioned_token(
    db_path: Path | str, name: str, ttl_s: float = auth.DEFAULT_TTL_S
) -> str:
    """A bearer token that verifies but whose identity has no Connvo user (none is created).

    Its subject is `devnouser_NAME`, which no dev user has: functions answer UNAUTHORIZED and
    getCurrentUser answers null, as for someone signed in to WorkOS but not provisioned.
    """
    store = Store(db_path)
    try:
        return auth.issue_token(
            store.jwt_secret(), unprovisioned_subject_for(check_name(name)), ttl_s
        )
    finally:
        store.close()


def set_user_active(db_path: Path | str, name: str, active: bool) -> None:
    """Activate or deactivate user `name` (created if missing)."""
    store = Store(db_path)
    try:
        with store.transaction():
            store.set_user_active(check_name(name), active)
    finally:
        store.close()


def create_meeting(
    db_path: Path | str,
    host: str,
    participants: Iterable[str] = (),
    title: str = "Dev meeting",
    state: MeetingStartState = "active",
) -> str:
    """A meeting hosted by `host` with `participants` (users created if missing), written straight
    into the database: *active* by default (a dev convenience; Connvo's createMeeting makes
    scheduled meetings, which the host then starts), or `scheduled`."""
    if state not in ("active", "scheduled"):
        raise ValueError(f"a new meeting is active or scheduled, not {state!r}")
    names = [check_name(host)] + [check_name(p) for p in participants]
    store = Store(db_path)
    try:
        with store.transaction():
            host_row = store.ensure_user(names[0])
            meeting_id = store.insert_meeting(str(host_row["id"]), title, state)
            store.insert_participant(meeting_id, str(host_row["id"]), "host")
            for name in dict.fromkeys(names[1:]):
                if name == names[0]:
                    continue
                row = store.ensure_user(name)
                store.insert_participant(meeting_id, str(row["id"]), "participant")
        return meeting_id
    finally:
        store.close()
