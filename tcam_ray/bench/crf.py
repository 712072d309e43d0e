"""`tcam-ray bench crf`: ms per call of the CRF losses (forward + backward), against the reference's strategy.

The reference code (Tang's rloss `bilateralfilter`, used by TCAM) is not
available here, so the baseline is measured in the same run by re-creating its
strategy with our own lattice: one lattice build per image *per channel*
(each channel filtered as a separate 1-channel item) with threads only across
those items. Its published figure (about 300 ms for the 224x224 case on this
2-core machine with 2 threads) is given in each case's config.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from tcam_ray.methods.crf_loss import DenseCRFLoss, MultiFrameColourCRFLoss, bilateral_features, colour_features
from tcam_ray.ops.crf import permutohedral_filter

REFERENCE_MS_224 = 300.0  # the paper's op, N=32, K=2, 224x224, 2 threads (issue 5)
BASELINE_NAME = "per-channel lattice rebuild (reference strategy)"


@lru_cache(maxsize=1)
def _photo() -> torch.Tensor:
    """A natural photograph shipped with matplotlib (512x600 RGB, float 0-255)."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as image:
        array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1).float()


def sample_frames(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """`count` random square crops of a natural photo resized to size x size: (count, 3, size, size) in [0, 255]."""
    photo = _photo()
    generator = torch.Generator().manual_seed(seed)
    height, width = photo.shape[1:]
    crops = []
    for _ in range(count):
        side = int(torch.randint(160, min(height, width) + 1, (1,), generator=generator))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
        crop = photo[None, :, top : top + side, left : left + side]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0])
    return torch.stack(crops).clamp(0, 255)


def sample_probs(images: torch.Tensor, classes: int = 2, seed: int = 1) -> torch.Tensor:
    """Smooth softmax maps loosely tied to image colour, like a decoder's output: (N, K, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    n, _, height, width = images.shape
    coarse = torch.randn(n, classes, 8, 8, generator=generator) * 3
    logits = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    logits = logits + images[:, :classes] / 40.0 - images[:, 1 : classes + 1] / 40.0
    return torch.softmax(logits, dim=1)


def _time_ms(step, repeats: int, sync) -> float:
    step()  # warm-up (allocations, lazy loading)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _loss_step(loss, images, probs):
    def step():
        leaf = probs.detach().requires_grad_(True)
        loss(images, leaf).backward()

    return step


def _per_channel_energy(probs_flat: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The reference's strategy: each (image, channel) is its own 1-channel item, its lattice rebuilt."""
    n, k, p = probs_flat.shape
    filtered = permutohedral_filter(
        probs_flat.detach().reshape(n * k, 1, p).contiguous(), features.repeat_interleave(k, dim=0)
    ).reshape(n, k, p)
    return -(probs_flat.detach() * filtered).sum() / n, filtered


def _baseline_bilateral_step(images, probs, sigma_rgb, sigma_xy, weight):
    def step():
        features = bilateral_features(images, sigma_rgb, sigma_xy)
        probs_flat = probs.detach().flatten(2)
        _, filtered = _per_channel_energy(probs_flat, features)
        (-2.0 * weight * filtered / probs.shape[0]).sum()  # the reference's backward: a scaled copy of W S

    return step


def _baseline_colour_step(frames, probs, sigma_rgb, weight):
    def step():
        features = colour_features(frames, sigma_rgb)
        clip_probs = probs.detach().permute(0, 2, 1, 3, 4).flatten(2)
        _, filtered = _per_channel_energy(clip_probs, features)
        (-2.0 * weight * filtered / probs.shape[0]).sum()

    return step


