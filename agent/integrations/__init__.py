"""Bridges from the public Python API (agent.meeting) to other frameworks, one module each, each
behind its own extra: `agent.integrations.pipecat` (`pip install 'connvo-agent[pipecat]'`).

They use `agent.join` and `agent.Meeting` only, as any bot does.
"""
