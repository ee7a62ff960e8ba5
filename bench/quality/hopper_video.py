"""A second test character: Grace Hopper's official US Navy portrait (public domain), which ships
inside matplotlib as sample data, turned into a 1280x720, 25 fps "talking-head" clip with slow
zoom and sway. ``prepare`` then makes a character of it like of any other video.
"""

from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def hopper_photo() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        data = np.frombuffer(f.read(), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def make_video(path: Path, seconds: float = 4.0, fps: int = 25) -> Path:
    photo = hopper_photo()  # 600x512
    big = cv2.resize(photo, None, fx=1.2, fy=1.2, interpolation=cv2.INTER_CUBIC)
    bh, bw = big.shape[:2]
    background = cv2.GaussianBlur(cv2.resize(photo, (1280, 720)), (0, 0), 25)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps, options={"crf": "18"})
        s.width, s.height, s.pix_fmt = 1280, 720, "yuv420p"
        for i in range(int(seconds * fps)):
            t = i / fps
            angle = 1.2 * math.sin(2 * math.pi * t / 3.0)
            zoom = 1.0 + 0.02 * math.sin(2 * math.pi * t / 4.0)
            m = cv2.getRotationMatrix2D((bw / 2, bh * 0.55), angle, zoom)
            m[0, 2] += 700 - bw / 2 + 6 * math.sin(2 * math.pi * t / 2.5)
            m[1, 2] += 360 - bh * 0.45
            frame = cv2.warpAffine(big, m, (1280, 720), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT, dst=background.copy())
            vf = av.VideoFrame.from_ndarray(frame, format="bgr24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    return path


if __name__ == "__main__":
    print(make_video(Path(sys.argv[1] if len(sys.argv) > 1 else "hopper.mp4")))
