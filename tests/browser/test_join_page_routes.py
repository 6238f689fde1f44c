"""The dev backend's join-page routes over real HTTP (no browser needed)."""

from __future__ import annotations

import httpx

from tests.agent.conftest import Meeting


def test_join_page_and_script_are_served(meeting: Meeting) -> None:
    with httpx.Client(base_url=meeting.server.url) as http:
        page = http.get("/join", params={"meeting": meeting.id})
        script = http.get("/static/join.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/join.js">' in page.text
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "getPendingSignals" in script.text and "markSignalsProcessed" in script.text


def test_dev_token_makes_a_participant(meeting: Meeting) -> None:
    with httpx.Client(base_url=meeting.server.url) as http:
        issued = http.post("/dev/token", json={"name": "dave", "meeting": meeting.id})
        assert issued.status_code == 200
        token, user_id = issued.json()["token"], issued.json()["userId"]
        auth = {"Authorization": f"Bearer {token}"}
        me = http.post(
            "/api/run/users/queries/getCurrentUser", json={"args": {}}, headers=auth
        ).json()
        joined = http.post(
            "/api/run/meetings/lifecycle/joinMeeting",
            json={"args": {"meetingId": meeting.id}},
            headers=auth,
        ).json()
        # the same user again: same id, no second participant row
        again = http.post("/dev/token", json={"name": "dave", "meeting": meeting.id}).json()
    assert me["status"] == "success" and me["value"]["_id"] == user_id
    assert me["value"]["displayName"] == "dave"
    assert joined["status"] == "success"
    assert again["userId"] == user_id


def test_dev_token_refuses_bad_requests(meeting: Meeting) -> None:
    unknown_meeting = meeting.id[:-6] + (
        "aaaaaa" if not meeting.id.endswith("aaaaaa") else "bbbbbb"
    )
    with httpx.Client(base_url=meeting.server.url) as http:
        assert http.post("/dev/token", content=b"{").status_code == 400
        assert http.post("/dev/token", json={"name": ""}).status_code == 400
        assert http.post("/dev/token", json={"name": "x", "meeting": "nope"}).status_code == 400
        missing = http.post("/dev/token", json={"name": "x", "meeting": unknown_meeting})
        assert missing.status_code in (400, 404)  # not an ID (checksum) or not found
        assert "token" not in missing.text
