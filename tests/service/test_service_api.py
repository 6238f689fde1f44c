"""The service's HTTP API as a platform sees it: a real `connvo-agent serve` process, its API key
check, its OpenAPI document, clear 4xx answers naming the field (nothing created), idempotent
creation, listing and deleting.

The tests that create no bot share one service (its bot list stays empty); the others have a
service of their own."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from agent.devserver.process import DevServerProcess
from tests.agent.conftest import Meeting
from tests.service.conftest import bot_request
from tests.support.service import (
    API_KEY,
    API_KEY_2,
    SECRET,
    Client,
    ServiceProcess,
    WebhookReceiver,
)

TOKEN = "tok-0123456789-the-callers-secret-token"


@pytest.fixture(scope="module")
def service(shared_service: ServiceProcess) -> ServiceProcess:
    return shared_service


@pytest.fixture(scope="module")
def devserver(shared_devserver: DevServerProcess) -> DevServerProcess:
    return shared_devserver


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def valid_body(**fields: Any) -> dict[str, Any]:
    """A request that would be taken (its bot fails at once: nothing listens at the url)."""
    return {
        "meeting_id": "m1",
        "url": f"http://127.0.0.1:{closed_port()}",
        "token": TOKEN,
        "webhook": {"url": "http://127.0.0.1:9/hook", "secret": SECRET},
        "settings": {"max_retries": 0},
        **fields,
    }


def without(key: str) -> dict[str, Any]:
    body = valid_body()
    del body[key]
    return body


# --- bad requests --------------------------------------------------------------------------------

# (case, body (a dict, sent as JSON; or bytes, sent as they are), status, error.field)
BAD_REQUESTS: list[tuple[str, Any, int, str | None]] = [
    ("unknown field", valid_body(colour="blue"), 422, "colour"),
    ("no meeting_id", without("meeting_id"), 422, "meeting_id"),
    ("empty meeting_id", valid_body(meeting_id=""), 422, "meeting_id"),
    ("meeting_id not a string", valid_body(meeting_id=7), 422, "meeting_id"),
    ("no url", without("url"), 422, "url"),
    ("url not a url", valid_body(url=TOKEN), 422, "url"),
    ("bad role", valid_body(role="dancer"), 422, "role"),
    ("role is the token", valid_body(role=TOKEN), 422, "role"),
    ("token and token_file", valid_body(token_file="/tmp/token"), 422, "token"),
    ("neither token nor token_file", without("token"), 422, "token"),
    ("blank token", valid_body(token="   "), 422, "token"),
    ("token not a string", valid_body(token=12345678), 422, "token"),
    (
        "token_file unreadable",
        {**without("token"), "token_file": "/nonexistent/token"},
        422,
        "token_file",
    ),
    (
        "webhook secret without whsec_",
        valid_body(webhook={"url": "http://127.0.0.1:9/", "secret": TOKEN}),
        422,
        "webhook.secret",
    ),
    (
        "webhook secret too short",
        valid_body(webhook={"url": "http://127.0.0.1:9/", "secret": "whsec_c2hvcnQ="}),
        422,
        "webhook.secret",
    ),
    (
        "webhook without url",
        valid_body(webhook={"secret": SECRET}),
        422,
        "webhook.url",
    ),
    (
        "webhook url not http",
        valid_body(webhook={"url": "ftp://127.0.0.1/hook", "secret": SECRET}),
        422,
        "webhook.url",
    ),
    (
        "settings value out of range",
        valid_body(settings={"session_timeout": -1}),
        422,
        "settings.session_timeout",
    ),
    (
        "settings value of a wrong type",
        valid_body(settings={"max_retries": TOKEN}),
        422,
        "settings.max_retries",
    ),
    ("settings key unknown", valid_body(settings={"nonsense": 1}), 422, "settings.nonsense"),
    (
        "settings key unknown, value the token",
        valid_body(settings={"nonsense": TOKEN}),
        422,
        "settings.nonsense",
    ),
    (
        "settings key reserved",
        valid_body(settings={"state_dir": "/"}),
        422,
        "settings.state_dir",
    ),
    (
        "settings key reserved: token",
        valid_body(settings={"token": TOKEN}),
        422,
        "settings.token",
    ),
    ("settings not an object", valid_body(settings=[1]), 422, "settings"),
    ("media unknown key", valid_body(media={"sound": "tone"}), 422, "media.sound"),
    ("media receive unknown", valid_body(media={"receive": "all"}), 422, "media.receive"),
    ("media audio empty", valid_body(media={"audio": ""}), 422, "media.audio"),
    ("auto_leave zero", valid_body(auto_leave={"alone_s": 0}), 422, "auto_leave.alone_s"),
    (
        "auto_leave unknown rule",
        valid_body(auto_leave={"lonely_s": 5}),
        422,
        "auto_leave.lonely_s",
    ),
    ("display_name empty", valid_body(display_name=""), 422, "display_name"),
    ("metadata too big", valid_body(metadata={"blob": "x" * 20_000}), 422, "metadata"),
    ("metadata not an object", valid_body(metadata=[1]), 422, "metadata"),
    ("body not JSON", b"{meeting_id: m1", 400, None),
    ("body empty", b"", 400, None),
    ("body a list", b"[1, 2]", 422, None),
    ("body a string", json.dumps(TOKEN).encode(), 422, None),
    ("body too large", b"{" + b" " * 300_000 + b"}", 413, None),
]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS],
)
async def test_a_bad_request_is_a_clear_4xx_naming_the_field_and_creates_nothing(
    client: Client, body: Any, status: int, field: str | None
) -> None:
    if isinstance(body, bytes):
        headers = {"Content-Type": "application/json"}
        response = await client.http.post("/v1/bots", content=body, headers=headers)
    else:
        response = await client.create(body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error.get("field") == field, error
    assert error["code"] and error["message"]
    if field is not None:
        assert error["message"].startswith(f"{field}: "), error
    assert TOKEN not in response.text and SECRET not in response.text
    assert (await client.http.get("/v1/bots")).json() == {"bots": [], "next_after": None}


async def test_a_bad_idempotency_key_or_state_filter_is_a_4xx(client: Client) -> None:
    long_key = await client.create(valid_body(), **{"Idempotency-Key": "k" * 256})
    assert long_key.status_code == 422
    assert long_key.json()["error"]["field"] == "Idempotency-Key"
    listed = await client.http.get("/v1/bots", params={"state": "dancing"})
    assert listed.status_code == 422 and listed.json()["error"]["field"] == "state"
    assert "in_meeting" in listed.json()["error"]["message"]
    assert (await client.http.get("/v1/bots")).json() == {"bots": [], "next_after": None}


async def test_unknown_bots_and_routes_are_404(client: Client) -> None:
    for method, path in [
        ("GET", "/v1/bots/bot_0123"),
        ("DELETE", "/v1/bots/bot_0123"),
        ("GET", "/v1/bots/bot_0123/transcript"),
        ("GET", "/v1/bots/bot_0123/recordings"),
        ("GET", "/v1/bots/bot_0123/recordings/a/b.ogg"),
        ("GET", "/v1/nothing"),
    ]:
        response = await client.http.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    wrong = await client.http.put("/v1/bots")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


# --- authentication ------------------------------------------------------------------------------

ROUTES = [
    ("GET", "/openapi.json"),
    ("POST", "/v1/bots"),
    ("GET", "/v1/bots"),
    ("GET", "/v1/bots/bot_0123"),
    ("DELETE", "/v1/bots/bot_0123"),
    ("GET", "/v1/bots/bot_0123/transcript"),
    ("GET", "/v1/bots/bot_0123/recordings"),
    ("GET", "/v1/bots/bot_0123/recordings/a.ogg"),
]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer not-the-key",
        "Bearer",
        f"Basic {API_KEY}",
        f"Bearer {API_KEY}x",
        f"Bearer {API_KEY[:-1]}",
        "Bearer # test keys",  # the key file's comment line is no key
    ],
)
async def test_every_v1_route_needs_a_key(
    service: ServiceProcess, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with httpx.AsyncClient(base_url=service.url, headers=headers) as anonymous:
        for method, path in ROUTES:
            response = await anonymous.request(
                method, path, json=valid_body() if method == "POST" else None
            )
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"]["code"] == "unauthorized"
        for path in ("/healthz", "/metrics"):
            assert (await anonymous.get(path)).status_code == 200, path
    async with Client(service.url) as first, Client(service.url, API_KEY_2) as second:
        assert (await first.http.get("/v1/bots")).json() == {
            "bots": [],
            "next_after": None,
        }  # created nothing
        assert (await second.http.get("/v1/bots")).status_code == 200


# --- the OpenAPI document ------------------------------------------------------------------------


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def validator(document: dict[str, Any], schema: str) -> jsonschema.Draft202012Validator:
    """A validator of the document's `schema` (its $refs resolved within the document)."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:openapi", Resource.from_contents(document, default_specification=DRAFT202012)
    )
    return jsonschema.Draft202012Validator(
        {"$ref": f"urn:openapi#/components/schemas/{schema}"}, registry=registry
    )


