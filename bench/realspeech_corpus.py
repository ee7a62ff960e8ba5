"""The real-speech corpus: talking-head clips of real people with their own sound, and what their
mouths did, measured by the face mesh on the real video.

Nothing here is committed but the manifest (``bench/realspeech_corpus.tsv``: every clip's
source repository, commit and path, speaker and split). The clips live in a local cache, built
once by hand:

    # the starter set is read from ../shared/realspeech; the rest from clones of the repositories
    # the manifest names (any folder of clones: owner/name or owner+name, bare or not); a path
    # VIDEO|SOUND is a video whose own sound its repository keeps beside it
    git clone https://github.com/OpenTalker/video-retalking repos/OpenTalker/video-retalking  # ...
    .venv/bin/python bench/realspeech_corpus.py --repos repos [--cache DIR]

It copies each clip into the cache (``$LIPSYNC_STREAM_CACHE/realspeech`` by default) and measures
it: the speech as 16 kHz PCM16, and per 30 fps frame the 478 face-mesh points and the mouth
state (inner-lip opening, mouth width, jaw drop, in units of the distance between the outer eye
corners, which no expression changes). A clip whose mouth does not follow its own sound (a
dubbed clip, an offset track) shows here as a weak or shifted correlation with its loudness:
the table says so.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from lipsync_stream.audio import load_audio  # noqa: E402
from lipsync_stream.characters.fetch import default_cache_dir  # noqa: E402
from lipsync_stream.characters.landmarks import EYE_OUTER, LOWER_LIP_INNER_MID, MOUTH_CORNERS, NOSE_TIP, UPPER_LIP_INNER_MID, FaceMesher, MouthFrame, fill_gaps  # noqa: E402
from lipsync_stream.characters.prepare import read_video_30fps  # noqa: E402
from lipsync_stream.wire.protocol import FPS, SAMPLE_RATE  # noqa: E402

MANIFEST = HERE / "realspeech_corpus.tsv"
SHARED = HERE.parents[1] / "shared" / "realspeech"
CHIN = 152
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS


@dataclass(frozen=True)
class Clip:
    """One manifest row."""

    id: str
    speaker: str
    split: str
    source: str
    file: str
    repo: str
    commit: str
    path: str
    duration_s: float
    description: str


@dataclass
class Measured:
    """A clip as the models see it: its speech and its real mouth, frame by frame at 30 fps."""

    clip: Clip
    pcm: np.ndarray  # int16, 16 kHz mono
    landmarks: np.ndarray  # (n, 478, 2) float32, pixels of the source video (gaps filled)
    found: np.ndarray  # (n,) bool: the mesh found the face in that frame
    opening: np.ndarray  # (n,) inner-lip gap / eye-corner distance
    width: np.ndarray  # (n,) mouth-corner distance / eye-corner distance
    jaw: np.ndarray  # (n,) nose tip to chin / eye-corner distance

    @property
    def frames(self) -> int:
        return len(self.opening)


def manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a tab-separated manifest (lines starting with # are its header's prose)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def read_manifest(path: Path = MANIFEST) -> list[Clip]:
    clips = [Clip(**{**row, "duration_s": float(row["duration_s"])}) for row in manifest_rows(path)]  # type: ignore[arg-type]
    speakers: dict[str, str] = {}
    for clip in clips:
        if speakers.setdefault(clip.speaker, clip.split) != clip.split:
            raise ValueError(f"{path}: speaker {clip.speaker} is in both splits")
    return clips


def cache_dir() -> Path:
    return default_cache_dir() / "realspeech"


SYNC = HERE / "realspeech_sync.tsv"  # written by tools/realspeech_sync.py


def read_sync(path: Path = SYNC) -> dict[str, tuple[int, str]]:
    """clip id -> (the teacher's best lag in frames, "offset" or "in sync") from
    ``tools/realspeech_sync.py``'s table; empty when it has not been measured."""
    if not path.is_file():
        return {}
    return {row["clip"]: (int(row["best_lag"]), row["verdict"]) for row in manifest_rows(path)}


def clone_of(repos: Path, repo: str) -> Path | None:
    owner, name = repo.split("/")
    for candidate in (repos / owner / name, repos / f"{owner}+{name}" / "repo", repos / f"{owner}+{name}", repos / name):
        if candidate.is_dir():
            return candidate
    return None


def git_blob(repo_dir: Path, commit: str, path: str) -> bytes:
    inner = None
    if "::" in path:
        path, inner = path.split("::", 1)
    data = subprocess.run(["git", "-C", str(repo_dir), "show", f"{commit}:{path}"], capture_output=True, check=True).stdout
    if inner is not None:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = archive.read(inner)
    return data


#: between a video and its sound in a manifest path, where the repository keeps them apart
SOUND_APART = "|"


def media_path(clip: Clip, cache: Path | None = None) -> Path:
    """Where the clip's video sits in the cache."""
    video = clip.path.split(SOUND_APART)[0]
    return (cache or cache_dir()) / "media" / f"{clip.id}{Path(video.split('::')[-1]).suffix}"


def sound_path(clip: Clip, cache: Path | None = None) -> Path | None:
    """Where the clip's sound sits in the cache when its repository keeps it beside the video
    (``VIDEO|SOUND`` in the manifest's path), else None: the video's own track."""
    if SOUND_APART not in clip.path:
        return None
    return (cache or cache_dir()) / "media" / f"{clip.id}.sound{Path(clip.path.split(SOUND_APART)[1]).suffix}"


def fetch_clip(clip: Clip, repos: Path | None, cache: Path) -> Path:
    """The clip's media in the cache (copied there from the shared set or a clone)."""
    target, sound = media_path(clip, cache), sound_path(clip, cache)
    if target.is_file() and (sound is None or sound.is_file()):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if clip.source == "shared":
        shutil.copyfile(SHARED / clip.file, target)
        return target
    repo_dir = clone_of(repos, clip.repo) if repos is not None else None
    if repo_dir is None:
        raise FileNotFoundError(f"{clip.id}: no clone of {clip.repo} under {repos} (clone it, at {clip.commit[:12]} or later)")
    paths = clip.path.split(SOUND_APART)
    target.write_bytes(git_blob(repo_dir, clip.commit, paths[0]))
    if sound is not None:
        sound.write_bytes(git_blob(repo_dir, clip.commit, paths[1]))
    return target


def mouth_state(lm: np.ndarray) -> tuple[float, float, float]:
    """(opening, width, jaw) of one frame's 478 points, in eye-corner distances."""
    eyes = float(np.hypot(*(lm[EYE_OUTER[1]] - lm[EYE_OUTER[0]])))
    frame = MouthFrame(lm)
    gap = float(frame.to_uv(lm[LOWER_LIP_INNER_MID].astype(np.float64))[1] - frame.to_uv(lm[UPPER_LIP_INNER_MID].astype(np.float64))[1]) * frame.width
    width = float(np.hypot(*(lm[MOUTH_CORNERS[1]] - lm[MOUTH_CORNERS[0]])))
    jaw = float(np.hypot(*(lm[CHIN] - lm[NOSE_TIP])))
    return max(0.0, gap) / eyes, width / eyes, jaw / eyes


def measure_video(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face-mesh points of each frame (gaps filled), which frames had a face, and the mouth
    state per frame (n, 3)."""
    points = np.zeros((len(frames), 478, 2), np.float32)
    found = np.zeros(len(frames), bool)
    with FaceMesher(video=True) as mesher:
        for i, image in enumerate(frames):
            lm = mesher.landmarks(image)
            if lm is not None:
                points[i], found[i] = lm, True
    if found.any():
        points = fill_gaps(points, found)
    state = np.array([mouth_state(p) if found.any() else (0.0, 0.0, 0.0) for p in points])
    return points, found, state


def measure_clip(clip: Clip, media: Path, cache: Path) -> Measured:
    """The clip's speech and mouth, from the cache when measured before."""
    out = cache / "measured" / f"{clip.id}.npz"
    if out.is_file():
        with np.load(out) as z:
            return Measured(clip, z["pcm"], z["landmarks"].astype(np.float32), z["found"], z["opening"], z["width"], z["jaw"])
    frames = read_video_30fps(media, max_frames=60 * 60 * FPS)
    sound = sound_path(clip, cache)
    pcm = load_audio(sound if sound is not None else media)
    n = min(len(frames), len(pcm) // SAMPLES_PER_FRAME)
    points, found, state = measure_video(frames[:n])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, pcm=pcm[: n * SAMPLES_PER_FRAME], landmarks=points.astype(np.float16), found=found, opening=state[:, 0], width=state[:, 1], jaw=state[:, 2])
    return Measured(clip, pcm[: n * SAMPLES_PER_FRAME], points, found, state[:, 0], state[:, 1], state[:, 2])


def loudness(pcm: np.ndarray, frames: int) -> np.ndarray:
    """Each 30 fps frame's loudness (dB of its own 1/30 s of samples)."""
    x = pcm[: frames * SAMPLES_PER_FRAME].astype(np.float64).reshape(frames, SAMPLES_PER_FRAME)
    return 10 * np.log10(np.mean(x**2, axis=1) + 1.0)


def correlation_at_lags(a: np.ndarray, b: np.ndarray, max_lag: int = 6) -> dict[int, float]:
    """Pearson r of *a* and *b* shifted by each lag (positive: *b* later than *a*)."""
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[: len(a) - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: len(b) + lag])
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        out[lag] = float(np.corrcoef(x, y)[0, 1]) if n > 2 and x.std() > 0 and y.std() > 0 else 0.0
    return out


def load(split: str | None = None, repos: Path | None = None, cache: Path | None = None) -> list[Measured]:
    """Every clip of *split* (all when None) measured, from the cache where it can."""
    cache = cache or cache_dir()
    return [measure_clip(clip, fetch_clip(clip, repos, cache), cache) for clip in read_manifest() if split is None or clip.split == split]


def main() -> None:
    parser = argparse.ArgumentParser(description="Build the real-speech cache and print what each clip's mouth does.")
    parser.add_argument("--repos", type=Path, help="a folder of clones of the manifest's repositories")
    parser.add_argument("--cache", type=Path, default=cache_dir())
    args = parser.parse_args()
    print("| clip | speaker | split | s | face found | opening p50 / p95 | r(loudness, opening) at 0 | best lag |")
    print("|---|---|---|---:|---:|---|---:|---:|")
    total = {"train": 0.0, "heldout": 0.0}
    speakers: dict[str, set[str]] = {"train": set(), "heldout": set()}
    seen: dict[str, str] = {}  # media digest -> clip id: repositories copy each other's examples
    for clip in read_manifest():
        try:
            media = fetch_clip(clip, args.repos, args.cache)
            m = measure_clip(clip, media, args.cache)
        except (FileNotFoundError, subprocess.CalledProcessError) as exc:
            print(f"| {clip.id} | {clip.speaker} | {clip.split} | missing: {exc} |")
            continue
        digest = hashlib.sha256(media.read_bytes()).hexdigest()
        if digest in seen:
            print(f"| {clip.id} | {clip.speaker} | {clip.split} | the same file as {seen[digest]}: drop one from the manifest |")
            continue
        seen[digest] = clip.id
        r = correlation_at_lags(loudness(m.pcm, m.frames), m.opening)
        best = max(r, key=lambda k: r[k])
        total[clip.split] += m.frames / FPS
        speakers[clip.split].add(clip.speaker)
        p50, p95 = np.percentile(m.opening, [50, 95])
        print(f"| {clip.id} | {clip.speaker} | {clip.split} | {m.frames / FPS:.1f} | {m.found.mean():.0%} | {p50:.3f} / {p95:.3f} | {r[0]:.2f} | {best:+d} ({r[best]:.2f}) |")
    for split in ("train", "heldout"):
        print(f"{split}: {len(speakers[split])} speakers, {total[split]:.0f} s")


if __name__ == "__main__":
    main()
