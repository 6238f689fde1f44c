"""`pip install connvo-agent` (no extras) in a fresh venv: the agent runs a bot; the dev backend,
the load runner and the speech engines are absent, and a command that needs one names its extra.
With the `devserver` extra (the quick start's install), the demo runs.

The venvs are real installs from a wheelhouse made of this venv's distributions (see
wheelhouse.py), so they need no network; the dev backend and the remote peer the bot talks to
run from this venv.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.peer.ice import restrict_host_addresses
from tests.agent.conftest import make_meeting
from tests.agent.test_cli_run import call_and_receive, start_agent
from tests.install.wheelhouse import clean_env, fresh_venv, site_packages, wheelhouse

# Offered by the wheelhouse, so that their absence shows pip was not asked for them.
EXTRAS_ONLY = {
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "matplotlib": "matplotlib",
    "pocketsphinx": "pocketsphinx",
}
# Not offered, nor needed: absent too.
ALSO_ABSENT = ("jwt", "httptools", "rich", "webrtcvad", "vosk", "faster_whisper")


@dataclass
class Install:
    root: Path
    bin: Path
    house: Path

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "connvo-agent"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
            cwd=self.root,
        )


@pytest.fixture(scope="module")
def house(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wheelhouse")
    return wheelhouse(root / "wheels", root / "build", ("devserver",), *EXTRAS_ONLY.values())


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, house: Path) -> Install:
    root = tmp_path_factory.mktemp("base-install")
    return Install(root, fresh_venv(root / "venv", house), house)


@pytest.fixture(scope="module")
def with_devserver(tmp_path_factory: pytest.TempPathFactory, house: Path) -> Install:
    root = tmp_path_factory.mktemp("devserver-install")
    return Install(root, fresh_venv(root / "venv", house, "connvo-agent[devserver]"), house)


@pytest.fixture
def loopback_only() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses(None)


def test_the_base_install_leaves_the_extras_out(base: Install) -> None:
    offered = {p.name.split("-")[0].lower() for p in base.house.glob("*.whl")}
    assert set(EXTRAS_ONLY.values()) <= offered
    modules = [*EXTRAS_ONLY, *ALSO_ABSENT]
    probe = (
        "import importlib.util, json, agent; print(json.dumps([agent.__file__, "
        f"{{m: importlib.util.find_spec(m) is not None for m in {modules!r}}}]))"
    )
    out = subprocess.run(
        [str(base.bin / "python"), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=base.root,
    ).stdout
    agent_file, found = json.loads(out)
    assert Path(agent_file).is_relative_to(site_packages(base.root / "venv"))
    assert found == dict.fromkeys(found, False)


def test_help_works_without_the_extras(base: Install) -> None:
    top = base.run("--help")
    assert top.returncode == 0, top.stderr
    listed = re.search(r"^  devserver +(.*)$", top.stdout, re.MULTILINE)
    assert listed is not None and listed.group(1).endswith("(needs the 'devserver' extra).")
    run = base.run("run", "--help")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Usage: connvo-agent run [OPTIONS]")
    assert "--token-file" in run.stdout and run.stderr == ""


def _install(extra: str) -> str:
    return f"needs the '{extra}' extra: pip install 'connvo-agent[{extra}]'"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["devserver", "--help"], "the dev backend " + _install("devserver")),
        (["devserver", "token", "alice"], "the dev backend " + _install("devserver")),
        (["demo"], "the demo " + _install("devserver")),
        (
            "load --url http://127.0.0.1:9 --meetings 1 --peers-per-meeting 2 --duration 1 "
            "--report report".split(),
            "the load runner " + _install("load"),
        ),
        (["report", "merge", "report"], "the load report " + _install("load")),
        (
            "run --url http://127.0.0.1:9 --token t --meeting m --state-dir state "
            "--role transcriber".split(),
            "config: stt_engine: the pocketsphinx engine " + _install("transcriber"),
        ),
    ],
)
def test_a_command_whose_extra_is_missing_names_it_in_one_line(
    base: Install, args: list[str], message: str
) -> None:
    result = base.run(*args)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"connvo-agent: error: {message}"]


async def test_a_bot_from_the_base_install_connects(
    base: Install, devserver: Any, tmp_path: Path, loopback_only: None
) -> None:
    # The dev backend and the remote peer come from the full install (this venv).
    meeting = make_meeting(devserver, ["bot", "alice"])
    proc = await start_agent(
        meeting,
        tmp_path,
        "--audio", "tone", "--video", "testsrc", "--log-level", "info",
        command=(str(base.bin / "connvo-agent"),),
        env=clean_env(),
        cwd=base.root,
    )  # fmt: skip
    try:
        async with meeting.peer("alice") as alice:
            await call_and_receive(meeting, alice)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                _, stderr = await proc.communicate()
            log = stderr.decode()
            assert proc.returncode == 0, log[-2000:]
            assert "left meeting" in log
            packets = re.search(r"received (\d+) RTP packets", log)
            assert packets is not None and int(packets.group(1)) > 0, log[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_the_quick_start_install_runs_the_demo(with_devserver: Install) -> None:
    demo = with_devserver.run("demo", "--seconds", "1", timeout=90)
    assert demo.returncode == 0, demo.stdout + demo.stderr[-2000:]
    assert "media flowed both ways" in demo.stdout
