"""Training: the shared runner and each stage's, their contexts (Ray Train or in-process),
checkpoints, the worker entry point (loop) and the driver (trainer).

`tcam_ray.train(cfg, stage)` trains (tcam_ray/api.py: train): Python binds `tcam_ray.train` to this
package once any of its modules is imported, so the package itself is what the API call goes through.
"""
from __future__ import annotations

import sys
import types


class _TrainPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _TrainPackage
