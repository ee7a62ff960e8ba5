"""Speech -> mouth on real people: models trained on the real-speech corpus's training speakers
(bench/realspeech_corpus.py), and the opening model the viseme engine ships (engines/opening.py).

``--engine-model`` (the shipped model): inputs are the viseme recognizer's hop features
(``engines/recognizer.hop_inputs``) of the hops from ``opening.PAST`` before a hop to
``opening.FUTURE`` after it; the target, the real speaker's inner-lip opening standardised per
clip (a speaker's mouth size and resting opening are the face's, not the speech's), with espeak-ng
utterances mixed in (the opening of each phoneme's viseme, standardised per utterance; half of
them over room noise or a music bed); a second output, whether the lips are closed (the real
inner lips under ``opening.CLOSED_BELOW``; p/b/m and silence in the synthetic speech); a small
MLP (torch, from the ``neural`` extra). A teacher adds what ten minutes of video cannot: an hour
of people speaking without video (``bench/speech_audio.py``: 261 LibriSpeech readers), each hop
labelled with the opening a real mouth has, on average, on the phone pocketsphinx's phone
recogniser hears there (a table learned from the training speakers' clips; for each fold, from
that fold's speakers only), half of them heard over a room or a music bed as the synthetic
speech is. It teaches z, in a tower of its own that weighs the taught recordings
``--teacher-weight`` times the real clips (``--teacher-weight 0``: no teacher, one tower); the
closed lips come from a tower trained without them (``two_towers``). It is scored by folds of
training speakers left out,
twice: the mean of its predictions around each frame's centre, and the opening the engine asks
for with it (closures and pauses included), against the loudness baseline; ``--out`` writes the
model trained on every training speaker (about ten minutes on two cores, folds included; the first
run also builds the caches of bench/realspeech_corpus.py and bench/speech_audio.py; torch and
pocketsphinx come from the ``neural`` and ``tools`` extras):

    .venv/bin/python tools/train_mouth.py --engine-model [--out src/lipsync_stream/engines/opening.npz]

Without it, exploratory models on wider contexts (ridge regression and scikit-learn's MLP on
--past ms before each frame's centre to --future ms after, opening, width and jaw standardised
per clip), chosen by leave-one-speaker-out; ``--heldout`` then reports the held-out clips once
settings are chosen (never choose on them). Nothing is written.

    .venv/bin/python tools/train_mouth.py [--past 100 --future 80] [--per-clip] [--heldout]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # espeak.py, speech_synth.py
sys.path.insert(0, str(ROOT / "tools"))  # train_visemes.py
import speech_audio  # noqa: E402
from realspeech_corpus import Measured, correlation_at_lags, load, loudness  # noqa: E402
from train_visemes import hop_rows  # noqa: E402

from lipsync_stream.engines.features import HOP  # noqa: E402
from lipsync_stream.engines.opening import CLOSED_BELOW, INPUTS, OUTPUTS  # noqa: E402
from lipsync_stream.wire.protocol import FPS, SAMPLE_RATE  # noqa: E402

HOPS_PER_SECOND = SAMPLE_RATE // HOP


def frame_inputs(m: Measured, past_ms: int, future_ms: int, per_clip: bool = False) -> np.ndarray:
    """(frames, features): each 30 fps frame's context of hop features, centred on its middle."""
    rows = hop_rows(m.pcm)
    offsets = np.arange(-past_ms // 10, future_ms // 10 + 1)
    idx = np.clip(frame_hops(m.frames)[:, None] + offsets[None, :], 0, len(rows) - 1)
    if per_clip:  # each feature standardised over the clip: a microphone's colour is not speech
        rows = (rows - rows.mean(axis=0)) / (rows.std(axis=0) + 1e-6)
    return rows[idx].reshape(m.frames, -1)


def targets(m: Measured) -> np.ndarray:
    y = np.stack([m.opening, m.width, m.jaw], axis=1)
    return standardised(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--past", type=int, default=100, help="ms of speech before the frame's centre")
    parser.add_argument("--future", type=int, default=80, help="ms after it (the engine's lookahead)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-clip", action="store_true", help="standardise the inputs over each clip")
    parser.add_argument("--heldout", action="store_true", help="train on all training speakers and report the held-out ones (once settings are chosen)")
    parser.add_argument("--engine-model", action="store_true", help="the opening model the engine ships (engines/opening.py): trained on the real training speakers and synthetic speech, scored by folds of training speakers left out against the loudness baseline")
    parser.add_argument("--synthetic", type=int, default=800, help="espeak-ng utterances mixed in (--engine-model)")
    parser.add_argument("--flite", type=int, default=0, help="with --engine-model: Flite utterances mixed in with the espeak-ng ones (its voices kal16, awb, rms; kal and slt stay unheard)")
    parser.add_argument("--closure-weight", type=float, default=CLOSURE_WEIGHT, help="with --engine-model: how much the synthetic speech's p/b/m hops weigh in the closed lips' loss")
    parser.add_argument("--synthetic-share", type=float, default=3.0, help="with --engine-model: synthetic rows per real one (z weighs the two alike; the closed lips learn p/b/m from them)")
    parser.add_argument("--teacher-weight", type=float, default=TEACHER_WEIGHT, help="with --engine-model: how much the recordings without video (bench/speech_audio.tsv, labelled by the phone recogniser and the phone table) weigh against the real clips; 0: none")
    parser.add_argument("--perturb", type=float, nargs="*", default=[], help="with --engine-model: the teacher's recordings also played at these speeds (resampled: 1.1 is shorter and higher), as more voices")
    parser.add_argument("--teacher-mix", type=float, default=0.0, help="with --engine-model: the real clips' z target for the z tower, this share the teacher's opening for the same sound (its phones through the fold's table), the rest the face mesh's")
    parser.add_argument("--dropout", type=float, default=0.4, help="with --engine-model")
    parser.add_argument("--epochs", type=int, default=30, help="with --engine-model")
    parser.add_argument("--folds", type=int, default=6, help="with --engine-model: training speakers split into this many folds, each left out in turn (0: none, only --out)")
    parser.add_argument("--only-repo", help="with --engine-model: train on this repository's clips only, score on the other training clips")
    parser.add_argument("--out", type=Path, help="with --engine-model: write the model trained on every training speaker here")
    parser.add_argument("--resync", action="store_true", help="with --engine-model: the training clips whose sound is offset (bench/realspeech_sync.tsv, tools/realspeech_sync.py) moved back into sync, for training and folds")
    args = parser.parse_args()
    if args.engine_model:
        engine_model(args)
        return
    from sklearn.linear_model import Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    def fit(clips: list[Measured]) -> tuple[StandardScaler, dict[str, object]]:
        x = np.concatenate([frame_inputs(m, args.past, args.future, args.per_clip) for m in clips])
        y = np.concatenate([targets(m) for m in clips])
        scaler = StandardScaler().fit(x)
        ridge = Ridge(alpha=30.0).fit(scaler.transform(x), y)
        mlp = MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-2, max_iter=300, early_stopping=True, random_state=args.seed).fit(scaler.transform(x), y)
        return scaler, {"ridge": ridge, "mlp": mlp}

    def scores(scaler: StandardScaler, models: dict[str, object], clips: list[Measured]) -> dict[str, list[tuple[str, float, int]]]:
        out: dict[str, list[tuple[str, float, int]]] = {name: [] for name in models}
        for m in clips:
            x = scaler.transform(frame_inputs(m, args.past, args.future, args.per_clip))
            for name, model in models.items():
                r = correlation_at_lags(m.opening, model.predict(x)[:, 0])  # type: ignore[attr-defined]
                out[name].append((m.clip.id, r[0], max(r, key=lambda k: r[k])))
        return out

    train = load("train")
    print(f"context -{args.past}..+{args.future} ms, inputs standardised {'per clip' if args.per_clip else 'over the corpus'}")
    if not args.heldout:
        # Model selection: each training speaker in turn is left out and predicted by the rest.
        speakers = sorted({m.clip.speaker for m in train})
        folds: dict[str, list[float]] = {}
        for speaker in speakers:
            scaler, models = fit([m for m in train if m.clip.speaker != speaker])
            for name, rows in scores(scaler, models, [m for m in train if m.clip.speaker == speaker]).items():
                folds.setdefault(name, []).extend(r for _id, r, _lag in rows)
        print(f"leave-one-speaker-out over {len(speakers)} training speakers, mean r at lag 0: " + ", ".join(f"{name} {np.mean(v):.2f}" for name, v in folds.items()))
        return
    held = load("heldout")
    scaler, models = fit(train)
    print(f"train: {len(train)} clips; held out: {len(held)} clips (report only: never choose settings on these)")
    results = scores(scaler, models, held)
    print("| clip | " + " | ".join(f"{name}: r at 0 / best lag" for name in models) + " |")
    for i, m in enumerate(held):
        print(f"| {m.clip.id} | " + " | ".join(f"{results[name][i][1]:.2f} / {results[name][i][2]:+d}" for name in models) + " |")
    print("| **mean** | " + " | ".join(f"{np.mean([r for _id, r, _lag in rows]):.2f}" for rows in results.values()) + " |")


def opening_inputs(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(len(at), opening.INPUTS): the opening model's inputs for predictions at hops *at*."""
    from lipsync_stream.engines import opening

    idx = np.clip(at[:, None] + np.arange(-opening.PAST, opening.FUTURE + 1)[None, :], 0, len(rows) - 1)
    return rows[idx].reshape(len(at), -1)


def frame_hops(frames: int) -> np.ndarray:
    """The hop under each 30 fps frame's centre."""
    return ((np.arange(frames) + 0.5) / FPS * HOPS_PER_SECOND).astype(int)


def on_frames(per_hop: np.ndarray, frames: int) -> np.ndarray:
    """Each of *frames* 30 fps frames' value of *per_hop* (one value or row per hop): the one at
    the hop under its centre, the last one past the end."""
    return per_hop[np.clip(frame_hops(frames), 0, len(per_hop) - 1)]


def smoothed_openings(model: object, rows: np.ndarray, frames: int) -> np.ndarray:
    """The engine's z for each frame: the mean of the model's predictions at the hops from
    SMOOTH_PAST before the frame's centre to SMOOTH_FUTURE after (as ``engines/viseme`` does)."""
    from lipsync_stream.engines import opening

    per_hop = model.predict(opening_inputs(rows, np.arange(len(rows))))[:, 0]  # type: ignore[attr-defined]
    padded = np.pad(per_hop, (opening.SMOOTH_PAST, opening.SMOOTH_FUTURE), mode="edge")
    mean = np.convolve(padded, np.ones(opening.SMOOTH_PAST + opening.SMOOTH_FUTURE + 1) / (opening.SMOOTH_PAST + opening.SMOOTH_FUTURE + 1), "valid")
    return on_frames(mean, frames)


def engine_openings(model: object, pcm: np.ndarray, frames: int) -> np.ndarray:
    """The viseme engine's opening for each frame of *pcm* with *model* as its opening model, as
    it streams (before drawing: what the renderer is asked for)."""
    from speech_synth import engine_frames

    from lipsync_stream.engines.viseme import VisemeEngine

    out = [a.shape.open for a in engine_frames(VisemeEngine(model), pcm, analyse=True)]  # type: ignore[arg-type]
    return np.array(out[:frames] + [0.0] * max(0, frames - len(out)))


ANTICIPATION_S = 0.05  # lips part this long before the first sound after a silence (as far as a prediction hears ahead)


def background(n: int, rng: np.random.Generator) -> np.ndarray:
    """RMS-1 sound to put under speech: a room (noise of a random colour) or a music bed (notes
    of a few harmonics that change at random moments, with a tremolo)."""
    if rng.random() < 0.5:
        noise = rng.standard_normal(n)
        return (out := np.convolve(noise, np.ones(int(rng.integers(1, 16))), "same")) / out.std()
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for _voice in range(int(rng.integers(2, 6))):
        start = 0
        while start < n:
            length = int(rng.uniform(0.2, 1.2) * SAMPLE_RATE)
            f0 = 80.0 * 2 ** (rng.integers(0, 40) / 12)
            for h in range(1, 5):
                out[start : start + length] += np.sin(2 * np.pi * f0 * h * t[start : start + length]) / h
            start += length
    out *= 1 + rng.uniform(0.2, 0.6) * np.sin(2 * np.pi * rng.uniform(1, 6) * t)
    return out / np.sqrt(np.mean(out**2))


def sometimes_under_background(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """*signal* as it is, or (half the time) over a room's noise 20-50 dB under the voice or a
    music bed 10-25 dB under: recordings have rooms and music, and pauses must still rest."""
    if rng.random() >= 0.5:
        return signal
    x = signal.astype(np.float64)
    voice = np.sqrt(np.mean(x[np.abs(x) > np.abs(x).max() * 0.05] ** 2))
    under = rng.uniform(20, 50) if rng.random() < 0.5 else rng.uniform(10, 25)
    return np.clip(x + background(len(x), rng) * voice * 10 ** (-under / 20), -32768, 32767).astype(np.int16)


def synthetic_openings(n: int, seed: int, flite: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, z targets and closed lips from *n* espeak-ng utterances (tools/train_visemes.py's
    recipe: its training voices, random rates, pitches, loudness) and *flite* Flite utterances
    (train_visemes' Flite training voices, kal16, awb and rms; kal and slt stay unheard; phonemes
    aligned by pocketsphinx), half of them over a room's noise (20-50 dB under the voice) or a
    music bed (10-25 dB under): every third hop, the target the opening of the viseme of the
    phoneme under it, standardised per utterance like a real speaker's, and whether the lips are
    closed (p/b/m, and silence but for the last ANTICIPATION_S before a sound); and which hops
    are p/b/m (``--closure-weight``)."""
    from espeak import Espeak
    from train_visemes import FLITE_TRAIN_VOICES, TRAIN_ACCENTS, TRAIN_VARIANTS, flite_utterance, sentence, utterance

    from lipsync_stream.engines.viseme import TARGETS, VISEMES

    voices = [f"{a}+{v}" if v else a for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]
    rng, speaker, xs, ys, closed, bilabial = np.random.default_rng(seed), Espeak(), [], [], [], []
    flite_speaker = None
    if flite:
        from flite import Flite

        flite_speaker = Flite()
    for i in range(n + flite):
        if i < n:
            signal, hop_labels = utterance(speaker, sentence(rng), voices[i % len(voices)], int(rng.integers(120, 220)), int(rng.integers(25, 80)), rng, rng.uniform(-24, 0))
        else:
            signal, hop_labels = flite_utterance(flite_speaker, sentence(rng), FLITE_TRAIN_VOICES[i % len(FLITE_TRAIN_VOICES)], rng)
        rows = hop_rows(sometimes_under_background(signal, rng))
        at = np.arange(0, min(len(rows), len(hop_labels)), 3)
        y = np.array([TARGETS[VISEMES[k]].open for k in hop_labels[at]])
        xs.append(opening_inputs(rows, at))
        ys.append(standardised(y))
        silent = hop_labels == VISEMES.index("sil")
        ahead = int(ANTICIPATION_S * SAMPLE_RATE / HOP)
        soon = np.convolve(~silent, np.ones(ahead + 1), "full")[ahead : ahead + len(silent)] > 0  # a sound within ANTICIPATION_S
        shut = (silent & ~soon) | (hop_labels == VISEMES.index("closed"))
        closed.append(shut[at])
        bilabial.append(hop_labels[at] == VISEMES.index("closed"))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(closed).astype(np.float32), np.concatenate(bilabial)


TEACHER_SMOOTH_HOPS = 9  # a phone's mouth, averaged over 90 ms: lips move smoothly from one to the next


def phone_table(clips: list[Measured], real: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], clip_phones: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """How far the real speakers of *clips* opened their mouths, on average, on each phone the
    recogniser heard (z), and how often their lips were closed on it: the teacher's table."""
    heard = np.concatenate([clip_phones[m.clip.id] for m in clips])
    z = np.concatenate([real[m.clip.id][1] for m in clips])
    closed = np.concatenate([real[m.clip.id][2] for m in clips])
    return {str(p): (float(z[heard == p].mean()), float(closed[heard == p].mean())) for p in np.unique(heard)}


def phone_openings(phones: np.ndarray, table: dict[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Per hop of *phones*, the table's opening (z) for the phones around it (smoothed over
    TEACHER_SMOOTH_HOPS), and the share of closed lips on the phone heard there."""
    looked_up = np.array([table.get(p, (0.0, 0.0)) for p in phones]).reshape(len(phones), 2)
    return np.convolve(looked_up[:, 0], np.ones(TEACHER_SMOOTH_HOPS) / TEACHER_SMOOTH_HOPS, "same"), looked_up[:, 1]


def taught(heard: list[speech_audio.Heard], rows: dict[str, np.ndarray], table: dict[str, tuple[float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, z targets and closed shares for the recordings without video: every third hop,
    the table's opening for the phones around it (smoothed over TEACHER_SMOOTH_HOPS),
    standardised per recording like a real speaker's."""
    xs, ys, cs = [], [], []
    for h in heard:
        n = min(len(h.phones), len(rows[h.recording.id]))
        z, closed_share = phone_openings(h.phones[:n], table)
        at = np.arange(0, n, 3)
        xs.append(opening_inputs(rows[h.recording.id], at))
        ys.append(standardised(z[at]))
        cs.append(closed_share[at])
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(cs).astype(np.float32)


def speed_perturbed(heard: speech_audio.Heard, factor: float) -> speech_audio.Heard:
    """*heard* played *factor* times as fast (resampled: shorter, and its pitch and formants
    *factor* times higher, as a smaller or larger vocal tract would say it), with its phones moved
    to where they now fall: more voices for the teacher from the same recordings."""
    import dataclasses
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(factor).limit_denominator(20)
    pcm = resample_poly(heard.pcm.astype(np.float64), ratio.denominator, ratio.numerator)
    n = len(pcm) // HOP
    at = np.minimum((np.arange(n) * float(ratio)).astype(int), len(heard.phones) - 1)
    return speech_audio.Heard(dataclasses.replace(heard.recording, id=f"{heard.recording.id}@{factor:g}"), np.clip(pcm, -32768, 32767).astype(np.int16), heard.phones[at])


def standardised(v: np.ndarray) -> np.ndarray:
    """*v* (each column of it) with mean 0 and spread 1, as every z target is, per clip or
    recording: how wide a mouth opens is the face's, not the speech's."""
    return (v - v.mean(axis=0)) / (v.std(axis=0) + 1e-9)


def two_towers(z_path: Path, closed_path: Path, out: Path) -> object:
    """One network, in the shipped format, that is two side by side: z from the first, the
    closed lips from the second (the input scaling folded into each first layer; the layers
    block-diagonal, so that neither hears the other's units). It costs the engine twice the
    small network's arithmetic per hop, the same code."""
    from lipsync_stream.engines.opening import OpeningModel

    towers = [OpeningModel(z_path), OpeningModel(closed_path)]
    weights, biases = [], []
    for i in range(len(towers[0].layers)):
        ws = [t.layers[i][0].astype(np.float64) for t in towers]
        bs = [t.layers[i][1].astype(np.float64) for t in towers]
        if i == 0:  # (x - mean) * scale @ w + b == x @ (scale * w) + (b - (mean * scale) @ w)
            bs = [b - (t.mean * t.scale) @ w for t, w, b in zip(towers, ws, bs, strict=True)]
            ws = [t.scale[:, None] * w for t, w in zip(towers, ws, strict=True)]
            weights.append(np.concatenate(ws, axis=1))
        elif i < len(towers[0].layers) - 1:
            weights.append(np.block([[ws[0], np.zeros((ws[0].shape[0], ws[1].shape[1]))], [np.zeros((ws[1].shape[0], ws[0].shape[1])), ws[1]]]))
        else:  # z from the first tower, the closed lips' logit from the second
            weights.append(np.block([[ws[0][:, :1], np.zeros((ws[0].shape[0], 1))], [np.zeros((ws[1].shape[0], 1)), ws[1][:, 1:]]]))
            bs = [bs[0][:1], bs[1][1:]]
        biases.append(np.concatenate(bs))
    with np.load(z_path) as z:
        geometry = z["geometry"]
    np.savez(out, geometry=geometry, mean=np.zeros(INPUTS, np.float32), std=np.ones(INPUTS, np.float32), layers=len(weights), version=np.array(VERSION), **{f"w{i}": w.astype(np.float32) for i, w in enumerate(weights)}, **{f"b{i}": b.astype(np.float32) for i, b in enumerate(biases)})
    return OpeningModel(out)


def fit_opening(x: np.ndarray, y: np.ndarray, closed: np.ndarray, z_weight: np.ndarray, closed_weight: np.ndarray, args: argparse.Namespace, seed: int, out: Path) -> object:
    """A small MLP (torch: dropout, AdamW, one-cycle learning rate) from inputs *x* to z *y*
    (squared error, weighted by *z_weight* per row) and to the lips being *closed* (cross
    entropy, weighted by *closed_weight*), written to *out* in the shipped format and loaded back
    with the engine's own code."""
    import torch

    from lipsync_stream.engines.opening import OpeningModel

    torch.manual_seed(seed)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    layers: list[torch.nn.Module] = []
    width = x.shape[1]
    for hidden in HIDDEN:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Dropout(args.dropout)]
        width = hidden
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, OUTPUTS))
    xt, yt = torch.tensor((x - mean) / std, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    ct, wt = torch.tensor(closed, dtype=torch.float32), torch.tensor(z_weight, dtype=torch.float32)
    cwt = torch.tensor(closed_weight, dtype=torch.float32)
    batches = len(y) // BATCH
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=args.epochs * batches)
    for _epoch in range(args.epochs):
        order = torch.randperm(len(y))
        for b in range(batches):
            pick = order[b * BATCH : (b + 1) * BATCH]
            pred = net(xt[pick])
            loss = (wt[pick] * (pred[:, 0] - yt[pick]) ** 2).mean() + (cwt[pick] * torch.nn.functional.binary_cross_entropy_with_logits(pred[:, 1], ct[pick], reduction="none")).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    linear = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = {f"w{i}": m.weight.detach().numpy().T.astype(np.float32) for i, m in enumerate(linear)} | {f"b{i}": m.bias.detach().numpy().astype(np.float32) for i, m in enumerate(linear)}
    from lipsync_stream.engines import opening
    from lipsync_stream.engines.recognizer import FEATURES_PER_HOP

    np.savez(out, geometry=np.array([opening.PAST, opening.FUTURE, FEATURES_PER_HOP]), mean=mean.astype(np.float32), std=std.astype(np.float32), layers=len(linear), version=np.array(VERSION), **weights)
    return OpeningModel(out)


HIDDEN = (64, 32)
TEACHER_WEIGHT = 16.0
# The real clips' closed lips come from the face mesh at 25-30 fps, which sees few of the brief
# p/b/m closures of running speech; --closure-weight weighs the synthetic speech's p/b/m more.
# Tried on 2026-12-06 on the grown corpus (79 clips), with the engine's hum rule asking for 50 ms
# of hum: weighed alike, p/b/m closed in 92 / 89 % of the espeak-ng harness's frames (default /
# hopper); 3 times, 99 / 94-96 %, but each of two seeds failed a behaviour test by one frame whose
# closure sat at 0.5; 8 times, 97 / 94 % and every test passed, folds of training speakers r 0.42
# (0.39 with the hum rule as shipped); held out, run once: 0.19 / 0.20 against the shipped model's
# 0.22 / 0.22. Not shipped (docs/quality.md); the shipped model was trained with weight 1.
CLOSURE_WEIGHT = 1.0
BATCH = 256
VERSION = "opening-3"


def engine_model(args: argparse.Namespace) -> None:
    """The opening model (engines/opening.py): chosen by leave-speakers-out folds over the
    training speakers, against the engine's own opening; --out writes the one trained on all."""
    import tempfile

    if args.resync:
        from realspeech_sync import load_resynced

        train = load_resynced("train")
    else:
        train = load("train")
    rows = {m.clip.id: hop_rows(m.pcm) for m in train}
    real = {m.clip.id: (opening_inputs(rows[m.clip.id], on_frames(np.arange(len(rows[m.clip.id])), m.frames)), targets(m)[:, 0], (m.opening < CLOSED_BELOW).astype(np.float32)) for m in train}
    xs, ys, cs, bs = synthetic_openings(args.synthetic, args.seed, args.flite) if args.synthetic or args.flite else (np.zeros((0, next(iter(real.values()))[0].shape[1])), np.zeros(0), np.zeros(0), np.zeros(0, bool))
    print(f"real: {len(train)} clips, {sum(len(y) for _x, y, _c in real.values()) / FPS:.0f} s, lips closed in {np.mean(np.concatenate([c for _x, _y, c in real.values()])):.0%} of frames; synthetic: {len(ys)} hops from {args.synthetic} espeak-ng and {args.flite} Flite utterances")
    heard = speech_audio.load() if args.teacher_weight > 0 else []
    heard += [speed_perturbed(h, factor) for factor in args.perturb for h in heard]
    if heard:
        hop_phones = {m.clip.id: speech_audio.phones(m.pcm) for m in train}
        clip_phones = {m.clip.id: on_frames(hop_phones[m.clip.id], m.frames) for m in train}
        rng = np.random.default_rng(args.seed)
        heard_rows = {h.recording.id: hop_rows(sometimes_under_background(h.pcm, rng)) for h in heard}  # the labels stay the clean recording's
        print(f"teacher: {len(heard)} recordings of {len({h.recording.speaker for h in heard})} speakers, {sum(len(h.pcm) for h in heard) / SAMPLE_RATE / 60:.0f} min (bench/speech_audio.tsv), weighing {args.teacher_weight}x the real clips")
    work = Path(tempfile.mkdtemp())

    def fit(clips: list[Measured], seed: int) -> object:
        x_real = np.concatenate([real[m.clip.id][0] for m in clips])
        y_real = np.concatenate([real[m.clip.id][1] for m in clips])
        c_real = np.concatenate([real[m.clip.id][2] for m in clips])
        # args.synthetic_share synthetic rows for each real one; z still weighs the two alike
        keep = np.random.default_rng(seed).choice(len(ys), min(len(ys), int(args.synthetic_share * len(y_real))), replace=False)
        x, y, c = [x_real, xs[keep]], [y_real, ys[keep]], [c_real, cs[keep]]
        z_weight = [np.ones(len(y_real)), np.full(len(keep), len(y_real) / max(len(keep), 1))]
        c_weight = [np.ones(len(y_real)), np.where(bs[keep], args.closure_weight, 1.0)]  # p/b/m: the real mesh sees few brief closures
        without_teacher = fit_opening(np.concatenate(x), np.concatenate(y), np.concatenate(c), np.concatenate(z_weight), np.concatenate(c_weight), args, seed, work / f"{seed}.npz")
        if not heard:
            return without_teacher
        # The teacher's z shares nothing with the closed lips: a second tower learns z from the
        # real clips, the synthetic speech and the taught recordings; the first keeps its closures.
        (work / f"{seed}.npz").replace(work / f"{seed}-closed.npz")
        table = phone_table(clips, real, clip_phones)
        x_t, y_t, c_t = taught(heard, heard_rows, table)
        if args.teacher_mix:  # the real clips' z target: the face mesh's, mixed with the teacher's for the same sound
            y = [(1 - args.teacher_mix) * y_real + args.teacher_mix * np.concatenate([standardised(on_frames(phone_openings(hop_phones[m.clip.id], table)[0], m.frames)) for m in clips]), *y[1:]]
        fit_opening(np.concatenate([*x, x_t]), np.concatenate([*y, y_t]), np.concatenate([*c, c_t]), np.concatenate([*z_weight, np.full(len(y_t), args.teacher_weight * len(y_real) / len(y_t))]), np.concatenate([*c_weight, np.ones(len(y_t))]), args, seed, work / f"{seed}-z.npz")
        return two_towers(work / f"{seed}-z.npz", work / f"{seed}-closed.npz", work / f"{seed}.npz")

    ours: list[dict[int, float]] = []
    engine: list[dict[int, float]] = []
    baseline: list[dict[int, float]] = []
    if args.only_repo:
        # Trained on one source's clips (say, a permissively licensed one), scored on all others.
        folds = [[m for m in train if m.clip.repo != args.only_repo]]
    else:
        speakers = sorted({m.clip.speaker for m in train})
        np.random.default_rng(123).shuffle(speakers)
        folds = [[m for m in train if m.clip.speaker in speakers[k :: args.folds]] for k in range(args.folds)]
    for k, scored in enumerate(folds if args.folds else []):
        model = fit([m for m in train if m not in scored], args.seed + k)
        for m in scored:
            ours.append(correlation_at_lags(m.opening, smoothed_openings(model, rows[m.clip.id], m.frames)))
            engine.append(correlation_at_lags(m.opening, engine_openings(model, m.pcm, m.frames)))
            baseline.append(correlation_at_lags(m.opening, loudness(m.pcm, m.frames)))

    def summary(rs: list[dict[int, float]]) -> str:
        if not rs:
            return "-"
        best = np.array([max(r, key=lambda k: r[k]) for r in rs])
        return f"r {np.mean([r[0] for r in rs]):.2f}, best lag within +-1 on {np.mean(np.abs(best) <= 1):.0%} (median {np.median(best):+.0f})"

    how = f"trained on {args.only_repo}, scored on the other training clips" if args.only_repo else f"{args.folds} folds of training speakers left out"
    print(f"{how}, against the real opening ({len(ours)} clips): the model's z {summary(ours)}; the engine's opening {summary(engine)}; the loudness baseline {summary(baseline)}")
    if args.out is not None:
        fit([m for m in train if not args.only_repo or m.clip.repo == args.only_repo], args.seed)
        (work / f"{args.seed}.npz").replace(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
