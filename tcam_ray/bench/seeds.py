"""`tcam-ray bench seeds`: the stage-2 pseudo-label step against a per-frame numpy + OpenCV reference.

The reference below is the same rule (the TCAM reference code's, see
tcam_ray/methods/pseudo_labels.py) written one frame at a time in the plainest
way: scikit-image 0.17.2's Otsu on np.histogram, cv2.connectedComponentsWithStats,
stable argsorts for the seed regions, numpy's choice for the draws,
cv2.dilate. The tests use it as the ground truth next to the reference code's
own outputs, so keep it obviously correct rather than fast.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tcam_ray.methods.pseudo_labels import WEIGHT_FLOOR, pseudo_labels, sample_seeds

BASELINE_NAME = "per-frame reference (numpy + OpenCV)"


# ----------------------------------------------------------------------------- per-frame reference


def reference_cam_tmp(buffer: np.ndarray, valid: np.ndarray, sharpen: float | None = None) -> np.ndarray:
    """(h, w) max over the valid entries of one frame's (T, h, w) buffer, in its dtype (float maps in [0, 1],
    or uint8 levels: map = level / 255); zeros if none is valid. Sharpening gives float32."""
    entries = buffer[valid.astype(bool)]
    pooled = entries.max(axis=0) if len(entries) else np.zeros(buffer.shape[1:], buffer.dtype)
    if sharpen is not None:
        scaled = np.float32(sharpen) * reference_values(pooled)
        pooled = np.exp(scaled - scaled.max()).astype(np.float32)
    return pooled


def reference_values(cam: np.ndarray) -> np.ndarray:
    """Map values as float32 in [0, 1] (uint8 levels / 255)."""
    return cam.astype(np.float32) / np.float32(255) if cam.dtype == np.uint8 else cam.astype(np.float32)


def reference_levels(cam: np.ndarray) -> np.ndarray:
    """float32 levels floor(255 * map) (uint8 maps: the levels)."""
    if cam.dtype == np.uint8:
        return cam.astype(np.float32)
    return np.clip(np.floor(cam.astype(np.float32) * np.float32(255)), 0, 255)


def reference_otsu(cam: np.ndarray) -> float:
    """scikit-image 0.17.2's threshold_otsu of the levels (0 for a single level), in level units."""
    levels = reference_levels(cam).ravel()
    if levels.min() == levels.max():
        return 0.0
    hist, edges = np.histogram(levels, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2.0
    hist = hist.astype(float)
    weight1 = np.cumsum(hist)
    weight2 = np.cumsum(hist[::-1])[::-1]
    mean1 = np.cumsum(hist * centres) / weight1
    mean2 = (np.cumsum((hist * centres)[::-1]) / weight2[::-1])[::-1]
    variance12 = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[:-1][np.argmax(variance12)])


def reference_roi(cam: np.ndarray, threshold: float, mode: str = "all", min_size: float = 0.05) -> np.ndarray:
    """(h, w) bool: 255 * map >= threshold (all); its largest 4-connected blob; or its densest blob, the
    largest if that one is under min_size of the frame."""
    if cam.dtype == np.uint8:
        foreground = cam.astype(np.float64) >= threshold
    else:
        foreground = cam.astype(np.float32) * np.float32(255) >= np.float32(threshold)
    if mode == "all":
        return foreground
    count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground.astype(np.uint8), connectivity=4)
    blobs = list(range(1, count))
    if not blobs:
        return foreground
    area = {blob: int(stats[blob, cv2.CC_STAT_AREA]) for blob in blobs}
    largest = _first_in_raster_order(labels, _best(blobs, area))
    if mode == "largest":
        return labels == largest
    values = reference_values(cam).astype(np.float64)
    mean = {blob: float(values[labels == blob].sum() / area[blob]) for blob in blobs}
    densest = _first_in_raster_order(labels, _best(blobs, mean))
    return labels == (largest if area[densest] < min_size * cam.size else densest)


def _best(blobs: list[int], score: dict) -> list[int]:
    top = max(score[blob] for blob in blobs)
    return [blob for blob in blobs if score[blob] == top]


def _first_in_raster_order(labels: np.ndarray, tied: list[int]) -> int:
    return min(tied, key=lambda blob: int(np.flatnonzero(labels.ravel() == blob)[0]))


