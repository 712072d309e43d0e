"""Localization metrics on hand-made maps and boxes whose answers are known.

Most maps here are 224 x 224, the evaluation grid, so that neither protocol's
resize changes them: a map that is 1 on the exclusive rectangle [x0, y0, x1, y1)
gives the inclusive box (x0, y0, x1, y1) in the grid, clipped at 223. A GT box
[x0, y0, x1, y1] in a 224 x 224 image is the same inclusive box, so the two
match with IoU 1. tests/test_wsol_metric.py checks the metric against
wsolevaluation itself.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tcam_ray.evaluation import (
    LocalizationEvaluator,
    box_iou,
    evaluate_maps,
    iou_curves,
    make_thresholds,
    predict_boxes,
    resize_gt_boxes,
)
from tcam_ray.evaluation.boxes import eval_map

SIDE = 224
FRAME = (SIDE, SIDE)


def rect_map(box, value: float = 1.0, base: np.ndarray | None = None, side: int = SIDE) -> np.ndarray:
    """A map that is `value` on box [x0, y0, x1, y1) (map pixels) and 0 (or `base`) elsewhere."""
    cam = np.zeros((side, side), np.float32) if base is None else base.copy()
    x0, y0, x1, y1 = box
    cam[y0:y1, x0:x1] = value
    return cam


def evaluate(maps, gt_boxes, image_sizes=None, labels=None, predictions=None, **options) -> dict:
    evaluator = LocalizationEvaluator(options.pop("num_classes", 1), **options)
    labels = [0] * len(maps) if labels is None else labels
    image_sizes = [FRAME] * len(maps) if image_sizes is None else image_sizes
    evaluator.add(np.stack(maps), gt_boxes, image_sizes, labels, predictions)
    return evaluator.result()


def test_map_that_is_the_gt_rectangle_gives_corloc_100_at_every_threshold():
    cam = rect_map((5, 10, 25, 30))
    result = evaluate([cam], [[[5, 10, 25, 30]]])
    assert result["corloc"] == 100.0
    assert result["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 100.0}
    assert result["maxboxacc_v2"] == 100.0 and result["maxboxacc_v2_per_iou"] == {30: 100.0, 50: 100.0, 70: 100.0}
    assert result["frames"] == 1 and result["protocol"] == "wsol" and "box_mode" not in result
    # Thresholds are relative to the map's max and strict: even t = 0 keeps only the rectangle.
    assert result["corloc_per_threshold"] == [100.0] * 100
    assert result["best_threshold"] == 0.0  # the first of the tied thresholds


def test_iou_counts_every_side_plus_one():
    # 21 x 11 boxes overlapping on 11 x 11 pixels: 121 / (231 + 231 - 121).
    assert box_iou([[10, 0, 30, 10]], [[0, 0, 20, 10]])[0, 0] == 121 / 341
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 9, 9]])[0, 0] == 1 / 100  # a box of one pixel
    result = evaluate([rect_map((10, 0, 30, 10))], [[[0, 0, 20, 10]]])
    assert result["corloc"] == 0.0
    assert result["maxboxacc"] == {30: 100.0, 50: 0.0, 70: 0.0}
    assert result["maxboxacc_v2"] == pytest.approx(100 / 3)


def test_the_best_of_several_gt_boxes_counts():
    cam = rect_map((130, 130, 200, 200))
    first, second = [0, 0, 70, 70], [130, 130, 200, 200]
    assert evaluate([cam], [[first, second]])["corloc"] == 100.0
    assert evaluate([cam], [[first]])["corloc"] == 0.0


def test_all_zero_map_gives_no_box_and_never_scores():
    cam = np.zeros((20, 30), np.float32)
    for protocol in ("wsol", "tcam"):
        assert predict_boxes(cam, 0.0, (30, 20), protocol).shape == (0, 4)
        # wsolevaluation's placeholder box [0, 0, 0, 0] would score 1/100 against this GT box at the origin.
        curves = iou_curves(cam, [[0, 0, 30, 20]], (300, 200), make_thresholds(10), protocol)
        np.testing.assert_array_equal(curves.v1, np.zeros(10))
        np.testing.assert_array_equal(curves.v2, np.zeros(10))
        result = evaluate([cam], [[[0, 0, 30, 20]]], [(300, 200)], protocol=protocol, iou_thresholds=(1,))
        assert result["maxboxacc"] == {1: 0.0} and result["maxboxacc_v2"] == 0.0


def test_a_map_with_no_pixel_above_the_threshold_gives_no_box():
    faint = rect_map((10, 10, 50, 50), value=0.003)  # uint8 1/255 becomes 0 on TCAM's path
    assert eval_map(faint, "tcam").max() == 0
    assert predict_boxes(faint, 0.0, FRAME, "tcam").shape == (0, 4)
    np.testing.assert_array_equal(predict_boxes(faint, 0.0, FRAME, "wsol"), [[10, 10, 51, 51]])  # renormalised


def test_constant_map_is_empty_for_wsol_and_the_whole_frame_for_tcam():
    cam = np.full((40, 40), 0.5, np.float32)
    gt = [[0, 0, 224, 134]]  # 60% of the frame: IoU 224 * 135 / (224 * 224 + 225 * 135 - 224 * 135)
    wsol = evaluate([cam], [gt])
    assert wsol["maxboxacc"] == {30: 0.0, 50: 0.0, 70: 0.0} and predict_boxes(cam, 0.5, FRAME).shape == (0, 4)
    tcam = evaluate([cam], [gt], protocol="tcam")
    assert tcam["corloc_per_threshold"] == [100.0] * 100  # int(t * 127) < 127: every pixel on
    assert tcam["maxboxacc"] == {30: 100.0, 50: 100.0, 70: 0.0} and tcam["protocol"] == "tcam"
    np.testing.assert_array_equal(predict_boxes(cam, 0.99, FRAME, "tcam"), [[0, 0, 224, 224]])


def test_boxes_touching_the_border_are_clipped_at_223_as_wsolevaluation_does():
    cam = rect_map((200, 100, 224, 224))
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, FRAME), [[200, 100, 224, 224]])
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, (448, 448)), [[400, 200, 448, 448]])
    # The box ends at 223 but the GT box at 224: IoU 24 * 124 / (25 * 125) = 0.952.
    result = evaluate([cam], [[[200, 100, 224, 224]]], iou_thresholds=(95, 96))
    assert result["maxboxacc"] == {95: 100.0, 96: 0.0}


def test_a_drawn_box_ends_one_pixel_past_its_blob_as_the_metric_counts_it():
    # The blob covers x 0..99; boundingRect gives x + w = 100, an inclusive end: the edge is at 101.
    np.testing.assert_array_equal(predict_boxes(rect_map((0, 0, 100, 100)), 0.5, FRAME), [[0, 0, 101, 101]])


def test_largest_and_all_contours_differ_on_two_blobs():
    cam = rect_map((0, 0, 100, 100))  # the big blob, off the object
    cam = rect_map((150, 150, 200, 200), base=cam)  # the small blob, on it
    gt = [[150, 150, 200, 200]]
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, FRAME), [[0, 0, 101, 101]])
    all_boxes = predict_boxes(cam, 0.5, FRAME, all_contours=True)
    assert sorted(all_boxes.tolist()) == [[0, 0, 101, 101], [150, 150, 201, 201]]
    result = evaluate([cam], [gt])
    assert result["corloc"] == 0.0 and result["maxboxacc"][30] == 0.0
    assert result["maxboxacc_v2"] == 100.0


def test_the_border_of_a_hole_is_a_contour_for_all_contours():
    ring = rect_map((50, 50, 91, 91), value=0.0, base=rect_map((20, 20, 121, 121)))
    curves = iou_curves(ring, [[50, 50, 91, 91]], FRAME, make_thresholds(10))
    np.testing.assert_array_equal(curves.v1, np.full(10, 42 * 42 / (102 * 102)))  # the outer box
    np.testing.assert_array_equal(curves.v2, np.full(10, 42 * 42 / (44 * 44)))  # the hole's box
    assert predict_boxes(ring, 0.5, FRAME, all_contours=True).tolist() == [[20, 20, 122, 122], [49, 49, 93, 93]]


def test_equal_contours_keep_the_first_as_opencv_lists_them():
    cam = rect_map((150, 150, 190, 190), base=rect_map((10, 10, 50, 50)))
    contours = cv2.findContours((cam > 0).view(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    x, y, w, h = cv2.boundingRect(max(contours, key=cv2.contourArea))
    np.testing.assert_array_equal(predict_boxes(cam, 0.5, FRAME), [[x, y, x + w + 1, y + h + 1]])


def test_gt_boxes_are_truncated_into_the_224_grid():
    np.testing.assert_array_equal(resize_gt_boxes([[120, 45, 240, 135], [0, 0, 480, 359]], (480, 360)),
                                  [[56, 28, 112, 84], [0, 0, 224, 223]])


def test_boxes_scale_between_the_224_grid_and_original_pixels_separately_in_x_and_y():
    cam = rect_map((56, 28, 112, 84))
    np.testing.assert_allclose(predict_boxes(cam, 0.5, (480, 360)),
                               [[120, 45, 113 * 480 / 224, 85 * 360 / 224]])
    assert evaluate([cam], [[[120, 45, 240, 135]]], [(480, 360)], iou_thresholds=(100,))["maxboxacc"][100] == 100.0
    # The same map against a square image: a box that only fits if y is scaled by its own factor.
    assert evaluate([cam], [[[120, 60, 240, 180]]], [(480, 480)], iou_thresholds=(100,))["maxboxacc"][100] == 100.0


def test_per_class_corloc_at_the_global_best_threshold():
    hit, miss = rect_map((0, 0, 100, 100)), rect_map((120, 120, 220, 220))
    gt = [[0, 0, 100, 100]]
    result = evaluate([hit, hit, hit, miss], [gt] * 4, labels=[0, 0, 1, 1], num_classes=3,
                      class_names=["cat", "dog", "cow"])
    assert result["per_class"] == {"cat": 100.0, "dog": 50.0}  # no cow frame: not reported
    assert result["corloc"] == 75.0 and result["frames"] == 4


def test_top1_counts_every_frame_and_frames_without_boxes_are_skipped_for_localization():
    cam = rect_map((0, 0, 100, 100))
    gt = [[[0, 0, 100, 100]], [], [[0, 0, 100, 100]], []]
    result = evaluate([cam] * 4, gt, labels=[0, 1, 1, 0], predictions=[0, 1, 0, 1], num_classes=2)
    assert result["top1"] == 50.0 and result["top1_frames"] == 4
    assert result["frames"] == 2 and result["frames_without_box"] == 2
    assert result["corloc"] == 100.0
    assert evaluate([cam], gt[:1])["top1"] is None


def test_best_threshold_is_where_most_frames_hit():
    gt = [50, 50, 150, 150]
    # Normalised: 1 on the GT, 1/3 around it (uint8 84): the GT alone from t = 0.4 (level 102).
    frame_a = rect_map(gt, value=0.75, base=rect_map((0, 0, 224, 200), value=0.25))
    # uint8 127 on the GT and 255 on a small core: the GT up to t = 0.4, the core alone from t = 0.5 (level 127).
    frame_b = rect_map((90, 90, 110, 110), value=1.0, base=rect_map(gt, value=0.5))
    result = evaluate([frame_a, frame_b], [[gt], [gt]], thresholds=10)
    assert result["corloc_per_threshold"] == [50.0] * 4 + [100.0] + [50.0] * 5
    assert result["best_threshold"] == 0.4 and result["corloc"] == 100.0
    assert result["thresholds"] == make_thresholds(10).tolist()


def test_maxboxacc_v2_takes_each_iou_at_its_own_best_threshold():
    gt = [50, 50, 150, 150]
    loose = rect_map((40, 40, 170, 200), value=0.25)  # IoU 101^2 / (131 * 161) = 0.48: passes 30 only
    tight = rect_map(gt, value=0.75, base=loose)  # the loose box up to t = 0.3, the GT from t = 0.4
    result = evaluate([loose, tight], [[gt], [gt]], thresholds=10)
    assert result["maxboxacc"] == {30: 100.0, 50: 50.0, 70: 50.0}
    assert result["best_threshold_per_iou"] == {30: 0.0, 50: 0.4, 70: 0.4}
    assert result["maxboxacc_v2"] == pytest.approx(200 / 3)  # no single threshold reaches it
    assert result["corloc"] == 50.0 and result["best_threshold"] == 0.4


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
    whole, first, second = (LocalizationEvaluator(3, thresholds=20) for _ in range(3))
    whole.add(maps, boxes, sizes, labels, predictions)
    first.add(maps[:10], boxes[:10], sizes[:10], labels[:10], predictions[:10])
    second.add(maps[10:], boxes[10:], sizes[10:], labels[10:], predictions[10:])
    merged = LocalizationEvaluator(3, thresholds=20)
    merged.merge(LocalizationEvaluator.sum_states([first.state(), second.state()]))
    for name, counts in whole.state().items():
        np.testing.assert_array_equal(merged.state()[name], counts, err_msg=name)
    assert merged.result() == whole.result()
    assert first.merge(second.state()).result() == whole.result()
    assert 0 < whole.result()["frames"] < 24 and whole.result()["frames_without_box"] > 0
    with pytest.raises(ValueError, match="shape"):
        LocalizationEvaluator(3, thresholds=10).merge(whole.state())


def plain_curves(cam: np.ndarray, gt_boxes, image_size, thresholds: np.ndarray, protocol: str):
    """wsolevaluation's loop, one contour search per threshold (without its placeholder box)."""
    u8 = eval_map(cam, protocol)
    gt = resize_gt_boxes(gt_boxes, image_size)
    v1, v2 = [], []
    for t in thresholds:
        _, binary = cv2.threshold(u8, int(t * np.max(u8)), 255, cv2.THRESH_BINARY)
        contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
        if not contours:
            v1.append(0.0), v2.append(0.0)
            continue
        rects = [cv2.boundingRect(c) for c in contours]
        boxes = [[x, y, min(x + w, 223), min(y + h, 223)] for x, y, w, h in rects]
        areas = [cv2.contourArea(c) for c in contours]
        largest = areas.index(max(areas))  # the first one on ties, as max(contours, key=cv2.contourArea)
        v1.append(box_iou([boxes[largest]], gt).max())
        v2.append(box_iou(boxes, gt).max())
    return np.array(v1), np.array(v2)


