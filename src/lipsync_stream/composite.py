"""Pasting a generated face back onto the character: a soft lower-face mask, colours matched.

Learned engines generate a square face crop (Wav2Lip: 96x96 from the face box). Pasting the whole
rectangle back leaves a visible box on the cheeks and chin, and the generator's colours drift
from the frame's; users of other Wav2Lip servers complain of both. Here the crop is scaled back
to its box (cubic, then a light unsharp mask), its colours are shifted to the reference's inside the mask, and it is blended
through a mask that covers only the lower face (from the upper lip down round the jaw, from the
face-mesh landmarks), feathered so that no edge shows. The result is a band of full-width rows
aligned to JPEG MCU rows, ready for the spliced encoder.
"""

from __future__ import annotations

import cv2
import numpy as np

from .characters.landmarks import JAW, NOSE_BOTTOM, NOSE_WINGS
from .engines.base import ReferenceFrame, Region

BOTTOM_PAD = 0.05  # the crop reaches this share of the face height below the box (the chin)
FEATHER = 0.04  # mask softness, as a share of the box width
#: unsharp-mask amount after the cubic upscaling of the generated face (bench/upscale.py: of the
#: methods OpenCV ships, closest to a face seen at 96x96 and scaled back; more rings)
SHARPEN = 0.5
MCU = 16


def face_box(box: np.ndarray, size: tuple[int, int] = (512, 512), given: bool = False, pad_below: int | None = None) -> tuple[int, int, int, int]:
    """(y1, y2, x1, x2) of the crop for a face box, inside the frame: padded below by
    BOTTOM_PAD of its height, or by *pad_below* pixels (Wav2Lip's inference: 10), unless the box
    is *given* (a Wav2Lip pickle's crop, which its maker padded already)."""
    y1, y2, x1, x2 = (int(v) for v in box)
    if not given:
        y2 = min(size[0], y2 + (round(BOTTOM_PAD * (y2 - y1)) if pad_below is None else pad_below))
    return max(0, y1), y2, max(0, x1), min(size[1], x2)


def crop_input(image: np.ndarray, box: tuple[int, int, int, int], side: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """Wav2Lip's face input: (6, side, side) float32, the crop with its lower half blacked out,
    then the crop itself (BGR, 0..1). Scaled down by area (no aliasing) unless *interpolation*
    says otherwise (Wav2Lip's own inference: bilinear)."""
    y1, y2, x1, x2 = box
    crop = cv2.resize(image[y1:y2, x1:x2], (side, side), interpolation=interpolation).astype(np.float32) / 255.0
    masked = crop.copy()
    masked[side // 2 :] = 0.0
    return np.concatenate([masked, crop], axis=2).transpose(2, 0, 1).copy()


def lower_face_mask(landmarks: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(h, w) float32 in 0..1 over the box: the lower face, from under the nose round the jaw."""
    y1, y2, x1, x2 = box
    h, w = y2 - y1, x2 - x1
    outline = np.concatenate([landmarks[JAW], landmarks[[NOSE_WINGS[1], NOSE_BOTTOM, NOSE_WINGS[0]]]]) - np.array([x1, y1], dtype=np.float32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(outline * 4).astype(np.int32)], color=(255,), lineType=cv2.LINE_AA, shift=2)
    sigma = max(1.0, FEATHER * w)
    # Eroded by two sigmas first, so that the feather stays inside the outline (2 % at its edge).
    inner = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (4 * round(sigma) + 1,) * 2))
    soft = cv2.GaussianBlur(inner.astype(np.float32) / 255.0, (0, 0), sigma)
    soft[:, :1] = soft[:, -1:] = 0.0  # never reach the box's edge: no rectangle can show
    soft[:1] = soft[-1:] = 0.0
    return soft


def match_colours(generated: np.ndarray, reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """*generated* shifted so that its weighted mean colour equals *reference*'s (float32)."""
    total = float(weight.sum())
    if total < 1.0:
        return generated.astype(np.float32)
    w = weight[..., None]
    shift = (reference.astype(np.float32) * w).sum(axis=(0, 1)) / total - (generated.astype(np.float32) * w).sum(axis=(0, 1)) / total
    return generated.astype(np.float32) + shift


def sharpen(image: np.ndarray, amount: float, sigma: float = 1.2) -> np.ndarray:
    """Unsharp mask: *image* plus *amount* times its detail above a Gaussian of *sigma* px."""
    if amount <= 0.0:
        return image
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.addWeighted(image, 1.0 + amount, blurred, -amount, 0.0)


def band_rows(image: np.ndarray, y1: int, y2: int) -> tuple[int, int]:
    """The rows (top, bottom) of the band of full-width MCU rows that holds rows y1..y2."""
    return (y1 // MCU) * MCU, min(image.shape[0], -(-y2 // MCU) * MCU)


def paste_box(ref: ReferenceFrame, box: tuple[int, int, int, int], face: np.ndarray) -> Region:
    """Wav2Lip's own paste: the generated *face* scaled to *box* (bilinear) and written over the
    whole box, no mask, no colour match (``--fidelity reference``)."""
    y1, y2, x1, x2 = box
    top, bottom = band_rows(ref.image, y1, y2)
    band = ref.image[top:bottom].copy()
    band[y1 - top : y2 - top, x1:x2] = cv2.resize(face, (x2 - x1, y2 - y1))
    return top, band


def paste_face(ref: ReferenceFrame, box: tuple[int, int, int, int], face: np.ndarray, strength: float = 1.0) -> Region:
    """The reference frame with the generated *face* crop pasted into *box*, as (first row,
    band of full-width rows whose top and height are multiples of 16). *strength* < 1 shows
    that share of the generated face over the reference's (near-silence: lips closing)."""
    assert ref.landmarks is not None, "pasting needs the character's landmarks"
    y1, y2, x1, x2 = box
    image = ref.image
    top, bottom = band_rows(image, y1, y2)
    band = image[top:bottom].copy()
    region = image[y1:y2, x1:x2]
    generated = sharpen(cv2.resize(face, (x2 - x1, y2 - y1), interpolation=cv2.INTER_CUBIC), SHARPEN)
    mask = lower_face_mask(ref.landmarks, box)
    matched = match_colours(generated, region, mask)
    if strength < 1.0:
        mask *= np.float32(max(strength, 0.0))
    blended = region.astype(np.float32) * (1.0 - mask[..., None]) + matched * mask[..., None]
    band[y1 - top : y2 - top, x1:x2] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return top, band
