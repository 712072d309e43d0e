"""`tcam-ray export`: both stages in every format give the PyTorch model's localization map and logits, carry
their metadata, and bad calls are one line."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from tcam_ray.bench.store import untrained_checkpoint
from tcam_ray.config import load, to_dict
from tcam_ray.export import CamLocalizer, ExportError, export_checkpoint, read_metadata
from tcam_ray.methods.cam import CAM_METHODS, compute_cam_output
from tcam_ray.models import TCAMOutput, build_classifier, build_tcam_model, foreground_map
from tcam_ray.models.resnet import backbone_layout
from tcam_ray.train.checkpoints import write_checkpoint
from tcam_ray.train.evaluate import load_model

CLASSES = ["cat", "dog", "bird"]
SIZE = 32
SETTINGS = ["model.arch=resnet18", f"input.crop_size={SIZE}", "input.resize_size=40", "model.layer4_stride=1",
            "input.mean=[0.5,0.4,0.3]", "input.std=[0.2,0.25,0.3]", "cam.method=layercam",
            "tcam.decoder_widths=[16,16,8,8,8]"]
SUFFIX = {"onnx": "onnx", "exported-program": "pt2", "torchscript": "pt"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    cfg = load(overrides=SETTINGS)
    stage1 = untrained_checkpoint(cfg, CLASSES, root / "stage1")
    torch.manual_seed(1)
    model = build_tcam_model(cfg.model.arch, len(CLASSES), layer4_stride=cfg.model.layer4_stride,
                             decoder_widths=cfg.tcam.decoder_widths, layer3_stride=cfg.model.layer3_stride)
    meta = {"stage": "tcam", "epoch": 0, "classes": CLASSES, "arch": cfg.model.arch}
    stage2 = write_checkpoint(root / "stage2", {"model": model.state_dict()}, meta, to_dict(cfg))
    return {"cam": stage1, "tcam": stage2}


def expected_outputs(checkpoint, images):
    """The map and logits evaluation reads from the checkpoint's PyTorch model (stage 1: the predicted class)."""
    model, meta, trained = load_model(checkpoint, torch.device("cpu"))
    if meta["stage"] == "tcam":
        with torch.no_grad():
            out = model(images)
        return foreground_map(out.seg_logits), out.cls_logits
    out = compute_cam_output(model, images, None, trained.cam.method)
    return out.maps, out.logits


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """(stage, format) -> ExportReport, each exported once for the module's tests."""
    root, made = tmp_path_factory.mktemp("exported"), {}

    def exported(stage, fmt):
        if (stage, fmt) not in made:
            made[stage, fmt] = export_checkpoint(checkpoints[stage], fmt, root / stage / f"model.{SUFFIX[fmt]}")
        return made[stage, fmt]
    return exported


@pytest.mark.parametrize("fmt", ["onnx", "exported-program", "torchscript"])
@pytest.mark.parametrize("stage", ["cam", "tcam"])
def test_every_format_matches_pytorch_and_carries_its_metadata(exports, stage, fmt):
    report = exports(stage, fmt)
    assert set(report.max_abs_diff) == {"localization_map", "class_logits"} and report.check_batch != 2
    assert max(report.max_abs_diff.values()) < 1e-4  # on a batch of another size than the traced one

    metadata = read_metadata(report.out, fmt)
    assert metadata == report.metadata
    assert metadata["stage"] == stage and metadata["classes"] == CLASSES
    assert metadata["cam_method"] == ("layercam" if stage == "cam" else None)
    assert metadata["input"]["shape"] == ["batch", 3, SIZE, SIZE]
    assert metadata["input"]["mean"] == [0.5, 0.4, 0.3] and metadata["input"]["std"] == [0.2, 0.25, 0.3]
    assert metadata["backbone"] == backbone_layout("resnet18", layer3_stride=2, layer4_stride=1)
    assert metadata["backbone"]["output_stride"] == 16
    assert metadata["decoder_widths"] == ([16, 16, 8, 8, 8] if stage == "tcam" else None)
    assert not list(report.out.parent.glob(".*tmp*"))


@pytest.mark.parametrize("stage", ["cam", "tcam"])
def test_onnxruntime_gives_the_map_and_logits_evaluation_reads(checkpoints, exports, stage):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exports(stage, "onnx").out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["localization_map", "class_logits"]
    images = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    got_map, got_logits = (torch.from_numpy(out) for out in session.run(None, {"images": images.numpy()}))
    expected_map, expected_logits = expected_outputs(checkpoints[stage], images)
    assert got_map.shape == (5, SIZE, SIZE) and got_logits.shape == (5, len(CLASSES))
    assert float(expected_map.std()) > 0.05  # a map with something to compare
    assert torch.allclose(got_map, expected_map, atol=1e-4) and torch.allclose(got_logits, expected_logits, atol=1e-4)


def test_the_forward_only_maps_are_those_of_compute_cams_for_every_method():
    torch.manual_seed(0)
    classifier = build_classifier("resnet18", len(CLASSES), layer4_stride=1).eval()
    images = torch.randn(4, 3, SIZE, SIZE)
    maps = {}
    for method in CAM_METHODS:
        reference = compute_cam_output(classifier, images, None, method)
        with torch.no_grad():
            maps[method], logits = CamLocalizer(classifier, method)(images)
        assert torch.allclose(maps[method], reference.maps, atol=1e-5), method
        assert torch.equal(logits, reference.logits)
    assert not torch.allclose(maps["cam"], maps["layercam"]) and not torch.allclose(maps["cam"], maps["gradcampp"])


