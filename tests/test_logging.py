"""What a training shows and logs while it runs: an epoch line per epoch and split from each epoch's report
(Ray Train's after_report callback, or the in-process loop), rank 0's step progress, and the opt-in
TensorBoard, MLflow and W&B (offline) logs, each read back with its own library; and after a Ray fit
the run folder's checkpoints are the only copies of the model."""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import pytest

from tcam_ray.config import ConfigError
from tcam_ray.train import experiment_log
from tcam_ray.train.progress import CLEAR_LINE, StepMeter, TrainingConsole, epoch_line
from tcam_ray.train.trainer import run_training

from .conftest import tiny_run_config

ALL_LOGGERS = ("logging.tensorboard=true", "logging.mlflow=true", "logging.wandb=true", "logging.progress_interval=0")
STEP_LINE = re.compile(r"epoch (\d+)/(\d+) train: step (\d+)/(\d+)  [\d.]+ steps/s  loss [\d.]+$")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def per_epoch(run_dir: Path, split: str, key: str) -> list[tuple[int, float]]:
    return [(r["epoch"], pytest.approx(r[key])) for r in records(run_dir) if r["split"] == split]


def tensorboard_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def mlflow_runs(tracking_uri: str, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])
    return [(run, client) for run in runs]


def wandb_history(run_folder: Path) -> list[dict]:
    """The history rows of an offline W&B run, read from its run-*.wandb file (a LevelDB-style log of
    protobuf records: 7-byte file header, 32 KiB blocks, records split into FULL/FIRST/MIDDLE/LAST parts)."""
    from wandb.proto import wandb_internal_pb2

    data = next(run_folder.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, position, pending, rows = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a record header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or ".".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def check_logged(run_dir: Path, epochs: list[int]) -> None:
    """Each logger holds every epoch's train loss and val CorLoc, as metrics.jsonl has them, and the config."""
    loss, corloc = per_epoch(run_dir, "train", "loss"), per_epoch(run_dir, "val", "corloc")
    assert [epoch for epoch, _ in loss] == epochs
    assert tensorboard_scalars(run_dir / "tensorboard", "train_loss") == loss
    assert tensorboard_scalars(run_dir / "tensorboard", "val_corloc") == corloc
    [(run, client)] = mlflow_runs((run_dir / "mlruns").as_uri(), run_dir.name)
    for name, expected in (("train_loss", loss), ("val_corloc", corloc)):
        assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)) == expected
    assert run.data.params["train.lr"] == "0.01" and run.info.status == "FINISHED"
    [offline] = (run_dir / "wandb").glob("offline-run-*")
    rows = wandb_history(offline)
    assert [(row["epoch"], row["train_loss"]) for row in rows] == loss
    assert [(row["epoch"], row["val_corloc"]) for row in rows] == corloc


