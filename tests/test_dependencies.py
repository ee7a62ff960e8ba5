"""The default install carries what the default path needs. The test environment has more (the
extras, the test tools), so a package that only they bring in would pass every other test and
break the README's first command on a fresh machine (scipy did, once MediaPipe's jax no longer
brought it in). Here a subprocess runs the default path, `prepare` on a video then `render`,
with every package outside the default install's requirements hidden, as a plain
``pip install`` leaves it: optional imports fall back as they would there, needed ones fail."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import wave
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

from lipsync_stream.audio import load_audio
from lipsync_stream.characters.character import default_character_files
from lipsync_stream.cli import sample_speech

PLAIN_INSTALL = """
import importlib.abc, json, sys
blocked = set(json.loads(sys.argv[1]))

class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the default install)", name=name)
        return None

sys.meta_path.insert(0, Hidden())
from lipsync_stream.cli import main
sys.exit(main(sys.argv[2:]))
"""


def key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def default_closure() -> set[str]:
    """Distributions the default install brings: the package's requirements without extras, and theirs."""
    seen: set[str] = set()
    todo = ["lipsync-stream"]
    while todo:
        name = todo.pop()
        if key(name) in seen:
            continue
        seen.add(key(name))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # a requirement for another platform or Python
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def run_plain(blocked: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # numba's cache is shared with the other tests (compiled code loaded from it still needs
    # scipy's LAPACK: with scipy hidden this fails either way, in 3 s instead of 19)
    return subprocess.run([sys.executable, "-c", PLAIN_INSTALL, json.dumps(blocked), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_prepare_and_render_run_with_only_the_default_install(tmp_path: Path) -> None:
    allowed = default_closure()
    assert "onnxruntime" in allowed and "mediapipe" not in allowed  # faces come with the plain install
    blocked = sorted({module for module, dists in packages_distributions().items() if not {key(d) for d in dists} & allowed and module != "lipsync_stream"})
    assert "torch" in blocked and "librosa" in blocked  # the extras and test tools are really hidden
    speech = load_audio(sample_speech())[: 2 * 16000]
    with wave.open(str(tmp_path / "speech.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(speech.tobytes())
    video, _ = default_character_files()
    (tmp_path / "in.mp4").write_bytes(video.read_bytes())  # no landmarks beside it: faces are found
    prepared = run_plain(blocked, "prepare", "in.mp4", "-o", "anna", "--max-seconds", "2", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    rendered = run_plain(blocked, "render", "speech.wav", "-o", "out.mp4", "--character", "anna/anna.mp4", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert (tmp_path / "out.mp4").stat().st_size > 10_000
