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


#: a running standardisation's memory (hops): about 3 s of speech
RUNNING_HOPS = 300


def running_standardised(rows: np.ndarray, speech: np.ndarray, prior_mean: np.ndarray, prior_var: np.ndarray) -> np.ndarray:
    """Each hop's features standardised by the mean and spread of the speech heard so far (an
    exponential memory of RUNNING_HOPS speech hops, starting from the priors): what a stream can
    do where a clip would be standardised whole."""
    out = np.empty_like(rows)
    mean, var = prior_mean.astype(np.float64).copy(), prior_var.astype(np.float64).copy()
    a = 1.0 / RUNNING_HOPS
    for i, row in enumerate(rows):
        if speech[i]:
            d = row - mean
            mean += a * d
            var = (1 - a) * (var + a * d * d)
        out[i] = (row - mean) / np.sqrt(var + 1e-6)
    return out


def hop_rows(pcm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The recognizer's per-hop features of *pcm*, and which hops are speech (within 40 dB of
    the loudest recent)."""
    n_hops = len(pcm) // HOP
    f = analyse(pcm, np.arange(n_hops) * HOP + HOP // 2)
    peak = peak_track(f.level_db)
    return hop_inputs(f, peak), f.level_db > peak - 40.0


def stacked(rows: np.ndarray, at: np.ndarray) -> np.ndarray:
    from lipsync_stream.engines.recognizer import CONTEXT

    idx = np.clip(at[:, None] + CONTEXT[None, :], 0, len(rows) - 1)
    return rows[idx].reshape(len(at), -1)


def engine_inputs(m: Measured, prior: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """(frames, features): the recognizer's own inputs for each 30 fps frame (its 19 hops around
    the hop nearest the frame's centre), as the engine computes them while it streams; with a
    *prior* (mean, variance), standardised as they come (:func:`running_standardised`)."""
    rows, speech = hop_rows(m.pcm)
    if prior is not None:
        rows = running_standardised(rows, speech, *prior)
    centre = ((np.arange(m.frames) + 0.5) / FPS * HOPS_PER_SECOND).astype(int)
    return stacked(rows, np.clip(centre, 0, len(rows) - 1))


def open_target(m: Measured) -> np.ndarray:
    """The real opening on the engine's scale: 0 at the speaker's closed lips (5th percentile),
    1 at their wide opening (95th), so that faces of any size train one model."""
    lo, hi = np.percentile(m.opening, [5, 95])
    return np.clip((m.opening - lo) / max(hi - lo, 1e-6), 0.0, 1.3)


def engine_open(m: Measured) -> np.ndarray:
    """The viseme engine's own mouth opening for each frame of the clip (no rendering)."""
    from lipsync_stream.engines.viseme import VisemeEngine
    from lipsync_stream.protocol import AudioFramer

    engine = VisemeEngine()
    stream = engine.stream()
    framer = AudioFramer(engine.lookahead_samples, engine.context_samples)
    framer.push(m.pcm.astype("<i2").tobytes())
    framer.flush()
    out = []
    while framer.ready():
        out.append(stream.analyse(framer.pop()).shape.open)
    return np.array(out[: m.frames])


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
    parser.add_argument("--engine-model", action="store_true", help="the opening model on the recognizer's inputs, trained on the real training speakers and synthetic speech, against the engine's own opening (leave one speaker out)")
    parser.add_argument("--synthetic", type=int, default=600, help="espeak-ng utterances mixed in (--engine-model)")
    parser.add_argument("--z-target", action="store_true", help="with --engine-model: the real opening standardised per clip instead of scaled between its 5th and 95th percentiles")
    parser.add_argument("--only-repo", help="with --engine-model: train on this repository's clips only, score on the other training clips")
    parser.add_argument("--running-norm", action="store_true", help="with --engine-model: inputs standardised as they stream (running mean and spread of the speech so far)")
    parser.add_argument("--out", type=Path, help="with --engine-model: write the model trained on every training speaker here")
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