def test_in_process_epochs_steps_and_every_logger_then_a_resume(dataset_root, tmp_path, one_torch_thread):
    lines: list[str] = []
    cfg = tiny_run_config(dataset_root, tmp_path, "train.epochs=2", *ALL_LOGGERS)
    result = run_training(cfg, out=lines.append)
    shown = [line for line in lines if not STEP_LINE.match(line)]
    assert shown == [epoch_line(record, 2) for record in records(result.run_dir)]  # each epoch and split once
    steps = [STEP_LINE.match(line).groups() for line in lines if STEP_LINE.match(line)]
    assert {int(epoch) for epoch, *_ in steps} == {1, 2} and all(total == "2" for _, total, *_ in steps)
    check_logged(result.run_dir, [1, 2])

    lines.clear()  # the same run with one more epoch: resumes after epoch 2, shows and logs epoch 3
    run_training(tiny_run_config(dataset_root, tmp_path, "train.epochs=3", *ALL_LOGGERS), out=lines.append)
    assert [line for line in lines if line.startswith("epoch ") and not STEP_LINE.match(line)] == [
        epoch_line(record, 3) for record in records(result.run_dir)[-2:]]
    assert tensorboard_scalars(result.run_dir / "tensorboard", "train_loss") == per_epoch(result.run_dir, "train",
                                                                                          "loss")
    assert len(mlflow_runs((result.run_dir / "mlruns").as_uri(), "run")) == 2  # one MLflow run per command
    assert len(list((result.run_dir / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.slow
def test_a_ray_fit_reports_through_its_callback_logs_and_keeps_one_checkpoint_system(dataset_root, tmp_path):
    """One worker on the embedded Ray: the epoch lines come from the after_report callback through the
    report channel, the step lines from rank 0, the loggers from the driver; Ray holds no checkpoint."""
    lines: list[str] = []
    cfg = tiny_run_config(dataset_root, tmp_path, "train.epochs=2", "scale.num_workers=1",
                          "scale.cpus_per_worker=0.5", *ALL_LOGGERS)
    result = run_training(cfg, out=lines.append)
    (placement,) = [json.loads(line) for line in (result.run_dir / "workers.jsonl").read_text().splitlines()]
    (worker,) = placement["workers"]
    assert (worker["rank"], worker["ip"], worker["device"]) == (0, "127.0.0.1", "cpu")
    shown = [line for line in lines if not STEP_LINE.match(line)]
    assert shown == [f"workers: 1 on 1 node: rank 0 on 127.0.0.1 (node {worker['node_id'][:8]}, cpu)",
                     *[epoch_line(r, 2) for r in records(result.run_dir)]]
    assert any(STEP_LINE.match(line) for line in lines), lines
    check_logged(result.run_dir, [1, 2])
    models = sorted(path.relative_to(result.run_dir).parts[:2] for path in result.run_dir.rglob("state.pt"))
    assert models == [("checkpoints", "best-corloc"), ("checkpoints", "best-top1"), ("checkpoints", "epoch-0002")]
    assert (result.run_dir / "ray").is_dir() and not list((result.run_dir / "ray").rglob("checkpoint_*"))


def test_a_logger_without_its_package_is_one_line_before_any_run_folder(dataset_root, tmp_path, monkeypatch):
    monkeypatch.setitem(experiment_log.LOGGER_PACKAGES, "wandb", ("wandb_not_installed_here", "wandb"))
    with pytest.raises(ConfigError, match=r"^logging.wandb=true needs the wandb package: pip install wandb "
                                          r"\(or pip install 'tcam-ray\[logging\]'\)$"):
        run_training(tiny_run_config(dataset_root, tmp_path, "logging.wandb=true"))
    assert not (tmp_path / "run").exists()


def test_the_console_redraws_steps_in_a_terminal_and_spaces_them_out_in_a_log(capsys):
    report = {"epoch": 1, "train_loss": 0.5, "train_top1": 50.0, "train_seconds": 2.0, "train_data_seconds": 0.5,
              "val_corloc": 40.0, "val_maxboxacc_v2": 30.0, "val_top1": 60.0}
    step = {"epoch": 1, "step": 3, "steps": 10, "steps_per_s": 2.5, "loss": 0.75}
    terminal = TrainingConsole(2, "val", terminal=True)
    terminal.step(step)
    terminal.step({**step, "step": 4})
    terminal.epoch(report)
    out = capsys.readouterr().out
    assert out.startswith(f"{CLEAR_LINE}epoch 1/2 train: step 3/10  2.50 steps/s  loss 0.750{CLEAR_LINE}epoch 1/2 "
                          "train: step 4/10")
    assert out.endswith(f"{CLEAR_LINE}epoch 1/2 train: loss 0.500  top1 50.0%  (2.0 s, 0.5 s waiting for data)\n"
                        "epoch 1/2   val: CorLoc 40.0%  MaxBoxAccV2 30.0%  top1 60.0%\n")
    lines: list[str] = []
    log = TrainingConsole(2, "val", lines.append, quiet_interval=3600)
    log.step(step)
    log.step({**step, "step": 4})  # within the interval: not shown
    log.step({**step, "epoch": 2})  # epoch 1's report has not come yet: held back
    assert lines == ["epoch 1/2 train: step 3/10  2.50 steps/s  loss 0.750"]


def test_rank_0_sends_its_first_step_then_one_message_per_interval():
    import torch

    sent, now = [], [0.0]
    meter = StepMeter(sent.append, epoch=3, steps=100, interval=1.0, clock=lambda: now[0])
    for step in range(1, 21):
        now[0] = step * 0.25  # 4 steps/s
        meter.update(step, {"loss": torch.tensor(step * 2.0), "samples": torch.tensor(step * 4.0)})
    assert [(m["step"], m["steps_per_s"], m["loss"]) for m in sent] == [
        (1, 4.0, 0.5), (5, 4.0, 0.5), (9, 4.0, 0.5), (13, 4.0, 0.5), (17, 4.0, 0.5)]
    assert all(m["epoch"] == 3 and m["steps"] == 100 for m in sent)
