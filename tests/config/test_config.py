from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import AgentSettings, ConfigError, load_settings

SECRET = "tok-very-secret-123"
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "agent.example.toml"


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = f'url = "https://connvo.example.com/"\nmeeting = "m1"\ntoken = "{SECRET}"\n'


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), {})
    assert settings.url == "https://connvo.example.com"
    assert settings.token is not None and settings.token.get_secret_value() == SECRET
    assert (settings.role, settings.audio, settings.video) == ("bot", "tone", "testsrc")
    assert settings.state_dir == tmp_path / "state" / "connvo-agent"
    assert settings.poll_fast_interval == 0.02 and settings.poll_idle_interval == 1.25
    assert settings.metrics_port is None and settings.max_retries == 6


def test_state_dir_without_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(write(tmp_path, BASE), {})
    assert settings.state_dir == tmp_path / ".local" / "state" / "connvo-agent"


def test_precedence_flag_env_file_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(
        tmp_path, BASE + "poll_idle_interval = 2.0\nsession_timeout = 40\nrole = 'recorder'\n"
    )
    monkeypatch.setenv("CONNVO_SESSION_TIMEOUT", "50")
    monkeypatch.setenv("CONNVO_ROLE", "transcriber")
    settings = load_settings(path, {"role": "bot", "audio": None})
    assert settings.role == "bot"  # flag over env over file
    assert settings.session_timeout == 50  # env over file
    assert settings.poll_idle_interval == 2.0  # file over default
    assert settings.audio == "tone"  # a flag given as None counts as not given
    assert settings.media_timeout == 5.0  # default


def test_config_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONNVO_CONFIG", str(write(tmp_path, BASE + "video = 'none'\n")))
    monkeypatch.setenv("CONNVO_CALL_EVERYONE", "true")
    settings = load_settings(None, {})
    assert settings.video == "none" and settings.call_everyone is True


def test_no_file_env_and_flags_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONNVO_URL", "http://127.0.0.1:3210")
    monkeypatch.setenv("CONNVO_TOKEN", SECRET)
    settings = load_settings(None, {"meeting": "m2", "metrics_port": 9464})
    assert (settings.url, settings.meeting, settings.metrics_port) == (
        "http://127.0.0.1:3210",
        "m2",
        9464,
    )


def one_line_error(config_file: Path | None, overrides: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file, overrides)
    message = str(info.value)
    assert "\n" not in message and message.startswith("config: ")
    assert SECRET not in message and SECRET not in repr(info.value)
    return message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("poll_idle_interval = 0", "config: poll_idle_interval: Input should be greater than 0"),
        ("media_timeout = -1", "config: media_timeout: Input should be greater than 0"),
        ("metrics_port = 70000", "config: metrics_port: Input should be less than or equal"),
        ("role = 'dj'", "config: role: Input should be 'bot', 'recorder' or 'transcriber'"),
        ("log_level = 'loud'", "config: log_level: Input should be"),
        ("max_retries = -1", "config: max_retries: Input should be greater than or equal to 0"),
        (
            "max_requests_in_flight = 0",
            "config: max_requests_in_flight: Input should be greater than or equal to 1",
        ),
        ("poll_fast_interval = 5.0", "config: poll_fast_interval: must not exceed"),
        ("url = 'ftp://x'", "config: url: "),
    ],
)
def test_bad_values(tmp_path: Path, extra: str, expected: str) -> None:
    lines = [line for line in BASE.splitlines() if not line.startswith(extra.split()[0])]
    path = write(tmp_path, "\n".join([*lines, extra]) + "\n")
    assert one_line_error(path, {}).startswith(expected)


def test_bad_flag_and_env_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    assert one_line_error(path, {"request_timeout": 0}).startswith("config: request_timeout: ")
    monkeypatch.setenv("CONNVO_METRICS_PORT", "abc")
    assert one_line_error(path, {}).startswith("config: metrics_port: ")


def test_unknown_keys(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "foo = 1\n")
    assert one_line_error(path, {}) == f"config: unknown key 'foo' in {path}"
    good = write(tmp_path, BASE, "good.toml")
    assert one_line_error(good, {"colour": "red"}) == "config: unknown option 'colour'"


def test_unknown_environment_variables_are_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CONNVO_NOT_A_SETTING", "1")
    assert load_settings(write(tmp_path, BASE), {}).meeting == "m1"


def test_missing_required(tmp_path: Path) -> None:
    path = write(tmp_path, f'meeting = "m1"\ntoken = "{SECRET}"\n')
    assert one_line_error(path, {}).startswith("config: url: required (--url, CONNVO_URL")


def test_unreadable_and_unparsable_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert (
        one_line_error(missing, {}) == f"config: cannot read {missing}: No such file or directory"
    )
    broken = write(tmp_path, f'token = "{SECRET}"\nurl = \n', "broken.toml")
    assert one_line_error(broken, {}).startswith(f"config: cannot parse {broken}: ")


def test_token_and_token_file_exactly_one(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {SECRET}\n")
    both = write(tmp_path, BASE + f"token_file = '{token_file}'\n", "both.toml")
    assert one_line_error(both, {}) == (
        "config: token: exactly one of token or token_file is required"
    )
    neither = write(tmp_path, 'url = "https://x.example"\nmeeting = "m"\n', "neither.toml")
    assert one_line_error(neither, {}).startswith("config: token: exactly one")

    settings = load_settings(neither, {"token_file": token_file})
    assert settings.read_token().get_secret_value() == SECRET
    assert one_line_error(neither, {"token_file": tmp_path / "absent"}).startswith(
        "config: token_file: cannot read "
    )


def test_token_never_printed(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, BASE), {})
    assert SECRET not in repr(settings) and SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    # A token of the wrong type is reported without its value.
    path = write(tmp_path, BASE.replace(f'"{SECRET}"', f'["{SECRET}"]'), "typed.toml")
    assert one_line_error(path, {}).startswith("config: token: ")


def test_example_documents_every_key(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    keys = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.MULTILINE))
    assert keys == set(AgentSettings.model_fields)
    token_file = tmp_path / "token"
    token_file.write_text(SECRET)
    settings = load_settings(EXAMPLE, {"token_file": token_file})
    assert settings.meeting == "replace-with-a-meeting-id"
    # The values it shows are the defaults.
    defaults = load_settings(write(tmp_path, BASE), {})
    for name in AgentSettings.model_fields:
        if name not in {"url", "meeting", "token", "token_file"}:
            assert getattr(settings, name) == getattr(defaults, name), name
