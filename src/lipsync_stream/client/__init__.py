"""Clients of a LipsyncStream server: the async client library and the MP4 recorder."""

from .stream import CHUNK_BYTES, AudioFeed, Frame, LipsyncClient, ServerError, decode_image, stream_audio

__all__ = ["CHUNK_BYTES", "AudioFeed", "Frame", "LipsyncClient", "ServerError", "decode_image", "stream_audio"]
