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


PRED_COLOUR = (0, 0, 255)  # BGR red


def overlay(image_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """BGR picture of an RGB frame with a [0, 1] map blended on top as a jet heat map."""
    frame = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    heat = cv2.resize(heat.astype(np.float32), (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(frame, 1 - alpha, coloured, alpha, 0)


def map_panel(image_rgb: np.ndarray, heat: np.ndarray, gt_boxes, pred_boxes) -> np.ndarray:
    """Frame | frame with map, GT boxes (green) and predicted boxes (red); boxes in the frame's pixels."""
    plain = draw_boxes(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), gt_boxes, GT_COLOUR)
    mapped = draw_boxes(draw_boxes(overlay(image_rgb, heat), gt_boxes, GT_COLOUR), pred_boxes, PRED_COLOUR)
    return np.concatenate([plain, mapped], axis=1)


def plot_training_curves(records: Sequence[dict], path: str | Path) -> Path:
    """Loss, top-1 and CorLoc per epoch from metrics.jsonl records."""
    by_split: dict[str, list[dict]] = {}
    for record in records:
        by_split.setdefault(record["split"], []).append(record)
    fig = new_figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    for split, rows in by_split.items():
        epochs = [r["epoch"] for r in rows]
        for ax, key in zip(axes, ("loss", "top1", "corloc")):
            values = [r.get(key) for r in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=split)
    for ax, title in zip(axes, ("loss", "top-1 accuracy (%)", "CorLoc (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def plot_threshold_curve(thresholds: Sequence[float], corloc: Sequence[float], path: str | Path,
                         title: str = "CorLoc vs map threshold") -> Path:
    fig = new_figure(figsize=(5, 3.6))
    ax = fig.subplots()
    ax.plot(thresholds, corloc)
    best = int(np.argmax(corloc))
    ax.axvline(thresholds[best], color="grey", linestyle="--", label=f"best {thresholds[best]:.2f}: {corloc[best]:.1f}%")
    ax.set_xlabel("threshold")
    ax.set_ylabel("CorLoc (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on its own Agg canvas, outside pyplot: the process's backend (a notebook's
    inline one, say) and pyplot's list of open figures stay as they were."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
