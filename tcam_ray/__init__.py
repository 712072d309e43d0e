"""tcam-ray: weakly-supervised video object localization with TCAM on Ray."""

__version__ = "0.1.0"