def reference_seed_regions(cam: np.ndarray, roi: np.ndarray, max_p: float = 0.6,
                           min_p: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(foreground, background): the first int(max_p * |ROI|) ROI pixels by descending value, the first
    int(min_p * h * w) pixels of the frame by ascending value; ties by flat index (stable sorts)."""
    values = cam.ravel()
    foreground = np.zeros(cam.size, bool)
    background = np.zeros(cam.size, bool)
    if values.min() == values.max():
        return foreground.reshape(cam.shape), background.reshape(cam.shape)
    inside = np.flatnonzero(roi.ravel())
    by_value = inside[np.argsort(-values[inside].astype(np.float64), kind="stable")]
    foreground[by_value[: int(np.float32(max_p) * np.float32(len(inside)))]] = True
    background[np.argsort(values, kind="stable")[: int(min_p * cam.size)]] = True
    return foreground.reshape(cam.shape), background.reshape(cam.shape)


def reference_seeds(cam: np.ndarray, roi: np.ndarray, rng: np.random.Generator, max_p: float = 0.6,
                    min_p: float = 0.1, n_fg: int = 1, n_bg: int = 1, ksz: int = 3, weighted: bool = True,
                    ignore_index: int = -100) -> np.ndarray:
    """(h, w) int64 seeds of one frame: 1 foreground, 0 background, ignore_index elsewhere."""
    foreground, background = reference_seed_regions(cam, roi, max_p, min_p)
    fg_points = _draw(foreground, reference_values(cam) + np.float32(WEIGHT_FLOOR) if weighted else None, n_fg, rng)
    bg_points = _draw(background, None, n_bg, rng)
    square = np.ones((ksz, ksz), np.uint8)
    fg_squares = cv2.dilate(fg_points.astype(np.uint8), square).astype(bool)
    bg_squares = cv2.dilate(bg_points.astype(np.uint8), square).astype(bool)
    seeds = np.full(cam.shape, ignore_index, np.int64)
    seeds[fg_squares & ~bg_squares] = 1
    seeds[bg_squares & ~fg_squares] = 0
    return seeds


def _draw(region: np.ndarray, weights: np.ndarray | None, draws: int, rng: np.random.Generator) -> np.ndarray:
    pixels = np.flatnonzero(region)
    points = np.zeros(region.shape, bool)
    if len(pixels) == 0 or draws == 0:
        return points
    p = None
    if weights is not None:
        probability = weights.ravel()[pixels].astype(np.float64)
        p = probability / probability.sum()
    points.ravel()[rng.choice(pixels, size=min(draws, len(pixels)), replace=False, p=p)] = True
    return points


def reference_pseudo_labels(buffer: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                            sharpen: float | None = None, roi_mode: str = "all", min_size: float = 0.05,
                            max_p: float = 0.6, min_p: float = 0.1, n_fg: int = 1, n_bg: int = 1, ksz: int = 3,
                            weighted: bool = True, ignore_index: int = -100) -> dict[str, np.ndarray]:
    """The whole step, one frame at a time: pooled (float32 in [0, 1]), roi, seeds, thresholds (level units),
    stacked over the batch."""
    out = {"pooled": [], "roi": [], "seeds": [], "thresholds": []}
    for frame_buffer, frame_valid in zip(buffer, valid):
        pooled = reference_cam_tmp(frame_buffer, frame_valid, sharpen)
        threshold = reference_otsu(pooled)
        roi = reference_roi(pooled, threshold, roi_mode, min_size)
        seeds = reference_seeds(pooled, roi, rng, max_p, min_p, n_fg, n_bg, ksz, weighted, ignore_index)
        for key, value in zip(out, (reference_values(pooled), roi, seeds, threshold)):
            out[key].append(value)
    return {key: np.stack(values) for key, values in out.items()}


# ----------------------------------------------------------------------------- benchmark


def synthetic_buffers(frames: int = 32, entries: int = 2, size: int = 224, coarse: int = 7,
                      seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth CAM-like buffers (frames, entries, size, size) in [0, 1]: random coarse maps upsampled; all valid
    but the neighbour of every fourth frame (a shot's first frame)."""
    generator = torch.Generator().manual_seed(seed)
    coarse_maps = torch.rand(frames * entries, 1, coarse, coarse, generator=generator) ** 2
    maps = F.interpolate(coarse_maps, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    low = maps.amin(dim=(2, 3), keepdim=True)
    high = maps.amax(dim=(2, 3), keepdim=True)
    buffer = ((maps - low) / (high - low)).reshape(frames, entries, size, size)
    valid = torch.ones(frames, entries, dtype=torch.bool)
    valid[::4, 1:] = False
    return buffer, valid


def _paired_medians(ours, baseline, repeats: int, sync) -> tuple[float, float]:
    """Median ms of each step, timed alternately so that both see the same load on a shared machine."""
    ours(), baseline()  # warm-up
    ours_ms, baseline_ms = [], []
    for _ in range(repeats):
        for step, times, wait in ((ours, ours_ms, sync), (baseline, baseline_ms, lambda: None)):
            wait()
            start = time.perf_counter()
            step()
            wait()
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(ours_ms), statistics.median(baseline_ms)


def _load() -> float | None:
    try:
        with open("/proc/loadavg") as handle:
            return float(handle.read().split()[0])
    except OSError:
        return None


def _case(repeats: int, roi_mode: str, device: torch.device, threads: int | None, dtype: torch.dtype,
          seeds: int = 1, max_p: float = 0.6, frames: int = 32, size: int = 224) -> dict:
    buffer, valid = synthetic_buffers(frames, 2, size)
    if dtype == torch.uint8:  # the CAM store's levels, as the training rows carry them
        buffer = (buffer * 255.0).round_().to(torch.uint8)
    reference_buffer, reference_valid = buffer.numpy(), valid.numpy()
    buffer, valid = buffer.to(device), valid.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    settings = dict(roi_mode=roi_mode, max_p=max_p, n_fg=seeds, n_bg=seeds)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    default_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ours, baseline = _paired_medians(
            lambda: pseudo_labels(buffer, valid, **settings, generator=generator),
            lambda: reference_pseudo_labels(reference_buffer, reference_valid, rng, **settings),
            repeats, sync)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(default_threads)
    config = {"frames": frames, "T": 2, "h": size, "w": size, "buffer_dtype": str(dtype).removeprefix("torch."),
              "roi_mode": roi_mode, "min_size": 0.05, "max_p": max_p,
              "min_p": 0.1, "n_fg": seeds, "n_bg": seeds, "ksz": 3, "weighted": True, "repeats": repeats,
              "statistic": "median, ours and baseline timed alternately",
              "device": "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device),
              "torch_threads": used_threads, "baseline_device": "cpu, 1 process", "load_1min": _load()}
    case = f"pseudo_labels_{frames}x{size}_{roi_mode}" + (f"_{seeds}seeds" if seeds > 1 else "")
    case += "_float32" if dtype == torch.float32 else ""
    case += "_cuda" if device.type == "cuda" else ("" if threads is None else f"_{threads}thread")
    return {"bench": "seeds", "case": case, "value": round(ours, 3), "unit": "ms", "baseline": round(baseline, 3),
            "baseline_name": BASELINE_NAME, "speedup": round(baseline / ours, 2), "config": config}


def _sampler_case(repeats: int, seeds: int = 1000, max_p: float = 0.7, frames: int = 32, size: int = 224) -> dict:
    """The seed sampler alone (seed regions, the draws, the dilated seed image) on the same pooled uint8 maps and
    ROI (largest) for both: what CoLo-CAM's 1000 + 1000 seeds per frame cost beyond the ROI."""
    buffer, valid = synthetic_buffers(frames, 1, size)
    buffer = (buffer * 255.0).round_().to(torch.uint8)
    step = pseudo_labels(buffer, valid, roi_mode="largest")
    maps, roi = step.maps, step.roi
    reference_maps, reference_roi = maps.numpy(), roi.numpy()
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    settings = dict(max_p=max_p, min_p=0.1, n_fg=seeds, n_bg=seeds, ksz=3, weighted=True)
    ours, baseline = _paired_medians(
        lambda: sample_seeds(maps, roi, **settings, generator=generator),
        lambda: np.stack([reference_seeds(cam, frame_roi, rng, **settings)
                          for cam, frame_roi in zip(reference_maps, reference_roi)]),
        repeats, lambda: None)
    config = {"frames": frames, "T": 1, "h": size, "w": size, "buffer_dtype": "uint8", "roi_mode": "largest",
              "step": "seed regions + draws + dilated seed image, given the pooled maps and the ROI", **settings,
              "repeats": repeats, "statistic": "median, ours and baseline timed alternately", "device": "cpu",
              "torch_threads": torch.get_num_threads(), "baseline_device": "cpu, 1 process", "load_1min": _load()}
    return {"bench": "seeds", "case": f"seed_sampler_{frames}x{size}_{seeds}seeds", "value": round(ours, 3),
            "unit": "ms", "baseline": round(baseline, 3), "baseline_name": BASELINE_NAME,
            "speedup": round(baseline / ours, 2), "config": config}


def run_seeds_bench(repeats: int = 20) -> Iterator[dict]:
    """One record per case, 32 frames of 224x224 (T=2), uint8 buffers (the CAM store's levels, which training
    feeds): CPU with torch's default threads (ROI all, the TCAM paper's, then largest), CoLo-CAM's 1000 + 1000
    seeds per frame (ROI largest, max_p 0.7), CPU with one thread (less exposed to other jobs on a shared
    machine), CUDA when present; then float32 buffers in [0, 1] on the CPU; last the seed sampler alone at CoLo-CAM's
    1000 + 1000 seeds per frame."""
    cpu, uint8 = torch.device("cpu"), torch.uint8
    cases = [("all", cpu, None, uint8, {}), ("largest", cpu, None, uint8, {}),
             ("largest", cpu, None, uint8, {"seeds": 1000, "max_p": 0.7}), ("all", cpu, 1, uint8, {})]
    if torch.cuda.is_available():
        cases.append(("all", torch.device("cuda"), None, uint8, {}))
        cases.append(("largest", torch.device("cuda"), None, uint8, {"seeds": 1000, "max_p": 0.7}))
    cases.append(("all", cpu, None, torch.float32, {}))
    for roi_mode, device, threads, dtype, extra in cases:
        print(f"seeds bench: 32 frames of 224x224, {str(dtype).removeprefix('torch.')} buffers, roi {roi_mode}, "
              f"{extra.get('seeds', 1)} seed(s) each, {device}" + ("" if threads is None else f", {threads} thread(s)"),
              file=sys.stderr)
        yield _case(repeats, roi_mode, device, threads, dtype, **extra)
    print("seeds bench: the seed sampler alone, 1000 + 1000 seeds per frame (CoLo-CAM), cpu", file=sys.stderr)
    yield _sampler_case(repeats)
