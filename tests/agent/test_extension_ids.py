"""Header-extension ids of our offers follow what the remote negotiated before."""

from __future__ import annotations

from agent.peer.ice import keep_extension_ids

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"

# what aiortc offers for audio + video
OURS = "\r\n".join([
    "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", f"a=extmap:1 {MID}", f"a=extmap:2 {LEVEL}",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", f"a=extmap:1 {MID}", f"a=extmap:3 {ABS}",
]) + "\r\n"  # fmt: skip


def extmaps(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=extmap:")]


def test_the_remotes_ids_win_and_new_uris_avoid_them() -> None:
    # Chromium's numbering: audio level 1, mid 4, abs-send-time not offered by it; 2 and 3 taken
    theirs = "\r\n".join([
        "m=audio 9 UDP/TLS/RTP/SAVPF 111", f"a=extmap:1 {LEVEL}", "a=extmap:2 urn:x:a",
        "a=extmap:3 urn:x:b", f"a=extmap:4 {MID}",
    ])  # fmt: skip
    assert extmaps(keep_extension_ids(OURS, theirs)) == [
        f"a=extmap:4 {MID}", f"a=extmap:1 {LEVEL}", f"a=extmap:4 {MID}", f"a=extmap:5 {ABS}",
    ]  # fmt: skip


def test_nothing_negotiated_or_same_ids_leave_the_offer_as_it_is() -> None:
    assert keep_extension_ids(OURS, "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n") == OURS
    assert keep_extension_ids(OURS, OURS) == OURS


def test_a_direction_and_attributes_are_kept() -> None:
    offer = f"m=audio 9 RTP/SAVPF 111\r\na=extmap:2/sendrecv {LEVEL} x=y\r\n"
    theirs = f"a=extmap:7 {LEVEL}\r\n"
    assert extmaps(keep_extension_ids(offer, theirs)) == [f"a=extmap:7/sendrecv {LEVEL} x=y"]
