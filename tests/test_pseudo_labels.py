"""Stage-2 pseudo-labels (CAM-TMP, Otsu ROI, seeds) against the per-frame numpy + OpenCV reference."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tcam_ray.bench import seeds as reference
from tcam_ray.methods import pseudo_labels as pl

IGNORE = -100


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_maps(frames: int, size: int, coarse: int = 6, seed: int = 0, power: float = 2.0) -> torch.Tensor:
    """(frames, size, size) smooth maps in [0, 1] with several bumps (several blobs after Otsu)."""
    generator = torch.Generator().manual_seed(seed)
    coarse_maps = torch.rand(frames, 1, coarse, coarse, generator=generator) ** power
    maps = F.interpolate(coarse_maps, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    low, high = maps.amin(dim=(1, 2), keepdim=True), maps.amax(dim=(1, 2), keepdim=True)
    return (maps - low) / (high - low)


def per_frame(function, *arrays, **kwargs) -> np.ndarray:
    return np.stack([function(*items, **kwargs) for items in zip(*arrays)])


def chi_square(counts: np.ndarray, probabilities: np.ndarray) -> float:
    expected = counts.sum() * probabilities
    return float(((counts - expected) ** 2 / expected).sum())


def chi_square_bound(categories: int) -> float:
    """Far tail of chi-square with categories - 1 degrees of freedom (about p < 1e-6): draws are seeded anyway."""
    freedom = categories - 1
    return freedom + 7.0 * math.sqrt(2.0 * freedom)


# ----------------------------------------------------------------------------- CAM-TMP


def test_cam_tmp_is_the_max_over_valid_entries_only():
    maps = smooth_maps(12, 16).reshape(4, 3, 16, 16)
    buffer = maps.clone()
    valid = torch.tensor([[True, True, True], [True, False, False], [True, True, False], [True, False, True]])
    buffer[~valid] = 1.0  # padding holding larger values than any CAM must not count
    pooled = pl.cam_tmp(buffer, valid)
    expected = per_frame(reference.reference_cam_tmp, buffer.numpy(), valid.numpy())
    np.testing.assert_array_equal(pooled.numpy(), expected)
    torch.testing.assert_close(pooled[1], maps[1, 0], rtol=0, atol=0)  # only the centre is valid
    assert pooled.dtype == torch.float32


def test_cam_tmp_sharpening_formula_and_stability():
    buffer = smooth_maps(6, 12).reshape(3, 2, 12, 12)
    valid = torch.ones(3, 2, dtype=torch.bool)
    plain = pl.cam_tmp(buffer, valid).double()
    sharpened = pl.cam_tmp(buffer, valid, sharpen=3.0).double()
    direct = torch.exp(3.0 * plain) / torch.exp(3.0 * plain).amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(sharpened, direct, rtol=1e-5, atol=1e-6)
    steep = pl.cam_tmp(buffer, valid, sharpen=1000.0)  # exp(1000) overflows float32 if computed directly
    assert torch.isfinite(steep).all()
    assert torch.equal(steep.amax(dim=(1, 2)), torch.ones(3))


def test_cam_tmp_computes_float16_input_in_float32():
    buffer = smooth_maps(8, 16).reshape(4, 2, 16, 16).half()
    valid = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    pooled = pl.cam_tmp(buffer, valid)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, pl.cam_tmp(buffer.float(), valid), rtol=0, atol=0)
    labels = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(0))
    reference_labels = pl.pseudo_labels(buffer.float(), valid, generator=torch.Generator().manual_seed(0))
    assert torch.equal(labels.roi, reference_labels.roi) and torch.equal(labels.seeds, reference_labels.seeds)


# ----------------------------------------------------------------------------- Otsu


def test_otsu_matches_opencv_on_uint8_levels():
    noise = torch.rand(10, 40, 40, generator=torch.Generator().manual_seed(9))
    maps = torch.cat([smooth_maps(20, 40, seed=1), smooth_maps(10, 40, seed=2, power=4.0), noise, noise ** 6])
    thresholds = pl.otsu_thresholds(maps)
    for frame, threshold in zip(maps.numpy(), thresholds.tolist()):
        levels = np.round(np.clip(frame * np.float32(255), 0, 255)).astype(np.uint8)
        expected, _ = cv2.threshold(levels, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        assert round(threshold * 255) == expected
        assert threshold == pytest.approx(expected / 255.0, abs=1e-7)


def test_otsu_degenerate_maps():
    constant = torch.full((1, 8, 8), 0.4)
    zeros = torch.zeros(1, 8, 8)
    two_levels = torch.zeros(1, 8, 8)
    two_levels[0, :3] = 0.8
    thresholds = pl.otsu_thresholds(torch.cat([constant, zeros, two_levels]))
    assert thresholds.tolist() == [0.0, 0.0, 0.0]  # no split: 0, as OpenCV; two levels {0, x}: 0 splits them
    roi = pl.roi_masks(torch.cat([constant, zeros, two_levels]), thresholds, min_size=0.0)
    assert roi[0].all() and not roi[1].any() and torch.equal(roi[2], two_levels[0] > 0)


# ----------------------------------------------------------------------------- connected components


def same_partition(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Same blobs up to renumbering: the label pairs form a bijection and the background agrees."""
    if not np.array_equal(ours == 0, theirs == 0):
        return False
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("density", [0.3, 0.5, 0.62])
def test_connected_components_match_opencv_8_connectivity(density):
    generator = torch.Generator().manual_seed(int(density * 100))
    masks = torch.rand(6, 37, 29, generator=generator) < density  # noise: long chains and diagonal contacts
    labels = pl.connected_components(masks).numpy()
    for ours, mask in zip(labels, masks.numpy()):
        count, theirs = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert ours.max() == count - 1
        assert same_partition(ours, theirs)


