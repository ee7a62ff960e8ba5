"""Lip-sync on real people: our mouth against the real speaker's, on held-out speakers.

    .venv/bin/python bench/realspeech.py [--engine viseme] [--split heldout] [--sheet docs/quality/realspeech.jpg]

For every clip of the split (bench/realspeech_corpus.tsv; build the cache first with
bench/realspeech_corpus.py), the clip's own speech is rendered as a server would send it (JPEG),
and the face mesh measures the inner-lip opening on our frames, the same way it measured the
real speaker's (in eye-corner distances). Three mouths are compared with the real one:

- (a) the default character;
- (b) a character ``prepare``d from the same footage played backwards: the same face, light and
  camera, but its own mouth motion no longer matches the sound (passing the footage's mouth
  through would score about 0, not 1);
- (c) the loudness baseline: the opening taken to be the speech's loudness.

Per clip and mean: Pearson r at lag 0 and the best lag within +-6 frames (positive: our mouth
later than the real one), and the widest opening (95th percentile) against the speaker's; the
mean again over the clips whose sound is in sync with their picture (``realspeech_sync.tsv``,
measured without our model by ``tools/realspeech_sync.py``). For
(b), whose mouth comes from the person's own frames (``engines/footage``), two more against the
real footage: how rough the lips are (the face mesh's lip polylines: the 95th percentile over
frames of the largest second difference, in mouth widths) and how much the lower face changes
from frame to frame (mean grey-level change round the mouth). A contact sheet shows real frames
beside ours at the real speaker's widest openings, nose to chin.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

from realspeech_corpus import SYNC, Measured, correlation_at_lags, load, loudness, measure_video, media_path, read_sync  # noqa: E402

from lipsync_stream.characters.character import Character, CharacterStore, load_default_character  # noqa: E402
from lipsync_stream.characters.fetch import FetchConfig, Fetcher  # noqa: E402
from lipsync_stream.characters.landmarks import LIPS_LOWER_INNER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER, LIPS_UPPER_OUTER, MOUTH_CORNERS  # noqa: E402
from lipsync_stream.characters.prepare import prepare, read_video_30fps, write_video  # noqa: E402
from lipsync_stream.client.recorder import Mp4Writer  # noqa: E402
from lipsync_stream.engines import get_engine  # noqa: E402
from lipsync_stream.pipeline import FrameRenderer  # noqa: E402
from lipsync_stream.wire.protocol import AudioFramer, SessionParams, decode_frame  # noqa: E402


def render(character: Character, pcm: np.ndarray, engine_name: str) -> list[np.ndarray]:
    """Our frames for *pcm*, as a client would decode them."""
    engine = get_engine(engine_name)
    renderer = FrameRenderer(engine, character, SessionParams())
    framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
    framer.push(pcm.astype("<i2").tobytes())
    framer.flush()
    frames = []
    while framer.ready():
        message = decode_frame(renderer.render(framer.pop()))
        frames.append(cv2.imdecode(np.frombuffer(message.image, np.uint8), cv2.IMREAD_COLOR))
    renderer.close()
    return frames


def reversed_character(clip: Measured, media: Path, work: Path) -> Character:
    """The clip's own footage, played backwards, prepared as a character."""
    frames = read_video_30fps(media)[: clip.frames][::-1]
    source = work / f"{clip.clip.id}-reversed.mp4"
    side = max(frames[0].shape[:2])
    write_video(source, np.stack([cv2.copyMakeBorder(f, 0, side - f.shape[0], 0, side - f.shape[1], cv2.BORDER_REPLICATE) for f in frames]))
    prepare(source, work / clip.clip.id, progress=False)
    store = CharacterStore(Fetcher(FetchConfig(asset_roots=[work], cache_dir=work / "cache")))
    return store.load(f"{clip.clip.id}/{clip.clip.id}.mp4")


