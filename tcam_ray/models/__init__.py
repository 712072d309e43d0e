"""Models: ResNet encoders, the WGAP head, the CAM classifier, the TCAM decoder and weights loading."""

from tcam_ray.models.classifier import CamClassifier, build_classifier
from tcam_ray.models.decoder import UNetDecoder, build_decoder
from tcam_ray.models.heads import WGAPHead
from tcam_ray.models.resnet import ENCODER_ARCHS, PRETRAINED_SOURCES, ResNetEncoder, build_encoder
from tcam_ray.models.tcam import TCAMModel, TCAMOutput, build_tcam_model, foreground_map
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
    "TCAMModel",
    "TCAMOutput",
    "UNetDecoder",
    "WGAPHead",
    "WeightsMismatchError",
    "build_classifier",
    "build_decoder",
    "build_encoder",
    "build_tcam_model",
    "foreground_map",
    "load_encoder_weights",
    "load_weights",
    "read_state_dict",
]