@pytest.mark.parametrize("shape", [(3, 1, 17), (3, 17, 1), (2, 2, 2), (4, 64, 3)])
def test_connected_components_on_thin_frames(shape):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) < 0.5
    for ours, mask in zip(pl.connected_components(masks).numpy(), masks.numpy()):
        count, theirs = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert ours.max() == count - 1 and same_partition(ours, theirs)


def test_connected_components_special_shapes():
    masks = torch.zeros(4, 9, 9, dtype=torch.bool)
    masks[0] = torch.eye(9, dtype=torch.bool) | torch.eye(9, dtype=torch.bool).flip(1)  # diagonal X: one blob
    masks[1, ::2, ::2] = True  # isolated dots: 25 blobs
    masks[2] = True
    spiral = np.zeros((9, 9), np.uint8)
    cv2.polylines(spiral, [np.array([[0, 0], [8, 0], [8, 8], [0, 8], [0, 2], [6, 2], [6, 6], [2, 6], [2, 4], [4, 4]])],
                  False, 1)
    masks[3] = torch.from_numpy(spiral.astype(bool))
    labels = pl.connected_components(masks)
    assert [int(frame.max()) for frame in labels] == [1, 25, 1, 1]
    assert int(labels[1, 0, 2]) == 2  # numbered in raster order of the first pixel


# ----------------------------------------------------------------------------- ROI


@pytest.mark.parametrize("mode", ["all", "largest", "densest"])
@pytest.mark.parametrize("min_size", [0.0, 0.05, 0.2])
def test_roi_matches_reference(mode, min_size):
    maps = smooth_maps(10, 48, coarse=9, seed=3)
    thresholds = pl.otsu_thresholds(maps)
    roi = pl.roi_masks(maps, thresholds, mode=mode, min_size=min_size)
    expected = per_frame(reference.reference_roi, maps.numpy(), thresholds.numpy(), mode=mode, min_size=min_size)
    np.testing.assert_array_equal(roi.numpy(), expected)
    assert roi.any(dim=(1, 2)).all()


def test_roi_falls_back_to_largest_blob_and_breaks_ties_in_raster_order():
    maps = torch.zeros(2, 20, 20)
    maps[0, 1:3, 1:3] = 1.0  # 4 px
    maps[0, 10:13, 10:13] = 1.0  # 9 px: largest, both under min_size
    maps[1, 15:18, 2:5] = 1.0  # equal 9 px blobs: the first in raster order wins
    maps[1, 2:5, 15:18] = 1.0
    thresholds = pl.otsu_thresholds(maps)
    for mode in ("all", "densest", "largest"):
        roi = pl.roi_masks(maps, thresholds, mode=mode, min_size=0.05)
        assert roi[0].sum() == 9 and roi[0, 11, 11]
        assert roi[1].sum() == 9 and roi[1, 3, 16]
    all_blobs = pl.roi_masks(maps, thresholds, mode="all", min_size=0.0)
    assert all_blobs[0].sum() == 13 and all_blobs[1].sum() == 18


def test_densest_blob_is_the_highest_mean_among_large_enough():
    maps = torch.zeros(1, 20, 20)
    maps[0, 0:6, 0:6] = 0.6  # 36 px, mean 0.6
    maps[0, 10:16, 10:16] = 0.9  # 36 px, mean 0.9
    maps[0, 18, 18] = 1.0  # 1 px, mean 1.0 but under min_size
    roi = pl.roi_masks(maps, torch.tensor([0.1]), mode="densest", min_size=0.05)
    assert roi.sum() == 36 and roi[0, 12, 12]