def score(real: np.ndarray, ours: np.ndarray) -> tuple[float, int, float]:
    """(r at lag 0, best lag, widest-opening ratio) of *ours* against *real*."""
    n = min(len(real), len(ours))
    r = correlation_at_lags(real[:n], ours[:n])
    best = max(r, key=lambda k: r[k])
    wide = float(np.percentile(ours[:n], 95) / max(1e-6, np.percentile(real[:n], 95)))
    return r[0], best, wide


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="viseme")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--no-default", action="store_true", help="skip (a)")
    parser.add_argument("--no-reversed", action="store_true", help="skip (b): prepare costs about a second per second of footage")
    parser.add_argument("--sheet", type=Path, help="write a contact sheet (real | default | reversed) here")
    parser.add_argument("--video", type=Path, help="write each clip side by side (real | default | reversed), with its sound, into this folder (fetched media: keep it out of the repository)")
    parser.add_argument("--clips", help="only these clip ids, comma-separated")
    parser.add_argument("--warp", action="store_true", help="(b) drawn by the warp, as before the mouth came from the person's own frames")
    args = parser.parse_args()
    clips = load(args.split)
    if args.clips:
        clips = [c for c in clips if c.clip.id in args.clips.split(",")]
    rows: dict[str, list[tuple[float, int, float]]] = {"default": [], "reversed": [], "loudness": []}
    footage_rows: list[tuple[str, float, float]] = []
    sheet_rows = []
    default = load_default_character()
    print(f"engine {args.engine}; {len(clips)} {args.split} clips; r at lag 0 / best lag / widest opening vs the speaker's")
    print("| clip | s | (a) default | (b) own footage reversed | (c) loudness |")
    print("|---|---:|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for clip in clips:
            cells = []
            ours_default: list[np.ndarray] = []
            points_default = np.zeros((0, 478, 2), np.float32)
            if not args.no_default:
                ours_default = render(default, clip.pcm, args.engine)
                points_default, _f, state = measure_video(ours_default)
                rows["default"].append(score(clip.opening, state[:, 0]))
                cells.append(rows["default"][-1])
            else:
                cells.append((float("nan"), 0, float("nan")))
            reversed_frames: list[np.ndarray] = []
            points_reversed = np.zeros((0, 478, 2), np.float32)
            if not args.no_reversed:
                character = reversed_character(clip, media_path(clip.clip), Path(tmp))
                if args.warp:
                    object.__setattr__(character, "footage", None)
                reversed_frames = render(character, clip.pcm, args.engine)
                points_reversed, _f, state_r = measure_video(reversed_frames)
                rows["reversed"].append(score(clip.opening, state_r[:, 0]))
                cells.append(rows["reversed"][-1])
                real = read_video_30fps(media_path(clip.clip))[: clip.frames]
                footage_rows.append((clip.clip.id, lip_roughness(points_reversed) / max(lip_roughness(clip.landmarks), 1e-9), lower_face_change(reversed_frames, points_reversed) / max(lower_face_change(real, clip.landmarks), 1e-9)))
            else:
                cells.append((float("nan"), 0, float("nan")))
            r0, lag, _wide = score(clip.opening, loudness(clip.pcm, clip.frames))
            rows["loudness"].append((r0, lag, float("nan")))  # (decibels: no opening to compare)
            cells.append(rows["loudness"][-1])
            print(f"| {clip.clip.id} | {clip.frames / 30:.1f} | " + " | ".join(f"{r:.2f} / {lag:+d} / {w:.2f}" for r, lag, w in cells) + " |")
            if args.video is not None:
                side_by_side(args.video / f"{clip.clip.id}.mp4", clip, [ours_default, reversed_frames])
            if args.sheet is not None:
                sheet_rows.append(sheet_row(clip, [(ours_default, points_default), (reversed_frames, points_reversed)]))
    print("| **mean** | | " + " | ".join(summary(rows[k]) for k in ("default", "reversed", "loudness")) + " |")
    # The same over the clips whose sound is in sync with their picture by a check that does not
    # use our model (tools/realspeech_sync.py): on an offset clip any mouth from the sound scores
    # about 0 at lag 0. The mean over all clips stays the headline figure.
    sync = read_sync()
    in_sync = [i for i, clip in enumerate(clips) if sync.get(clip.clip.id, (0, ""))[1] == "in sync"]
    unchecked = [clip.clip.id for clip in clips if clip.clip.id not in sync]
    if sync and unchecked:
        print(f"(not in {SYNC.name}, so not counted in sync: {', '.join(unchecked)}; rerun tools/realspeech_sync.py)")
    if sync and len(in_sync) < len(clips):
        print(f"| **in sync ({len(in_sync)} of {len(clips)})** | | " + " | ".join(summary([rows[k][i] for i in in_sync if i < len(rows[k])]) for k in ("default", "reversed", "loudness")) + " |")
    if footage_rows:
        print("\n(b) against the real footage (goal: at most 1.5x each)\n\n| clip | lip roughness, ours / real | lower-face change per frame, ours / real |\n|---|---:|---:|")
        for clip_id, rough, change in footage_rows:
            print(f"| {clip_id} | {rough:.2f} | {change:.2f} |")
        print(f"| **mean** | {np.mean([r for _c, r, _x in footage_rows]):.2f} | {np.mean([x for _c, _r, x in footage_rows]):.2f} |")
    if args.sheet is not None and sheet_rows:
        args.sheet.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.sheet), np.vstack(sheet_rows), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(f"contact sheet: {args.sheet}")


