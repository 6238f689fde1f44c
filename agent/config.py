"""Settings of `connvo-agent run`: flags > CONNVO_* environment > TOML file > defaults.

`load_settings` is the one entry point. Every problem becomes a ConfigError whose message is one
line naming the key; input values are never echoed, so a token cannot leak into logs or stderr.

Pydantic at the edge, plain dataclasses inside: a key that tunes a participant or its sessions
takes its default from the dataclass field of the same name (ParticipantSettings, SessionSettings
in agent.peer), and `participant_settings()` hands every such key over by name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    Field,
    HttpUrl,
    PositiveFloat,
    SecretStr,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.peer.participant import ParticipantSettings
from agent.peer.session import SessionSettings

ENV_PREFIX = "CONNVO_"
CONFIG_ENV = "CONNVO_CONFIG"

# Which file the TOML source reads during one load_settings() call: settings_customise_sources is
# a classmethod, so the path cannot be passed to it as an argument.
_config_file: ContextVar[Path | None] = ContextVar("connvo_config_file", default=None)

_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


class ConfigError(Exception):
    """Invalid or unreadable configuration; str() is one line starting with `config:`."""


def _check_url(value: str) -> str:
    _HTTP_URL.validate_python(value)  # scheme http(s), a host; raises ValueError otherwise
    return value.rstrip("/")


def default_state_dir() -> Path:
    # XDG: an unset, empty or relative XDG_STATE_HOME means ~/.local/state.
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "connvo-agent"


# The defaults of the keys that tune a participant and its sessions, where they are written.
_SESSION = SessionSettings()
_PARTICIPANT = ParticipantSettings(meeting_id="", state_dir=Path())


def _init_fields(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in dataclasses.fields(cls) if f.init)


Url = Annotated[str, AfterValidator(_check_url)]
UserPath = Annotated[Path, AfterValidator(lambda p: p.expanduser())]
Seconds = PositiveFloat


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        validate_default=True,
        hide_input_in_errors=True,  # ValidationError text must never carry a token
    )

    # Where and who.
    url: Url
    token: SecretStr | None = None
    token_file: UserPath | None = None
    meeting: str = Field(min_length=1)
    role: Literal["bot", "recorder", "transcriber"] = "bot"
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    display_name: str | None = Field(default=None, min_length=1, max_length=200)

    # Media.
    audio: str = Field(default="tone", min_length=1)
    video: str = Field(default="testsrc", min_length=1)
    # bot: "count" received RTP (getStats) without decoding it, or "decode" every frame
    receive: Literal["count", "decode"] = "count"
    call_everyone: bool = _PARTICIPANT.call_everyone
    out: UserPath | None = None

    # Transcriber.
    stt_engine: Literal["pocketsphinx", "vosk", "faster-whisper"] = "pocketsphinx"
    stt_model: UserPath | None = None
    language: str = Field(default="en-US", min_length=2, max_length=32)
    vad_aggressiveness: int = Field(default=2, ge=0, le=3)
    transcript_interim: bool = False

    # Local state, observability, TLS.
    state_dir: UserPath = Field(default_factory=default_state_dir)
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    ca_bundle: UserPath | None = None
    # Local addresses to gather ICE host candidates on; None means every interface but loopback.
    ice_host_addresses: list[str] | None = None

    # Timing, in seconds.
    poll_fast_interval: Seconds = _PARTICIPANT.poll_fast_interval
    poll_idle_interval: Seconds = _PARTICIPANT.poll_idle_interval
    poll_recent_window: Seconds = _PARTICIPANT.poll_recent_window
    session_timeout: Seconds = _SESSION.session_timeout
    ice_restart_after: Seconds = _SESSION.ice_restart_after
    media_timeout: Seconds = _SESSION.media_timeout
    quality_interval: Seconds = _SESSION.quality_interval
    discovery_interval: Seconds = _PARTICIPANT.discovery_interval
    meeting_check_interval: Seconds = _PARTICIPANT.meeting_check_interval
    request_timeout: Seconds = 10.0
    max_retries: int = Field(default=6, ge=0, le=100)
    max_requests_in_flight: int = Field(default=6, ge=1, le=100)
    duration: Seconds | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        # Messages start with the key they concern: errors of a whole model have no location.
        if (self.token is None) == (self.token_file is None):
            raise ValueError("token: exactly one of token or token_file is required")
        if self.token is not None and not self.token.get_secret_value().strip():
            raise ValueError("token: is empty")
        for address in self.ice_host_addresses or []:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError("ice_host_addresses: not an IP address") from None
        if self.poll_fast_interval > self.poll_idle_interval:
            raise ValueError("poll_fast_interval: must not exceed poll_idle_interval")
        return self

    def participant_settings(self) -> ParticipantSettings:
        """The participant's settings: every key named like a field of ParticipantSettings or
        SessionSettings sets that field; the rest keep the dataclasses' defaults."""
        session = SessionSettings(
            **self._fields_of(SessionSettings),
            # the recorder and the transcriber need every frame; the bot only counts by default
            decode_media=self.role != "bot" or self.receive == "decode",
        )
        return ParticipantSettings(
            **self._fields_of(ParticipantSettings), meeting_id=self.meeting, session=session
        )

    def _fields_of(self, cls: type[Any]) -> dict[str, Any]:
        names = _init_fields(cls) & type(self).model_fields.keys()
        return {name: getattr(self, name) for name in names}

    def read_token(self) -> SecretStr:
        """The bearer token, from `token` or read now from `token_file` (so it may rotate)."""
        if self.token is not None:
            return self.token
        assert self.token_file is not None
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: token_file: cannot read {self.token_file}: {exc}") from None
        if not text:
            raise ConfigError(f"config: token_file: {self.token_file} is empty")
        return SecretStr(text)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets directory: the agent reads only what the docs list.
        path = _config_file.get()
        if path is None:
            return (init_settings, env_settings)
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, path))


