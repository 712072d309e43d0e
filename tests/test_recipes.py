"""The paper recipes (configs/ytov1-*.yaml, ytov22-*.yaml) load as users run them and train one epoch
each on a tiny synthetic set: stage 1 (ResNet-50 at output stride 8, Nesterov SGD, CAM and LayerCAM
validated), then the TCAM and CoLo-CAM stage 2 on the best classifier over the best localisers' stores.
Only what a CPU and a tiny set need is overridden: frame size, batch, one epoch, no GPU, no download."""
from __future__ import annotations

import json

import pytest

from tcam_ray.config import SynthConfig, load, resolve_paths
from tcam_ray.data.synthetic import generate
from tcam_ray.train.cams import fill_cam_store
from tcam_ray.train.checkpoints import checkpoint_config, read_meta
from tcam_ray.train.trainer import run_training

from .conftest import REPO

TINY = SynthConfig(classes=2, videos=2, val_videos=1, test_videos=1, shots=2, frames=8, size=48, eval_stride=2)
SMALL = ["model.pretrained=null", "scale.use_gpu=false", "scale.num_workers=0", "input.resize_size=40",
         "input.crop_size=32", "input.batch_size=4", "train.epochs=1", "train.keep_last=1", "cam.batch_size=16"]


def recipe(name: str, root, runs, *overrides):
    """A recipe as shipped, on the tiny set (its own split files), small frames, one epoch, in-process."""
    cfg = load(REPO / "configs" / f"{name}.yaml", overrides=[
        f"dataset.root={root}", f"dataset.metadata={root / 'metadata'}", f"run.root={runs}", f"run.name={name}",
        *SMALL, *overrides])
    return resolve_paths(cfg)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, local_ray):
    """ytov1-cam's one epoch, and the stores of the TCAM (CAM) and CoLo-CAM (LayerCAM) recipes."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate(TINY, root)
    runs = tmp_path_factory.mktemp("runs")
    cfg = recipe("ytov1-cam", root, runs)
    result = run_training(cfg, "cam", out=lambda line: None)
    best = result.run_dir / "checkpoints"
    stores = {name: fill_cam_store(recipe(name, root, runs), best / checkpoint, runs / f"{name}.parquet").path
              for name, checkpoint in (("ytov1-tcam", "best-corloc"), ("ytov1-colocam", "best-corloc-layercam"))}
    return root, runs, result, stores


def test_stage1_recipe_is_the_reference_s(stage1):
    _, _, result, _ = stage1
    trained = checkpoint_config(result.last)
    assert (trained.model.arch, trained.model.layer3_stride, trained.model.layer4_stride) == ("resnet50", 1, 1)
    assert trained.train.nesterov and trained.train.lr == 0.001 and trained.eval.thresholds == 1000
    val = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert val["split"] == "val" and val["protocol"] == "wsol" and len(val["thresholds"]) == 1000
    assert {"corloc", "corloc_layercam"} <= set(val)
    names = {p.name for p in (result.run_dir / "checkpoints").iterdir()}
    assert {"best-corloc", "best-corloc-layercam", "best-top1"} <= names


@pytest.mark.parametrize("name", ["ytov1-tcam", "ytov1-colocam", "ytov22-tcam", "ytov22-colocam"])
def test_stage2_recipes_train_an_epoch(stage1, name, tmp_path):
    root, runs, result, stores = stage1
    store = stores[name.replace("ytov22", "ytov1")]
    cfg = recipe(name, root, tmp_path, f"tcam.cams={store}")
    trained = run_training(cfg, "tcam", out=lambda line: None)
    assert read_meta(trained.last)["stage"] == "tcam"
    train = json.loads((trained.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert train["lr"] == 0.01
    expected_terms = {"self_learning", "crf", "max_size"} | ({"colour_crf"} if "colocam" in name else set())
    assert expected_terms <= set(train)
    saved = checkpoint_config(trained.last)
    assert saved.tcam.classifier == "best-top1" and saved.model == checkpoint_config(result.last).model


def test_ytov22_stage1_recipe_loads_with_its_own_dataset():
    cfg = load(REPO / "configs" / "ytov22-cam.yaml")
    reference = load(REPO / "configs" / "ytov1-cam.yaml")
    assert cfg.dataset.name == "ytov22" and cfg.dataset.metadata is None
    assert (cfg.model, cfg.train, cfg.input, cfg.eval) == (reference.model, reference.train, reference.input,
                                                           reference.eval)
