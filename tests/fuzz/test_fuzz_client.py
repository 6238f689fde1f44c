"""Property: whatever comes back from the backend (any status, content type, body, Retry-After),
`ConvexClient.run` returns a value or raises one of its typed errors, within the retry budget,
and its errors never carry the token. Responses come from the real dev backend, then are replaced
by the generated one (an editing transport)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.convex import ConvexClient, ConvexError, RetryPolicy, TokenSource
from agent.devserver.process import DevServerProcess
from tests.fuzz.corrupt import EditingTransport

WHO = "users/queries/getCurrentUser"
POLICY = RetryPolicy(max_attempts=3, base_delay=0.001, max_delay=0.005, max_retry_after=0.05)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)  # fmt: skip
envelopes = st.fixed_dictionaries(
    {"status": st.sampled_from(["success", "error", "ok", None, 1])},
    optional={
        "value": json_values,
        "errorMessage": json_values,
        "errorData": json_values | st.fixed_dictionaries({"code": json_values}),
        "logLines": json_values,
    },
)
HTML = b"<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>"
bodies = st.one_of(
    envelopes.map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.just(HTML),
    st.just(b'{"status": "success", "value": ' + b"[" * 5000),  # truncated, deeply nested
    st.just(b'{"status":"error","errorMessage":"' + b"x" * 1_000_000 + b'"}'),
    st.just(b""),
)
content_types = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/html",
     "text/plain", "application/octet-stream", "", "application/jsonx", "multipart/form-data"]
)  # fmt: skip
statuses = st.sampled_from([200, 201, 204, 301, 400, 401, 403, 404, 405, 413, 418, 429, 500, 502,
                            503, 504, 560, 599])  # fmt: skip
retry_afters = st.none() | st.sampled_from(
    ["1", "0", "-5", "1e9", "nan", "inf", "soon", "Wed, 21 Oct 2015 07:28:00 GMT",
     "Wed, 21 Oct 2099 07:28:00 GMT", "", "  2  "]
)  # fmt: skip


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(status=statuses, content_type=content_types, body=bodies, retry_after=retry_afters)
def test_any_response_gives_a_value_or_a_typed_error(
    devserver: DevServerProcess, status: int, content_type: str, body: bytes,
    retry_after: str | None,
) -> None:  # fmt: skip
    token = devserver.token("fuzzclient")
    headers = {"Content-Type": content_type} if content_type else {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after

    def replace(request: httpx.Request, response: httpx.Response) -> httpx.Response:
        assert response.status_code == 200  # the real backend answered
        return httpx.Response(status, headers=headers, content=body)

    async def run() -> Any:
        transport = EditingTransport(replace)
        async with httpx.AsyncClient(transport=transport, timeout=5) as http:
            client = ConvexClient(devserver.url, TokenSource(value=token), http=http,
                                  retry=POLICY)  # fmt: skip
            return await client.run(WHO, {})

    started = time.monotonic()
    try:
        asyncio.run(run())
    except ConvexError as exc:
        assert token not in str(exc) and token not in repr(exc)
        assert len(str(exc)) < 2000
    # 3 attempts, waits capped at 0.05 s each: bounded whatever Retry-After says.
    assert time.monotonic() - started < 5.0