@pytest.mark.parametrize("protocol", ["wsol", "tcam"])
@pytest.mark.parametrize("quantised", [False, True])
def test_one_contour_search_per_binary_map_gives_the_curves_of_the_plain_loop(protocol, quantised):
    maps, boxes, sizes, _, _ = random_frames(np.random.default_rng(1), 8)
    if quantised:  # 21 levels at 224 x 224, which neither resize changes: many thresholds share a binary map
        maps = np.stack([np.round(cv2.resize(cam, FRAME, interpolation=cv2.INTER_NEAREST) * 20) / 20 for cam in maps])
    thresholds = make_thresholds(100)
    for cam, size in zip(maps.astype(np.float32), sizes):
        gt = [[5, 5, size[0] / 2, size[1] / 3]]
        curves = iou_curves(cam, gt, size, thresholds, protocol)
        expected = plain_curves(cam, gt, size, thresholds, protocol)
        np.testing.assert_array_equal(curves.v1, expected[0])
        np.testing.assert_array_equal(curves.v2, expected[1])


def test_evaluate_maps_gives_the_metrics_and_each_frames_best_iou():
    maps = np.stack([rect_map((0, 0, 100, 100)), rect_map((10, 0, 30, 10)), rect_map((0, 0, 9, 9))])
    result = evaluate_maps(maps, [[[0, 0, 100, 100]], [[0, 0, 20, 10]], []], [FRAME] * 3, thresholds=10)
    assert result["corloc"] == 50.0 and result["frames"] == 2 and result["frames_without_box"] == 1
    np.testing.assert_array_equal(result["best_iou"], [1.0, 121 / 341, np.nan])
    np.testing.assert_array_equal(result["best_iou_v2"], [1.0, 121 / 341, np.nan])