def summary(rows: list[tuple[float, int, float]]) -> str:
    if not rows:
        return "-"
    r = np.array([x[0] for x in rows])
    lags = np.array([x[1] for x in rows])
    wide = np.array([x[2] for x in rows])
    widest = f"; widest {np.nanmean(wide):.2f}" if np.isfinite(wide).any() else ""
    return f"r {np.nanmean(r):.2f}; lag within +-1 on {np.mean(np.abs(lags) <= 1):.0%}{widest}"


def lip_roughness(points: np.ndarray) -> float:
    """How rough the lips are in frames with face-mesh *points* (n, 478, 2): per frame the largest
    second difference along the four lip polylines, in mouth widths; its 95th percentile."""
    width = np.linalg.norm(points[:, MOUTH_CORNERS[1]] - points[:, MOUTH_CORNERS[0]], axis=1) + 1e-6
    worst = np.zeros(len(points))
    for line in (LIPS_UPPER_OUTER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER, LIPS_LOWER_INNER):
        p = points[:, line]
        second = np.linalg.norm(p[:, :-2] - 2 * p[:, 1:-1] + p[:, 2:], axis=2).max(axis=1)
        worst = np.maximum(worst, second / width)
    return float(np.percentile(worst, 95))


def lower_face_change(frames: list[np.ndarray], points: np.ndarray) -> float:
    """Mean grey-level change round the mouth from each frame to the next (the same crop for both)."""
    n = min(len(frames), len(points))
    changes = [np.abs(cv2.cvtColor(mouth_crop(frames[k], points[k]), cv2.COLOR_BGR2GRAY).astype(np.float32) - cv2.cvtColor(mouth_crop(frames[k + 1], points[k]), cv2.COLOR_BGR2GRAY).astype(np.float32)).mean() for k in range(n - 1)]
    return float(np.mean(changes)) if changes else 0.0


def mouth_crop(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """160x160 around the mouth of *image*, whose face-mesh points are *lm*."""
    cx, cy = lm[[61, 291]].mean(axis=0)
    half = 1.1 * float(np.hypot(*(lm[291] - lm[61])))
    y0, x0 = int(max(0, cy - half)), int(max(0, cx - half))
    return cv2.resize(image[y0 : int(cy + half), x0 : int(cx + half)], (160, 160))


def side_by_side(path: Path, clip: Measured, ours: list[list[np.ndarray]]) -> None:
    """The real clip (scaled to 512 high) beside each of *ours*, with the clip's own sound."""
    path.parent.mkdir(parents=True, exist_ok=True)
    real = read_video_30fps(media_path(clip.clip))[: clip.frames]
    videos = [v for v in ours if v]
    n = min([len(real), *(len(v) for v in videos)])
    scale = 512 / real[0].shape[0]
    width = int(round(real[0].shape[1] * scale / 2)) * 2
    writer = Mp4Writer(path, width + 512 * len(videos), 512)
    per_frame = len(clip.pcm) // max(clip.frames, 1)
    try:
        for k in range(n):
            row = np.hstack([cv2.resize(real[k], (width, 512), interpolation=cv2.INTER_AREA), *(v[k] for v in videos)])
            writer.add(k, row, clip.pcm[k * per_frame : (k + 1) * per_frame])
    finally:
        writer.close()


def lower_face_crop(image: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """200x200 from the nose to below the chin of *image* (face-mesh points *lm*): where a pasted
    mouth would show a seam, a double chin or a jaw that does not fit."""
    width = float(np.hypot(*(lm[291] - lm[61])))
    cx, cy = lm[[61, 291]].mean(axis=0) + (0.0, 0.35 * width)
    half = 1.3 * width
    y0, x0 = int(max(0, cy - half)), int(max(0, cx - half))
    return cv2.resize(image[y0 : int(cy + half), x0 : int(cx + half)], (200, 200), interpolation=cv2.INTER_AREA)


def sheet_row(clip: Measured, ours: list[tuple[list[np.ndarray], np.ndarray]]) -> np.ndarray:
    """The real speaker's four widest openings (top), each over our frames at the same moment."""
    real = read_video_30fps(media_path(clip.clip))[: clip.frames]
    picks = sorted(np.argsort(clip.opening)[-4:])
    tiles = []
    for i in picks:
        column = [lower_face_crop(real[i], clip.landmarks[i])]
        for frames, points in ours:
            if frames:
                k = min(i, len(frames) - 1)
                column.append(lower_face_crop(frames[k], points[k]))
        tiles.append(np.vstack(column))
    row = np.hstack(tiles)
    cv2.putText(row, clip.clip.id, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
    return row


if __name__ == "__main__":
    main()
