"""The agent fixtures (a meeting on a real dev backend, agents in the test loop) for these tests."""

from tests.agent.conftest import agent_factory, loopback_only, meeting  # noqa: F401