# ----------------------------------------------------------------------------- seed regions and seeds


@pytest.mark.parametrize("max_p, min_p", [(0.6, 0.1), (0.3, 0.25), (1.0, 0.01)])
def test_seed_regions_match_reference(max_p, min_p):
    maps = smooth_maps(8, 40, coarse=7, seed=4)
    roi = pl.roi_masks(maps, pl.otsu_thresholds(maps))
    foreground, background = pl.seed_regions(maps, roi, max_p=max_p, min_p=min_p)
    for frame in range(8):
        expected_fg, expected_bg = reference.reference_seed_regions(maps[frame].numpy(), roi[frame].numpy(), max_p,
                                                                    min_p)
        np.testing.assert_array_equal(foreground[frame].numpy(), expected_fg)
        np.testing.assert_array_equal(background[frame].numpy(), expected_bg)
        assert not (background[frame] & roi[frame]).any()
        assert foreground[frame].sum() >= math.floor(max_p * roi[frame].sum())


def test_single_level_frames_have_no_seed_regions():
    maps = torch.stack([torch.zeros(10, 10), torch.full((10, 10), 0.5)])
    roi = pl.roi_masks(maps, pl.otsu_thresholds(maps))
    foreground, background = pl.seed_regions(maps, roi)
    assert not foreground.any() and not background.any()
    seeds = pl.sample_seeds(maps, roi, generator=torch.Generator().manual_seed(0))
    assert (seeds == IGNORE).all()


