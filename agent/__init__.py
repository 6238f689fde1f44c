"""connvo-agent: a headless WebRTC participant for Connvo meetings."""

__version__ = "0.1.0"
