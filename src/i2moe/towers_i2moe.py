"""Built-in modality towers: an MLP for float feature vectors and a LeNet-style CNN.

Both are ordinary `PreTrainedModel`s returning `BaseModelOutputWithPooling`, registered in
`registry_i2moe.TOWERS` (and with `AutoModel` on package import). This file travels with saved models as Hub remote code.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_i2moe import I2MoEFeaturesConfig, I2MoELeNetConfig
from .registry_i2moe import TOWERS


@TOWERS.register("i2moe_features")
class I2MoEFeaturesModel(PreTrainedModel):
    r"""
    MLP tower for float features: `(batch, input_size)` or `(batch, length, input_size)` in,
    `last_hidden_state` `(batch, length, hidden_size)` (length 1 for a single vector) out.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEFeaturesConfig, I2MoEFeaturesModel
    >>> tower = I2MoEFeaturesModel(I2MoEFeaturesConfig(input_size=12, hidden_size=32))
    >>> tower(features=torch.randn(4, 12)).last_hidden_state.shape
    torch.Size([4, 1, 32])
    ```
    """

    config_class = I2MoEFeaturesConfig
    main_input_name = "features"

    def __init__(self, config: I2MoEFeaturesConfig):
        super().__init__(config)
        widths = [config.input_size] + [config.hidden_size] * config.num_hidden_layers
        blocks = []
        for in_width, out_width in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(in_width, out_width), nn.GELU(), nn.Dropout(config.hidden_dropout_prob)]
        self.mlp = nn.Sequential(*blocks)
        self.layer_norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def forward(self, features: torch.Tensor, return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling:
        _check_float_input("features", features, (2, 3), self.config.input_size)
        sequence = features if features.dim() == 3 else features[:, None]
        hidden = self.layer_norm(self.mlp(sequence.to(self.layer_norm.weight.dtype)))
        return BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=hidden.mean(1))


@TOWERS.register("i2moe_lenet")
class I2MoELeNetModel(PreTrainedModel):
    r"""
    LeNet-style CNN tower (MultiBench / I2M2 AV-MNIST encoders) for `(batch, channels, H, W)`
    images or spectrograms. `last_hidden_state` is the last feature map as a sequence of
    `h*w` spatial tokens `(batch, h*w, hidden_size)`; `pooler_output` their mean.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoELeNetConfig, I2MoELeNetModel
    >>> tower = I2MoELeNetModel(I2MoELeNetConfig(base_channels=6, num_additional_layers=3))
    >>> tower(pixel_values=torch.randn(2, 1, 28, 28)).pooler_output.shape
    torch.Size([2, 48])
    ```
    """

    config_class = I2MoELeNetConfig
    main_input_name = "pixel_values"

    def __init__(self, config: I2MoELeNetConfig):
        super().__init__(config)
        channels = [config.num_channels] + [config.base_channels * 2**i for i in range(config.num_additional_layers + 1)]
        kernel_sizes = [5] + [3] * config.num_additional_layers
        self.blocks = nn.Sequential(
            *(
                nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                )
                for in_channels, out_channels, kernel_size in zip(channels[:-1], channels[1:], kernel_sizes)
            )
        )
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling:
        _check_float_input("pixel_values", pixel_values, (4,), None)
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values: expected {self.config.num_channels} channel(s) at dim 1, got shape "
                f"{tuple(pixel_values.shape)}"
            )
        minimum = 2 ** len(self.blocks)
        if min(pixel_values.shape[-2:]) < minimum:
            raise ValueError(
                f"pixel_values: this tower halves the resolution {len(self.blocks)} times and needs inputs of at "
                f"least {minimum}x{minimum}, got {tuple(pixel_values.shape[-2:])}"
            )
        feature_map = self.blocks(pixel_values.to(self.blocks[0][0].weight.dtype))
        tokens = feature_map.flatten(2).transpose(1, 2)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens.mean(1))


def _check_float_input(name: str, tensor, allowed_dims: tuple[int, ...], last_dim: int | None) -> None:
    """Reject what would otherwise surface as a shape error deep inside the tower. NaN/inf values are
    checked once per step by `I2MoEForClassification` for every tower's float inputs, not again here
    (a full pass and a device sync per modality)."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")
    if tensor.dim() not in allowed_dims:
        raise ValueError(f"{name}: expected {' or '.join(map(str, allowed_dims))} dimensions, got shape {tuple(tensor.shape)}")
    if last_dim is not None and tensor.shape[-1] != last_dim:
        raise ValueError(f"{name}: expected {last_dim} values in the last dimension, got shape {tuple(tensor.shape)}")


__all__ = ["I2MoEFeaturesModel", "I2MoELeNetModel"]
