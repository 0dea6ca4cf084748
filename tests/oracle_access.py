"""The one place where the oracle tests reach model internals (towers, projections, null tokens,
the I2M2 heads). The oracles read weights through these functions only, so a refactor that
renames the model's attributes changes this file and nothing else."""

from __future__ import annotations

import torch
from torch import nn


def tower(model, name: str) -> nn.Module:
    """The modality's tower (a `PreTrainedModel`)."""
    return model.encoders[name].tower


def _modality_projection(model, name: str) -> nn.Module:
    return model.encoders[name]


def projection(model, name: str) -> nn.Linear:
    """The linear map from the tower's width to the shared width d."""
    return _modality_projection(model, name).projection


def layer_norm(model, name: str) -> nn.LayerNorm:
    """The LayerNorm applied to the modality's tokens after projection (and resampling)."""
    return _modality_projection(model, name).layer_norm


def resampler(model, name: str) -> nn.Module | None:
    """The P-token resampler (`queries` (P, d), `key_value` and `out` linears), or None when P = 1."""
    return _modality_projection(model, name).resampler


def null_tokens(model, name: str) -> torch.Tensor:
    """The modality's learned null tokens `(P, d)`."""
    return model.encoders[name].null_tokens


def i2m2_heads(model) -> nn.Module:
    """The stacked I2M2 unimodal heads (`fc1`, `fc2` stacked linears, one stack per modality)."""
    return model.i2m2_heads.classifier
