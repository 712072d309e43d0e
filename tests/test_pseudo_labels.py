"""Stage-2 pseudo-labels (CAM-TMP, Otsu ROI, seeds) against the per-frame numpy + OpenCV reference."""
from __future__ import annotations

import json
import math
from pathlib import Path

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


@pytest.fixture(params=["compiled", "torch"])
def sampler(request, monkeypatch):
    """CPU seeds from the compiled sampler (csrc/ops/seed_sampler_cpu.cpp), then from the batched torch steps
    (what CUDA tensors take): both must give the same regions and the same laws."""
    monkeypatch.setattr(pl, "COMPILED_CPU_SAMPLER", request.param == "compiled")
    return request.param


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


# ----------------------------------------------------------------------------- the reference code's own outputs

ORACLE = Path(__file__).parent / "data" / "oracles" / "pseudo_labels"
ROI_KEYS = {"all": "all", "largest": "largest", "densest": "densest"}


def oracle_samples():
    meta = json.loads((ORACLE / "expected.json").read_text())
    inputs, expected = np.load(ORACLE / "inputs.npz"), np.load(ORACLE / "expected.npz")
    for sample in meta["samples"]:
        stack = torch.from_numpy(inputs[f"{sample['id']}_stack"])
        yield sample, stack, {key.removeprefix(f"{sample['id']}_"): expected[key] for key in expected.files
                              if key.startswith(f"{sample['id']}_")}


def oracle_pooled(stack: torch.Tensor) -> torch.Tensor:
    return pl.cam_tmp(stack[None], torch.ones(1, stack.shape[0], dtype=torch.bool))


def test_temporal_max_pooling_and_otsu_are_the_reference_code_s():
    """Every sample of the TCAM code's oracle: the pooled CAM bit for bit, and the Otsu threshold (scikit-image
    0.17.2's, in level units) exactly, s027 included (where scikit-image 0.26 would give another)."""
    for sample, stack, expected in oracle_samples():
        pooled = oracle_pooled(stack)
        if "pooled" in expected:
            np.testing.assert_array_equal(pooled[0].numpy(), expected["pooled"], err_msg=sample["id"])
        assert pl.otsu_thresholds(pooled).item() == sample["otsu_threshold_levels"], sample["id"]


@pytest.mark.parametrize("mode", ["all", "largest", "densest"])
def test_roi_and_seed_regions_are_the_reference_code_s(mode):
    """ROI masks (all: every pixel at or above Otsu, small blobs kept; largest / densest: 4-connected blobs),
    and the foreground (top 60% of the ROI) and background (bottom 10% of the frame) seed regions, pixel for
    pixel on all 45 samples: ties, constant and faint maps included."""
    for sample, stack, expected in oracle_samples():
        pooled = oracle_pooled(stack)
        roi = pl.roi_masks(pooled, pl.otsu_thresholds(pooled), mode=mode, min_size=0.05)
        np.testing.assert_array_equal(roi[0].numpy(), expected[f"roi_{ROI_KEYS[mode]}"], err_msg=sample["id"])
        foreground, background = pl.seed_regions(pooled, roi, max_p=0.6, min_p=0.1)
        np.testing.assert_array_equal(foreground[0].numpy(), expected[f"fg_{ROI_KEYS[mode]}"], err_msg=sample["id"])
        np.testing.assert_array_equal(background[0].numpy(), expected["bg"], err_msg=sample["id"])


@pytest.mark.usefixtures("sampler")
@pytest.mark.parametrize("weighted", [False, True])
def test_drawing_every_candidate_gives_the_reference_code_s_label_map(weighted):
    """TCAMSeeder with every candidate drawn (ksz 1, ROI all): 1 foreground, 0 background, ignored where
    neither or both (the reference's -255)."""
    for sample, stack, expected in oracle_samples():
        labels = pl.pseudo_labels(stack[None], torch.ones(1, stack.shape[0], dtype=torch.bool), n_fg=10**9,
                                  n_bg=10**9, ksz=1, weighted=weighted, generator=torch.Generator().manual_seed(0))
        reference_labels = expected["labels_full_draw_roi_all"]
        np.testing.assert_array_equal(labels.seeds[0].numpy(), np.where(reference_labels == -255, IGNORE,
                                                                        reference_labels), err_msg=sample["id"])


# ----------------------------------------------------------------------------- Otsu


