"""Pictures a person would rather look at than numbers: frames with boxes, grids."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

GT_COLOUR = (0, 220, 0)  # BGR green


def draw_boxes(image: np.ndarray, boxes: Sequence[Sequence[float]], colour=GT_COLOUR, thickness: int = 1) -> np.ndarray:
    out = image.copy()
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(out, (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1), colour, thickness)
    return out


def caption(image: np.ndarray, text: str) -> None:
    """Write `text` in the top-left corner, white on a dark outline (in place)."""
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(image, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colour, thickness, cv2.LINE_AA)


def grid(images: Sequence[np.ndarray], columns: int, cell: tuple[int, int] | None = None, pad: int = 2,
         captions: Sequence[str] | None = None) -> np.ndarray:
    """Tile BGR images row by row, each resized to `cell` (width, height), on a white page."""
    if not images:
        raise ValueError("grid() needs at least one image")
    width, height = cell or (images[0].shape[1], images[0].shape[0])
    rows = (len(images) + columns - 1) // columns
    page = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        y, x = pad + r * (height + pad), pad + c * (width + pad)
        tile = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
        if captions and captions[i]:
            caption(tile, captions[i])
        page[y:y + height, x:x + width] = tile
    return page


def write_png(path: str | Path, image: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"could not write {path}")
    return path
