"""`connvo-agent serve` and `connvo-agent worker` as the tests run them: real processes on
loopback, a real webhook receiver, and a helper to call the API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from standardwebhooks import Webhook

from tests.support.waiting import poll_until

READY = "connvo-agent serve listening on "
API_KEY = "test-api-key-0123456789"
API_KEY_2 = "test-api-key-second-9876543210"  # a second key of the same key file
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # base64 of 24 bytes
START_TIMEOUT = 30.0
# The service's and workers' environment in tests: bots gather ICE candidates on loopback only
WORKER_ENV = {"CONNVO_ICE_HOST_ADDRESSES": '["127.0.0.1"]'}


class ServiceProcess:
    """A `connvo-agent serve` process on 127.0.0.1 with a fresh port; its stderr goes to a log
    file under its state dir (read it when a test fails)."""

    def __init__(self, state_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.extra = list(extra)
        self.env = env
        self.key_file = state_dir.parent / f"{state_dir.name}.keys"
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ServiceProcess:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.key_file.write_text(f"# test keys\n{API_KEY}\n\n{API_KEY_2}\n")
        log = open(self.state_dir / "service.log", "a")  # the process writes to it
        self.process = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--host", "127.0.0.1", "--port", "0",
             "--api-key-file", str(self.key_file), "--state-dir", str(self.state_dir),
             *self.extra],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, **WORKER_ENV, **(self.env or {})},
        )  # fmt: skip
        log.close()
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = self.process.stdout.readline()
        if not line.startswith(READY) or time.monotonic() > deadline:
            self.process.kill()
            raise RuntimeError(f"serve did not start: {line!r}\n{self.log()}")
        self.url = line.removeprefix(READY).strip()
        return self

    def log(self) -> str:
        path = self.state_dir / "service.log"
        return path.read_text() if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Client:
    """The service's API, as a platform calls it (async httpx)."""

    def __init__(self, url: str, key: str = API_KEY) -> None:
        self.http = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create(self, body: dict[str, Any], **headers: str) -> httpx.Response:
        return await self.http.post("/v1/bots", json=body, headers=headers)

    async def bot(self, bot_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/bots/{bot_id}")
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data

    async def wait_state(self, bot_id: str, *states: str, within: float = 30.0) -> dict[str, Any]:
        """Poll the bot until it is in one of `states`; its answer. An AssertionError with the
        last answer after `within` seconds."""
        return await self.wait_for(bot_id, lambda b: b.get("state") in states, within=within)

    async def wait_for(
        self, bot_id: str, check: Callable[[dict[str, Any]], bool], within: float = 30.0
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def holds() -> dict[str, Any] | None:
            nonlocal last
            last = await self.bot(bot_id)
            return last if check(last) else None

        try:
            async with asyncio.timeout(within):
                result: dict[str, Any] = await poll_until(holds)
                return result
        except TimeoutError:
            raise AssertionError(f"condition never held: {json.dumps(last)[:3000]}") from None


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    payload: dict[str, Any] = field(default_factory=dict)


class WebhookReceiver:
    """A real HTTP endpoint on 127.0.0.1 that verifies each delivery's signature with the
    standardwebhooks library, records it, and answers as `behaviour` says: "ok" (204), "fail"
    (500) or "hang" (never answers)."""

    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.deliveries: list[Delivery] = []  # verified ones, in arrival order
        self.attempts = 0
        self.bad_signatures = 0
        self.behaviour = "ok"
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.attempts += 1
        try:
            payload = self.verifier.verify(body, headers)
        except Exception:
            self.bad_signatures += 1
            return web.Response(status=400)
        behaviour = self.behaviour
        if behaviour == "hang":
            await asyncio.Event().wait()
        self.deliveries.append(Delivery(headers, body, payload))
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return web.Response(status=500 if behaviour == "fail" else 204)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Verified payloads answered 2xx... and not: every verified delivery, deduplicated by
        webhook-id (first arrival), optionally of one type."""
        seen: dict[str, dict[str, Any]] = {}
        for d in self.deliveries:
            seen.setdefault(d.headers["webhook-id"], d.payload)
        return [p for p in seen.values() if kind is None or p["type"] == kind]

    async def wait_for(self, check: Callable[[], bool], within: float = 30.0) -> None:
        try:
            async with asyncio.timeout(within):
                while not check():
                    await self._changed.wait()
        except TimeoutError:
            shown = [(p["type"], p["data"].get("state")) for p in self.events()]
            raise AssertionError(f"webhooks never matched; got {shown}") from None
