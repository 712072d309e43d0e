"""Localization metrics on hand-made maps and boxes whose answers are known."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tcam_ray.evaluation import LocalizationEvaluator, box_iou, make_thresholds, predict_boxes, sweep_boxes


def rect_map(height: int, width: int, box, value: float = 1.0, base: np.ndarray | None = None) -> np.ndarray:
    """A map that is `value` on box [x0, y0, x1, y1) (map pixels) and 0 (or `base`) elsewhere."""
    cam = np.zeros((height, width), np.float32) if base is None else base.copy()
    x0, y0, x1, y1 = box
    cam[y0:y1, x0:x1] = value
    return cam


def evaluate(maps, gt_boxes, image_sizes, labels=None, predictions=None, **options) -> dict:
    evaluator = LocalizationEvaluator(options.pop("num_classes", 1), **options)
    labels = [0] * len(maps) if labels is None else labels
    evaluator.add(np.stack(maps), gt_boxes, image_sizes, labels, predictions)
    return evaluator.result()


def test_map_that_is_the_gt_rectangle_gives_corloc_100():
    cam = rect_map(40, 40, (5, 10, 25, 30))
    result = evaluate([cam], [[[5, 10, 25, 30]]], [(40, 40)])
    assert result["corloc"] == 100.0
    assert result["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 100.0}
    assert result["maxboxacc_v2"] == 100.0
    assert result["frames"] == 1
    # At threshold 0 every map gives the whole frame: IoU 400/1600 misses; every other threshold hits.
    assert result["corloc_per_threshold"][0] == 0.0
    assert result["corloc_per_threshold"][1:] == [100.0] * 99
    assert result["best_threshold"] == 0.01


def test_shifted_map_with_iou_one_third_fails_at_50_and_passes_at_30():
    cam = rect_map(40, 40, (10, 0, 30, 10))  # 20 wide, shifted by 10 from the GT: IoU = 10 / 30
    assert box_iou([[10, 0, 30, 10]], [[0, 0, 20, 10]])[0, 0] == pytest.approx(1 / 3)
    result = evaluate([cam], [[[0, 0, 20, 10]]], [(40, 40)])
    assert result["corloc"] == 0.0
    assert result["maxboxacc"] == {30: 100.0, 50: 0.0, 70: 0.0}
    assert result["maxboxacc_v2"] == pytest.approx(100 / 3)


def test_the_best_of_several_gt_boxes_counts():
    cam = rect_map(60, 60, (30, 30, 50, 50))
    first, second = [0, 0, 20, 20], [30, 30, 50, 50]
    assert evaluate([cam], [[first, second]], [(60, 60)])["corloc"] == 100.0
    assert evaluate([cam], [[first]], [(60, 60)])["corloc"] == 0.0


def test_all_zero_map_gives_the_whole_frame_at_threshold_0_then_the_empty_box():
    cam = np.zeros((20, 30), np.float32)
    boxes, owner = sweep_boxes(cam, make_thresholds(4))
    np.testing.assert_array_equal(owner, [0, 1, 2, 3])
    np.testing.assert_array_equal(boxes, [[0, 0, 30, 20], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    result = evaluate([cam], [[[0, 0, 10, 10]]], [(30, 20)])
    assert result["corloc"] == 0.0 and result["maxboxacc"][30] == 0.0
    # The empty box matches nothing, not even a box at the origin.
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 1, 1]])[0, 0] == 0.0


def test_constant_map_is_the_whole_frame_up_to_its_value():
    cam = np.full((40, 40), 0.5, np.float32)
    gt = [0, 0, 40, 24]  # 60% of the frame: the whole-frame box has IoU 0.6
    result = evaluate([cam], [[gt]], [(40, 40)])
    curve = result["corloc_per_threshold"]
    assert curve[:51] == [100.0] * 51 and curve[51:] == [0.0] * 49  # thresholds 0.00 .. 0.50 pass
    assert result["corloc"] == 100.0 and result["best_threshold"] == 0.0
    assert result["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 0.0}
    small_gt = evaluate([cam], [[[0, 0, 20, 20]]], [(40, 40)])  # IoU 0.25
    assert small_gt["corloc"] == 0.0 and small_gt["maxboxacc"][30] == 0.0


def test_boxes_touching_the_border_end_at_the_width_and_height():
    cam = rect_map(32, 48, (38, 20, 48, 32))
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, (48, 32)), [[38, 20, 48, 32]])
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, (96, 64)), [[76, 40, 96, 64]])
    result = evaluate([cam], [[[38, 20, 48, 32]]], [(48, 32)], iou_thresholds=(50, 99))
    assert result["maxboxacc"] == {50: 100.0, 99: 100.0}  # IoU exactly 1: no width - 1 clipping


def test_largest_and_all_contour_modes_differ_on_two_blobs():
    cam = rect_map(64, 64, (0, 0, 30, 30))  # the big blob, off the object
    cam = rect_map(64, 64, (45, 45, 55, 55), base=cam)  # the small blob, on it
    gt = [[45, 45, 55, 55]]
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, (64, 64), "largest"), [[0, 0, 30, 30]])
    all_boxes = predict_boxes(cam, 0.5, (64, 64), "all")
    assert sorted(all_boxes.tolist()) == [[0, 0, 30, 30], [45, 45, 55, 55]]
    assert evaluate([cam], [gt], [(64, 64)], box_mode="largest")["corloc"] == 0.0
    assert evaluate([cam], [gt], [(64, 64)], box_mode="all")["corloc"] == 100.0


def test_boxes_scale_from_map_resolution_to_original_pixels_separately_in_x_and_y():
    cam = rect_map(56, 56, (14, 7, 28, 21))
    # sx = 480 / 56, sy = 360 / 56
    np.testing.assert_allclose(predict_boxes(cam, 0.5, (480, 360)), [[120, 45, 240, 135]])
    assert evaluate([cam], [[[120, 45, 240, 135]]], [(480, 360)], iou_thresholds=(99,))["maxboxacc"][99] == 100.0
    # The same map against a square image: a box that only fits if y is scaled by its own factor.
    assert evaluate([cam], [[[120, 60, 240, 180]]], [(480, 480)], iou_thresholds=(99,))["maxboxacc"][99] == 100.0
    # Same x, y 45..135 against 90..180: IoU = 45 / 135 = 1/3.
    third = evaluate([cam], [[[120, 90, 240, 180]]], [(480, 360)], iou_thresholds=(33, 34))
    assert third["maxboxacc"] == {33: 100.0, 34: 0.0}


def test_per_class_corloc_at_the_global_best_threshold():
    hit, miss = rect_map(40, 40, (0, 0, 20, 20)), rect_map(40, 40, (20, 20, 40, 40))
    gt = [[0, 0, 20, 20]]
    result = evaluate([hit, hit, hit, miss], [gt] * 4, [(40, 40)] * 4, labels=[0, 0, 1, 1],
                      num_classes=3, class_names=["cat", "dog", "cow"])
    assert result["per_class"] == {"cat": 100.0, "dog": 50.0}  # no cow frame: not reported
    assert result["corloc"] == 75.0 and result["frames"] == 4


def test_top1_counts_every_frame_and_frames_without_boxes_are_skipped_for_localization():
    cam = rect_map(40, 40, (0, 0, 20, 20))
    gt = [[[0, 0, 20, 20]], [], [[0, 0, 20, 20]], []]
    result = evaluate([cam] * 4, gt, [(40, 40)] * 4, labels=[0, 1, 1, 0], predictions=[0, 1, 0, 1], num_classes=2)
    assert result["top1"] == 50.0 and result["top1_frames"] == 4
    assert result["frames"] == 2 and result["frames_without_box"] == 2
    assert result["corloc"] == 100.0
    assert evaluate([cam], gt[:1], [(40, 40)])["top1"] is None


def test_best_threshold_is_where_most_frames_hit():
    gt = [10, 10, 30, 30]
    around = rect_map(40, 40, (0, 0, 40, 35), value=0.25)  # IoU 400/1400 with the GT: a miss
    frame_a = rect_map(40, 40, gt, value=0.75, base=around)  # hits at thresholds 0.3 .. 0.7
    frame_b = rect_map(40, 40, gt, value=0.45)  # hits at thresholds 0.1 .. 0.4
    result = evaluate([frame_a, frame_b], [[gt], [gt]], [(40, 40)] * 2, thresholds=10)
    assert result["corloc_per_threshold"] == [0.0, 50.0, 50.0, 100.0, 100.0, 50.0, 50.0, 50.0, 0.0, 0.0]
    assert result["best_threshold"] == 0.3  # the lowest of the tied best
    assert result["corloc"] == 100.0


def test_maxboxacc_v2_takes_each_iou_at_its_own_best_threshold():
    gt = [10, 10, 30, 30]
    loose = rect_map(50, 40, (5, 5, 30, 45), value=0.25)  # IoU 400/1000 = 0.4: passes 30 only
    tight = rect_map(50, 40, gt, value=0.75, base=loose)  # IoU 1 from threshold 0.3
    result = evaluate([loose, tight], [[gt], [gt]], [(40, 50)] * 2, thresholds=10)
    assert result["maxboxacc"] == {30: 100.0, 50: 50.0, 70: 50.0}
    assert result["best_threshold_per_iou"] == {30: 0.1, 50: 0.3, 70: 0.3}
    assert result["maxboxacc_v2"] == pytest.approx(200 / 3)  # no single threshold reaches it
    assert result["corloc"] == 50.0 and result["best_threshold"] == 0.3


def random_frames(rng: np.random.Generator, count: int):
    maps = [cv2.resize(rng.random((7, 7), dtype=np.float32), (32, 32)) for _ in range(count)]
    maps = [(m - m.min()) / (m.max() - m.min()) for m in maps]
    sizes = rng.integers(40, 200, size=(count, 2))
    boxes = []
    for width, height in sizes:
        x0, y0 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
        boxes.append([[x0, y0, rng.uniform(x0 + 1, width), rng.uniform(y0 + 1, height)]] * int(rng.integers(0, 3)))
    return np.stack(maps), boxes, sizes, rng.integers(0, 3, count), rng.integers(0, 3, count)


def test_merged_states_equal_one_evaluator_over_all_frames():
    maps, boxes, sizes, labels, predictions = random_frames(np.random.default_rng(0), 24)
    whole, first, second = (LocalizationEvaluator(3, box_mode="all", thresholds=20) for _ in range(3))
    whole.add(maps, boxes, sizes, labels, predictions)
    first.add(maps[:10], boxes[:10], sizes[:10], labels[:10], predictions[:10])
    second.add(maps[10:], boxes[10:], sizes[10:], labels[10:], predictions[10:])
    merged = LocalizationEvaluator(3, box_mode="all", thresholds=20)
    merged.merge(LocalizationEvaluator.sum_states([first.state(), second.state()]))
    for name, counts in whole.state().items():
        np.testing.assert_array_equal(merged.state()[name], counts, err_msg=name)
    assert merged.result() == whole.result()
    assert first.merge(second.state()).result() == whole.result()
    assert 0 < whole.result()["frames"] < 24 and whole.result()["frames_without_box"] > 0
    with pytest.raises(ValueError, match="shape"):
        LocalizationEvaluator(3, thresholds=10).merge(whole.state())


def reference_sweep(cam: np.ndarray, thresholds: np.ndarray, box_mode: str) -> list[list[list[float]]]:
    """wsol-done-right's algorithm: threshold, find the contour tree, box, one threshold at a time."""
    per_threshold = []
    for t in thresholds:
        binary = (cam >= t).astype(np.uint8)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if not contours:
            per_threshold.append([[0, 0, 0, 0]])
            continue
        if box_mode == "largest":
            contours = [max(contours, key=cv2.contourArea)]
        rects = [cv2.boundingRect(c) for c in contours]
        per_threshold.append([[x, y, x + w, y + h] for x, y, w, h in rects])
    return per_threshold