def test_thresholds_are_the_first_n_values_of_arange():
    np.testing.assert_array_equal(make_thresholds(100), np.arange(0, 1, 0.01))
    assert make_thresholds(100)[7] == 0.07000000000000001  # as wsolevaluation sweeps it
    np.testing.assert_array_equal(make_thresholds(49), np.arange(0, 1, 1 / 49)[:49])  # arange gives 50
    np.testing.assert_array_equal(make_thresholds([0.25, 0.5]), [0.25, 0.5])


def test_map_formats_uint8_and_torch_are_read_as_scores():
    cam = rect_map((0, 0, 100, 100), value=0.6, base=np.full((SIDE, SIDE), 0.2, np.float32))
    gt = [[[0, 0, 100, 100]]]
    as_float = evaluate([cam], gt, protocol="tcam")
    as_uint8 = evaluate([np.round(cam * 255).astype(np.uint8)], gt, protocol="tcam")
    assert as_uint8["corloc_per_threshold"] == as_float["corloc_per_threshold"]
    torch = pytest.importorskip("torch")
    evaluator = LocalizationEvaluator(1, protocol="tcam")
    evaluator.add(torch.from_numpy(cam)[None, None], gt, torch.tensor([FRAME]), torch.tensor([0]), torch.tensor([0]))
    assert evaluator.result()["corloc_per_threshold"] == as_float["corloc_per_threshold"]
    assert evaluator.result()["top1"] == 100.0
    np.testing.assert_array_equal(predict_boxes(torch.from_numpy(cam), 0.5, FRAME), predict_boxes(cam, 0.5, FRAME))


