"""Fusion backbones: modality tokens in, logits out.

Every backbone is written for a leading *stack* axis S: it holds S independent copies of its
weights (stacked along dim 0) and maps tokens `(S, N, T, d)` to logits `(S, N, C)` with batched
matmuls. Vanilla fusion is S = 1; I2MoE runs its K interaction experts as one backbone with S = K,
so K experts cost a few batched kernels instead of K sequential passes. Tokens with a leading
axis of 1 are shared by all S copies (broadcast, not copied).

The T tokens are the modalities' tokens in config order (`TokenLayout`); a missing modality has
already been replaced by its learned null tokens, so backbones never see masks.

This file travels with saved models as Hub remote code: it imports only torch and transformers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .registry_i2moe import FUSIONS, INTERACTIONS


def register_fusion(name: str):
    """Class decorator adding a backbone to `FUSIONS` (so the config accepts `fusion=name` and the
    parametrised tests pick it up).

    A backbone's constructor is `(config, layout, num_stacks)` and its forward maps tokens
    `(S or 1, N, T, d)` to logits `(S, N, num_labels)`.
    """
    return FUSIONS.register(name)


@dataclass(frozen=True)
class TokenLayout:
    """Which of the T fusion tokens belong to which modality (contiguous, in config order)."""

    names: tuple[str, ...]
    num_tokens: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    @property
    def num_modalities(self) -> int:
        return len(self.names)

    def token_slice(self, index: int) -> slice:
        start = sum(self.num_tokens[:index])
        return slice(start, start + self.num_tokens[index])


class ModalityMean(nn.Module):
    """Mean over each modality's tokens: `(..., T, d) -> (..., M, d)`."""

    def __init__(self, layout: TokenLayout):
        super().__init__()
        self.num_tokens = list(layout.num_tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if len(set(self.num_tokens)) == 1:  # the common case: one kernel
            return tokens.unflatten(-2, (len(self.num_tokens), -1)).mean(-2)
        return torch.stack([chunk.mean(-2) for chunk in tokens.split(self.num_tokens, dim=-2)], dim=-2)


class StackedLinear(nn.Module):
    """S independent linear layers run as one `baddbmm`: `(S or 1, ..., in) -> (S, ..., out)`."""

    def __init__(self, num_stacks: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_stacks, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_stacks, 1, out_features))
        self.init_parameters(std=0.02)  # usable standalone; the model re-initialises with its config

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        num_stacks, in_features, out_features = self.weight.shape
        batch_shape = inputs.shape[1:-1]
        flat = inputs.reshape(inputs.shape[0], -1, in_features).expand(num_stacks, -1, -1)
        return torch.baddbmm(self.bias, flat, self.weight).view(num_stacks, *batch_shape, out_features)

    def init_parameters(self, std: float) -> None:
        init.normal_(self.weight, mean=0.0, std=std)
        init.zeros_(self.bias)


class StackedMLPHead(nn.Module):
    """`Linear -> ReLU -> Dropout -> Linear` per stack: the prediction head of concat and LRTF (and
    DMIL's decoders and gate, which pass their own `StackedLinear` subclass as `linear`)."""

    def __init__(self, num_stacks: int, in_features: int, hidden_size: int, num_labels: int, dropout: float,
                 linear: type[StackedLinear] = StackedLinear):
        super().__init__()
        self.fc1 = linear(num_stacks, in_features, hidden_size)
        self.fc2 = linear(num_stacks, hidden_size, num_labels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(F.relu(self.fc1(features))))


@FUSIONS.register("concat")
class ConcatFusion(nn.Module):
    """Late fusion: each modality's tokens averaged, the M vectors concatenated, an MLP head."""

    def __init__(self, config, layout: TokenLayout, num_stacks: int = 1):
        super().__init__()
        self.modality_mean = ModalityMean(layout)
        self.head = StackedMLPHead(
            num_stacks, layout.num_modalities * config.hidden_size, config.fusion_hidden_size,
            config.num_labels, config.dropout,
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.modality_mean(tokens).flatten(-2))