def test_the_tcam_model_itself_exports_and_traces_with_its_named_outputs():
    torch.manual_seed(0)
    model = build_tcam_model("resnet18", len(CLASSES), decoder_widths=[8, 8, 8, 8, 8]).eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = model(images)
    exported = torch.export.export(model, (images,)).module()(images)
    assert isinstance(exported, TCAMOutput) and torch.allclose(exported.seg_logits, expected.seg_logits, atol=1e-5)
    traced_seg, traced_cls = torch.jit.trace(model, (images,), check_trace=False)(images)
    assert torch.allclose(traced_seg, expected.seg_logits, atol=1e-5)
    assert torch.allclose(traced_cls, expected.cls_logits, atol=1e-5)


@pytest.mark.parametrize("layer3_stride, layer4_stride", [(1, 1), (2, 1)])
def test_the_recorded_strides_rebuild_the_encoder_from_torchvision(layer3_stride, layer4_stride):
    import torchvision

    torch.manual_seed(0)
    classifier = build_classifier("resnet18", 2, layer3_stride=layer3_stride, layer4_stride=layer4_stride).eval()
    layout = backbone_layout("resnet18", layer3_stride=layer3_stride, layer4_stride=layer4_stride)
    resnet = torchvision.models.resnet18().eval()
    resnet.load_state_dict(classifier.encoder.state_dict(), strict=False)  # all but torchvision's own fc
    images = torch.randn(1, 3, SIZE, SIZE)
    assert resnet.layer4(resnet.layer3(resnet.layer2(resnet.layer1(resnet.maxpool(resnet.relu(resnet.bn1(
        resnet.conv1(images)))))))).shape[-1] != classifier.features(images)[-1].shape[-1]  # as it is: other maps
    for name in ("layer3", "layer4"):
        if layout[f"{name}_stride"] == 1:
            block = getattr(resnet, name)[0]
            block.conv1.stride = block.downsample[0].stride = (1, 1)  # layout["torchvision_change"], BasicBlock
    rebuilt = torch.nn.Sequential(*list(resnet.children())[:-2])
    with torch.no_grad():
        features = classifier.features(images)[-1]
        assert torch.allclose(rebuilt(images), features, atol=1e-5)
    assert SIZE // features.shape[-1] == layout["output_stride"]


@pytest.fixture
def export_cli(monkeypatch, capsys):
    """Runs `tcam-ray export ...` through the console script's entry point in this process."""
    from tcam_ray.cli import app

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["tcam-ray", "export", *args])
        with pytest.raises(SystemExit) as stopped:
            app.main()
        return stopped.value.code, *capsys.readouterr()
    return run


def test_the_verb_writes_the_file_and_prints_the_check(checkpoints, tmp_path, export_cli):
    out = tmp_path / "model.pt"
    code, stdout, stderr = export_cli(str(checkpoints["cam"]), "--format", "torchscript", "--out", str(out))
    assert code == 0, stderr
    assert out.exists() and read_metadata(out, "torchscript")["cam_method"] == "layercam"
    assert f"wrote {out} (torchscript, stage cam, layercam map; input (N, 3, {SIZE}, {SIZE})" in stdout
    diffs = stdout.split("max abs diff: ")[1].splitlines()[0]
    assert [float(part.split()[-1]) for part in diffs.split(", ")] == [0.0, 0.0]  # same torch ops, same numbers


@pytest.mark.parametrize("args, message", [
    (lambda ckpt, out: [ckpt, "--format", "tflite", "--out", out],
     "error: unknown export format 'tflite'; valid: onnx, exported-program, torchscript"),
    (lambda ckpt, out: [ckpt + "-missing", "--format", "onnx", "--out", out], "-missing: checkpoint folder not found"),
    (lambda ckpt, out: [ckpt, "--format", "onnx", "--out", out, "--cam-method", "gradcam"],
     "error: cam.method 'gradcam' cannot be exported; exportable: cam, gradcampp, layercam"),
])
def test_a_bad_format_checkpoint_or_cam_method_is_one_line(checkpoints, tmp_path, export_cli, args, message):
    code, _, stderr = export_cli(*args(str(checkpoints["cam"]), str(tmp_path / "model.onnx")))
    assert code == 2
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert not list(tmp_path.iterdir())


def test_onnx_without_its_packages_says_what_to_install(checkpoints, tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "onnxscript"
                        else find_spec(name, *args))
    with pytest.raises(ExportError, match=r"--format onnx needs onnxscript: pip install 'tcam-ray\[export\]'"):
        export_checkpoint(checkpoints["cam"], "onnx", tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


def test_a_file_that_does_not_match_pytorch_is_an_error_and_removed(checkpoints, tmp_path, monkeypatch):
    import tcam_ray.export

    monkeypatch.setattr(tcam_ray.export, "compare", lambda *args: {"localization_map": 0.25, "class_logits": 0.0})
    with pytest.raises(ExportError, match=r"model.pt: the torchscript model's outputs differ from PyTorch's on random "
                                          r"input \(localization_map 0.25, class_logits 0; over 0.001\)"):
        export_checkpoint(checkpoints["cam"], "torchscript", tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())


def test_an_onnx_file_without_tcam_ray_metadata_is_named(tmp_path):
    import onnx

    path = tmp_path / "other.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "other",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ExportError, match=f"{path}: no tcam-ray metadata"):
        read_metadata(path, "onnx")
