"""The ONNX face mesh (characters/facemodels.py) against MediaPipe 0.10.14's own, frame by frame.

Run where MediaPipe 0.10.14 is installed beside the package (it is no longer a dependency:
``pip install mediapipe==0.10.14`` in a scratch environment). Prints, per video, the mean and the
95th percentile of the distance between the two meshes' 478 points at 512x512 (the scale
characters are stored at), the lips alone, frames where only one found a face, and the time per
frame of each; then the detectors' boxes (full range) compared the same way.

    python bench/faces_vs_mediapipe.py [--frames 150] VIDEO... (default: the default character
    and the real-speech cache's clips, bench/realspeech_corpus.py)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from lipsync_stream.characters.facemodels import FULL_RANGE, FaceMeshTracker, detect_faces  # noqa: E402
from lipsync_stream.characters.landmarks import LIPS_LOWER_INNER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER, LIPS_UPPER_OUTER  # noqa: E402

LIPS = sorted(set(LIPS_UPPER_OUTER + LIPS_LOWER_OUTER + LIPS_UPPER_INNER + LIPS_LOWER_INNER))
WARM = 5
CACHE = Path.home() / ".cache" / "lipsync-stream" / "realspeech" / "media"


def frames_of(path: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("videos", nargs="*", type=Path)
    ap.add_argument("--frames", type=int, default=150)
    args = ap.parse_args()
    from mediapipe.python import solutions

    videos = args.videos or [ROOT / "src/lipsync_stream/assets/default/character.mp4", *sorted(CACHE.glob("*"))]
    print(f"{'video':<14} {'frames':>6} {'mean px':>8} {'p95 px':>7} {'lips px':>8} {'only one':>8} {'ms onnx':>8} {'ms mp':>6} {'box px':>7}")
    means, lips_means, t_ours, t_mp, box_err = [], [], 0.0, 0.0, []
    for video in videos:
        frames = frames_of(video, args.frames)
        if not frames:
            continue
        mp_mesh = solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.5, min_tracking_confidence=0.5)
        mp_det = solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
        ours = FaceMeshTracker(video=True)
        dists, lip_d, only_one, boxes = [], [], 0, []
        ms_ours = ms_mp = 0.0
        for k, frame in enumerate(frames):
            h, w = frame.shape[:2]
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            t0 = time.perf_counter()
            a = ours.landmarks_rgb(rgb)
            t1 = time.perf_counter()
            res = mp_mesh.process(rgb)
            t2 = time.perf_counter()
            if k >= WARM:  # the first frames start the graphs and sessions
                ms_ours += t1 - t0
                ms_mp += t2 - t1
            b = None if not res.multi_face_landmarks else np.array([(p.x * w, p.y * h) for p in res.multi_face_landmarks[0].landmark], np.float32)
            if (a is None) != (b is None):
                only_one += 1
            elif a is not None and b is not None:
                d = np.linalg.norm(a - b, axis=1) * 512 / max(h, w)
                dists.append(d)
                lip_d.append(d[LIPS].mean())
            dets = detect_faces(rgb, FULL_RANGE, 0.5)
            mres = mp_det.process(rgb)
            if dets and mres.detections:
                rb = max(mres.detections, key=lambda d: d.score[0]).location_data.relative_bounding_box
                ref = np.array([rb.xmin * w, rb.ymin * h, (rb.xmin + rb.width) * w, (rb.ymin + rb.height) * h])
                boxes.append(np.abs(dets[0].box - ref).mean() * 512 / max(h, w))
        mp_mesh.close()
        mp_det.close()
        n = len(frames)
        timed = max(n - WARM, 1)
        dd = np.concatenate(dists) if dists else np.array([np.nan])
        means.append(float(np.mean(dd)))
        lips_means.append(float(np.mean(lip_d)) if lip_d else np.nan)
        box_err.append(float(np.mean(boxes)) if boxes else np.nan)
        t_ours += ms_ours / timed
        t_mp += ms_mp / timed
        print(f"{video.name:<14} {n:>6} {np.mean(dd):>8.3f} {np.percentile(dd, 95):>7.3f} {lips_means[-1]:>8.3f} {only_one:>8} {1000 * ms_ours / timed:>8.1f} {1000 * ms_mp / timed:>6.1f} {box_err[-1]:>7.3f}")
    k = len(means)
    print(f"{'mean':<14} {'':>6} {np.nanmean(means):>8.3f} {'':>7} {np.nanmean(lips_means):>8.3f} {'':>8} {1000 * t_ours / k:>8.1f} {1000 * t_mp / k:>6.1f} {np.nanmean(box_err):>7.3f}")
    print(f"worst video mean {np.nanmax(means):.3f} px; speed onnx / mediapipe per frame {t_ours / t_mp:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
