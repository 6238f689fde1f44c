from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from agent.metrics import AgentMetrics


def test_metrics_increment_and_render() -> None:
    metrics = AgentMetrics()
    metrics.signals_received.inc(3)
    metrics.signals_applied.inc()
    metrics.signals_acknowledged.inc(2)
    metrics.signals_rejected.labels(reason="stale").inc()
    metrics.poll_latency_seconds.observe(0.03)
    metrics.time_to_connected_seconds.observe(1.5)
    metrics.backend_requests.labels(function="signals:poll", outcome="ok").inc()
    metrics.set_sessions({"connected": 2, "negotiating": 1})
    metrics.set_sessions({"connected": 3})

    text = metrics.render().decode()
    assert "connvo_agent_signals_received_total 3.0" in text
    assert "connvo_agent_signals_applied_total 1.0" in text
    assert "connvo_agent_signals_acknowledged_total 2.0" in text
    assert 'connvo_agent_signals_rejected_total{reason="stale"} 1.0' in text
    assert "connvo_agent_poll_latency_seconds_count 1.0" in text
    assert 'connvo_agent_time_to_connected_seconds_bucket{le="2.0"} 1.0' in text
    assert 'connvo_agent_backend_requests_total{function="signals:poll",outcome="ok"} 1.0' in text
    assert 'connvo_agent_sessions{state="connected"} 3.0' in text
    assert 'connvo_agent_sessions{state="negotiating"} 0.0' in text


def test_registries_are_private() -> None:
    # Two agents in one process register the same names without clashing.
    a, b = AgentMetrics(), AgentMetrics()
    a.signals_received.inc()
    assert b"connvo_agent_signals_received_total 0.0" in b.render()


def test_http_server_serves_and_stops() -> None:
    metrics = AgentMetrics()
    metrics.signals_applied.inc(7)
    server = metrics.start_http_server(0)
    url = f"http://127.0.0.1:{server.port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200
            assert b"connvo_agent_signals_applied_total 7.0" in response.read()
    finally:
        server.stop()
    assert not server.thread.is_alive()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)
