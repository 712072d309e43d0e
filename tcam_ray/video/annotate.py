"""Pictures of a localized video: a frame with its heat map, box and class; a contact sheet."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .. import viz

BOX_COLOUR = viz.PRED_COLOUR  # red, as predicted boxes everywhere else
OUTLINE = (255, 255, 255)  # white under the red: visible on any part of the heat map
SHEET_TILE_WIDTH = 320
SHEET_COLUMNS = 4


def scaled(frame: np.ndarray, base: float) -> int:
    """A line width or font size proportional to the frame's height (base at 480 lines)."""
    return max(1, int(round(base * frame.shape[0] / 480)))


def heat_overlay(frame_bgr: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """The frame with a [0, 1] map (any resolution) blended on top as a jet heat map."""
    height, width = frame_bgr.shape[:2]
    heat = cv2.resize(heat.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(frame_bgr, 1 - alpha, coloured, alpha, 0)


def draw_box(image: np.ndarray, box) -> None:
    """A box [x0, y0, x1, y1] (exclusive ends, original pixels), in place."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    thickness = scaled(image, 2)
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), OUTLINE, thickness + 2)
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), BOX_COLOUR, thickness)


def draw_label(image: np.ndarray, text: str, bottom: bool = False) -> None:
    """Text in the top-left (or bottom-left) corner, white on a dark outline, sized to the frame,
    in place."""
    scale = max(0.35, 0.6 * image.shape[0] / 480)
    thickness = scaled(image, 1.5)
    margin = scaled(image, 8)
    baseline = image.shape[0] - margin if bottom else margin + int(22 * scale)
    # The dark outline is the same text shifted around, not a thicker stroke: OpenCV spaces the
    # letters of thicker text further apart, so the two would not line up.
    for dx, dy in ((-1, -1), (-1, 1), (1, -1), (1, 1), (0, -1), (0, 1), (-1, 0), (1, 0)):
        cv2.putText(image, text, (margin + dx, baseline + dy), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    cv2.putText(image, text, (margin, baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                cv2.LINE_AA)


def annotate_frame(frame_bgr: np.ndarray, heat: np.ndarray, box, label: str, alpha: float) -> np.ndarray:
    out = heat_overlay(frame_bgr, heat, alpha)
    if box is not None:
        draw_box(out, box)
    draw_label(out, label)
    return out


def sheet_indices(frames: int, count: int) -> set[int]:
    """`count` frame indices spread evenly over a video of `frames` frames (first and last included)."""
    if frames <= 0:
        return {0}
    return set(np.unique(np.linspace(0, frames - 1, min(count, frames)).round().astype(int)).tolist())


def sheet_tile(annotated: np.ndarray, caption: str) -> np.ndarray:
    """A small copy of an annotated frame with `caption` (e.g. its frame number) at the bottom."""
    height, width = annotated.shape[:2]
    if width > SHEET_TILE_WIDTH:
        size = (SHEET_TILE_WIDTH, max(1, round(height * SHEET_TILE_WIDTH / width)))
        tile = cv2.resize(annotated, size, interpolation=cv2.INTER_AREA)
    else:
        tile = annotated.copy()
    draw_label(tile, caption, bottom=True)
    return tile


def write_contact_sheet(path: Path, tiles: list[np.ndarray]) -> Path:
    height, width = tiles[0].shape[:2]
    page = viz.grid(tiles, columns=min(SHEET_COLUMNS, len(tiles)), cell=(width, height))
    return viz.write_png(path, page)