async def test_the_openapi_document_lists_every_route(client: Client) -> None:
    response = await client.http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] and document["info"]["version"]
    operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    }
    assert operations == {
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
        ("POST", "/v1/bots"),
        ("GET", "/v1/bots"),
        ("GET", "/v1/bots/{bot_id}"),
        ("DELETE", "/v1/bots/{bot_id}"),
        ("GET", "/v1/bots/{bot_id}/transcript"),
        ("GET", "/v1/bots/{bot_id}/recordings"),
        ("GET", "/v1/bots/{bot_id}/recordings/{path}"),
    }
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert operation["responses"], (method, path)
            public = path in ("/healthz", "/metrics")
            assert (operation.get("security") == []) == public, (method, path)
            if not public:
                assert "401" in operation["responses"], (method, path)
        # every path parameter is declared
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert declared == {part[1:-1] for part in path.split("/") if part.startswith("{")}
    assert document["security"] == [{"apiKey": []}]
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    # every $ref resolves, and every schema is a valid JSON Schema (2020-12, as OpenAPI 3.1)
    for ref in refs(document):
        assert isinstance(resolve(document, ref), dict), ref
    for name, schema in document["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name in {"BotRequest", "Bot", "BotList", "Transcript", "ErrorAnswer"} or any(
            ref.endswith(f"/{name}") for ref in refs(document)
        ), name
    # and the answers are what it says
    bad = await client.create({"meeting_id": ""})
    validator(document, "ErrorAnswer").validate(bad.json())
    validator(document, "BotList").validate((await client.http.get("/v1/bots")).json())
    validator(document, "BotRequest").validate(valid_body())


