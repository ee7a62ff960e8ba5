"""Is each real-speech clip's sound in sync with its picture? A check that does not use our model.

Some clips in public repositories carry sound that sits 100-250 ms off their picture (a re-encode,
a dub, a trimmed track); on those, any mouth made from the sound scores about 0 at lag 0, and a
model trained on them learns late lips. The loudness of the sound says little (its best lag
wanders from clip to clip even on clean ones). The teacher says much more: pocketsphinx's phone
recogniser (trained on many hours of people, nothing of ours) hears the phone of each 10 ms, and a
table learned from the training speakers' clips says how far a mouth opens on each phone
(``tools/train_mouth.py``'s teacher). Its opening follows the real mouths of clean clips at r
0.6-0.85 (GRID, LRS3), best at a lag of 0 or 1 frame. Per clip, this tool cross-correlates it
with the face mesh's opening and calls a clip **offset** when the best lag is at least
:data:`OFFSET_FRAMES` away from 0 and beats lag 0 by :data:`CLEAR_GAIN` in r (a clear peak, not a
wobble). It writes ``bench/realspeech_sync.tsv``: ``bench/realspeech.py`` reports its means over
all clips and over the clips in sync, and ``tools/train_mouth.py --resync`` shifts the training
clips found offset by their lag.

    .venv/bin/python tools/realspeech_sync.py   # about a minute: the phones of 10 minutes of speech

(Needs the corpus cache of ``bench/realspeech_corpus.py`` and pocketsphinx, from the ``tools``
extra.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))
import speech_audio  # noqa: E402
from realspeech_corpus import SYNC, Measured, correlation_at_lags, load, read_sync  # noqa: E402
from train_mouth import on_frames, phone_openings, phone_table, targets  # noqa: E402

from lipsync_stream.engines.opening import CLOSED_BELOW  # noqa: E402
from lipsync_stream.wire.protocol import FPS, SAMPLE_RATE  # noqa: E402

MAX_LAG = 8  # frames either way (267 ms); a peak on this edge is no peak
OFFSET_FRAMES = 3  # 100 ms: more than lips lead speech by (clean clips peak at 0 or 1 frame)
CLEAR_GAIN = 0.1


def teacher_openings(clips: list[Measured], train: list[Measured], phones: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per clip, the opening the teacher's phone table says for each frame (standardised units),
    the table learned from *train*'s frames (``train_mouth.phone_table``)."""
    real = {m.clip.id: (None, targets(m)[:, 0], (m.opening < CLOSED_BELOW).astype(np.float32)) for m in train}
    table = phone_table(train, real, {m.clip.id: on_frames(phones[m.clip.id], m.frames) for m in train})  # type: ignore[arg-type]
    return {m.clip.id: on_frames(phone_openings(phones[m.clip.id], table)[0], m.frames) for m in clips}


def verdict(r: dict[int, float]) -> tuple[int, str]:
    """(best lag, "offset" or "in sync") from r at each lag."""
    best = max(r, key=lambda k: r[k])
    offset = OFFSET_FRAMES <= abs(best) < MAX_LAG and r[best] - r[0] >= CLEAR_GAIN
    return best, "offset" if offset else "in sync"


def resynced(m: Measured, lag: int) -> Measured:
    """*m* with its sound moved *lag* frames earlier (a negative lag: later) against its picture,
    both cut to the frames they share."""
    if lag == 0:
        return m
    step = SAMPLE_RATE // FPS
    n = m.frames - abs(lag)
    video = slice(0, n) if lag > 0 else slice(-lag, m.frames)
    pcm = m.pcm[lag * step : (lag + n) * step] if lag > 0 else m.pcm[: n * step]
    return Measured(m.clip, pcm, m.landmarks[video], m.found[video], m.opening[video], m.width[video], m.jaw[video])


def load_resynced(split: str) -> list[Measured]:
    """The clips of *split*, each found offset by :data:`SYNC` moved back into sync."""
    sync = read_sync()
    if not sync:
        raise FileNotFoundError(f"{SYNC} is missing: run tools/realspeech_sync.py first")
    return [resynced(m, sync[m.clip.id][0]) if sync.get(m.clip.id, (0, ""))[1] == "offset" else m for m in load(split)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SYNC)
    args = parser.parse_args()
    clips = load()
    train = [m for m in clips if m.clip.split == "train"]
    phones = {m.clip.id: speech_audio.phones(m.pcm) for m in clips}
    taught = teacher_openings(clips, train, phones)
    lines = [
        "# Each real-speech clip's sound against its picture, by the teacher (tools/realspeech_sync.py: pocketsphinx's",
        "# phones -> the training clips' phone table -> an opening per frame, cross-correlated with the face mesh's).",
        f"# best_lag: frames the teacher's opening is later than the real mouth (positive: the sound is late). offset: |lag| >= {OFFSET_FRAMES}",
        f"# and r there at least {CLEAR_GAIN} over r at lag 0. Training clips are in the table they are judged by; the lag is what is used.",
        "clip\tsplit\tseconds\tr_at_0\tbest_lag\tr_at_best\tverdict",
    ]
    print("| clip | split | s | r at lag 0 | best lag (r) | |\n|---|---|---:|---:|---:|---|")
    for m in clips:
        r = correlation_at_lags(m.opening, taught[m.clip.id], MAX_LAG)
        best, says = verdict(r)
        lines.append(f"{m.clip.id}\t{m.clip.split}\t{m.frames / FPS:.1f}\t{r[0]:.2f}\t{best}\t{r[best]:.2f}\t{says}")
        print(f"| {m.clip.id} | {m.clip.split} | {m.frames / FPS:.1f} | {r[0]:.2f} | {best:+d} ({r[best]:.2f}) | {says} |")
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = read_sync(args.out)
    for split in ("train", "heldout"):
        ids = [m.clip.id for m in clips if m.clip.split == split]
        off = [i for i in ids if rows[i][1] == "offset"]
        print(f"{split}: {len(off)} of {len(ids)} clips offset ({', '.join(f'{i} {rows[i][0]:+d}' for i in off)})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