def engine_model(args: argparse.Namespace) -> None:
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    sys.path.insert(0, str(ROOT / "tools"))
    from train_visemes import TRAIN_ACCENTS, TRAIN_VARIANTS, dataset

    from lipsync_stream.engines.viseme import TARGETS, VISEMES

    train = load("train")
    prior = None
    if args.running_norm:
        every = np.concatenate([hop_rows(m.pcm)[0] for m in train])
        prior = (every.mean(axis=0), every.var(axis=0))
    rows = {m.clip.id: (engine_inputs(m, prior), targets(m)[:, 0] if args.z_target else open_target(m)) for m in train}
    voices = [f"{a}+{v}" if v else a for a in TRAIN_ACCENTS for v in TRAIN_VARIANTS]
    if args.synthetic and prior is None and not args.z_target:
        xs, labels = dataset(voices, args.synthetic, args.seed)
        ys = np.array([TARGETS[VISEMES[k]].open for k in labels])
    elif args.synthetic:
        from espeak import Espeak
        from train_visemes import sentence, utterance

        rng, speaker, parts, targets_ = np.random.default_rng(args.seed), Espeak(), [], []
        for i in range(args.synthetic):
            signal, hop_labels = utterance(speaker, sentence(rng), voices[i % len(voices)], int(rng.integers(120, 220)), int(rng.integers(25, 80)), rng, rng.uniform(-24, 0))
            hop_x, speech = hop_rows(signal)
            if prior is not None:
                hop_x = running_standardised(hop_x, speech, *prior)
            at = np.arange(0, len(hop_x), 2)
            parts.append(stacked(hop_x, at))
            y = np.array([TARGETS[VISEMES[k]].open for k in hop_labels[at]])
            targets_.append((y - y.mean()) / (y.std() + 1e-9) if args.z_target else y)
        xs, ys = np.concatenate(parts), np.concatenate(targets_)
    else:
        xs, ys = np.zeros((0, rows[train[0].clip.id][0].shape[1])), np.zeros(0)
    print(f"real: {len(train)} clips, {sum(len(y) for _x, y in rows.values()) / FPS:.0f} s; synthetic: {len(ys)} hops")

    def fit(clips: list[Measured]) -> tuple[StandardScaler, MLPRegressor]:
        x_real = np.concatenate([rows[m.clip.id][0] for m in clips])
        y_real = np.concatenate([rows[m.clip.id][1] for m in clips])
        keep = np.random.default_rng(args.seed).choice(len(ys), min(len(ys), 2 * len(y_real)), replace=False)
        x, y = np.concatenate([x_real, xs[keep]]), np.concatenate([y_real, ys[keep]])
        scaler = StandardScaler().fit(x)
        model = MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-2, max_iter=300, early_stopping=True, random_state=args.seed).fit(scaler.transform(x), y)
        return scaler, model

    ours: list[dict[int, float]] = []
    engine: list[dict[int, float]] = []
    if args.only_repo:
        # Trained on one source's clips (say, a permissively licensed one), scored on all others.
        scaler, model = fit([m for m in train if m.clip.repo == args.only_repo])
        for m in (m for m in train if m.clip.repo != args.only_repo):
            ours.append(correlation_at_lags(m.opening, model.predict(scaler.transform(rows[m.clip.id][0]))))
            engine.append(correlation_at_lags(m.opening, engine_open(m)))
    for speaker in sorted({m.clip.speaker for m in train}) if not args.only_repo else []:
        scaler, model = fit([m for m in train if m.clip.speaker != speaker])
        for m in (m for m in train if m.clip.speaker == speaker):
            ours.append(correlation_at_lags(m.opening, model.predict(scaler.transform(rows[m.clip.id][0]))))
            engine.append(correlation_at_lags(m.opening, engine_open(m)))

    def summary(rs: list[dict[int, float]]) -> str:
        best = np.array([max(r, key=lambda k: r[k]) for r in rs])
        return f"r {np.mean([r[0] for r in rs]):.2f}, best lag within +-1 on {np.mean(np.abs(best) <= 1):.0%} (median {np.median(best):+.0f})"

    how = f"trained on {args.only_repo}, scored on the other training clips" if args.only_repo else "leave-one-speaker-out"
    print(f"{how}, against the real opening ({len(ours)} clips): model {summary(ours)}; the engine today {summary(engine)}")
    if args.out is not None:
        scaler, model = fit([m for m in train if not args.only_repo or m.clip.repo == args.only_repo])
        layers = {f"w{i}": w.astype(np.float32) for i, w in enumerate(model.coefs_)} | {f"b{i}": b.astype(np.float32) for i, b in enumerate(model.intercepts_)}
        np.savez(args.out, classes=np.array(["open"]), mean=scaler.mean_.astype(np.float32), std=scaler.scale_.astype(np.float32), layers=len(model.coefs_), version=np.array("mouth-1"), **layers)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