@pytest.mark.parametrize("box_mode", ["largest", "all"])
@pytest.mark.parametrize("quantised", [False, True])
def test_the_fast_sweep_gives_the_boxes_of_the_plain_algorithm(box_mode, quantised):
    maps = random_frames(np.random.default_rng(1), 6)[0]
    if quantised:
        maps = np.round(maps * 20) / 20  # many thresholds share a binary map
    thresholds = make_thresholds(100)
    for cam in maps.astype(np.float32):
        boxes, owner = sweep_boxes(cam, thresholds, box_mode)
        fast = [boxes[owner == t].tolist() for t in range(thresholds.size)]
        assert fast == reference_sweep(cam, thresholds, box_mode)


def test_map_formats_uint8_and_torch_are_read_as_scores():
    cam = rect_map(40, 40, (0, 0, 20, 20), value=0.6)
    gt = [[[0, 0, 20, 20]]]
    as_uint8 = evaluate([np.round(cam * 255).astype(np.uint8)], gt, [(40, 40)])
    assert as_uint8["corloc_per_threshold"][60] == 100.0 and as_uint8["corloc_per_threshold"][61] == 0.0
    torch = pytest.importorskip("torch")
    evaluator = LocalizationEvaluator(1)
    evaluator.add(torch.from_numpy(cam)[None, None], gt, torch.tensor([[40, 40]]), torch.tensor([0]), torch.tensor([0]))
    assert evaluator.result()["corloc_per_threshold"] == evaluate([cam], gt, [(40, 40)])["corloc_per_threshold"]
    assert evaluator.result()["top1"] == 100.0


def test_bad_inputs_are_refused_with_a_reason():
    cam = rect_map(10, 10, (0, 0, 5, 5))
    evaluator = LocalizationEvaluator(2)
    with pytest.raises(ValueError, match="NaN"):
        evaluator.add(np.full((1, 10, 10), np.nan), [[[0, 0, 5, 5]]], [(10, 10)], [0])
    with pytest.raises(ValueError, match="x1 > x0"):
        evaluator.add(cam[None], [[[5, 0, 5, 5]]], [(10, 10)], [0])
    with pytest.raises(ValueError, match="labels"):
        evaluator.add(cam[None], [[[0, 0, 5, 5]]], [(10, 10)], [2])
    with pytest.raises(ValueError, match="lengths"):
        evaluator.add(cam[None], [], [(10, 10)], [0])
    with pytest.raises(ValueError, match="box_mode"):
        LocalizationEvaluator(2, box_mode="biggest")
    with pytest.raises(ValueError, match="increasing"):
        LocalizationEvaluator(2, thresholds=[0.5, 0.2])
    assert evaluator.result()["corloc"] is None and evaluator.result()["frames"] == 0
