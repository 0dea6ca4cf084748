"""One modality's encoder: tower -> pooling or resampling -> projection -> layer norm, with the
modality's null tokens for the rows where it is missing, and the tower's freezing.

`I2MoEForClassification` holds one `ModalityEncoder` per modality in a `ModuleDict` (and, for
I2M2's separate unimodal networks, a second `ModuleDict` of the same class), in the spirit of
open_clip's `HFTextEncoder` and torchmultimodal's `LateFusion` encoders.

This file travels with saved models as Hub remote code: it imports only torch, transformers and its
sibling files.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers import initialization as init

from .checks_i2moe import check_cached_features, check_tower_inputs
from .configuration_i2moe import ModalityConfig, tower_hidden_size
from .registry_i2moe import POOLERS, TOWERS
from .towers_efficientnet_lite import I2MoEEfficientNetLiteModel  # noqa: F401  (registers the built-in towers,
from .towers_i2moe import I2MoEFeaturesModel  # noqa: F401               and saves their files as remote code)


# Tower `forward` arguments the model routes from `{modality}_{argument}` inputs.
TOWER_INPUT_ARGUMENTS = (
    "input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask",
    "input_values", "input_features", "features",
)
# Inputs that replace the tower: its pooled output `(B, h)` (one-token modalities) or its output
# sequence `(B, L, h)` with a padding mask `(B, L)` (resampled modalities), computed once with
# `ModalityEncoder.tower_features`, e.g. by `i2moe.caching` for frozen towers.
CACHED_INPUT_ARGUMENTS = ("tower_features", "tower_features_mask")


@POOLERS.register("cls")
def cls_pooling(sequence: torch.Tensor, mask: torch.Tensor | None, pooler_output) -> torch.Tensor:
    return sequence[:, 0]


@POOLERS.register("mean")
def mean_pooling(sequence: torch.Tensor, mask: torch.Tensor | None, pooler_output) -> torch.Tensor:
    if mask is None:
        return sequence.mean(1)
    weights = mask.to(sequence.dtype)[..., None]
    return (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@POOLERS.register("max")
def max_pooling(sequence: torch.Tensor, mask: torch.Tensor | None, pooler_output) -> torch.Tensor:
    if mask is None:
        return sequence.amax(1)
    return sequence.masked_fill(~mask.bool()[..., None], torch.finfo(sequence.dtype).min).amax(1)


@POOLERS.register("pooler")
def pooler_pooling(sequence: torch.Tensor, mask: torch.Tensor | None, pooler_output) -> torch.Tensor:
    if pooler_output is None:
        raise ValueError("pooling='pooler' but this tower returns no `pooler_output`; use 'cls' or 'mean'")
    return pooler_output.flatten(1)


class TokenResampler(nn.Module):
    """P learned queries attend over a tower's token sequence: `(B, L, d) -> (B, P, d)`."""

    def __init__(self, hidden_size: int, num_tokens: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads if hidden_size % num_heads == 0 else 1
        self.queries = nn.Parameter(torch.empty(num_tokens, hidden_size))
        self.key_value = nn.Linear(hidden_size, 2 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.init_parameters(std=0.02)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = tokens.shape
        head_width = width // self.num_heads
        key, value = self.key_value(tokens).view(batch, length, 2, self.num_heads, head_width).permute(2, 0, 3, 1, 4)
        query = self.queries.to(key.dtype).view(1, -1, self.num_heads, head_width).transpose(1, 2).expand(batch, -1, -1, -1)
        attn_mask = None if mask is None else mask[:, None, None, :].bool()
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask)
        return self.out(attended.transpose(1, 2).reshape(batch, -1, width))

    def init_parameters(self, std: float) -> None:
        init.normal_(self.queries, mean=0.0, std=std)


def build_tower(tower_config) -> PreTrainedModel:
    """A built-in tower (registered in `TOWERS` by `model_type`) or any `AutoModel`, randomly initialised."""
    if tower_config.model_type in TOWERS:
        return TOWERS.get(tower_config.model_type)(tower_config)
    return AutoModel.from_config(tower_config)


class ModalityEncoder(nn.Module):
    r"""
    One modality's inputs -> its tokens `(B, P, d)`: the tower (run once, on the rows where the
    modality is present), pooled to one vector (P = 1) or resampled to P tokens by learned queries,
    projected to the shared width d and layer-normed (so all modalities, null tokens and I2MoE's
    N(0, I) perturbations share one scale); the rows where it is missing get `null_tokens`.

    Args:
        modality: the modality's `ModalityConfig` (tower config, pooling, num_tokens, freeze).
        config: the model's `I2MoEConfig` (hidden_size, dropout, fusion_num_heads).
        tower: a tower to wrap (e.g. pretrained); built from `modality.tower` when `None`.
        learned_null_tokens: learn the missing-modality tokens (the model's encoders). `False`
            fills missing rows with zeros: I2M2's separate unimodal encoders, whose missing rows
            drop out of the product anyway.
    """

    def __init__(self, modality: ModalityConfig, config, tower: PreTrainedModel | None = None,
                 learned_null_tokens: bool = True):
        super().__init__()
        self.name, self.freeze, self.pooling = modality.name, modality.freeze, modality.pooling
        # A given tower is already flagged `_is_hf_initialized` by its own `post_init` or
        # `from_pretrained`, so the model's `post_init` leaves its weights untouched.
        self.tower = tower if tower is not None else build_tower(modality.tower)
        self.projection = nn.Linear(tower_hidden_size(self.tower.config), config.hidden_size)
        self.resampler = (
            TokenResampler(config.hidden_size, modality.num_tokens, config.fusion_num_heads)
            if modality.num_tokens > 1
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.num_tokens = modality.num_tokens
        # Zeros are made at each call rather than kept in a buffer: `from_pretrained` leaves
        # non-persistent buffers uninitialised when it builds the model on the meta device.
        self.null_tokens = nn.Parameter(torch.empty(self.num_tokens, config.hidden_size)) if learned_null_tokens else None
        parameters = inspect.signature(self.tower.forward).parameters
        self.input_arguments = [argument for argument in TOWER_INPUT_ARGUMENTS if argument in parameters]
        self.input_arguments += CACHED_INPUT_ARGUMENTS

    def init_parameters(self, std: float) -> None:
        if self.null_tokens is not None:
            init.normal_(self.null_tokens, mean=0.0, std=1.0)  # the scale of the layer-normed tokens

    def apply_freezing(self) -> None:
        """The tower's share of the model's freezing (`I2MoEForClassification.set_frozen`): a frozen
        tower takes no gradient; an unused pooler neither, since DDP reports a parameter that never
        gets a gradient as an error."""
        if self.freeze:
            self.tower.requires_grad_(False)
        elif self.pooling != "pooler" and isinstance(getattr(self.tower, "pooler", None), nn.Module):
            self.tower.pooler.requires_grad_(False)

    def train(self, mode: bool = True) -> "ModalityEncoder":
        super().train(mode)
        if self.freeze:  # a frozen tower keeps its BatchNorm statistics and skips dropout
            self.tower.eval()
        return self

    def forward(self, inputs: dict[str, torch.Tensor] | None, present: torch.Tensor) -> torch.Tensor:
        """`inputs` (tower inputs without the modality prefix, or `None` when the batch has none) and
        `present` `(B,)` bool -> tokens `(B, P, d)`."""
        null = self.filler_tokens().expand(present.shape[0], -1, -1)
        if inputs is None or not present.any():
            return self._with_idle_parameters(null)
        if present.all():
            # `where` rather than a plain return keeps the null tokens in the graph, so every
            # parameter gets a gradient each step (DDP requires that).
            return torch.where(present[:, None, None], self.encode(inputs), null)
        # Only the present rows go through the tower: no wasted compute, and placeholder inputs
        # never reach BatchNorm statistics.
        indices = present.nonzero().squeeze(1)
        encoded = self.encode({argument: value[indices] for argument, value in inputs.items()})
        return null.index_copy(0, indices, encoded.to(null.dtype))

    def filler_tokens(self) -> torch.Tensor:
        """What the rows without this modality get `(P, d)`: the learned null tokens, or zeros."""
        if self.null_tokens is not None:
            return self.null_tokens
        return self.projection.weight.new_zeros(self.num_tokens, self.projection.out_features)

    def encode(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rows that all hold the modality -> tokens `(B, P, d)`."""
        if "tower_features" in inputs:
            check_cached_features(self.name, inputs, self.projection.in_features, self.resampler is not None)
            features, mask = inputs["tower_features"], inputs.get("tower_features_mask")
        else:
            features, mask = self.tower_features(inputs)
        if self.resampler is not None:
            tokens = self.resampler(self.projection(features), mask)
        else:
            tokens = self.projection(features)[:, None]
        return self.layer_norm(self.dropout(tokens))

    def tower_features(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The tower's output as the encoder reads it: pooled `(B, h)` (and no mask) for one-token
        modalities, the sequence `(B, L, h)` and its padding mask for resampled ones. What
        `tower_features` / `tower_features_mask` inputs must hold in place of the tower inputs."""
        check_tower_inputs(self.name, inputs, self.tower.config)
        trainable = any(parameter.requires_grad for parameter in self.tower.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and trainable):
            try:
                outputs = self.tower(**inputs, return_dict=True)
            except (ValueError, TypeError) as error:  # say which modality's input was wrong
                raise type(error)(f"modality {self.name!r} (inputs {self.name}_*): {error}") from error
        sequence = outputs.last_hidden_state
        if sequence.dim() == 4:  # CNN feature map (B, C, h, w) -> spatial tokens (B, h*w, C)
            sequence = sequence.flatten(2).transpose(1, 2)
        mask = _sequence_mask(self.tower, inputs.get("attention_mask"), sequence.shape[1])
        if self.resampler is not None:
            return sequence, mask
        return POOLERS.get(self.pooling)(sequence, mask, getattr(outputs, "pooler_output", None)), None

    def _with_idle_parameters(self, null: torch.Tensor) -> torch.Tensor:
        """`null`, tied to this encoder's trainable parameters by a zero-weighted term.

        DDP (without `find_unused_parameters=True`) needs a gradient for every trainable parameter
        in every step of every process; an encoder skipped because its modality is missing from
        this process's batch would get none, and the step after fails. The zero-weighted term gives
        those parameters an exact zero gradient (summed with the other processes' real ones) while
        reading one element per parameter, instead of running the tower on placeholder data.
        """
        if not (self.training and torch.is_grad_enabled()):
            return null
        idle = [parameter for parameter in self.parameters() if parameter.requires_grad and parameter is not self.null_tokens]
        if not idle:
            return null
        anchor = torch.cat([parameter.reshape(-1)[:1] for parameter in idle]).sum() * 0.0
        return null + anchor.to(null.dtype)


def _sequence_mask(tower, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The padding mask of the tower's output sequence, when one can be told."""
    if attention_mask is None:
        return None
    if attention_mask.shape[-1] == length:
        return attention_mask
    if hasattr(tower, "_get_feature_vector_attention_mask"):  # audio towers downsample their input
        return tower._get_feature_vector_attention_mask(length, attention_mask)
    return None


__all__ = ["ModalityEncoder", "TokenResampler", "build_tower"]