@FUSIONS.register("lrtf")
class LowRankTensorFusion(nn.Module):
    """Low-rank multimodal fusion (Liu et al., 2018), then an MLP head.

    Each modality's mean token z_m, extended by a constant 1, is projected by R rank-1 factors
    W_m^r; the fused vector is `sum_r w_r * prod_m (z_m W_m^r) + b`. All factors are registered
    parameters (the reference code's unregistered factors never trained).
    """

    def __init__(self, config, layout: TokenLayout, num_stacks: int = 1):
        super().__init__()
        self.rank, self.output_size = config.lrtf_rank, config.lrtf_output_size
        self.num_modalities = layout.num_modalities
        self.modality_mean = ModalityMean(layout)
        self.factors = nn.Parameter(
            torch.empty(num_stacks, layout.num_modalities, config.hidden_size + 1, self.rank * self.output_size)
        )
        self.rank_weights = nn.Parameter(torch.empty(num_stacks, 1, 1, self.rank))
        self.fusion_bias = nn.Parameter(torch.empty(num_stacks, 1, self.output_size))
        self.head = StackedMLPHead(
            num_stacks, self.output_size, config.fusion_hidden_size, config.num_labels, config.dropout
        )
        self.init_parameters(config.initializer_range)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        num_stacks, num_modalities = self.factors.shape[:2]
        pooled = F.pad(self.modality_mean(tokens), (0, 1), value=1.0)  # (S|1, N, M, d+1)
        pooled = pooled.expand(num_stacks, -1, -1, -1)
        batch = pooled.shape[1]
        # One batched matmul over (stack, modality): (S*M, N, d+1) @ (S*M, d+1, R*o).
        per_modality = torch.bmm(
            pooled.transpose(1, 2).reshape(num_stacks * num_modalities, batch, -1),
            self.factors.reshape(num_stacks * num_modalities, -1, self.rank * self.output_size),
        )
        product = per_modality.view(num_stacks, num_modalities, batch, self.rank, self.output_size).prod(1)
        fused = torch.matmul(self.rank_weights.to(product.dtype), product).squeeze(2) + self.fusion_bias
        return self.head(fused)

    def init_parameters(self, std: float) -> None:
        # LMF's init: Xavier-normal factors and rank weights, zero bias.
        fan_in, fan_out = self.factors.shape[-2], self.output_size
        init.normal_(self.factors, mean=0.0, std=math.sqrt(2.0 / (fan_in + fan_out)))
        init.normal_(self.rank_weights, mean=0.0, std=math.sqrt(2.0 / (1 + self.rank)))
        init.zeros_(self.fusion_bias)


