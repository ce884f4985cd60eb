"""i2vlab: config-driven training and evaluation of image-to-video diffusion models."""

__version__ = "0.1.0"
