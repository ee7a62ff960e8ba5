"""The voice-agent environment has no MediaPipe (the ``[faces]`` extra cannot share it with
pipecat's and LiveKit's protobuf): the default character and prepared ones load, a video that
still needs its faces found is refused by name."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from lipsync_stream.characters.character import CharacterError, CharacterStore, default_character_files, landmarks_path_for
from lipsync_stream.characters.fetch import FetchConfig, Fetcher
from lipsync_stream.characters.mediapipe_models import available

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mediapipe") is not None, reason="MediaPipe is installed here")


def store(tmp_path: Path) -> CharacterStore:
    return CharacterStore(Fetcher(FetchConfig(asset_roots=[tmp_path], cache_dir=tmp_path / "cache")))


def test_the_default_and_a_prepared_character_load_without_mediapipe(tmp_path: Path) -> None:
    assert not available()
    video, landmarks = default_character_files()
    shutil.copy(video, tmp_path / "anna.mp4")
    shutil.copy(landmarks, landmarks_path_for(tmp_path / "anna.mp4"))
    characters = store(tmp_path)
    assert len(characters.load("default")) > 0
    assert len(characters.load("anna.mp4")) > 0


def test_a_video_whose_faces_must_be_found_is_refused_with_the_extra_named(tmp_path: Path) -> None:
    shutil.copy(default_character_files()[0], tmp_path / "bob.mp4")  # no landmarks beside it
    with pytest.raises(CharacterError, match=r"pip install 'lipsync-stream\[faces\]'"):
        store(tmp_path).load("bob.mp4")