def draws_of(maps: torch.Tensor, roi: torch.Tensor, copies: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Seed pixel counts over `copies` independent frames equal to maps[0] (one batched call): (fg, bg)."""
    batch = maps.expand(copies, -1, -1).contiguous()
    seeds = pl.sample_seeds(batch, roi.expand(copies, -1, -1).contiguous(), ksz=1, **kwargs)
    return (seeds == 1).sum(dim=0).numpy().ravel(), (seeds == 0).sum(dim=0).numpy().ravel()


def small_frame() -> tuple[torch.Tensor, torch.Tensor]:
    """A 6x6 map with distinct values and a ROI of 12 pixels."""
    values = torch.linspace(0.02, 1.0, 36)[torch.randperm(36, generator=torch.Generator().manual_seed(5))]
    maps = values.reshape(1, 6, 6)
    roi = pl.roi_masks(maps, pl.otsu_thresholds(maps), min_size=0.0)
    return maps, roi


@pytest.mark.parametrize("proposals", [pl.PROPOSALS, 1])  # 1: nearly every draw takes the exact fallback
def test_weighted_foreground_seeds_follow_the_map_values(monkeypatch, proposals):
    monkeypatch.setattr(pl, "PROPOSALS", proposals)
    maps, roi = small_frame()
    region, _ = pl.seed_regions(maps, roi, max_p=1.0)
    fg, _ = draws_of(maps, roi, 20000, max_p=1.0, n_bg=0, generator=torch.Generator().manual_seed(1))
    inside = region[0].numpy().ravel()
    assert fg[~inside].sum() == 0 and fg.sum() == 20000
    weights = maps[0].numpy().ravel()[inside].astype(np.float64)
    assert chi_square(fg[inside], weights / weights.sum()) < chi_square_bound(inside.sum())
    uniform = np.full(inside.sum(), 1.0 / inside.sum())
    assert chi_square(fg[inside], uniform) > 10 * chi_square_bound(inside.sum())  # the check can tell them apart


@pytest.mark.parametrize("proposals", [pl.PROPOSALS, 1])
def test_uniform_seeds_are_uniform_over_their_regions(monkeypatch, proposals):
    monkeypatch.setattr(pl, "PROPOSALS", proposals)
    maps, roi = small_frame()
    fg_region, bg_region = pl.seed_regions(maps, roi, max_p=1.0, min_p=0.5)
    fg, bg = draws_of(maps, roi, 20000, max_p=1.0, min_p=0.5, weighted=False,
                      generator=torch.Generator().manual_seed(2))
    for counts, region in ((fg, fg_region[0].numpy().ravel()), (bg, bg_region[0].numpy().ravel())):
        assert counts[~region].sum() == 0 and counts.sum() == 20000
        uniform = np.full(region.sum(), 1.0 / region.sum())
        assert chi_square(counts[region], uniform) < chi_square_bound(region.sum())


def test_seeds_are_drawn_without_replacement():
    maps, roi = small_frame()
    fg_region, bg_region = pl.seed_regions(maps, roi, max_p=1.0)
    size = int(fg_region.sum())
    for draws in (size, size + 3):  # all of the region, never a pixel twice
        seeds = pl.sample_seeds(maps, roi, max_p=1.0, n_fg=draws, n_bg=0, ksz=1,
                                generator=torch.Generator().manual_seed(3))
        assert torch.equal(seeds[0] == 1, fg_region[0])
    two = pl.sample_seeds(maps.expand(500, -1, -1), roi.expand(500, -1, -1), max_p=1.0, n_fg=2, n_bg=0, ksz=1,
                          generator=torch.Generator().manual_seed(4))
    assert ((two == 1).sum(dim=(1, 2)) == 2).all()


def clipped_square(y: int, x: int, ksz: int, size: int) -> torch.Tensor:
    square = torch.zeros(size, size, dtype=torch.bool)
    square[max(y - ksz // 2, 0) : y + ksz // 2 + 1, max(x - ksz // 2, 0) : x + ksz // 2 + 1] = True
    return square


@pytest.mark.parametrize("ksz", [1, 3, 5])
def test_seed_squares_are_ksz_wide_and_clipped_at_the_border(ksz):
    maps = torch.linspace(0.0, 0.2, 12)[None, None, :].repeat(1, 12, 1)  # column 0 holds the lowest level
    maps[0, 5, 6] = 1.0
    roi = torch.zeros(1, 12, 12, dtype=torch.bool)
    roi[0, 5, 6] = True
    for seed in range(5):
        seeds = pl.sample_seeds(maps, roi, min_p=1 / 12, ksz=ksz, generator=torch.Generator().manual_seed(seed))[0]
        assert torch.equal(seeds == 1, clipped_square(5, 6, ksz, 12))
        background = seeds == 0
        assert any(torch.equal(background, clipped_square(y, 0, ksz, 12)) for y in range(12))


def test_overlapping_foreground_and_background_squares_are_ignored():
    maps = torch.zeros(1, 5, 5)
    maps[0, 2, 2] = 1.0  # ROI: the centre; background: every other pixel (one level)
    roi = pl.roi_masks(maps, pl.otsu_thresholds(maps), min_size=0.0)
    seeds = pl.sample_seeds(maps, roi, n_bg=24, min_p=1.0, ksz=3, generator=torch.Generator().manual_seed(0))
    assert seeds[0, 2, 2] == 1  # no background square may label the ROI
    ring = clipped_square(2, 2, 3, 5) & ~roi[0]
    assert (seeds[0][ring] == IGNORE).all()  # inside both squares: contested
    assert (seeds[0][~clipped_square(2, 2, 3, 5)] == 0).all()
    seeds = pl.sample_seeds(maps, roi, n_fg=0, n_bg=24, min_p=1.0, ksz=3, generator=torch.Generator().manual_seed(0))
    assert (seeds[0][~roi[0]] == 0).all() and seeds[0, 2, 2] == IGNORE


def test_even_ksz_is_refused():
    maps, roi = small_frame()
    with pytest.raises(ValueError, match="odd"):
        pl.sample_seeds(maps, roi, ksz=2)


# ----------------------------------------------------------------------------- the whole step


def synthetic_batch(frames: int = 12, size: int = 56):
    buffer, valid = reference.synthetic_buffers(frames, 2, size, seed=7)
    return buffer, valid


def test_pseudo_labels_match_the_per_frame_reference():
    buffer, valid = synthetic_batch()
    labels = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(0))
    expected = reference.reference_pseudo_labels(buffer.numpy(), valid.numpy(), np.random.default_rng(0))
    np.testing.assert_array_equal(labels.pooled.numpy(), expected["pooled"])
    np.testing.assert_allclose(labels.thresholds.numpy(), expected["thresholds"], atol=1e-7)
    np.testing.assert_array_equal(labels.roi.numpy(), expected["roi"])
    fg_region, bg_region = pl.seed_regions(labels.pooled, labels.roi)
    near_fg = F.max_pool2d(fg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    near_bg = F.max_pool2d(bg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    seeds = labels.seeds
    assert set(seeds.unique().tolist()) <= {IGNORE, 0, 1}
    assert (near_fg[seeds == 1]).all() and (near_bg[seeds == 0]).all() and not (labels.roi & (seeds == 0)).any()
    # One 3x3 square each (fewer pixels at a border or where the squares meet), like the reference's.
    for counts, expected_counts in (((seeds == 1).sum(dim=(1, 2)), (expected["seeds"] == 1).sum(axis=(1, 2))),
                                    ((seeds == 0).sum(dim=(1, 2)), (expected["seeds"] == 0).sum(axis=(1, 2)))):
        assert ((counts >= 1) & (counts <= 9)).all() and ((expected_counts >= 1) & (expected_counts <= 9)).all()


@pytest.mark.parametrize("roi_mode", ["all", "largest", "densest"])
def test_uint8_levels_give_what_their_float_maps_give(roi_mode):
    """The CAM store's uint8 buffers are pooled as levels: same maps, ROI, threshold and seed draws as
    level / 255 in float, and as the per-frame reference fed the same uint8 buffer."""
    buffer, valid = synthetic_batch(10, 48)
    levels = (buffer * 255).round().to(torch.uint8)
    as_levels = pl.pseudo_labels(levels, valid, roi_mode=roi_mode, n_fg=5, n_bg=5,
                                 generator=torch.Generator().manual_seed(3))
    as_floats = pl.pseudo_labels(levels.float() / 255.0, valid, roi_mode=roi_mode, n_fg=5, n_bg=5,
                                 generator=torch.Generator().manual_seed(3))
    assert as_levels.maps.dtype == torch.uint8
    for field in ("pooled", "roi", "thresholds", "seeds"):
        assert torch.equal(getattr(as_levels, field), getattr(as_floats, field)), field
    expected = reference.reference_pseudo_labels(levels.numpy(), valid.numpy(), np.random.default_rng(0),
                                                 roi_mode=roi_mode)
    np.testing.assert_array_equal(as_levels.pooled.numpy(), expected["pooled"])
    np.testing.assert_array_equal(as_levels.roi.numpy(), expected["roi"])


def test_seed_pixels_are_the_label_image():
    buffer, valid = synthetic_batch(6, 32)
    labels = pl.pseudo_labels(buffer, valid, n_fg=6, n_bg=6, ksz=5, generator=torch.Generator().manual_seed(1))
    assert labels.seed_pixels.unique().numel() == labels.seed_pixels.numel()  # overlapping squares: once each
    dense = labels.seeds.reshape(-1)
    labelled = (dense != IGNORE).nonzero().squeeze(1)
    assert torch.equal(labels.seed_pixels.sort().values, labelled)
    assert torch.equal(dense[labels.seed_pixels], labels.seed_classes)


def test_batch_and_single_frames_agree():
    buffer, valid = synthetic_batch(6, 40)
    batch = pl.pseudo_labels(buffer, valid, roi_mode="densest", generator=torch.Generator().manual_seed(0))
    for frame in range(6):
        single = pl.pseudo_labels(buffer[frame : frame + 1], valid[frame : frame + 1], roi_mode="densest",
                                  generator=torch.Generator().manual_seed(0))
        assert torch.equal(single.pooled[0], batch.pooled[frame])
        assert torch.equal(single.roi[0], batch.roi[frame])
        assert torch.equal(single.thresholds[0], batch.thresholds[frame])
    regions = pl.seed_regions(batch.pooled, batch.roi)
    singles = [pl.seed_regions(batch.pooled[i : i + 1], batch.roi[i : i + 1]) for i in range(6)]
    for which in range(2):
        assert torch.equal(regions[which], torch.cat([single[which] for single in singles]))


def test_degenerate_buffers_give_no_seeds():
    buffer = torch.zeros(3, 2, 16, 16)
    buffer[1] = 0.7
    buffer[2, 0] = 0.3  # its only valid entry is constant; the padding holds a bump
    buffer[2, 1, 4:8, 4:8] = 1.0
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    labels = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(0))
    assert labels.thresholds.tolist() == [0.0, 0.0, 0.0]
    assert not labels.roi[0].any() and labels.roi[1].all() and labels.roi[2].all()
    assert (labels.seeds == IGNORE).all()


def test_generator_makes_draws_reproducible():
    buffer, valid = synthetic_batch(8, 32)
    first = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(11)).seeds
    again = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(11)).seeds
    other = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(12)).seeds
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    buffer, valid = reference.synthetic_buffers(32, 2, 224, seed=3)
    cpu = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(0))
    cuda = pl.pseudo_labels(buffer.cuda(), valid.cuda(), generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(cuda.pooled.cpu(), cpu.pooled)
    assert torch.equal((cuda.thresholds.cpu() * 255).round(), (cpu.thresholds * 255).round())
    assert torch.equal(cuda.thresholds.cpu(), cpu.thresholds)
    assert torch.equal(cuda.roi.cpu(), cpu.roi)
    fg_region, bg_region = pl.seed_regions(cpu.pooled, cpu.roi)
    near_fg = F.max_pool2d(fg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert near_fg[cuda.seeds.cpu() == 1].all() and not cpu.roi[cuda.seeds.cpu() == 0].any()