def test_otsu_matches_the_per_frame_reference():
    noise = torch.rand(10, 40, 40, generator=torch.Generator().manual_seed(9))
    maps = torch.cat([smooth_maps(20, 40, seed=1), smooth_maps(10, 40, seed=2, power=4.0), noise, noise ** 6])
    thresholds = pl.otsu_thresholds(maps)
    expected = [reference.reference_otsu(frame) for frame in maps.numpy()]
    assert thresholds.tolist() == expected
    levels = (maps * 255).round().to(torch.uint8)
    assert pl.otsu_thresholds(levels).tolist() == [reference.reference_otsu(frame) for frame in levels.numpy()]


def test_batches_past_the_narrow_bin_type_give_the_per_frame_results():
    maps = smooth_maps(130, 16, coarse=4, seed=5)  # 130 frames: histogram bins past int16
    levels = (maps * 255).round().to(torch.uint8)
    for batch in (maps, levels):
        roi = pl.roi_masks(batch, pl.otsu_thresholds(batch))
        foreground, background = pl.seed_regions(batch, roi)
        assert pl.otsu_thresholds(batch).tolist() == [reference.reference_otsu(f) for f in batch.numpy()]
        for frame in (0, 64, 127, 129):
            expected_fg, expected_bg = reference.reference_seed_regions(batch[frame].numpy(), roi[frame].numpy())
            np.testing.assert_array_equal(foreground[frame].numpy(), expected_fg)
            np.testing.assert_array_equal(background[frame].numpy(), expected_bg)


def test_otsu_degenerate_maps():
    constant = torch.full((1, 8, 8), 0.4)
    zeros = torch.zeros(1, 8, 8)
    two_levels = torch.zeros(1, 8, 8)
    two_levels[0, :3] = 0.8
    maps = torch.cat([constant, zeros, two_levels])
    thresholds = pl.otsu_thresholds(maps)
    # A single level: no split, 0. Levels {0, 204}: the centre of the first of 256 bins over [0, 204].
    assert thresholds.tolist() == [0.0, 0.0, 204 / 512]
    roi = pl.roi_masks(maps, thresholds)
    assert roi[0].all() and roi[1].all() and torch.equal(roi[2], two_levels[0] > 0)  # threshold 0: all of it


# ----------------------------------------------------------------------------- connected components


def same_partition(ours: np.ndarray, theirs: np.ndarray) -> bool:
    """Same blobs up to renumbering: the label pairs form a bijection and the background agrees."""
    if not np.array_equal(ours == 0, theirs == 0):
        return False
    pairs = np.unique(np.stack([ours.ravel(), theirs.ravel()]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


@pytest.mark.parametrize("density", [0.3, 0.5, 0.62])
def test_connected_components_match_opencv_4_connectivity(density):
    generator = torch.Generator().manual_seed(int(density * 100))
    masks = torch.rand(6, 37, 29, generator=generator) < density  # noise: long chains and diagonal contacts
    labels = pl.connected_components(masks).numpy()
    for ours, mask in zip(labels, masks.numpy()):
        count, theirs = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        assert ours.max() == count - 1
        assert same_partition(ours, theirs)


@pytest.mark.parametrize("shape", [(3, 1, 17), (3, 17, 1), (2, 2, 2), (4, 64, 3)])
def test_connected_components_on_thin_frames(shape):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape))) < 0.5
    for ours, mask in zip(pl.connected_components(masks).numpy(), masks.numpy()):
        count, theirs = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        assert ours.max() == count - 1 and same_partition(ours, theirs)


def test_connected_components_special_shapes():
    masks = torch.zeros(4, 9, 9, dtype=torch.bool)
    masks[0] = torch.eye(9, dtype=torch.bool)  # a diagonal: 9 blobs under 4-connectivity
    masks[1, ::2, ::2] = True  # isolated dots: 25 blobs
    masks[2] = True
    spiral = np.zeros((9, 9), np.uint8)
    cv2.polylines(spiral, [np.array([[0, 0], [8, 0], [8, 8], [0, 8], [0, 2], [6, 2], [6, 6], [2, 6], [2, 4], [4, 4]])],
                  False, 1)
    masks[3] = torch.from_numpy(spiral.astype(bool))
    labels = pl.connected_components(masks)
    assert [int(frame.max()) for frame in labels] == [9, 25, 1, 1]
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


