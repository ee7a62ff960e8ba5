"""lipsync-stream: a self-hostable real-time lip-sync streaming server (LipsyncStream protocol)."""

__version__ = "0.1.0"
