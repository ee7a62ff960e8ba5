"""Recordings of real people speaking, sound only, and the phones a recogniser hears in them: the
opening model's teacher corpus.

Video of people talking with their own sound is scarce in public repositories
(``bench/realspeech_corpus.tsv`` holds about ten minutes); recordings of people speaking are
not. The opening model (``engines/opening.py``) learns from them through a teacher
(``tools/train_mouth.py``): pocketsphinx's phone recogniser, whose en-us acoustic model was
trained on many hours of people, says which phone each 10 ms hop is (a phone loop, over the whole
recording: better than any streaming decision, since it is only a label), and a table learned on
the video corpus's training speakers says how far a mouth opens, on average, on that phone.

Nothing here is committed but the manifest (``bench/speech_audio.tsv``: repository, commit,
path, speaker, duration of every recording). The recordings live in a local cache, built once:

    git clone https://github.com/resemble-ai/Resemblyzer repos/resemble-ai/Resemblyzer
    .venv/bin/python bench/speech_audio.py --repos repos [--cache DIR]

which decodes each recording to 16 kHz PCM16, labels its phones and keeps both
(``$LIPSYNC_STREAM_CACHE/speechaudio``). pocketsphinx comes with the ``tools`` extra.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from realspeech_corpus import clone_of, git_blob, manifest_rows  # noqa: E402

from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.characters.fetch import default_cache_dir  # noqa: E402
from lipsync_stream.engines.features import HOP  # noqa: E402
from lipsync_stream.wire.protocol import SAMPLE_RATE  # noqa: E402

MANIFEST = HERE / "speech_audio.tsv"
SILENCE = "SIL"  # the recogniser's label for no speech (also where it says nothing)


@dataclass(frozen=True)
class Recording:
    """One manifest row."""

    id: str
    speaker: str
    repo: str
    commit: str
    path: str
    duration_s: float
    description: str


@dataclass(frozen=True)
class Heard:
    """A recording's speech (16 kHz PCM16) and the phone under each 10 ms hop's centre."""

    recording: Recording
    pcm: np.ndarray
    phones: np.ndarray  # (len(pcm) // HOP,) str


def read_manifest(path: Path = MANIFEST) -> list[Recording]:
    return [Recording(**{**row, "duration_s": float(row["duration_s"])}) for row in manifest_rows(path)]  # type: ignore[arg-type]


def cache_dir() -> Path:
    return default_cache_dir() / "speechaudio"


@functools.cache
def _decoder():  # type: ignore[no-untyped-def]
    """pocketsphinx in phone-loop mode (its en-us acoustic model and phone bigram)."""
    try:
        from pocketsphinx import Config, Decoder, get_model_path
    except ImportError as exc:
        raise RuntimeError("pocketsphinx is not installed (pip install -e '.[tools]')") from exc
    model = Path(get_model_path()) / "en-us"
    # wide beams: a label for training, not a real-time decision
    return Decoder(Config(hmm=str(model / "en-us"), allphone=str(model / "en-us-phone.lm.bin"), lm=None, dict=None, lw=2.0, beam=1e-20, pbeam=1e-20, logfn="/dev/null"))


def phones(pcm: np.ndarray) -> np.ndarray:
    """The phone (ARPAbet, or SIL) under each 10 ms hop of *pcm*, from the whole recording."""
    decoder = _decoder()
    decoder.start_utt()
    decoder.process_raw(np.ascontiguousarray(pcm, "<i2").tobytes(), False, True)
    decoder.end_utt()
    out = np.full(len(pcm) // HOP, SILENCE, dtype=object)
    for segment in decoder.seg() or []:
        out[segment.start_frame : segment.end_frame + 1] = segment.word
    return out.astype(str)


def fetch(recording: Recording, repos: Path | None, cache: Path) -> Heard:
    """The recording from the cache, or decoded from a clone and labelled there first."""
    target = cache / f"{recording.id}.npz"
    if target.is_file():
        with np.load(target) as z:
            return Heard(recording, z["pcm"], z["phones"])
    repo_dir = clone_of(repos, recording.repo) if repos is not None else None
    if repo_dir is None:
        raise FileNotFoundError(f"{recording.id}: no clone of {recording.repo} under {repos} (clone it, at {recording.commit[:12]} or later)")
    with tempfile.TemporaryDirectory() as work:
        media = Path(work) / f"{recording.id}{Path(recording.path).suffix}"
        media.write_bytes(git_blob(repo_dir, recording.commit, recording.path))
        pcm = load_audio(media)
    heard = Heard(recording, pcm, phones(pcm))
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, pcm=heard.pcm, phones=heard.phones)
    return heard


def load(repos: Path | None = None, cache: Path | None = None) -> list[Heard]:
    """Every recording of the manifest, from the cache where it can."""
    return [fetch(r, repos, cache or cache_dir()) for r in read_manifest()]


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the speech-audio cache (recordings and their phones) and print what it holds.")
    parser.add_argument("--repos", type=Path, help="a folder of clones of the manifest's repositories")
    parser.add_argument("--cache", type=Path, default=cache_dir())
    args = parser.parse_args()
    heard = []
    for i, recording in enumerate(read_manifest()):
        heard.append(fetch(recording, args.repos, args.cache))
        if (i + 1) % 50 == 0:
            print(f"{i + 1} recordings", flush=True)
    seconds = sum(len(h.pcm) for h in heard) / SAMPLE_RATE
    spoken = np.mean(np.concatenate([h.phones for h in heard]) != SILENCE)
    print(f"{len(heard)} recordings, {len({h.recording.speaker for h in heard})} speakers, {seconds / 60:.1f} min; a phone heard in {spoken:.0%} of the hops")


if __name__ == "__main__":
    main()