def test_roi_all_keeps_small_blobs_and_largest_breaks_ties_in_raster_order():
    maps = torch.zeros(2, 20, 20)
    maps[0, 1:3, 1:3] = 1.0  # 4 px
    maps[0, 10:13, 10:13] = 1.0  # 9 px
    maps[1, 15:18, 2:5] = 1.0  # equal 9 px blobs: the first in raster order wins
    maps[1, 2:5, 15:18] = 1.0
    thresholds = pl.otsu_thresholds(maps)
    assert pl.roi_masks(maps, thresholds, mode="all").sum(dim=(1, 2)).tolist() == [13, 18]
    for mode in ("largest", "densest"):  # densest: equal means, then the largest (both blobs under min_size)
        roi = pl.roi_masks(maps, thresholds, mode=mode, min_size=0.05)
        assert roi[0].sum() == 9 and roi[0, 11, 11]
        assert roi[1].sum() == 9 and roi[1, 3, 16]


def test_densest_blob_falls_back_to_the_largest_when_small():
    maps = torch.zeros(2, 20, 20)
    maps[:, 0:6, 0:6] = 0.6  # 36 px, mean 0.6
    maps[:, 10:16, 10:16] = 0.9  # 36 px, mean 0.9: the densest of frame 0
    maps[1, 18, 18] = 1.0  # 1 px, mean 1.0: the densest of frame 1, under min_size: the largest instead
    roi = pl.roi_masks(maps, torch.tensor([25.0, 25.0], dtype=torch.float64), mode="densest", min_size=0.05)
    assert roi[0].sum() == 36 and roi[0, 12, 12]
    assert roi[1].sum() == 36 and roi[1, 2, 2]  # the first of the two largest in raster order


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
        assert foreground[frame].sum() == int(np.float32(max_p) * np.float32(roi[frame].sum()))
        assert background[frame].sum() == int(min_p * 40 * 40)


def test_seed_regions_break_ties_by_raster_order_as_the_reference():
    """A flat object: the reference's stable sort keeps its first 60% of pixels in raster order."""
    maps = torch.zeros(1, 10, 10)
    maps[0, 2:7, 3:8] = 1.0  # 25 equal pixels
    roi = pl.roi_masks(maps, pl.otsu_thresholds(maps))
    foreground, background = pl.seed_regions(maps, roi)
    assert foreground.sum() == 15 and foreground[0, 2:5, 3:8].all()  # rows 2-4 of the square
    assert background.sum() == 10 and background[0, 0].all()  # the first row of zeros
    levels = (maps * 255).to(torch.uint8)
    assert all(torch.equal(a, b) for a, b in zip(pl.seed_regions(levels, roi), (foreground, background)))


@pytest.mark.usefixtures("sampler")
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


# None: the compiled sampler; the torch steps with PROPOSALS, and with 1 (nearly every draw takes the exact fallback)
@pytest.mark.parametrize("proposals", [None, pl.PROPOSALS, 1])
def test_weighted_foreground_seeds_follow_the_map_values(monkeypatch, proposals):
    monkeypatch.setattr(pl, "COMPILED_CPU_SAMPLER", proposals is None)
    monkeypatch.setattr(pl, "PROPOSALS", proposals or pl.PROPOSALS)
    maps, roi = small_frame()
    region, _ = pl.seed_regions(maps, roi, max_p=1.0)
    fg, _ = draws_of(maps, roi, 20000, max_p=1.0, n_bg=0, generator=torch.Generator().manual_seed(1))
    inside = region[0].numpy().ravel()
    assert fg[~inside].sum() == 0 and fg.sum() == 20000
    weights = maps[0].numpy().ravel()[inside].astype(np.float64)
    assert chi_square(fg[inside], weights / weights.sum()) < chi_square_bound(inside.sum())
    uniform = np.full(inside.sum(), 1.0 / inside.sum())
    assert chi_square(fg[inside], uniform) > 10 * chi_square_bound(inside.sum())  # the check can tell them apart


# None: the compiled sampler; the torch steps with PROPOSALS, and with 1 (nearly every draw takes the exact fallback)
@pytest.mark.parametrize("proposals", [None, pl.PROPOSALS, 1])
def test_uniform_seeds_are_uniform_over_their_regions(monkeypatch, proposals):
    monkeypatch.setattr(pl, "COMPILED_CPU_SAMPLER", proposals is None)
    monkeypatch.setattr(pl, "PROPOSALS", proposals or pl.PROPOSALS)
    maps, roi = small_frame()
    fg_region, bg_region = pl.seed_regions(maps, roi, max_p=1.0, min_p=0.25)
    assert not (fg_region & bg_region).any()  # else a pixel drawn as both would be dropped
    fg, bg = draws_of(maps, roi, 20000, max_p=1.0, min_p=0.25, weighted=False,
                      generator=torch.Generator().manual_seed(2))
    for counts, region in ((fg, fg_region[0].numpy().ravel()), (bg, bg_region[0].numpy().ravel())):
        assert counts[~region].sum() == 0 and counts.sum() == 20000
        uniform = np.full(region.sum(), 1.0 / region.sum())
        assert chi_square(counts[region], uniform) < chi_square_bound(region.sum())