def _load_average() -> float | None:
    """1-minute load average when the case finished (CPU timings on a shared machine need it to be read)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _record(case, value, baseline, config, baseline_name=BASELINE_NAME):
    config = {**config, "load_average_1m": _load_average()}
    return {
        "bench": "crf",
        "case": case,
        "value": round(value, 3),
        "unit": "ms",
        "baseline": None if baseline is None else round(baseline, 3),
        "baseline_name": baseline_name,
        "speedup": None if baseline is None else round(baseline / value, 3),
        "config": config,
    }


def _bilateral_case(size, batch, repeats, threads, sigma_rgb, sigma_xy):
    images = sample_frames(batch, size)
    probs = sample_probs(images)
    loss = DenseCRFLoss(weight=2e-9, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy)
    no_sync = lambda: None  # noqa: E731
    ours = _time_ms(_loss_step(loss, images, probs), repeats, no_sync)
    baseline = _time_ms(_baseline_bilateral_step(images, probs, sigma_rgb, sigma_xy, 2e-9), repeats, no_sync)
    config = {"N": batch, "K": 2, "H": size, "W": size, "sigma_rgb": sigma_rgb, "sigma_xy": sigma_xy,
              "threads": threads, "device": "cpu", "repeats": repeats, "statistic": "median",
              "reference_published_ms_224": REFERENCE_MS_224}
    return _record(f"crf_loss_fwd_bwd_{size}", ours, baseline, config), ours


def _colour_case(clips, frames_per_clip, size, repeats, threads, sigma_rgb):
    frames = sample_frames(clips * frames_per_clip, size).reshape(clips, frames_per_clip, 3, size, size)
    probs = sample_probs(frames.flatten(0, 1)).reshape(clips, frames_per_clip, 2, size, size)
    loss = MultiFrameColourCRFLoss(weight=1.0, sigma_rgb=sigma_rgb)
    no_sync = lambda: None  # noqa: E731
    ours = _time_ms(_loss_step(loss, frames, probs), repeats, no_sync)
    baseline = _time_ms(_baseline_colour_step(frames, probs, sigma_rgb, 1.0), repeats, no_sync)
    config = {"clips": clips, "frames_per_clip": frames_per_clip, "K": 2, "H": size, "W": size,
              "sigma_rgb": sigma_rgb, "threads": threads, "device": "cpu", "repeats": repeats, "statistic": "median"}
    return _record(f"colour_crf_fwd_bwd_{clips}x{frames_per_clip}_{size}", ours, baseline, config)


def _cuda_case(size, batch, repeats, sigma_rgb, sigma_xy, cpu_ms):
    device = torch.device("cuda")
    images = sample_frames(batch, size).to(device)
    probs = sample_probs(images.cpu()).to(device)
    loss = DenseCRFLoss(weight=2e-9, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy)
    ours = _time_ms(_loss_step(loss, images, probs), repeats, torch.cuda.synchronize)
    config = {"N": batch, "K": 2, "H": size, "W": size, "sigma_rgb": sigma_rgb, "sigma_xy": sigma_xy,
              "device": torch.cuda.get_device_name(), "repeats": repeats, "statistic": "median"}
    return _record(f"crf_loss_fwd_bwd_{size}_cuda", ours, cpu_ms, config, "our CPU op, same run")


def run_crf_bench(repeats: int = 5, threads: int | None = None, batch: int = 32, sigma_rgb: float = 15.0,
                  sigma_xy: float = 100.0, cuda: bool = True) -> Iterator[dict]:
    """Yields one result dict per case: bilateral CRF at 224 and 112, colour CRF over 32 frames of 112, CUDA if present."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    cpu_ms = {}
    for size in (224, 112):
        print(f"crf bench: bilateral {batch}x{size}x{size}, {threads} threads", file=sys.stderr)
        record, cpu_ms[size] = _bilateral_case(size, batch, repeats, threads, sigma_rgb, sigma_xy)
        yield record
    for clips, per_clip in ((8, 4), (1, 32)):
        print(f"crf bench: colour CRF, {clips} clips x {per_clip} frames of 112x112", file=sys.stderr)
        yield _colour_case(clips, per_clip, 112, repeats, threads, sigma_rgb)
    if cuda and torch.cuda.is_available():
        print("crf bench: bilateral on CUDA", file=sys.stderr)
        yield _cuda_case(224, batch, max(repeats, 20), sigma_rgb, sigma_xy, cpu_ms[224])
