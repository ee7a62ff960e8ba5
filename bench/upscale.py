"""How to bring a 96x96 generated face back to its box: which OpenCV upscaling loses least.

A learned engine (Wav2Lip) generates the face at 96x96; pasting it back scales it up to the face
box (about 200-300 px on a 512x512 frame). The loss of that round trip does not depend on the
model, so it is measured here on the characters' own faces: each face crop is scaled down to
96x96 (as the model sees and draws it), scaled back up by each method, and compared with the
original inside the lower-face mask the paste uses: PSNR (dB, higher is closer) and the ratio of
high-frequency energy (Laplacian variance; 1.0 = as sharp as the original), and the time per
face. Every method ships with OpenCV (nothing to download). Run by hand:

    .venv/bin/python bench/upscale.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.characters.character import load_default_character  # noqa: E402
from lipsync_stream.composite import face_box, lower_face_mask, sharpen  # noqa: E402

SIDE = 96


def methods() -> dict[str, object]:
    def resize(interp: int):  # type: ignore[no-untyped-def]
        return lambda face, size: cv2.resize(face, size, interpolation=interp)

    def unsharp(amount: float):  # type: ignore[no-untyped-def]
        return lambda face, size: sharpen(cv2.resize(face, size, interpolation=cv2.INTER_CUBIC), amount)

    return {
        "linear": resize(cv2.INTER_LINEAR),
        "cubic": resize(cv2.INTER_CUBIC),
        "lanczos4": resize(cv2.INTER_LANCZOS4),
        "cubic + unsharp 0.5": unsharp(0.5),
        "cubic + unsharp 1.0": unsharp(1.0),
        "cubic + unsharp 1.5": unsharp(1.5),
    }


def main() -> None:
    character = load_default_character()
    picks = range(0, len(character), max(1, len(character) // 12))
    rows = []
    for name, method in methods().items():
        psnrs, sharp, seconds = [], [], 0.0
        for i in picks:
            ref = character.reference(i)
            assert ref.box is not None and ref.landmarks is not None
            y1, y2, x1, x2 = box = face_box(ref.box)
            crop = ref.image[y1:y2, x1:x2]
            small = cv2.resize(crop, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
            t = time.perf_counter()
            back = method(small, (x2 - x1, y2 - y1))  # type: ignore[operator]
            seconds += time.perf_counter() - t
            mask = lower_face_mask(ref.landmarks, box) > 0.5
            err = (back.astype(np.float64) - crop.astype(np.float64))[mask]
            psnrs.append(10 * np.log10(255.0**2 / max(float(np.mean(err**2)), 1e-9)))
            lap = [cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_BGR2GRAY), cv2.CV_64F)[mask].var() for im in (back, crop)]
            sharp.append(lap[0] / lap[1])
        rows.append((name, float(np.mean(psnrs)), float(np.mean(sharp)), 1000 * seconds / len(picks)))
    print(f"default character, {len(picks)} frames; face boxes about {x2 - x1}x{y2 - y1} px; 96x96 round trip\n")
    print("| upscaling | PSNR in the mask (dB) | sharpness vs original | ms per face |")
    print("|---|---:|---:|---:|")
    for name, p, s, ms in rows:
        print(f"| {name} | {p:.2f} | {s:.2f} | {ms:.2f} |")


if __name__ == "__main__":
    main()