class StackedTransformerBlock(GradientCheckpointingLayer):
    """Pre-LN self-attention block over all modality tokens, S stacked copies.

    `x = x + Attn(LN(x)); x = x + MLP(LN(x))`: the residual adds the block's *input* (the
    reference added the attention output to itself). LayerNorms carry no affine parameters: each
    feeds straight into a stacked linear layer, which absorbs any scale and shift, and this saves
    two kernels per norm on the stacked path.
    """

    def __init__(self, num_stacks: int, hidden_size: int, num_heads: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = StackedLinear(num_stacks, hidden_size, 3 * hidden_size)
        self.out = StackedLinear(num_stacks, hidden_size, hidden_size)
        self.fc1 = StackedLinear(num_stacks, hidden_size, intermediate_size)
        self.fc2 = StackedLinear(num_stacks, intermediate_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = dropout

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        num_stacks = self.qkv.weight.shape[0]
        _, batch, length, width = hidden_states.shape
        qkv = self.qkv(F.layer_norm(hidden_states, (width,)))  # (S, N, T, 3d)
        query, key, value = (
            qkv.view(num_stacks * batch, length, 3, self.num_heads, width // self.num_heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.attention_dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(num_stacks, batch, length, width)
        hidden_states = hidden_states + self.dropout(self.out(attended))
        mlp = self.fc2(self.dropout(F.gelu(self.fc1(F.layer_norm(hidden_states, (width,))))))
        return hidden_states + self.dropout(mlp)


@FUSIONS.register("transformer")
class TransformerFusion(nn.Module):
    """Joint self-attention over all modality tokens (SDPA), mean-pooled, then a linear head.

    A learned embedding per token position tells the blocks which modality (and which of its
    tokens) each token is.
    """

    def __init__(self, config, layout: TokenLayout, num_stacks: int = 1):
        super().__init__()
        self.position_embeddings = nn.Parameter(torch.empty(num_stacks, 1, layout.total_tokens, config.hidden_size))
        self.layers = nn.ModuleList(
            StackedTransformerBlock(
                num_stacks, config.hidden_size, config.fusion_num_heads, config.fusion_intermediate_size,
                config.dropout,
            )
            for _ in range(config.fusion_num_layers)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = StackedLinear(num_stacks, config.hidden_size, config.num_labels)
        self.init_parameters(config.initializer_range)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden_states = tokens + self.position_embeddings
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        pooled = F.layer_norm(hidden_states.mean(2), (hidden_states.shape[-1],))
        return self.classifier(self.dropout(pooled))

    def init_parameters(self, std: float) -> None:
        init.normal_(self.position_embeddings, mean=0.0, std=std)


def build_fusion(config, layout: TokenLayout, num_stacks: int = 1) -> nn.Module:
    """The backbone named by `config.fusion`, with `num_stacks` independent weight copies.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, TokenLayout, build_fusion
    >>> config = I2MoEConfig(modalities=[{"name": "a", "tower": I2MoEFeaturesConfig()},
    ...                                  {"name": "b", "tower": I2MoEFeaturesConfig()}],
    ...                      hidden_size=32, fusion="transformer", num_labels=5)
    >>> experts = build_fusion(config, TokenLayout(("a", "b"), (1, 1)), num_stacks=4)
    >>> experts(torch.randn(1, 8, 2, 32)).shape  # 4 stacked copies share one input batch
    torch.Size([4, 8, 5])
    ```
    """
    return FUSIONS.get(config.fusion)(config, layout, num_stacks)


@dataclass
class InteractionOutput(ModelOutput):
    r"""
    What every interaction part returns (and, with the same names, the model's `I2MoEOutput`).

    Args:
        logits (`(batch, num_labels)`): the part's prediction.
        component_logits (`(batch, K, num_labels)`, *optional*): the prediction of each interaction
            component, in the order of the part's `component_names`: `uniqueness_<modality>` per
            modality, then `redundancy`, then `synergy` (I2MoE's experts, DMIL's component heads).
        component_weights (`(batch, K)`, *optional*): each row's weights of the components (rows sum
            to 1; I2MoE's reweighting model, DMIL's gate); `logits = sum_k w_k component_logits_k`.
        unimodal_logits (`(batch, M, num_labels)`, *optional*): per-modality heads (DMIL level 1; the
            I2M2 heads, which take this field, on top of any part).
        interaction_loss (`()`, *optional*): the auxiliary loss the part adds to the task loss, with
            its weights applied (I2MoE: `lambda_int * L_int`; DMIL: the stage's weighted terms).
        loss_terms (`dict[str, ()]`, *optional*): every term unweighted, by name (for logging).
    """

    logits: torch.Tensor | None = None
    component_logits: torch.Tensor | None = None
    component_weights: torch.Tensor | None = None
    unimodal_logits: torch.Tensor | None = None
    interaction_loss: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


def interaction_component_names(modality_names) -> list[str]:
    """The one component vocabulary and order of I2MoE and DMIL: `uniqueness_<modality>` per
    modality (in config order), then `redundancy`, then `synergy`."""
    return [f"uniqueness_{name}" for name in modality_names] + ["redundancy", "synergy"]


@INTERACTIONS.register("vanilla")
class VanillaFusion(nn.Module):
    """The baseline interaction part: one fusion backbone on the modality tokens."""

    def __init__(self, config, layout: TokenLayout):
        super().__init__()
        self.component_names: list[str] = []  # no interaction components
        self.backbone = build_fusion(config, layout, num_stacks=1)

    def forward(self, tokens: torch.Tensor, present: torch.Tensor, null_tokens: torch.Tensor,
                labels: torch.Tensor | None = None, noise=None) -> InteractionOutput:
        return InteractionOutput(logits=self.backbone(tokens[None])[0])


__all__ = [
    "InteractionOutput", "TokenLayout", "VanillaFusion", "build_fusion", "interaction_component_names", "register_fusion",
]
