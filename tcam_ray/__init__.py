"""tcam-ray: weakly-supervised video object localization with TCAM on Ray.

One import, then one call per job (tcam_ray/api.py has the whole story):

    import tcam_ray
    cfg = tcam_ray.load_config("demo", {"dataset.root": "data/demo"})
    cam = tcam_ray.train(cfg, "cam")
    store = tcam_ray.fill_cam_store(cfg, cam.checkpoint)
    tcam = tcam_ray.train(cfg, "tcam", cams=store)
    boxes = tcam_ray.Localizer(tcam.checkpoint).localize_video("clip.mp4")

`import tcam_ray` loads neither torch nor Ray: each name is imported on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_config": "api", "fill_cam_store": "api", "evaluate": "api", "load_model": "api",
    "TrainedRun": "api", "CamStoreSummary": "api", "Evaluation": "api", "LoadedModel": "api",
    "Localizer": "api", "Localization": "api", "VideoLocalization": "api",
    "evaluate_maps": "evaluation",
}
__all__ = sorted([*_API, "train"])


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    if name == "train":  # the subpackage, callable as api.train (see tcam_ray/train/__init__.py)
        return importlib.import_module(".train", __name__)
    raise AttributeError(f"module 'tcam_ray' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
