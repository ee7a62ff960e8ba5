"""Lip-sync quality harness: renders speech on characters and measures the mouth in the frames.

    .venv/bin/python bench/quality/run.py [--engine viseme] [--out docs/quality] [--synth flite|festival]

Needs Debian's espeak-ng (speech with phoneme timings); ``--synth flite`` says the sentences in
Flite's five voices instead (Debian's ``flite``; the phonemes found by pocketsphinx's forced
alignment, ``tests/flite.py``): a synthesizer the recognizer was not built around; ``--synth
festival`` in Festival's three English voices (Debian's ``festival``, ``festvox-kallpc16k``,
``festvox-kdlpc16k``, ``festvox-us-slt-hts``; ``tests/festival.py``). Cases: sentences in several espeak-ng
voices, with the viseme each phoneme should show; and hand-made sounds (a loud hum, sustained
vowels, words with silence between them). Characters: the embedded default, and Grace Hopper's
portrait (matplotlib sample data) made into a video and run through ``prepare``.

Every frame is rendered as a server would send it (JPEG), decoded, and measured with MediaPipe's
face mesh, the same model ``prepare`` uses but run on the output: inner-lip opening and mouth
width, in units of the character's closed-mouth width. Printed: mean opening and width per
expected viseme; the audio/video offset (lag of the best cross-correlation between the audio's
loudness and the measured opening; goal within one frame); the share of silent frames whose
lips are closed (goal at least 95 %); the seam at the blend border. A contact sheet shows each
viseme on each character.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))

from espeak import HARNESS_SENTENCES, HARNESS_VOICES, PHONEME_VISEME, Espeak, Phoneme, resample_to  # noqa: E402
from hopper_video import make_video  # noqa: E402
from speech_synth import hum, silence, vowel  # noqa: E402

from lipsync_stream.characters.character import Character, CharacterStore, load_default_character  # noqa: E402
from lipsync_stream.characters.fetch import FetchConfig, Fetcher  # noqa: E402
from lipsync_stream.characters.landmarks import FaceMesher  # noqa: E402
from lipsync_stream.characters.prepare import prepare  # noqa: E402
from lipsync_stream.engines import get_engine  # noqa: E402
from lipsync_stream.engines.meshwarp import MouthFrame, rig_for  # noqa: E402
from lipsync_stream.engines.spline import FEATHER_PX  # noqa: E402
from lipsync_stream.engines.viseme import VISEMES  # noqa: E402
from lipsync_stream.pipeline import FrameRenderer  # noqa: E402
from lipsync_stream.wire.protocol import FPS, SAMPLE_RATE, AudioFramer, SessionParams, decode_frame  # noqa: E402

VOICES, SENTENCES = HARNESS_VOICES, HARNESS_SENTENCES
CLOSED_GAP = 0.06  # inner-lip opening (mouth widths) under which the lips count as closed


@dataclass
class Case:
    name: str
    pcm: np.ndarray  # int16 16 kHz
    labels: list[str]  # expected viseme per output frame ("" = not scored)


@dataclass
class Measured:
    opening: list[float] = field(default_factory=list)
    width: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    loudness: list[float] = field(default_factory=list)
    seam: list[tuple[float, float]] = field(default_factory=list)
    samples: dict[str, tuple[float, np.ndarray]] = field(default_factory=dict)  # viseme -> (score, crop)


def resample(pcm: np.ndarray, rate: int) -> np.ndarray:
    return resample_to(pcm, rate, SAMPLE_RATE)


def frame_labels(phonemes: list[Phoneme], n_frames: int, lead_in: float, visemes: dict[str, str] = PHONEME_VISEME) -> list[str]:
    """Expected viseme at each frame's centre (*visemes*: the synthesizer's phoneme -> viseme);
    frames near a change are not scored."""
    labels = []
    for k in range(n_frames):
        t = (k + 0.5) / FPS - lead_in
        label = "sil"
        for p in phonemes:
            if p.start <= t < p.end:
                label = visemes.get(p.symbol, "rest")
                # Only the steady middle of a phoneme is scored, and silence only well away
                # from speech (the mouth may start moving up to 100 ms early).
                margin = 0.1 if label == "sil" else 0.25 * (p.end - p.start)
                if t < p.start + margin or t > p.end - margin:
                    label = ""
                break
        else:
            if -0.1 < t < phonemes[-1].end + 0.1:
                label = ""
        labels.append(label)
    return labels


def synth_cases(synth: str) -> list[Case]:
    """The harness sentences in every voice of *synth*: espeak-ng's four held-out voices, or
    Flite's five voices or Festival's three with phonemes found by forced alignment
    (``tests/flite.py``, ``tests/festival.py``)."""
    from festival import VOICES as FESTIVAL_VOICES
    from festival import Festival
    from flite import ARPABET_VISEME, Flite
    from flite import VOICES as FLITE_VOICES

    speaker: Espeak | Flite | Festival
    if synth == "flite":
        speaker, voices, visemes = Flite(), FLITE_VOICES, ARPABET_VISEME
    elif synth == "festival":
        speaker, voices, visemes = Festival(), FESTIVAL_VOICES, ARPABET_VISEME
    else:
        speaker, voices, visemes = Espeak(), VOICES, PHONEME_VISEME
    cases = []
    lead = 0.4
    for voice in voices:
        for i, text in enumerate(SENTENCES):
            pcm, rate, phonemes = speaker.say(text, voice)
            speech = resample(pcm, rate)
            full = np.concatenate([silence(lead), speech, silence(0.4)])
            n = -(-len(full) * FPS // SAMPLE_RATE)
            cases.append(Case(f"{voice}#{i + 1}", full, frame_labels(phonemes, n, lead, visemes)))
    return cases


def handmade_cases() -> list[Case]:
    def labelled(parts: list[tuple[np.ndarray, str]]) -> Case:
        pcm = np.concatenate([p for p, _ in parts])
        labels: list[str] = []
        t = 0.0
        for p, label in parts:
            dur = len(p) / SAMPLE_RATE
            for k in range(int(round(t * FPS)), int(round((t + dur) * FPS))):
                centre = (k + 0.5) / FPS
                labels.append(label if t + 0.1 < centre < t + dur - 0.1 else "")
            t += dur
        n = -(-len(pcm) * FPS // SAMPLE_RATE)
        return Case("", pcm, (labels + [""] * n)[:n])

    hum_case = labelled([(silence(0.4), "sil"), (hum(1.2, rms_db=-14), "closed"), (silence(0.4), "sil")])
    hum_case.name = "loud hum"
    vowels = labelled([(silence(0.4), "sil")] + [x for v, lab in [("a", "a"), ("i", "i"), ("u", "o"), ("e", "e")] for x in [(vowel(v, 0.8, rms_db=-14), lab), (silence(0.4), "sil")]])
    vowels.name = "sustained a i u e"
    speaker = Espeak()
    parts: list[tuple[np.ndarray, str]] = [(silence(0.4), "sil")]
    for word in ["one", "two", "three"]:
        pcm, rate, _ = speaker.say(word, "en-us")
        parts += [(resample(pcm, rate), ""), (silence(0.8), "sil")]
    words = labelled(parts)
    words.name = "words with pauses"
    return [hum_case, vowels, words]


def hopper_character(work: Path) -> Character:
    clip = make_video(work / "hopper-source.mp4")
    prepare(clip, work / "hopper", progress=False)
    store = CharacterStore(Fetcher(FetchConfig(asset_roots=[work], cache_dir=work / "cache")))
    return store.load("hopper/hopper.mp4")


def measure(character: Character, cases: list[Case], engine_name: str) -> Measured:
    engine = get_engine(engine_name)
    m = Measured()
    with FaceMesher(video=False) as mesher:
        for case in cases:
            renderer = FrameRenderer(engine, character, SessionParams())
            framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
            framer.push(case.pcm.astype("<i2").tobytes())
            framer.flush()
            while framer.ready():
                af = framer.pop()
                msg = decode_frame(renderer.render(af))
                img = cv2.imdecode(np.frombuffer(msg.image, np.uint8), cv2.IMREAD_COLOR)
                ref = character.reference(af.index)
                ref_frame = MouthFrame(ref.landmarks)
                lm = mesher.landmarks(img)
                label = case.labels[af.index] if af.index < len(case.labels) else ""
                pcm = np.frombuffer(af.pcm, "<i2").astype(np.float64)
                m.loudness.append(10 * np.log10(np.mean(pcm**2) + 1.0))
                if lm is None:
                    m.opening.append(np.nan)
                    m.width.append(np.nan)
                    m.labels.append(label)
                    continue
                frame = MouthFrame(lm)
                gap = float(frame.to_uv(lm[14].astype(np.float64))[1] - frame.to_uv(lm[13].astype(np.float64))[1])
                opening = gap * frame.width / ref_frame.width
                width = frame.width / ref_frame.width
                m.opening.append(opening)
                m.width.append(width)
                m.labels.append(label)
                if renderer.last_shape.open > 0.3:
                    m.seam.append(seam_score(img, ref, renderer))
                if label:
                    score = {"a": opening, "o": -width + 0.5 * opening, "i": width, "e": opening + width, "closed": -opening, "sil": -opening, "fv": -abs(opening - 0.08), "rest": -abs(opening - 0.12)}[label]
                    if label not in m.samples or score > m.samples[label][0]:
                        cx, cy = (0.5 * (ref.landmarks[61] + ref.landmarks[291])).astype(int)
                        half = int(1.3 * ref_frame.width)
                        crop = img[max(0, cy - half) : cy + half, max(0, cx - half) : cx + half]
                        m.samples[label] = (score, cv2.resize(crop, (200, 200)))
    return m


def seam_score(img: np.ndarray, ref, renderer: FrameRenderer) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Edges the output has and the reference lacks, in the band where the warp fades out.

    Mean and 99th percentile, over the band, of max(0, |grad output| - |grad reference|) in grey
    levels per pixel (both through the same JPEG encoding, so compression noise cancels). A seam
    would raise the mean along the whole border; the percentile shows the worst local spot.
    """
    y0, y1, x0, x1 = rig_for(ref.landmarks, ref.image).roi
    ref_jpeg = cv2.imdecode(cv2.imencode(".jpg", ref.image, [cv2.IMWRITE_JPEG_QUALITY, renderer.jpeg_quality])[1], cv2.IMREAD_GRAYSCALE)
    out = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)

    def grad(a: np.ndarray) -> np.ndarray:
        gy, gx = np.gradient(cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.0))
        return np.hypot(gx, gy)

    sy, sx = slice(max(0, y0 - 2), y1 + 2), slice(max(0, x0 - 2), x1 + 2)
    extra = np.maximum(grad(out[sy, sx]) - grad(ref_jpeg[sy, sx]), 0.0)
    band = int(FEATHER_PX) + 2
    mask = np.zeros_like(extra, dtype=bool)
    mask[:band, :] = mask[-band:, :] = True
    mask[:, :band] = mask[:, -band:] = True
    return float(extra[mask].mean()), float(np.percentile(extra[mask], 99))


