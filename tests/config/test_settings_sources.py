"""Settings are defined once: the config keys that tune a participant take their defaults from the
peer dataclasses, and reach them by name, with the values given in the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentSettings, load_settings
from agent.peer.manager import ManagerSettings
from agent.peer.participant import ParticipantSettings
from agent.peer.session import SessionSettings
from agent.roles.transcriber import TranscriberSettings

BASE = 'url = "https://connvo.example.com/"\nmeeting = "m1"\ntoken = "tok-123"\n'

# Keys of AgentSettings that set a dataclass field of the same name.
SESSION_KEYS = {"session_timeout", "ice_restart_after", "media_timeout", "quality_interval"}
PARTICIPANT_KEYS = {
    "state_dir",
    "session_id",
    "call_everyone",
    "poll_fast_interval",
    "poll_idle_interval",
    "poll_recent_window",
    "discovery_interval",
    "meeting_check_interval",
}


def _defaults(cls: type[Any]) -> dict[str, Any]:
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }


def _settings(tmp_path: Path, extra: str = "") -> AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + extra)
    return load_settings(path, {})


def test_the_shared_keys_are_the_ones_named_like_fields() -> None:
    keys = set(AgentSettings.model_fields)
    assert keys & {f.name for f in dataclasses.fields(SessionSettings)} == SESSION_KEYS
    assert keys & {f.name for f in dataclasses.fields(ParticipantSettings)} == PARTICIPANT_KEYS


def test_config_defaults_are_the_dataclass_defaults() -> None:
    for cls, keys in ((SessionSettings, SESSION_KEYS), (ParticipantSettings, PARTICIPANT_KEYS)):
        defaults = _defaults(cls)
        for key in keys - {"state_dir"}:  # state_dir: XDG at the edge, required inside
            assert AgentSettings.model_fields[key].default == defaults[key], key


def test_participant_settings_carry_every_key(tmp_path: Path) -> None:
    given = {
        "session_timeout": 41.0,
        "ice_restart_after": 6.5,
        "media_timeout": 7.5,
        "quality_interval": 2.5,
        "session_id": "s-7",
        "call_everyone": True,
        "poll_fast_interval": 0.05,
        "poll_idle_interval": 2.5,
        "poll_recent_window": 4.5,
        "discovery_interval": 11.5,
        "meeting_check_interval": 16.5,
    }
    assert set(given) | {"state_dir"} == SESSION_KEYS | PARTICIPANT_KEYS
    lines = "".join(
        f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}\n"
        for key, value in given.items()
    ).replace("'", '"')
    settings = _settings(tmp_path, lines + f'state_dir = "{tmp_path / "here"}"\n')
    participant = settings.participant_settings()
    assert participant.meeting_id == "m1"
    assert participant.state_dir == tmp_path / "here"
    for key, value in given.items():
        owner = participant.session if key in SESSION_KEYS else participant
        assert getattr(owner, key) == value, key
    # Fields without a key keep the dataclasses' defaults.
    assert participant.shutdown_timeout == _defaults(ParticipantSettings)["shutdown_timeout"]
    assert participant.session.max_ice_restarts == _defaults(SessionSettings)["max_ice_restarts"]


@pytest.mark.parametrize(
    ("role", "receive", "decode"),
    [
        ("bot", "count", False),
        ("bot", "decode", True),
        ("recorder", "count", True),
        ("transcriber", "count", True),
    ],
)
def test_decode_media_follows_role_and_receive(
    tmp_path: Path, role: str, receive: str, decode: bool
) -> None:
    settings = _settings(tmp_path, f'role = "{role}"\nreceive = "{receive}"\n')
    assert settings.participant_settings().session.decode_media is decode


def test_participant_settings_are_manager_settings() -> None:
    # The manager's fields are declared once, in ManagerSettings; a participant passes its own
    # settings to its SessionManager.
    manager_fields = {f.name for f in dataclasses.fields(ManagerSettings)}
    participant_fields = {f.name for f in dataclasses.fields(ParticipantSettings)}
    assert issubclass(ParticipantSettings, ManagerSettings)
    assert manager_fields <= participant_fields


def test_transcriber_defaults_are_the_config_defaults() -> None:
    defaults = TranscriberSettings()
    fields = AgentSettings.model_fields
    assert defaults.language == fields["language"].default
    assert defaults.vad_aggressiveness == fields["vad_aggressiveness"].default
    assert defaults.interim is fields["transcript_interim"].default