# --- idempotency ---------------------------------------------------------------------------------


async def test_an_idempotency_key_makes_one_bot_per_api_key(
    service_factory: Any, receiver: WebhookReceiver
) -> None:
    own = service_factory("--workers", "1")
    body = valid_body(webhook={"url": receiver.url, "secret": SECRET}, metadata={"n": 1})
    key = {"Idempotency-Key": "order-42"}
    async with Client(own.url) as first, Client(own.url, API_KEY_2) as second:
        created = await first.create(body, **key)
        assert created.status_code == 201, created.text
        assert "idempotent-replayed" not in created.headers
        bot = created.json()
        assert created.headers["location"] == f"/v1/bots/{bot['id']}"

        # the same body again (its keys in another order): the same bot
        reordered = json.dumps(dict(reversed(list(body.items()))))
        replayed = await first.http.post(
            "/v1/bots", content=reordered, headers={**key, "Content-Type": "application/json"}
        )
        assert replayed.status_code == 201, replayed.text
        assert replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json()["id"] == bot["id"]
        # at once, many times over: still the one bot
        many = await asyncio.gather(*(first.create(body, **key) for _ in range(5)))
        assert {r.json()["id"] for r in many} == {bot["id"]}
        assert all(r.headers["idempotent-replayed"] == "true" for r in many)
        assert [b["id"] for b in (await first.http.get("/v1/bots")).json()["bots"]] == [bot["id"]]

        # the same key with another body: a conflict, nothing created
        conflict = await first.create({**body, "metadata": {"n": 2}}, **key)
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["error"]["field"] == "Idempotency-Key"
        assert TOKEN not in conflict.text

        # the same key under another API key: another bot
        other = await second.create(body, **key)
        assert other.status_code == 201 and "idempotent-replayed" not in other.headers
        assert other.json()["id"] != bot["id"]
        again = await second.create(body, **key)
        assert again.json()["id"] == other.json()["id"]
        # no key: a new bot each time
        plain = [await first.create(body) for _ in range(2)]
        assert len({r.json()["id"] for r in plain}) == 2
        listed = (await first.http.get("/v1/bots")).json()["bots"]
        assert len(listed) == 4

        # one bot.state_changed "queued" per bot made, none for the replays
        def queued() -> list[str]:
            return [
                e["data"]["bot_id"]
                for e in receiver.events("bot.state_changed")
                if e["data"]["state"] == "queued"
            ]

        await receiver.wait_for(lambda: len(queued()) == 4)
        assert sorted(queued()) == sorted(b["id"] for b in listed)
        await first.wait_state(bot["id"], "failed")  # the replays ran nothing more
        assert [h["state"] for h in (await first.bot(bot["id"]))["history"]] == [
            "queued",
            "joining",
            "failed",
        ]
    assert len(queued()) == 4


