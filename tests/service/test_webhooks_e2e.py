"""The service's webhooks against a real receiver that fails: the same event is sent again with
the same webhook-id, and the bot's later events wait for it (in order per bot)."""

from __future__ import annotations

from tests.agent.conftest import Meeting
from tests.service.conftest import bot_request
from tests.support.service import Client, ServiceProcess, WebhookReceiver


async def test_a_failed_delivery_is_retried_with_its_id_and_holds_back_later_events(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    receiver.behaviour = "fail"  # 500 for everything, until told otherwise
    bot_id = (await client.create(bot_request(meeting, receiver))).json()["id"]
    await receiver.wait_for(lambda: len(receiver.deliveries) >= 1)
    await client.wait_state(bot_id, "in_meeting")
    first = receiver.deliveries[0]
    # while the first event fails, nothing after it is sent
    assert {d.headers["webhook-id"] for d in receiver.deliveries} == {first.headers["webhook-id"]}
    receiver.behaviour = "ok"
    await receiver.wait_for(lambda: len(receiver.events("bot.state_changed")) >= 3, within=60)
    states = [e["data"]["state"] for e in receiver.events("bot.state_changed")]
    assert states[:3] == ["queued", "joining", "in_meeting"]
    ids = [d.headers["webhook-id"] for d in receiver.deliveries]
    assert ids.count(first.headers["webhook-id"]) >= 2  # retried, same id
    assert ids[: ids.count(first.headers["webhook-id"])] == [
        first.headers["webhook-id"]
    ] * ids.count(first.headers["webhook-id"])  # the retries came before anything else
    assert receiver.bad_signatures == 0
    assert first.payload == receiver.deliveries[1].payload  # the same body, signed afresh
