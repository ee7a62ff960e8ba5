"""Clients of a LipsyncStream server: the async client library and the MP4 recorder."""

from ..wire.protocol import SessionParams
from .stream import CHUNK_BYTES, AudioFeed, Frame, LipsyncClient, ServerError, decode_image, stream_audio

# SessionParams too: a client needs nothing else to say what it wants (it is the protocol's).
__all__ = ["CHUNK_BYTES", "AudioFeed", "Frame", "LipsyncClient", "ServerError", "SessionParams", "decode_image", "stream_audio"]