def default_of(key: str) -> Any:
    """The default of a settings key, for a role's own dataclass to take rather than repeat."""
    return AgentSettings.model_fields[key].default


@contextmanager
def _reading(path: Path | None) -> Iterator[None]:
    token = _config_file.set(path)
    try:
        yield
    finally:
        _config_file.reset(token)


def _describe(error: Mapping[str, Any], overrides: Mapping[str, object], source: str) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    key = ".".join(loc)
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        if loc and loc[0] in overrides:
            return f"unknown option {key!r}"
        return f"unknown key {key!r} in {source}"
    if kind == "missing":
        flag = key.replace("_", "-")
        return f"{key}: required (--{flag}, {ENV_PREFIX}{key.upper()} or the config file)"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    # Model-level checks (no loc) put the key they are about first, as "key: problem".
    return f"{key}: {message}" if key else message


def load_settings(config_file: Path | None, overrides: Mapping[str, object]) -> AgentSettings:
    """Build the settings. `overrides` are the flags given on the command line (None = not given);
    `config_file` falls back to $CONNVO_CONFIG. Raises ConfigError (one line)."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    if config_file is not None:
        config_file = config_file.expanduser()
        source = str(config_file)
        # pydantic-settings silently skips a missing file; a named one must exist and parse.
        try:
            tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"config: cannot read {source}: {reason}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: cannot parse {source}: {exc}") from None
    else:
        source = "the config file"
    given = {k: v for k, v in overrides.items() if v is not None}
    # A token given by a higher layer (flag over environment over file) replaces the other kind.
    env = {
        key: bool(os.environ.get(f"{ENV_PREFIX}{key.upper()}")) for key in ("token", "token_file")
    }
    flagged = set(given)
    for key, other in (("token", "token_file"), ("token_file", "token")):
        higher = key in flagged or (env[key] and not env[other] and other not in flagged)
        if higher and other not in flagged:
            given[other] = None
    try:
        with _reading(config_file):
            settings = AgentSettings(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        first = _describe(errors[0], given, source) if errors else "invalid settings"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"config: {first}{more}".replace("\n", " ")) from None
    settings.read_token()  # a token file must be readable now, not at the first request
    return settings
