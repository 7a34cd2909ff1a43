"""Models that take their normalization as a callable."""

from flnorm.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
