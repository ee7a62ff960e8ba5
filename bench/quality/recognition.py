"""Which mouth shape the engine hears, against espeak-ng's phoneme timings, on held-out voices.

Part of the quality harness (``run.py`` measures the pictures; this, the decisions). Needs
Debian's espeak-ng (``tests/espeak.py``). Sentences
(the harness's three and six more) in the harness's four voices, none of which the viseme
recognizer was trained on. Every output frame whose centre lies in the steady middle of a
phoneme (its middle half; pauses 100 ms away from speech) is scored: the engine's viseme for
the frame against the phoneme's, grouped as a viewer sees them (silence, closed p/b/m, open a,
spread i/e, round o/u/w, f/v, other). Prints per-class recall, accuracy, and the lag: the audio
is delayed by -40..+40 ms and the delay that agrees best is reported (positive: the mouth moves
early). With pylipsync installed (``pip install pylipsync``: a port of uLipSync, with its
shipped templates; it knows no closed, f/v or other class) its row is printed too, on the same
frames. Run by hand:

    .venv/bin/python bench/quality/recognition.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests"))
sys.path.insert(0, str(HERE.parents[1] / "src"))
from espeak import HARNESS_SENTENCES, HARNESS_VOICES, PHONEME_VISEME, Espeak, Phoneme, resample_to  # noqa: E402
from speech_synth import engine_frames  # noqa: E402

from lipsync_stream.engines import get_engine  # noqa: E402
from lipsync_stream.wire.protocol import FPS, SAMPLE_RATE  # noqa: E402

VOICES = HARNESS_VOICES
SENTENCES = [
    *HARNESS_SENTENCES,
    "Who knew you would choose the blue shoes?",
    "We keep three sheep and feed each of them beans.",
    "Bob moved the boxes over to the brown house.",
    "Please remember to bring my umbrella home.",
    "Few of us view the movie as a huge success.",
    "She sold the old rowboat to a man from Rome.",
]
GROUPS = {"sil": "silence", "closed": "closed", "a": "open", "e": "spread", "i": "spread", "o": "round", "fv": "f/v", "rest": "other"}
COLUMNS = ["silence", "closed", "open", "spread", "round", "f/v", "other"]
LEAD_S = 0.4


def truth(phonemes: list[Phoneme], n_frames: int) -> list[str]:
    """The group under each frame's centre, or "" where it is not scored."""
    out = []
    for k in range(n_frames):
        t = (k + 0.5) / FPS - LEAD_S
        label = "silence" if t < phonemes[0].start - 0.1 or t > phonemes[-1].end + 0.1 else ""
        for p in phonemes:
            if p.start <= t < p.end:
                group = GROUPS[PHONEME_VISEME.get(p.symbol, "rest")]
                margin = 0.1 if group == "silence" else 0.25 * (p.end - p.start)
                label = group if p.start + margin <= t <= p.end - margin else ""
                break
        out.append(label)
    return out


def engine_labels(pcm: np.ndarray) -> list[str]:
    return ["closed" if a.closure > 0.5 and a.viseme != "sil" else GROUPS[a.viseme] for a in engine_frames(get_engine("viseme"), pcm, analyse=True)]


def pylipsync_labels(pcm: np.ndarray) -> list[str] | None:
    """uLipSync's shipped templates (aa, ee, ih, oh, ou, silence) per frame, if pylipsync is installed."""
    try:
        import pylipsync  # type: ignore[import-not-found]
    except ImportError:
        return None
    base = Path(pylipsync.__file__).parent / "phonemes"
    analyzer = pylipsync.PhonemeAnalyzer(str(base / "template.json"), str(base / "audio"))
    groups = {"aa": "open", "ee": "spread", "ih": "spread", "oh": "round", "ou": "round", "silence": "silence"}
    segments = analyzer.extract_phoneme_segments(pcm.astype(np.float32) / 32768.0, SAMPLE_RATE, fps=FPS)
    return [groups.get(s.dominant_phoneme.name, "other") for s in segments]


def score(rows: list[tuple[list[str], list[str]]]) -> tuple[dict[str, float], float]:
    hits: dict[str, list[bool]] = {c: [] for c in COLUMNS}
    for expected, got in rows:
        for e, g in zip(expected, got, strict=False):
            if e:
                hits[e].append(e == g)
    recall = {c: 100 * float(np.mean(h)) for c, h in hits.items() if h}
    return recall, 100 * float(np.mean([x for h in hits.values() for x in h]))


def main() -> None:
    speaker = Espeak()
    clips = []
    for voice in VOICES:
        for text in SENTENCES:
            pcm, rate, phonemes = speaker.say(text, voice)
            speech = resample_to(pcm, rate, SAMPLE_RATE)
            full = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE), np.int16), speech, np.zeros(int(0.4 * SAMPLE_RATE), np.int16)])
            clips.append((full, truth(phonemes, -(-len(full) * FPS // SAMPLE_RATE))))
    scored = sum(1 for _, t in clips for x in t if x)
    print(f"{len(clips)} clips ({len(SENTENCES)} sentences x {len(VOICES)} held-out voices), {scored} scored frames\n")
    by_delay = {}
    for delay_ms in (-40, -30, -20, -10, 0, 10, 20, 30, 40):
        shift = delay_ms * SAMPLE_RATE // 1000
        rows = []
        for pcm, expected in clips:
            moved = np.concatenate([np.zeros(shift, np.int16), pcm])[: len(pcm)] if shift >= 0 else np.concatenate([pcm[-shift:], np.zeros(-shift, np.int16)])
            rows.append((expected, engine_labels(moved)))
        by_delay[delay_ms] = score(rows)
    best = max(by_delay, key=lambda d: by_delay[d][1])
    print("| estimator | " + " | ".join(COLUMNS) + " | accuracy | best delay |")
    print("|---|" + "---:|" * (len(COLUMNS) + 2))
    recall, accuracy = by_delay[0]
    print("| viseme engine | " + " | ".join(f"{recall.get(c, float('nan')):.1f}" for c in COLUMNS) + f" | {accuracy:.1f} % | {best:+d} ms |")
    peer = [(expected, labels) for (pcm, expected) in clips if (labels := pylipsync_labels(pcm)) is not None]
    if peer:
        recall, accuracy = score(peer)
        print("| pylipsync, shipped templates | " + " | ".join(f"{recall.get(c, float('nan')):.1f}" for c in COLUMNS) + f" | {accuracy:.1f} % | |")
    else:
        print("\n(pylipsync is not installed: no peer row)")
    print("\naccuracy by audio delay: " + ", ".join(f"{d:+d} ms {a:.1f} %" for d, (_, a) in by_delay.items()))


if __name__ == "__main__":
    main()
