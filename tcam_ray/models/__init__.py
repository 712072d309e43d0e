"""Models: ResNet encoders, the WGAP head, the CAM classifier and weights loading."""

from tcam_ray.models.classifier import CamClassifier, build_classifier
from tcam_ray.models.heads import WGAPHead
from tcam_ray.models.resnet import ENCODER_ARCHS, PRETRAINED_SOURCES, ResNetEncoder, build_encoder
from tcam_ray.models.weights import (
    PretrainedUnavailableError,
    WeightsMismatchError,
    load_encoder_weights,
    load_weights,
    read_state_dict,
)

__all__ = [
    "ENCODER_ARCHS",
    "PRETRAINED_SOURCES",
    "CamClassifier",
    "PretrainedUnavailableError",
    "ResNetEncoder",
    "WGAPHead",
    "WeightsMismatchError",
    "build_classifier",
    "build_encoder",
    "load_encoder_weights",
    "load_weights",
    "read_state_dict",
]
