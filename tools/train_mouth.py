"""Speech -> mouth on real people, first step: how far the engine's own hop features take a small
model trained on the real-speech corpus's training speakers (bench/realspeech_corpus.py).

Inputs per 30 fps frame: the viseme recognizer's hop features (24-band log-mel shape, level under
the loudest recent speech, voicing; ``engines/recognizer.hop_inputs``) of the hops from
--past ms before the frame's centre to --future ms after it. Targets: the real speaker's
inner-lip opening, mouth width and jaw drop from the face mesh, each standardised per clip (a
speaker's mouth size and resting opening are the face's, not the speech's). Models: ridge
regression and a small MLP (scikit-learn). Settings are chosen by leave-one-speaker-out over the
training speakers (the default); ``--heldout`` then reports Pearson r of the predicted opening
with the real one per held-out clip, at lag 0 and the best lag. Nothing is written.

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
from realspeech_corpus import Measured, correlation_at_lags, load  # noqa: E402

from lipsync_stream.engines.features import HOP, analyse  # noqa: E402
from lipsync_stream.engines.recognizer import hop_inputs, peak_track  # noqa: E402
from lipsync_stream.protocol import FPS, SAMPLE_RATE  # noqa: E402

HOPS_PER_SECOND = SAMPLE_RATE // HOP


def frame_inputs(m: Measured, past_ms: int, future_ms: int, per_clip: bool = False) -> np.ndarray:
    """(frames, features): each 30 fps frame's context of hop features, centred on its middle."""
    n_hops = len(m.pcm) // HOP
    f = analyse(m.pcm, np.arange(n_hops) * HOP + HOP // 2)
    rows = hop_inputs(f, peak_track(f.level_db))
    offsets = np.arange(-past_ms // 10, future_ms // 10 + 1)
    centre = ((np.arange(m.frames) + 0.5) / FPS * HOPS_PER_SECOND).astype(int)
    idx = np.clip(centre[:, None] + offsets[None, :], 0, n_hops - 1)
    if per_clip:  # each feature standardised over the clip: a microphone's colour is not speech
        rows = (rows - rows.mean(axis=0)) / (rows.std(axis=0) + 1e-6)
    return rows[idx].reshape(m.frames, -1)


def targets(m: Measured) -> np.ndarray:
    y = np.stack([m.opening, m.width, m.jaw], axis=1)
    return (y - y.mean(axis=0)) / (y.std(axis=0) + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--past", type=int, default=100, help="ms of speech before the frame's centre")
    parser.add_argument("--future", type=int, default=80, help="ms after it (the engine's lookahead)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--per-clip", action="store_true", help="standardise the inputs over each clip")
    parser.add_argument("--heldout", action="store_true", help="train on all training speakers and report the held-out ones (once settings are chosen)")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
