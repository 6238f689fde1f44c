"""`connvo-agent serve` and `connvo-agent worker` given bad flags: one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=60
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    error_lines = [line for line in lines if "error" in line.lower()]
    assert len(error_lines) == 1, result.stderr
    return error_lines[0]


def test_serve_needs_an_api_key_file() -> None:
    assert "--api-key-file" in one_line_error(run("serve", "--port", "0"))


@pytest.mark.parametrize("content", [None, "", "# only a comment\n\n"])
def test_serve_refuses_a_key_file_it_cannot_use(tmp_path: Path, content: str | None) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    line = one_line_error(
        run("serve", "--port", "0", "--api-key-file", str(keys), "--state-dir", str(tmp_path))
    )
    assert line.startswith("connvo-agent: error: api key file") and str(keys) in line


def test_serve_refuses_an_address_in_use(tmp_path: Path) -> None:
    import socket

    keys = tmp_path / "keys"
    keys.write_text("k" * 32 + "\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(
            run("serve", "--port", str(port), "--api-key-file", str(keys),
                "--state-dir", str(tmp_path / "state"))
        )  # fmt: skip
    assert f"cannot serve on 127.0.0.1:{port}" in line


def test_worker_needs_redis() -> None:
    assert "--redis" in one_line_error(run("worker"))


def test_worker_says_when_redis_cannot_be_reached(tmp_path: Path) -> None:
    line = one_line_error(run("worker", "--redis", f"unix://{tmp_path}/no.sock"))
    assert line.startswith("connvo-agent: error: --redis: cannot reach")


def test_a_redis_password_is_never_shown() -> None:
    line = one_line_error(run("worker", "--redis", "redis://:hunter2-secret@127.0.0.1:1/0"))
    assert "hunter2-secret" not in line and ":***@127.0.0.1:1" in line