def av_offset(loudness: list[float], opening: list[float]) -> int:
    """Lag (frames) maximizing correlation of opening with loudness; positive = video late."""
    a = np.asarray(loudness)
    o = np.nan_to_num(np.asarray(opening))
    a = (a - a.mean()) / (a.std() + 1e-9)
    o = (o - o.mean()) / (o.std() + 1e-9)
    best, best_lag = -np.inf, 0
    for lag in range(-6, 7):
        if lag >= 0:
            c = float(np.mean(a[: len(a) - lag] * o[lag:]))
        else:
            c = float(np.mean(a[-lag:] * o[: len(o) + lag]))
        if c > best:
            best, best_lag = c, lag
    return best_lag


def report(name: str, m: Measured) -> dict[str, float]:
    labels = np.array(m.labels)
    opening, width = np.array(m.opening), np.array(m.width)
    print(f"\n### {name}\n")
    print("| expected viseme | frames | mean opening | mean width | closed |")
    print("|---|---:|---:|---:|---:|")
    for v in VISEMES:
        sel = (labels == v) & ~np.isnan(opening)
        if sel.any():
            print(f"| {v} | {sel.sum()} | {opening[sel].mean():.3f} | {width[sel].mean():.3f} | {np.mean(opening[sel] < CLOSED_GAP):.0%} |")
    silent = (labels == "sil") & ~np.isnan(opening)
    closed_share = float(np.mean(opening[silent] < CLOSED_GAP)) if silent.any() else float("nan")
    hum_sel = labels == "closed"
    offset = av_offset(m.loudness, m.opening)
    seam_mean = float(np.mean([a for a, _ in m.seam])) if m.seam else float("nan")
    seam_p99 = float(np.mean([b for _, b in m.seam])) if m.seam else float("nan")
    found = float(np.mean(~np.isnan(opening)))
    print()
    print(f"- audio/video offset: {offset:+d} frame(s) (goal: within one)")
    print(f"- silent frames with closed lips: {closed_share:.1%} of {silent.sum()} (goal: at least 95%)")
    print(f"- p/b/m and hum frames with closed lips: {np.mean(opening[hum_sel] < CLOSED_GAP):.1%} of {hum_sel.sum()}")
    print(f"- seam at the blend border: {seam_mean:.2f} grey levels/px of edge the reference lacks on average, {seam_p99:.2f} at the 99th percentile (open-mouth frames)")
    print(f"- frames where the face mesh found the face: {found:.1%}")
    return {"offset": offset, "closed": closed_share, "seam": seam_mean}