# --- listing and deleting ------------------------------------------------------------------------


async def test_bots_are_listed_by_state_and_deleted_in_any_state(
    service_factory: Any, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    own = service_factory("--workers", "1", "--max-bots", "1")  # room for one bot only
    async with Client(own.url) as client:
        first = (await client.create(bot_request(meeting, receiver))).json()["id"]
        await client.wait_state(first, "in_meeting")
        second = (await client.create(bot_request(meeting, receiver))).json()["id"]

        async def ids(state: str | None = None) -> list[str]:
            params = {"state": state} if state else {}
            answer = await client.http.get("/v1/bots", params=params)
            assert answer.status_code == 200, answer.text
            return [b["id"] for b in answer.json()["bots"]]

        assert await ids() == [first, second]
        # pages, oldest first
        page = (await client.http.get("/v1/bots", params={"limit": 1})).json()
        assert ([b["id"] for b in page["bots"]], page["next_after"]) == ([first], first)
        page = (await client.http.get("/v1/bots", params={"limit": 1, "after": first})).json()
        assert ([b["id"] for b in page["bots"]], page["next_after"]) == ([second], None)
        for bad in ("0", "1001", "x"):
            refused = await client.http.get("/v1/bots", params={"limit": bad})
            assert refused.status_code == 422 and refused.json()["error"]["field"] == "limit"
        assert await ids("in_meeting") == [first]
        assert await ids("queued") == [second]
        assert await ids("ended") == []

        # a queued bot ends at once, without ever running
        deleted = await client.http.delete(f"/v1/bots/{second}")
        assert deleted.status_code == 200, deleted.text
        gone = deleted.json()
        assert (gone["state"], gone["reason"]) == ("ended", "requested")
        assert [h["state"] for h in gone["history"]] == ["queued", "ended"]
        assert gone["worker"] is None and gone["attempt"] == 0

        # a running one leaves
        leaving = await client.http.delete(f"/v1/bots/{first}")
        assert leaving.status_code == 202, leaving.text
        final = await client.wait_state(first, "ended", "failed")
        assert (final["state"], final["reason"]) == ("ended", "requested")

        # a final one stays as it is
        for bot_id in (first, second):
            before = await client.bot(bot_id)
            again = await client.http.delete(f"/v1/bots/{bot_id}")
            assert again.status_code == 200, again.text
            assert again.json() == before
        assert await ids("ended") == [first, second]
        assert await ids("queued") == []
        assert (await client.bot(second))["history"] == gone["history"]  # it never ran

        # the answers are what the OpenAPI document says
        document = (await client.http.get("/openapi.json")).json()
        validator(document, "Bot").validate(final)
        validator(document, "BotList").validate((await client.http.get("/v1/bots")).json())

    await receiver.wait_for(lambda: len(receiver.events("bot.state_changed")) == 7)
    second_states = [
        e["data"]["state"]
        for e in receiver.events("bot.state_changed")
        if e["data"]["bot_id"] == second
    ]
    assert second_states == ["queued", "ended"]


# --- token files ---------------------------------------------------------------------------------


async def test_a_token_file_is_read_only_inside_the_token_dir(
    service_factory: Any, meeting: Meeting, tmp_path: Any
) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "bot.token").write_text(meeting.tokens["bot"] + "\n")
    outside = tmp_path / "outside.token"
    outside.write_text(meeting.tokens["bot"] + "\n")
    own = service_factory("--workers", "1", "--token-dir", str(tokens))
    body = bot_request(meeting)
    del body["token"]
    async with Client(own.url) as client:
        for name in ("../outside.token", str(outside), ".", "sub/../../outside.token"):
            refused = await client.create({**body, "token_file": name})
            assert refused.status_code == 422, (name, refused.text)
            assert refused.json()["error"]["field"] == "token_file"
            assert str(outside) not in refused.text
        created = await client.create({**body, "token_file": "bot.token"})
        assert created.status_code == 201, created.text
        await client.wait_state(created.json()["id"], "in_meeting")
        assert len((await client.http.get("/v1/bots")).json()["bots"]) == 1


async def test_without_a_token_dir_no_token_file_is_taken(client: Client) -> None:
    body = valid_body(token_file="/etc/hostname")
    del body["token"]
    refused = await client.create(body)
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "token_file"
    assert "--token-dir" in refused.json()["error"]["message"]
