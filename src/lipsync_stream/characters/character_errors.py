"""What goes wrong with a character, in words a client can act on (its own module so that the
video decoding and the character store both raise it, neither importing the other)."""

from __future__ import annotations


class CharacterError(Exception):
    """The character cannot be used; the message says why."""


class CharacterBusy(CharacterError):
    """Too many characters are loading at once; the client may try again later."""