def contact_sheet(rows: list[tuple[str, Measured]], path: Path) -> None:
    tiles = []
    for name, m in rows:
        row = []
        for v in VISEMES:
            tile = m.samples[v][1].copy() if v in m.samples else np.zeros((200, 200, 3), np.uint8)
            cv2.rectangle(tile, (0, 0), (200, 24), (0, 0, 0), -1)
            cv2.putText(tile, f"{v}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
            row.append(tile)
        label = np.zeros((200, 120, 3), np.uint8)
        cv2.putText(label, name, (6, 105), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
        tiles.append(np.hstack([label, *row]))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(tiles), [cv2.IMWRITE_JPEG_QUALITY, 88])


def main() -> None:
    parser = argparse.ArgumentParser(description="Lip-sync quality harness")
    parser.add_argument("--engine", default="viseme")
    parser.add_argument("--out", type=Path, default=Path("docs/quality"), help="where the contact sheet goes")
    parser.add_argument("--synth", choices=["espeak", "flite", "festival"], default="espeak", help="the sentences' synthesizer (flite: Debian's flite and pocketsphinx; festival: Debian's festival and its English voices, tests/festival.py)")
    args = parser.parse_args()
    start = time.perf_counter()
    cases = synth_cases(args.synth) + handmade_cases()
    print(f"engine {args.engine}; {len(cases)} cases, {sum(len(c.pcm) for c in cases) / SAMPLE_RATE:.1f} s of audio")
    with tempfile.TemporaryDirectory() as tmp:
        characters = [("default", load_default_character()), ("hopper", hopper_character(Path(tmp)))]
        results = [(name, measure(ch, cases, args.engine)) for name, ch in characters]
    summary = {name: report(name, m) for name, m in results}
    sheet = args.out / f"contact-sheet-{args.engine}{'' if args.synth == 'espeak' else '-' + args.synth}.jpg"
    contact_sheet(results, sheet)
    print(f"\ncontact sheet: {sheet}; {time.perf_counter() - start:.0f} s")
    ok = all(abs(s["offset"]) <= 1 and s["closed"] >= 0.95 for s in summary.values())
    print("goals met" if ok else "goals NOT met")


if __name__ == "__main__":
    main()
