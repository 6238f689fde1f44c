"""Real browsers meeting the bot: page-load-to-connected time, and what a participant costs in
headless Chromium beside what a session costs the agent, measured in the same run.

N join pages (one Chromium, fake camera and microphone, each page a different user) call one bot
(`connvo-agent run`, tone + test pattern, in its own process) through a dev backend, all on
loopback. Figures:

- page load -> connected: from the page's navigation start to its RTCPeerConnection `connected`
  (joining, getUserMedia, session creation, signalling through the backend, ICE, DTLS), per page;
- memory per participant: proportional set size (PSS, /proc/PID/smaps_rollup) of Chromium's whole
  process tree with the N pages in the call, minus the tree with one blank page, divided by N;
  for the agent, its PSS with N sessions minus its PSS joined with none, divided by N;
- CPU per participant: CPU time (utime + stime, /proc/PID/stat) over a window of media flowing
  both ways, as a percentage of one core, divided by N; Chromium's tree vs the agent process.

    python bench/browser_interop.py [--pages 4] [--seconds 10]

Needs Debian's chromium package (/usr/lib/chromium/chromium) and the test extras (playwright).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.devserver.process import DevServerProcess  # noqa: E402
from tests.support.chromium import CHROMIUM, chromium_flags  # noqa: E402

# The same launch as tests/browser: no background networking, fake media devices, loopback ICE.
FLAGS = chromium_flags(media_permission=True)
TICK = os.sysconf("SC_CLK_TCK")


# --- /proc ----------------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    children = _children()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    times = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[pid] = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return times


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[p] - before.get(p, 0.0) for p in after)


def chromium_root(profile: str) -> int:
    """The browser process: Chromium's executable started with our user-data-dir."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].decode() == CHROMIUM
            and any(a.decode() == f"--user-data-dir={profile}" for a in argv)
        ):
            if not any(a.startswith(b"--type=") for a in argv):
                return int(entry)
    raise RuntimeError("Chromium's browser process not found")


# --- the run --------------------------------------------------------------------------------------


def wait_for(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def run(pages: int, seconds: float, workdir: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    names = [f"guest{i}" for i in range(pages)]
    with DevServerProcess(workdir / "dev.sqlite") as server:
        meeting = server.meeting("bot", names)
        token_file = workdir / "bot.token"
        token_file.write_text(server.token("bot"))
        watcher = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {server.token(names[0])}"}
        )

        def active() -> list[dict[str, Any]]:
            reply = watcher.post(
                "/api/run/meetings/webrtc/signaling/getActiveSessions",
                json={"args": {"meetingId": meeting}, "format": "json"},
            )
            return reply.json()["value"]  # type: ignore[no-any-return]

        bot_id = server.user_id("bot")
        agent = subprocess.Popen(
            [
                sys.executable, "-m", "agent", "run", "--url", server.url,
                "--token-file", str(token_file), "--meeting", meeting,
                "--ice-host", "127.0.0.1", "--audio", "tone", "--video", "testsrc",
                "--state-dir", str(workdir / "state"), "--log-level", "warning",
            ],
            cwd=ROOT,
        )  # fmt: skip
        try:
            wait_for(lambda: any(s["userId"] == bot_id for s in active()), "the bot to join")
            time.sleep(1.0)  # let start-up allocations settle before the baseline
            agent_idle_kib = pss_kib([agent.pid])

            profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir)
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    profile, executable_path=CHROMIUM, headless=True, args=FLAGS
                )
                root = chromium_root(profile)
                blank = context.pages[0] if context.pages else context.new_page()
                blank.goto("about:blank")
                time.sleep(1.0)
                chromium_idle_kib = pss_kib(process_tree(root))

                load_to_connected = []
                opened = []
                for name in names:
                    page = context.new_page()
                    query = {"meeting": meeting, "name": name, "autojoin": 1, "loopback": 1}
                    page.goto(f"{server.url}/join?{urlencode(query)}")
                    connected_at = page.wait_for_function(
                        "connvo.state.connectedAt", timeout=30_000
                    ).json_value()
                    load_to_connected.append(float(connected_at))
                    opened.append(page)
                for page in opened:  # media is flowing into every page
                    page.wait_for_function(
                        "connvo.inbound('audio') > 25 && connvo.inbound('video') > 10",
                        timeout=30_000,
                    )

                tree = process_tree(root)
                chromium_before, agent_before = cpu_seconds(tree), cpu_seconds([agent.pid])
                started = time.monotonic()
                time.sleep(seconds)  # the measurement window itself
                elapsed = time.monotonic() - started
                chromium_cpu = cpu_delta(chromium_before, cpu_seconds(tree))
                agent_cpu = cpu_delta(agent_before, cpu_seconds([agent.pid]))
                chromium_kib = pss_kib(process_tree(root))
                agent_kib = pss_kib([agent.pid])
                received = [
                    page.evaluate("[connvo.inbound('audio'), connvo.inbound('video')]")
                    for page in opened
                ]
                context.close()
        finally:
            agent.terminate()
            agent.wait(timeout=15)
            watcher.close()
    return {
        "pages": pages,
        "window_s": round(elapsed, 1),
        "load_to_connected_ms": {
            "each": [round(v) for v in load_to_connected],
            "p50": round(statistics.median(load_to_connected)),
            "max": round(max(load_to_connected)),
        },
        "per_participant": {
            "chromium_pss_mib": round((chromium_kib - chromium_idle_kib) / 1024 / pages, 1),
            "agent_pss_mib": round((agent_kib - agent_idle_kib) / 1024 / pages, 1),
            "chromium_cpu_pct": round(100 * chromium_cpu / elapsed / pages, 1),
            "agent_cpu_pct": round(100 * agent_cpu / elapsed / pages, 1),
        },
        "totals": {
            "chromium_idle_pss_mib": round(chromium_idle_kib / 1024, 1),
            "chromium_pss_mib": round(chromium_kib / 1024, 1),
            "agent_idle_pss_mib": round(agent_idle_kib / 1024, 1),
            "agent_pss_mib": round(agent_kib / 1024, 1),
        },
        "page_inbound_packets_audio_video": received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"{CHROMIUM} is missing: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="browser-interop-") as tmp:
        result = run(args.pages, args.seconds, Path(tmp))
    pp = result["per_participant"]
    ttc = result["load_to_connected_ms"]
    print(f"pages: {result['pages']} (one Chromium) vs {result['pages']} agent sessions (one bot)")
    print(f"page load -> connected: p50 {ttc['p50']} ms, max {ttc['max']} ms  {ttc['each']}")
    print(
        f"per participant, over {result['window_s']} s of media both ways:\n"
        f"  Chromium  {pp['chromium_pss_mib']:6.1f} MiB PSS  {pp['chromium_cpu_pct']:5.1f} % CPU\n"
        f"  agent     {pp['agent_pss_mib']:6.1f} MiB PSS  {pp['agent_cpu_pct']:5.1f} % CPU"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
