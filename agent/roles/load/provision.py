"""Identities and meetings for a load run, created through the real API.

Tokens come from `--tokens FILE` (one per line; a line may be `name<TAB>token`) or, against the dev
backend, from its `/admin/tokens` endpoint. Meetings are created by their first participant with
createMeeting, filled with addParticipant and started with startMeeting, as a real host would.
Shards use distinct names (`load-s{I}-m{M}-p{P}`), so shards never share identities or meetings.
With `--network`, each participant is given its side of the link (`plan.link_side`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from agent.convex import ConvexClient, TokenSource
from agent.roles.load.plan import Identity, LoadPlan, PlanError, link_side
from agent.signaling.api import ConnvoApi


def participant_names(plan: LoadPlan) -> list[list[str]]:
    """Names per meeting, distinct across shards."""
    shard = plan.shard.index
    return [
        [f"load-s{shard}-m{m}-p{p}" for p in range(plan.peers_per_meeting)]
        for m in range(plan.meetings)
    ]


def read_tokens(path: Path, needed: int) -> list[tuple[str, str]]:
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise PlanError(f"--tokens: cannot read {path}: {exc.strerror}") from None
    entries = []
    for i, line in enumerate(ln for ln in lines if ln and not ln.startswith("#")):
        name, _, token = line.rpartition("\t")
        entries.append((name or f"token-{i}", token))
    if len(entries) < needed:
        raise PlanError(f"--tokens: {path} has {len(entries)} tokens, the run needs {needed}")
    return entries


async def dev_tokens(plan: LoadPlan, names: list[str]) -> list[tuple[str, str]]:
    async with httpx.AsyncClient(timeout=30.0) as http:
        response = await http.post(
            f"{plan.url}/admin/tokens",
            json={"names": names},
            headers={"X-Admin-Key": plan.admin_key or ""},
        )
    if response.status_code != 200:
        raise PlanError(f"/admin/tokens answered HTTP {response.status_code}; wrong admin key?")
    issued = response.json()["tokens"]
    return [(name, issued[name]["token"]) for name in names]


async def provision(plan: LoadPlan, http: httpx.AsyncClient) -> list[Identity]:
    """Every participant of this shard, each in its meeting (created and started here)."""
    groups = participant_names(plan)
    flat = [name for group in groups for name in group]
    if plan.tokens_file is not None:
        start = plan.shard.index * len(flat)  # shards take disjoint slices of one token file
        pairs = read_tokens(plan.tokens_file, start + len(flat))[start : start + len(flat)]
    else:
        pairs = await dev_tokens(plan, flat)
    apis = [ConnvoApi(ConvexClient(plan.url, TokenSource(value=t), http=http)) for _, t in pairs]
    users = await asyncio.gather(*(api.get_current_user() for api in apis))
    identities: list[Identity] = []
    for m, group in enumerate(groups):
        base = m * plan.peers_per_meeting
        host = apis[base]
        created = await host.client.run(
            "meetings/lifecycle/createMeeting",
            {"title": f"load {plan.shard} meeting {m}", "maxParticipants": len(group)},
        )
        meeting_id = str(created["meetingId"])
        for k in range(1, len(group)):
            await host.client.run(
                "meetings/lifecycle/addParticipant",
                {"meetingId": meeting_id, "userId": users[base + k].id, "role": "participant"},
            )
        await host.client.run("meetings/lifecycle/startMeeting", {"meetingId": meeting_id})
        for k in range(len(group)):
            name, token = pairs[base + k]
            identities.append(
                Identity(
                    name=group[k] if plan.tokens_file is None else name,
                    token=token,
                    user_id=users[base + k].id,
                    meeting_id=meeting_id,
                    hub=(plan.topology == "star" and k == 0),
                    hub_user_id=users[base].id if plan.topology == "star" else None,
                    side=link_side(k, plan.topology) if plan.network else None,
                )
            )
    return identities
