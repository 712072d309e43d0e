"""The metric against clovaai/wsolevaluation's BoxEvaluator (and TCAM's copy of it) on 300 oracle frames.

The oracle (tests/data/oracles/metric/README.md) holds every frame's IoU at
every threshold, for the intervals 0.01 and 0.001 (100 and 1000 thresholds),
with the largest contour (v1) and with all contours (v2). It also holds the
aggregates and the values of TCAM's own map path.

Our one deliberate difference: a binary map with no contour gives no box, and
IoU 0. wsolevaluation scores the placeholder box [0, 0, 0, 0] there, the pixel
at the origin. Such values are allowed to differ, and only there: in frames
without a box, where the oracle's value is tiny and ours is 0. In this oracle
no GT box covers the origin of a frame without a box, so nothing differs.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tcam_ray.evaluation import (
    EVAL_SIZE,
    LocalizationEvaluator,
    box_iou,
    evaluate_maps,
    make_thresholds,
    predict_boxes,
    resize_gt_boxes,
)

ORACLE = Path(__file__).parent / "data" / "oracles" / "metric"
THRESHOLD_COUNTS = {"0.01": 100, "0.001": 1000}
IOUS = (30, 50, 70)
PLACEHOLDER_MAX_IOU = 0.3  # the placeholder box's IoU in the oracle stays below this: never a hit


@pytest.fixture(scope="module")
def oracle():
    inputs = dict(np.load(ORACLE / "inputs.npz"))
    expected = json.loads((ORACLE / "expected.json").read_text())
    boxes = [inputs["gt_boxes"][n][: inputs["gt_count"][n]].tolist() for n in range(len(inputs["maps"]))]
    no_box = {protocol: np.array([len(predict_boxes(cam, 0.0, size, protocol)) == 0
                                  for cam, size in zip(inputs["maps"], inputs["image_wh"])])
              for protocol in ("wsol", "tcam")}  # no box at threshold 0: no box at any threshold
    return SimpleNamespace(maps=inputs["maps"], sizes=inputs["image_wh"], boxes=boxes, no_box=no_box,
                           arrays=dict(np.load(ORACLE / "expected_arrays.npz")), expected=expected,
                           frames=expected["frames"])


@pytest.fixture(scope="module", params=list(THRESHOLD_COUNTS))
def wsol(request, oracle):
    """One evaluator over all frames at an interval: (interval, evaluator, its IoU curves)."""
    evaluator = LocalizationEvaluator(1, thresholds=THRESHOLD_COUNTS[request.param])
    curves = evaluator.add(oracle.maps, oracle.boxes, oracle.sizes, np.zeros(len(oracle.boxes), np.int64))
    return SimpleNamespace(interval=request.param, evaluator=evaluator, curves={"v1": curves.v1, "v2": curves.v2})


def assert_equal_but_placeholder(ours: np.ndarray, oracle_values: np.ndarray, no_box: np.ndarray) -> int:
    """ours == oracle's everywhere, except where its placeholder box scored; returns how many values
    differ there."""
    differs = ours != oracle_values
    frames = np.flatnonzero(differs.reshape(len(ours), -1).any(axis=1))
    assert no_box[frames].all(), f"frames {frames[~no_box[frames]].tolist()} differ from the oracle"
    assert np.all(ours[differs] == 0) and np.all(oracle_values[differs] < PLACEHOLDER_MAX_IOU)
    return int(differs.sum())


def test_thresholds_are_wsolevaluations_lists(oracle):
    for interval, count in THRESHOLD_COUNTS.items():
        np.testing.assert_array_equal(make_thresholds(count), oracle.arrays[f"thresholds_{interval}"], strict=True)


def test_gt_boxes_go_to_the_224_grid_as_wsolevaluation_reads_them(oracle):
    for boxes, size, frame in zip(oracle.boxes, oracle.sizes, oracle.frames):
        assert resize_gt_boxes(boxes, size).tolist() == frame["gt224"], frame["id"]


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_every_iou_curve_and_hit_equals_the_oracle(oracle, wsol, mode):
    ours = wsol.curves[mode]
    assert_equal_but_placeholder(ours, oracle.arrays[f"iou_{wsol.interval}_{mode}"], oracle.no_box["wsol"])
    for iou in IOUS:
        np.testing.assert_array_equal(ours >= iou / 100, oracle.arrays[f"hits_{wsol.interval}_{mode}_iou{iou}"],
                                      err_msg=f"{mode} at IoU {iou}")


def test_the_evaluators_counts_are_the_oracles_hits(oracle, wsol):
    state = wsol.evaluator.state()
    for name, mode in (("hits", "v1"), ("hits_v2", "v2")):
        expected = [oracle.arrays[f"hits_{wsol.interval}_{mode}_iou{iou}"].sum(axis=0) for iou in IOUS]
        np.testing.assert_array_equal(state[name], expected)


def test_aggregates_equal_wsolevaluations(oracle, wsol):
    result = wsol.evaluator.result()
    aggregates = oracle.expected["aggregate"]["wsolevaluation"]
    check_aggregates(result, aggregates[f"{wsol.interval}_v1"], aggregates[f"{wsol.interval}_v2"])
    assert result["corloc"] == aggregates[f"{wsol.interval}_v1"]["maxboxacc"]["50"]
    assert result["best_threshold"] == aggregates[f"{wsol.interval}_v1"]["best_threshold"]["50"]


def check_aggregates(result: dict, v1: dict, v2: dict) -> None:
    """Exact equality: the same float operations in the same order."""
    for iou in IOUS:
        assert result["maxboxacc"][iou] == v1["maxboxacc"][str(iou)]
        assert result["maxboxacc_v2_per_iou"][iou] == v2["maxboxacc"][str(iou)]
        assert result["best_threshold_per_iou"][iou] == v1["best_threshold"][str(iou)]
        assert result["best_threshold_per_iou_v2"][iou] == v2["best_threshold"][str(iou)]
    assert result["maxboxacc_v2"] == v2["mean_30_50_70"]
    assert np.mean(list(result["maxboxacc"].values())) == v1["mean_30_50_70"]


@pytest.mark.parametrize("interval", list(THRESHOLD_COUNTS))
def test_evaluate_maps_gives_wsolevaluations_summary(oracle, interval):
    result = evaluate_maps(oracle.maps, oracle.boxes, oracle.sizes, thresholds=THRESHOLD_COUNTS[interval])
    summary = oracle.expected["summary"]["wsolevaluation"]
    summary = summary if interval == "0.01" else summary[f"interval_{interval}"]
    assert result["corloc"] == summary["MaxBoxAcc(v1,iou50)=CorLoc"]
    assert result["maxboxacc_v2"] == summary["MaxBoxAccV2(v2,mean30/50/70)"]
    assert result["protocol"] == "wsol" and result["frames"] == len(oracle.boxes)
    for mode, key in (("v1", "best_iou"), ("v2", "best_iou_v2")):
        expected = np.array([frame["best_iou"][f"{interval}_{mode}"] for frame in oracle.frames])
        assert_equal_but_placeholder(result[key], expected, oracle.no_box["wsol"])


@pytest.mark.parametrize("interval", list(THRESHOLD_COUNTS))
def test_tcam_protocol_is_tcams_own_map_path(oracle, interval):
    result = evaluate_maps(oracle.maps, oracle.boxes, oracle.sizes, "tcam", THRESHOLD_COUNTS[interval])
    aggregates = oracle.expected["aggregate"]["tcam_own_map_path(extra)"]
    check_aggregates(result, aggregates[f"{interval}_v1"], aggregates[f"{interval}_v2"])
    assert result["protocol"] == "tcam"
    for mode, key in (("v1", "best_iou"), ("v2", "best_iou_v2")):
        expected = np.array([frame["tcam_own_path_best_iou"][f"{interval}_{mode}"] for frame in oracle.frames])
        assert_equal_but_placeholder(result[key], expected, oracle.no_box["tcam"])


def test_drawn_boxes_at_the_best_threshold_are_the_boxes_the_metric_scored(oracle):
    """predict_boxes' edges, taken back to the 224 grid, score the oracle's IoU at the same threshold."""
    best = oracle.expected["aggregate"]["wsolevaluation"]["0.01_v1"]["best_threshold_index"]["50"]
    threshold = oracle.arrays["thresholds_0.01"][best]
    expected = oracle.arrays["iou_0.01_v1"][:, best]
    for n, (cam, boxes, size) in enumerate(zip(oracle.maps, oracle.boxes, oracle.sizes)):
        drawn = predict_boxes(cam, threshold, size)
        if oracle.no_box["wsol"][n]:
            assert len(drawn) == 0 and expected[n] < PLACEHOLDER_MAX_IOU
            continue
        grid = np.rint(drawn * EVAL_SIZE / np.tile(size, 2)) - [0, 0, 1, 1]
        assert box_iou(grid, resize_gt_boxes(boxes, size)).max() == expected[n], oracle.frames[n]["id"]
