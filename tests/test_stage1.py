"""Stage 1 end to end on a tiny synthetic dataset: Ray Data pipeline, in-process and Ray Train
training, resume, a crashed worker, the CAM store and evaluation."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from tcam_ray.config import SynthConfig
from tcam_ray.data import DatasetError, index_dataset
from tcam_ray.data.cam_store import CamStore
from tcam_ray.data.pipeline import eval_dataset, train_dataset
from tcam_ray.data.synthetic import generate
from tcam_ray.train.cams import fill_cam_store
from tcam_ray.train.checkpoints import checkpoint_config, read_meta
from tcam_ray.train.evaluate import evaluate_checkpoint
from tcam_ray.train.trainer import check_cpu_budget, run_training

from .conftest import tiny_run_config

SHOTS = 2 * 2 * 2
FRAMES = SHOTS * 8
BATCH_DTYPES = {"image": torch.uint8, "label": torch.int64, "row": torch.int64}


def config(dataset_root, run_root, *overrides):
    return tiny_run_config(dataset_root, run_root, "train.epochs=2", *overrides)


# --------------------------------------------------------------------------- the Ray Data pipeline


def drain(dataset) -> dict[str, np.ndarray]:
    parts = list(dataset.iter_torch_batches(batch_size=16, dtypes=BATCH_DTYPES))
    return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}


def test_one_frame_per_shot_each_pass_and_a_new_draw_each_pass(local_ray, dataset_root, tmp_path):
    cfg = config(dataset_root, tmp_path)
    index = index_dataset(cfg.dataset)
    dataset = train_dataset(index.table, cfg)
    passes = [drain(dataset) for _ in range(3)]
    for batch in passes:
        assert batch["image"].shape == (SHOTS, 32, 32, 3) and batch["image"].dtype == np.uint8
        assert len(set(batch["row"].tolist())) == SHOTS  # rows here are shots, each once
    images = [p["image"][np.argsort(p["row"])] for p in passes]
    assert not all(np.array_equal(images[0], other) for other in images[1:])  # random frames/crops differ


def test_every_frame_sampling_and_eval_rows(local_ray, dataset_root, tmp_path):
    cfg = config(dataset_root, tmp_path, "input.sampling=all")
    index = index_dataset(cfg.dataset)
    assert sorted(drain(train_dataset(index.table, cfg))["row"].tolist()) == list(range(FRAMES))
    val = drain(eval_dataset(index.table, cfg, "val"))
    assert sorted(val["row"].tolist()) == list(range(index.counts()["val"]))
    labels = index.split("val")["label"].to_numpy()
    assert np.array_equal(val["label"][np.argsort(val["row"])], labels)


def test_data_bench_baselines_decode_what_the_pipeline_decodes(local_ray, dataset_root, tmp_path):
    from tcam_ray.bench.data import TrainFrameBatches, TrainFrames
    from tcam_ray.data.frames import split_rows

    # crop = resize and no flip: augmentation draws nothing, so every path must give the same pixels
    cfg = config(dataset_root, tmp_path, "input.sampling=all", "input.resize_size=32", "input.flip=false")
    index = index_dataset(cfg.dataset)
    ours = drain(train_dataset(index.table, cfg))
    ours_images = ours["image"][np.argsort(ours["row"])]
    rows = split_rows(index.table, "train")
    plain = TrainFrames(rows, cfg)
    plain_items = [plain[i] for i in range(len(plain))]
    assert [item["row"] for item in plain_items] == list(range(FRAMES))
    assert np.array_equal(np.stack([item["image"].numpy() for item in plain_items]), ours_images)
    batched = TrainFrameBatches(rows, cfg)
    parts = [batched[i] for i in range(len(batched))]
    batched_rows = torch.cat([p["row"] for p in parts]).numpy()
    batched_images = torch.cat([p["image"] for p in parts]).numpy()[np.argsort(batched_rows)]
    assert sorted(batched_rows.tolist()) == list(range(FRAMES))
    assert np.array_equal(batched_images, ours_images)


def test_corrupt_frame_error_names_the_file(local_ray, dataset_root, tmp_path):
    cfg = config(dataset_root, tmp_path)
    index = index_dataset(cfg.dataset)
    broken = index.split("val")["frame_id"][0].as_py()
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(dataset_root, copy)
    (copy / broken).write_bytes(b"\xff\xd8 truncated jpeg")
    cfg = config(copy, tmp_path)
    with pytest.raises(Exception, match=rf"{copy / broken}: cannot decode frame"):
        drain(eval_dataset(index.table, cfg, "val"))


def test_whole_cpu_workers_that_would_starve_decoding_are_refused(local_ray, dataset_root, tmp_path):
    cfg = config(dataset_root, tmp_path, "scale.num_workers=2", "scale.cpus_per_worker=1")
    with pytest.raises(ValueError, match=r"leaves less than 1.0 of the cluster.s 2 CPUs for decoding frames \(it would hang\)"):
        check_cpu_budget(cfg.scale)


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def trained(dataset_root, tmp_path_factory):
    run_root = tmp_path_factory.mktemp("runs")
    cfg = config(dataset_root, run_root, "eval.cam_methods=[layercam]")
    return cfg, run_training(cfg)


def test_in_process_training_writes_the_run_folder(trained):
    cfg, result = trained
    records = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"]) for r in records] == [(1, "train"), (1, "val"), (2, "train"), (2, "val")]
    assert all(0 <= r["corloc"] <= 100 for r in records if r["split"] == "val")
    assert all(0 <= r["corloc_layercam"] <= 100 for r in records if r["split"] == "val")  # eval.cam_methods
    assert result.metrics["epoch"] == 2 and result.metrics["train_samples"] == SHOTS // 4 * 4
    folders = sorted(p.name for p in (result.run_dir / "checkpoints").iterdir())
    # keep_last=1 dropped epoch 1; LayerCAM's best localiser is kept beside CAM's
    assert folders == ["best-corloc", "best-corloc-layercam", "best-top1", "epoch-0002"]
    assert read_meta(result.last)["epoch"] == 2
    assert read_meta(result.last)["backbone"]["output_stride"] == 8 * cfg.model.layer3_stride * cfg.model.layer4_stride
    assert checkpoint_config(result.last) == cfg
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "frame_index.parquet").exists()


def test_interrupted_run_resumes_from_its_last_checkpoint(dataset_root, tmp_path):
    crashing = config(dataset_root, tmp_path, "train.epochs=3", "train.fail_at_epoch=2")
    with pytest.raises(RuntimeError, match="failing once on purpose"):
        run_training(crashing)
    assert read_meta(tmp_path / "run" / "checkpoints" / "epoch-0001")["epoch"] == 1
    resumed = run_training(crashing)  # same run folder: picks up after epoch 1
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "train"] == [1, 2, 3]
    assert resumed.metrics["epoch"] == 3


def test_batch_larger_than_an_epoch_is_a_clear_error(dataset_root, tmp_path):
    cfg = config(dataset_root, tmp_path, "input.batch_size=64")
    with pytest.raises(ValueError, match=r"8 training samples .*fewer than input.batch_size=64"):
        run_training(cfg)


def test_the_eval_split_is_shared_out_whole_and_the_train_split_evenly(local_ray):
    import ray.data

    from tcam_ray.train.sharding import TrainAndEvalShards

    datasets = {"train": ray.data.range(21, override_num_blocks=7), "val": ray.data.range(17, override_num_blocks=5)}
    shards = TrainAndEvalShards("val").configure(datasets, 2, None, None)
    with ThreadPoolExecutor(2) as workers:  # split iterators start together, as Train workers do
        rows = {name: list(workers.map(lambda shard: [row["id"] for row in shard[name].iter_rows()], shards))
                for name in datasets}
    assert sorted(rows["val"][0] + rows["val"][1]) == list(range(17)) and all(rows["val"])  # each frame once
    assert len(rows["train"][0]) == len(rows["train"][1])  # DDP steps in lockstep


def test_two_workers_validate_a_shard_each_and_agree_with_one_validating_alone(local_ray, dataset_root, tmp_path):
    """Each worker validates its share of the val split (small decode blocks, so both get some) and the
    summed counts give what evaluating the same checkpoint in one process gives."""
    cfg = config(dataset_root, tmp_path, "scale.num_workers=2", "scale.cpus_per_worker=0.5", "train.epochs=1",
                 "input.decode_batch_size=4", "input.sampling=all")
    run_training(cfg)
    [val] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "val"]
    alone = evaluate_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-0001", cfg, "val", tmp_path / "alone")
    [scores] = alone["stages"].values()
    assert scores["frames"] == index_dataset(cfg.dataset).split("val").num_rows == 16
    for key in ("corloc", "maxboxacc_v2", "top1"):
        assert val[key] == pytest.approx(scores[key], abs=1e-9), key


# --------------------------------------------------------------------------- CAM store and evaluation


def test_cam_store_round_trip_and_mismatch_errors(local_ray, trained, tmp_path):
    cfg, result = trained
    summary = fill_cam_store(cfg, result.best_corloc, tmp_path / "cams.parquet")
    assert summary.frames == FRAMES
    index = index_dataset(cfg.dataset)
    store = CamStore.read(summary.path, dataset_fingerprint=index.info.fingerprint,
                          checkpoint=CamStore.read(summary.path).info.checkpoint_id)
    maps = store.maps()
    assert maps.shape == (FRAMES, 56, 56) and maps.min() >= 0 and maps.max() <= 1
    assert np.isclose(maps.reshape(FRAMES, -1).max(axis=1), 1.0).all()  # min-max normalised per frame
    assert sorted(store.table["frame_id"].to_pylist()) == sorted(index.split("train")["frame_id"].to_pylist())
    assert summary.bytes_per_frame < 56 * 56 * 1.2
    with pytest.raises(DatasetError, match=r"CAM store made for dataset 'synthetic' .* not for this dataset"):
        CamStore.read(summary.path, dataset_fingerprint="0" * 64)
    with pytest.raises(DatasetError, match=r"not from checkpoint id ffff"):
        CamStore.read(summary.path, checkpoint="ffff")


def test_evaluate_cli_writes_report_and_pictures(cli, trained, tmp_path):
    cfg, result = trained
    out = cli("evaluate", "--checkpoint", str(result.best_corloc), "--split", "test",
              "--set", f"dataset.root={cfg.dataset.root}", "--set", f"run.root={tmp_path}", "--set", "run.name=ev",
              "--set", "eval.thresholds=20")
    assert out.returncode == 0, out.stderr
    assert "CorLoc" in out.stdout
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["split"] == "test" and report["dataset"] == "synthetic"
    cam = report["stages"]["cam"]
    assert set(cam) >= {"corloc", "maxboxacc_v2", "per_class", "top1"}
    assert set(cam["per_class"]) <= {"red_star", "blue_triangle"}
    assert (tmp_path / "ev" / "cams.png").stat().st_size > 0
    assert (tmp_path / "ev" / "corloc_threshold.png").stat().st_size > 0


def test_evaluating_on_a_dataset_with_other_classes_is_refused(trained, tmp_path):
    cfg, result = trained
    other = tmp_path / "other"
    generate(SynthConfig(classes=3, videos=1, val_videos=1, test_videos=0, shots=1, frames=4, size=48), other)
    from tcam_ray.train.evaluate import evaluate_checkpoint

    other_cfg = config(other, tmp_path)
    with pytest.raises(ValueError, match=r"trained on classes \['red_star', 'blue_triangle'\]"):
        evaluate_checkpoint(result.best_corloc, other_cfg, "val", tmp_path / "ev")