def test_many_draws_follow_the_law_of_successive_draws(monkeypatch):
    """Past FEW_DRAWS draws a frame takes exponential keys and a top-k: the same law (which pixels end up
    drawn) as the successive rejection draws, checked by a two-sample chi-square on inclusion counts."""
    monkeypatch.setattr(pl, "COMPILED_CPU_SAMPLER", False)
    maps, roi = small_frame()
    region, _ = pl.seed_regions(maps, roi, max_p=1.0)
    draws = int(region.sum()) // 2
    counts = {}
    for few_draws in (draws - 1, draws + 1):  # keys, then successive rejection draws
        monkeypatch.setattr(pl, "FEW_DRAWS", few_draws)
        counts[few_draws], _ = draws_of(maps, roi, 4000, max_p=1.0, n_fg=draws, n_bg=0,
                                        generator=torch.Generator().manual_seed(few_draws))
    keys, successive = (counts[f][region[0].numpy().ravel()].astype(np.float64) for f in sorted(counts))
    assert keys.sum() == successive.sum() == 4000 * draws
    statistic = float(((keys - successive) ** 2 / (keys + successive)).sum())
    assert statistic < chi_square_bound(len(keys))
    uniform_keys, _ = draws_of(maps, roi, 4000, max_p=1.0, n_fg=draws, n_bg=0, weighted=False,
                               generator=torch.Generator().manual_seed(0))
    uniform_keys = uniform_keys[region[0].numpy().ravel()].astype(np.float64)
    assert float(((uniform_keys - successive) ** 2 / (uniform_keys + successive)).sum()) > chi_square_bound(len(keys))


@pytest.mark.usefixtures("sampler")
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