def test_bad_inputs_are_refused_with_a_reason():
    cam = rect_map((0, 0, 5, 5), side=10)
    evaluator = LocalizationEvaluator(2)
    with pytest.raises(ValueError, match="NaN"):
        evaluator.add(np.full((1, 10, 10), np.nan), [[[0, 0, 5, 5]]], [(10, 10)], [0])
    with pytest.raises(ValueError, match="x1 > x0"):
        evaluator.add(cam[None], [[[5, 0, 5, 5]]], [(10, 10)], [0])
    with pytest.raises(ValueError, match="labels"):
        evaluator.add(cam[None], [[[0, 0, 5, 5]]], [(10, 10)], [2])
    with pytest.raises(ValueError, match="lengths"):
        evaluator.add(cam[None], [], [(10, 10)], [0])
    with pytest.raises(ValueError, match="protocol"):
        LocalizationEvaluator(2, protocol="largest")
    with pytest.raises(ValueError, match="protocol"):
        predict_boxes(cam, 0.5, (10, 10), "all")
    with pytest.raises(ValueError, match="increasing"):
        LocalizationEvaluator(2, thresholds=[0.5, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        LocalizationEvaluator(2, thresholds=[0.5, 1.0])
    assert evaluator.result()["corloc"] is None and evaluator.result()["frames"] == 0
