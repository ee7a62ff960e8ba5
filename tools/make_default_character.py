"""Regenerate the embedded default character from scikit-image's astronaut photograph.

    pip install -e '.[tools]' && python tools/make_default_character.py

The photograph (Eileen Collins, NASA, public domain) ships inside scikit-image. This script
upscales the face region, closes the smiling lips (so silence shows a closed mouth), then
animates a loop of a few seconds: breathing, a slight head sway and a blink. It writes
``src/lipsync_stream/assets/default/character.mp4`` (512x512 H.264) and
``character.landmarks.npz`` (per-frame face-mesh landmarks, as ``prepare`` writes them). Coordinates marked "photo" were measured by hand on the
512x512 photograph.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import skimage.data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lipsync_stream.characters.character import landmarks_path_for  # noqa: E402
from lipsync_stream.characters.landmarks import Landmarks, track_landmarks  # noqa: E402
from lipsync_stream.characters.video import decode_video  # noqa: E402

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "lipsync_stream" / "assets" / "default"
DOCS_DIR = Path(__file__).resolve().parents[1] / "docs"
SIZE = 512
N_FRAMES = 120  # 4 s forward; the server plays it back and forth
CROP = 224  # photo pixels across the output: x2.29, so the mouth is about 95 px wide

# photo coordinates
FACE_CENTRE = (224.5, 113.5)
UPPER_INNER_LIP = [(202, 140.8), (210, 141.8), (224, 141.6), (238, 141.4), (245, 140.3)]
LOWER_INNER_LIP = [(202, 141.2), (209, 146.5), (216, 148.8), (224, 149.6), (232, 148.5), (240, 145.5), (245, 140.8)]
EYES = [(202.5, 100.0), (246.5, 102.5)]  # centres
EYE_HALF_WIDTH = 11.5
EYE_HALF_HEIGHT = 4.5
BLINK = {38: 0.35, 39: 0.8, 40: 1.0, 41: 0.9, 42: 0.55, 43: 0.2}  # frame -> eyelid closure
NECK_PIVOT = (224.0, 200.0)


def upscale(photo: np.ndarray, scale: float) -> np.ndarray:
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_LANCZOS4)
    blur = cv2.GaussianBlur(big, (0, 0), 1.6)
    return cv2.addWeighted(big, 1.5, blur, -0.5, 0)  # mild unsharp mask against upscaling softness


def close_lips(img: np.ndarray, scale: float) -> tuple[np.ndarray, float, float, float]:
    """Squeeze the teeth band shut; returns the image and the lip line's centre and half-width."""
    x_lo, x_hi = UPPER_INNER_LIP[0][0] * scale, UPPER_INNER_LIP[-1][0] * scale
    h, w = img.shape[:2]
    xs = np.arange(w, dtype=np.float64)
    top = np.interp(xs, [p[0] * scale for p in UPPER_INNER_LIP], [p[1] * scale for p in UPPER_INNER_LIP])
    bottom = np.interp(xs, [p[0] * scale for p in LOWER_INNER_LIP], [p[1] * scale for p in LOWER_INNER_LIP])
    inside = (xs >= x_lo) & (xs <= x_hi)
    mid = 0.5 * (top + bottom)
    half = np.where(inside, 0.5 * (bottom - top) + 1.0, 0.0)
    half = np.convolve(half, np.ones(9) / 9, mode="same")
    mid = np.convolve(np.where(inside, mid, mid[int(x_lo)]), np.ones(9) / 9, mode="same")
    reach = 2.4 * float(half.max())
    ys = np.arange(h, dtype=np.float64)[:, None]
    d = ys - mid[None, :]
    fade = np.clip(1.0 - np.abs(d) / reach, 0.0, 1.0)
    fade = fade * fade * (3 - 2 * fade)
    src_y = ys + np.sign(d) * half[None, :] * fade
    src_y = np.where(d == 0, ys + half[None, :], src_y)
    map_x = np.broadcast_to(xs[None, :], (h, w)).astype(np.float32)
    out = cv2.remap(img, map_x, src_y.astype(np.float32), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    # A soft, slightly dark lip line where the lips now meet.
    line = np.exp(-0.5 * (d / (0.9 * scale)) ** 2) * (half[None, :] > 0.5)
    out = (out.astype(np.float32) * (1.0 - 0.28 * line[..., None])).clip(0, 255).astype(np.uint8)
    centre_x = 0.5 * (x_lo + x_hi)
    return out, centre_x, float(mid[int(round(centre_x))]), 0.5 * (x_hi - x_lo)


def blink(img: np.ndarray, scale: float, closure: float) -> np.ndarray:
    """Lower both upper eyelids by *closure* (0 open, 1 shut) by stretching the lid skin down."""
    if closure <= 0:
        return img
    out = img.copy()
    for ex, ey in EYES:
        ex, ey = ex * scale, ey * scale
        a, hh = EYE_HALF_WIDTH * scale, EYE_HALF_HEIGHT * scale
        yt, lash, yb = ey - 2.3 * hh, ey - hh, ey + 0.9 * hh
        x0, x1, y0, y1 = int(ex - a), int(ex + a) + 1, int(yt), int(yb) + 1
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        k = np.clip(1.0 - ((xs - ex) / a) ** 2, 0.0, 1.0) ** 0.8
        r = (lash - yt) / (yb - yt)
        src_y = yt + (ys - yt) * (1.0 - closure * k * (1.0 - r))
        patch = cv2.remap(img, xs, src_y.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        out[y0:y1, x0:x1] = patch
    return out


def motion(i: int) -> tuple[float, float, float, float]:
    """(rotation degrees, scale, dx, dy) for frame *i*; zero velocity at both ends of the loop."""
    t = i / (N_FRAMES - 1)
    bump = lambda k: 0.5 * (1.0 - math.cos(2.0 * math.pi * k * t)) - 0.5  # noqa: E731
    return 0.9 * bump(1), 1.0 + 0.006 * (bump(1) + 0.5), 1.6 * bump(1), 1.0 * bump(2)


def main() -> None:
    photo = skimage.data.astronaut()[:, :, ::-1].copy()  # RGB -> BGR
    scale = SIZE / CROP
    big = upscale(photo, scale)
    big, _, _, mouth_hw = close_lips(big, scale)
    crop_x = FACE_CENTRE[0] * scale - SIZE / 2
    crop_y = FACE_CENTRE[1] * scale - 0.45 * SIZE
    pivot = (NECK_PIVOT[0] * scale, NECK_PIVOT[1] * scale)

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with av.open(str(OUT_DIR / "character.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "slow"}
        for i in range(N_FRAMES):
            rot, sc, dx, dy = motion(i)
            m = cv2.getRotationMatrix2D(pivot, rot, sc)
            m[0, 2] += dx - crop_x
            m[1, 2] += dy - crop_y
            frame = cv2.warpAffine(blink(big, scale, BLINK.get(i, 0.0)), m, (SIZE, SIZE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                container.mux(packet)
            if i == 0:
                cv2.imwrite(str(DOCS_DIR / "default-character.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        for packet in stream.encode():
            container.mux(packet)
    print(f"wrote {OUT_DIR / 'character.mp4'}: {N_FRAMES} frames, mouth {2 * mouth_hw:.0f} px wide")
    write_landmarks()


def write_landmarks() -> None:
    """Face-mesh landmarks of the video as the server decodes it (what ``prepare`` would write)."""
    video = OUT_DIR / "character.mp4"
    frames = decode_video(video)
    landmarks = Landmarks(track_landmarks(frames))
    landmarks.save(landmarks_path_for(video))
    widths = 2 * landmarks.mouths()[:, 2]
    print(f"wrote {landmarks_path_for(video)}: mouth {widths.min():.0f}-{widths.max():.0f} px wide")


if __name__ == "__main__":
    if "--landmarks-only" in sys.argv:
        write_landmarks()
    else:
        main()