def labels_of_regions(foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """The label image of every region pixel drawn with ksz 1: 1, 0, ignored where the regions overlap."""
    labels = torch.full(foreground.shape, IGNORE, dtype=torch.long)
    labels[foreground & ~background] = 1
    labels[background & ~foreground] = 0
    return labels


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
@pytest.mark.parametrize("max_p, min_p", [(0.6, 0.1), (0.7, 0.1), (0.25, 0.4), (1.0, 1.0)])
def test_the_compiled_sampler_draws_from_the_batched_steps_regions(dtype, max_p, min_p):
    """Every region pixel drawn (ksz 1): the compiled sampler's seeds are the torch steps' regions, pixel for
    pixel, on maps full of ties (values on a grid of 1/600: several values per level, many pixels per value),
    ROIs of each mode and one that holds low values (the regions overlap there)."""
    maps = (smooth_maps(6, 33, coarse=5, seed=8) * 600).round() / 600
    maps = (maps * 255).round().to(torch.uint8) if dtype == torch.uint8 else maps
    rois = [pl.roi_masks(maps, pl.otsu_thresholds(maps), mode=mode) for mode in ("all", "largest", "densest")]
    rois.append(torch.rand(maps.shape, generator=torch.Generator().manual_seed(2)) < 0.5)
    for roi in rois:
        expected = labels_of_regions(*pl.seed_regions(maps, roi, max_p=max_p, min_p=min_p))
        seeds = pl.sample_seeds(maps, roi, max_p=max_p, min_p=min_p, n_fg=10**9, n_bg=10**9, ksz=1,
                                generator=torch.Generator().manual_seed(0))
        assert torch.equal(seeds, expected)


def test_compiled_weighted_draws_keep_the_law_when_proposals_run_out(monkeypatch):
    """Weights far below the largest starve the compiled sampler's accept-reject, and the draws left take keys:
    which pixels end up drawn follows the same law as the torch steps' successive draws (two-sample
    chi-square on inclusion counts), and a uniform draw would not."""
    maps = torch.tensor([1.0] + [level / 255 for level in (1, 2, 3, 4, 5, 6) * 5 + (1, 2, 3, 4, 5)]).reshape(1, 6, 6)
    roi = torch.ones(1, 6, 6, dtype=torch.bool)
    draws = 18
    counts = {}
    for compiled in (True, False):
        monkeypatch.setattr(pl, "COMPILED_CPU_SAMPLER", compiled)
        counts[compiled], _ = draws_of(maps, roi, 4000, max_p=1.0, n_fg=draws, n_bg=0,
                                       generator=torch.Generator().manual_seed(int(compiled)))
    ours, successive = counts[True].astype(np.float64), counts[False].astype(np.float64)
    assert ours.sum() == successive.sum() == 4000 * draws and ours[0] > 3990
    assert float(((ours - successive) ** 2 / (ours + successive)).sum()) < chi_square_bound(36)
    uniform, _ = draws_of(maps, roi, 4000, max_p=1.0, n_fg=draws, n_bg=0, weighted=False,
                          generator=torch.Generator().manual_seed(0))
    assert float(((uniform - successive) ** 2 / (uniform + successive)).sum()) > chi_square_bound(36)


def test_compiled_draws_do_not_depend_on_the_thread_count():
    buffer, valid = synthetic_batch(8, 40)
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        labels = pl.pseudo_labels(buffer, valid, n_fg=50, n_bg=50, generator=torch.Generator().manual_seed(4))
        results.append((labels.seed_pixels, labels.seed_classes))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def clipped_square(y: int, x: int, ksz: int, size: int) -> torch.Tensor:
    square = torch.zeros(size, size, dtype=torch.bool)
    square[max(y - ksz // 2, 0) : y + ksz // 2 + 1, max(x - ksz // 2, 0) : x + ksz // 2 + 1] = True
    return square


@pytest.mark.usefixtures("sampler")
@pytest.mark.parametrize("ksz", [1, 3, 5])
def test_seed_squares_are_ksz_wide_and_clipped_at_the_border(ksz):
    maps = torch.linspace(0.0, 0.2, 12)[None, None, :].repeat(1, 12, 1)  # column 0 holds the lowest level
    maps[0, 5, 6] = 1.0
    roi = torch.zeros(1, 12, 12, dtype=torch.bool)
    roi[0, 5, 6] = True
    for seed in range(5):
        seeds = pl.sample_seeds(maps, roi, max_p=1.0, min_p=1 / 12, ksz=ksz,
                                generator=torch.Generator().manual_seed(seed))[0]
        assert torch.equal(seeds == 1, clipped_square(5, 6, ksz, 12))
        background = seeds == 0
        assert any(torch.equal(background, clipped_square(y, 0, ksz, 12)) for y in range(12))


@pytest.mark.usefixtures("sampler")
@pytest.mark.parametrize("n_bg", [24, 100])  # rejection sampling; keys and top-k
def test_overlapping_foreground_and_background_squares_are_ignored(n_bg):
    maps = torch.zeros(1, 5, 5)
    maps[0, 2, 2] = 1.0  # ROI: the centre; background: the 24 zeros (min_p 0.96)
    roi = pl.roi_masks(maps, pl.otsu_thresholds(maps))
    seeds = pl.sample_seeds(maps, roi, max_p=1.0, n_bg=n_bg, min_p=0.96, ksz=3,
                            generator=torch.Generator().manual_seed(0))
    assert (seeds[0][clipped_square(2, 2, 3, 5)] == IGNORE).all()  # inside both kinds of squares: contested
    assert (seeds[0][~clipped_square(2, 2, 3, 5)] == 0).all()
    seeds = pl.sample_seeds(maps, roi, n_fg=0, n_bg=n_bg, min_p=0.96, ksz=3,
                            generator=torch.Generator().manual_seed(0))
    assert (seeds[0] == 0).all()  # background squares may cover the ROI, as in the reference


@pytest.mark.usefixtures("sampler")
def test_even_ksz_is_refused():
    maps, roi = small_frame()
    with pytest.raises(ValueError, match="odd"):
        pl.sample_seeds(maps, roi, ksz=2)


# ----------------------------------------------------------------------------- the whole step


def synthetic_batch(frames: int = 12, size: int = 56):
    buffer, valid = reference.synthetic_buffers(frames, 2, size, seed=7)
    return buffer, valid


@pytest.mark.usefixtures("sampler")
def test_pseudo_labels_match_the_per_frame_reference():
    buffer, valid = synthetic_batch()
    labels = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(0))
    expected = reference.reference_pseudo_labels(buffer.numpy(), valid.numpy(), np.random.default_rng(0))
    np.testing.assert_array_equal(labels.pooled.numpy(), expected["pooled"])
    np.testing.assert_array_equal(labels.thresholds.numpy(), expected["thresholds"])
    np.testing.assert_array_equal(labels.roi.numpy(), expected["roi"])
    fg_region, bg_region = pl.seed_regions(labels.pooled, labels.roi)
    near_fg = F.max_pool2d(fg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    near_bg = F.max_pool2d(bg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    seeds = labels.seeds
    assert set(seeds.unique().tolist()) <= {IGNORE, 0, 1}
    assert (near_fg[seeds == 1]).all() and (near_bg[seeds == 0]).all()
    # One 3x3 square each (fewer pixels at a border or where the squares meet), like the reference's.
    for counts, expected_counts in (((seeds == 1).sum(dim=(1, 2)), (expected["seeds"] == 1).sum(axis=(1, 2))),
                                    ((seeds == 0).sum(dim=(1, 2)), (expected["seeds"] == 0).sum(axis=(1, 2)))):
        assert ((counts >= 1) & (counts <= 9)).all() and ((expected_counts >= 1) & (expected_counts <= 9)).all()


@pytest.mark.usefixtures("sampler")
@pytest.mark.parametrize("roi_mode", ["all", "largest", "densest"])
@pytest.mark.parametrize("seeds", [5, 400])  # rejection sampling; keys and top-k
def test_uint8_levels_match_the_reference_fed_the_same_levels(roi_mode, seeds):
    """The CAM store's uint8 buffers are pooled and thresholded as levels (never expanded to float): the same
    maps, threshold, ROI and seed regions as the per-frame reference fed the same uint8 buffer, and seeds in
    those regions."""
    buffer, valid = synthetic_batch(10, 48)
    levels = (buffer * 255).round().to(torch.uint8)
    labels = pl.pseudo_labels(levels, valid, roi_mode=roi_mode, n_fg=seeds, n_bg=seeds,
                              generator=torch.Generator().manual_seed(3))
    assert labels.maps.dtype == torch.uint8
    expected = reference.reference_pseudo_labels(levels.numpy(), valid.numpy(), np.random.default_rng(0),
                                                 roi_mode=roi_mode, n_fg=seeds, n_bg=seeds)
    np.testing.assert_array_equal(labels.pooled.numpy(), expected["pooled"])
    np.testing.assert_array_equal(labels.thresholds.numpy(), expected["thresholds"])
    np.testing.assert_array_equal(labels.roi.numpy(), expected["roi"])
    fg_region, bg_region = pl.seed_regions(labels.maps, labels.roi)
    for frame in range(10):
        expected_fg, expected_bg = reference.reference_seed_regions(labels.maps[frame].numpy(),
                                                                    labels.roi[frame].numpy())
        np.testing.assert_array_equal(fg_region[frame].numpy(), expected_fg)
        np.testing.assert_array_equal(bg_region[frame].numpy(), expected_bg)
    near_fg = F.max_pool2d(fg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    near_bg = F.max_pool2d(bg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert near_fg[labels.seeds == 1].all() and near_bg[labels.seeds == 0].all()
    assert ((labels.seeds == 1).sum(dim=(1, 2)) > 0).all()


@pytest.mark.usefixtures("sampler")
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


@pytest.mark.usefixtures("sampler")
def test_degenerate_buffers_give_no_seeds():
    buffer = torch.zeros(3, 2, 16, 16)
    buffer[1] = 0.7
    buffer[2, 0] = 0.3  # its only valid entry is constant; the padding holds a bump
    buffer[2, 1, 4:8, 4:8] = 1.0
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    labels = pl.pseudo_labels(buffer, valid, generator=torch.Generator().manual_seed(0))
    assert labels.thresholds.tolist() == [0.0, 0.0, 0.0]
    assert labels.roi.all()  # threshold 0: the whole frame, as the reference; no contrast, no seeds
    assert (labels.seeds == IGNORE).all()


@pytest.mark.usefixtures("sampler")
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
    assert torch.equal(cuda.thresholds.cpu(), cpu.thresholds)
    assert torch.equal(cuda.roi.cpu(), cpu.roi)
    fg_region, bg_region = pl.seed_regions(cpu.pooled, cpu.roi)
    near_fg = F.max_pool2d(fg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    near_bg = F.max_pool2d(bg_region[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert near_fg[cuda.seeds.cpu() == 1].all() and near_bg[cuda.seeds.cpu() == 0].all()
