"""I2MoE model configuration: named modalities with their towers, and the fusion part on top.

This file travels with saved models as Hub remote code: it imports nothing of the package beyond
its sibling files (no datasets, plotting or training helpers).
"""

from __future__ import annotations

import copy
import keyword
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from .fusion_i2moe import FUSION_BACKBONES


POOLINGS = ("cls", "mean", "pooler")
METHODS = ("vanilla",)
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


class I2MoEFeaturesConfig(PreTrainedConfig):
    r"""
    Configuration of the built-in tower for float feature vectors (tabular columns, precomputed embeddings).

    The tower is an MLP applied to the last axis, so it takes `(batch, input_size)` (one vector) or
    `(batch, length, input_size)` (a sequence of vectors, e.g. precomputed token embeddings).

    Args:
        input_size (`int`): number of features per vector.
        hidden_size (`int`): width of the tower's output.
        num_hidden_layers (`int`): number of `Linear -> activation` blocks (at least 1).
        hidden_dropout_prob (`float`): dropout after every block.

    Example:

    ```python
    >>> from i2moe import I2MoEFeaturesConfig
    >>> I2MoEFeaturesConfig(input_size=12, hidden_size=64).hidden_size
    64
    ```
    """

    model_type = "i2moe_features"
    input_size: int = 16
    hidden_size: int = 128
    num_hidden_layers: int = 2
    hidden_dropout_prob: float = 0.1
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        for field in ("input_size", "hidden_size", "num_hidden_layers"):
            _require_positive_int(field, getattr(self, field), "I2MoEFeaturesConfig")
        super().__post_init__(**kwargs)


class I2MoELeNetConfig(PreTrainedConfig):
    r"""
    Configuration of the built-in LeNet-style CNN tower for small images and spectrograms (AV-MNIST).

    One 5x5 convolution with `base_channels` output channels, then `num_additional_layers` 3x3
    convolutions that each double the channels; every convolution is bias-free and followed by
    BatchNorm, ReLU and 2x2 max-pooling (the LeNet encoders of MultiBench and the I2M2 paper:
    image `base_channels=6, num_additional_layers=3`, audio `num_additional_layers=5`).

    Example:

    ```python
    >>> from i2moe import I2MoELeNetConfig
    >>> I2MoELeNetConfig(base_channels=6, num_additional_layers=3).hidden_size
    48
    ```
    """

    model_type = "i2moe_lenet"
    num_channels: int = 1
    base_channels: int = 6
    num_additional_layers: int = 3

    def __post_init__(self, **kwargs):
        for field in ("num_channels", "base_channels"):
            _require_positive_int(field, getattr(self, field), "I2MoELeNetConfig")
        if not isinstance(self.num_additional_layers, int) or self.num_additional_layers < 0:
            raise ValueError(
                f"I2MoELeNetConfig: `num_additional_layers` must be an int >= 0, got {self.num_additional_layers!r}"
            )
        super().__post_init__(**kwargs)

    @property
    def hidden_size(self) -> int:
        """Channels of the last convolution: the width of the tower's output."""
        return self.base_channels * 2**self.num_additional_layers


# Tower configs this file defines itself: they must resolve even where the package is not installed
# (remote code), so they are looked up here before `AutoConfig`.
BUILTIN_TOWER_CONFIGS = {cls.model_type: cls for cls in (I2MoEFeaturesConfig, I2MoELeNetConfig)}


def tower_config_from_dict(config_dict: dict) -> PreTrainedConfig:
    """Rebuild a tower config from its serialised form (a dict holding `model_type`)."""
    config_dict = dict(config_dict)
    config_dict.pop("transformers_version", None)
    model_type = config_dict.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"A modality's `tower` dict needs a `model_type` key, got keys {sorted(config_dict)}")
    if model_type in BUILTIN_TOWER_CONFIGS:
        return BUILTIN_TOWER_CONFIGS[model_type](**config_dict)
    try:
        return AutoConfig.for_model(model_type, **config_dict)
    except ValueError as error:
        raise ValueError(f"Unknown tower `model_type` {model_type!r}: {error}") from error


def tower_hidden_size(config: PreTrainedConfig) -> int:
    """Width of a tower's output features (transformers CNNs publish `hidden_sizes` instead)."""
    if getattr(config, "hidden_size", None):
        return config.hidden_size
    if getattr(config, "hidden_sizes", None):
        return config.hidden_sizes[-1]
    raise ValueError(
        f"Cannot tell the output width of tower config {type(config).__name__}: it has neither "
        "`hidden_size` nor `hidden_sizes`."
    )


@dataclass
class ModalityConfig:
    r"""
    One modality: its name, its tower and how the tower's output becomes modality tokens.

    Args:
        name (`str`): identifier of the modality; the model's inputs for it are named
            `{name}_{tower_input}` (e.g. `image_pixel_values`, `text_input_ids`).
        tower (`PreTrainedConfig` or `dict`): config of the tower; any config `AutoModel` builds,
            or a built-in one (`I2MoEFeaturesConfig`, `I2MoELeNetConfig`).
        pooling (`str`): how the tower's token sequence becomes one vector when `num_tokens == 1`:
            `"cls"` (first token), `"mean"` (mean over non-padding tokens and spatial positions) or
            `"pooler"` (the tower's `pooler_output`).
        num_tokens (`int`): tokens this modality contributes to fusion. 1 gives one pooled vector;
            P > 1 gives P tokens, resampled from the tower's sequence by P learned queries.
        freeze (`bool`): keep the tower's weights fixed (no gradient, BatchNorm/dropout in eval mode).
        tower_name_or_path (`str`, *optional*): where the tower's pretrained weights came from
            (recorded for model cards; the weights themselves are saved with the model).
    """

    name: str
    tower: Any
    pooling: str = "mean"
    num_tokens: int = 1
    freeze: bool = False
    tower_name_or_path: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier() or keyword.iskeyword(self.name):
            raise ValueError(f"modality `name` must be a Python identifier, got {self.name!r}")
        if isinstance(self.tower, dict):
            self.tower = tower_config_from_dict(self.tower)
        if not isinstance(self.tower, PreTrainedConfig):
            raise TypeError(
                f"modality {self.name!r}: `tower` must be a PreTrainedConfig or a dict with `model_type`, "
                f"got {type(self.tower).__name__}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"modality {self.name!r}: `pooling` must be one of {POOLINGS}, got {self.pooling!r}")
        _require_positive_int(f"modalities[{self.name!r}].num_tokens", self.num_tokens, "I2MoEConfig")
        if not isinstance(self.freeze, bool):
            raise TypeError(f"modality {self.name!r}: `freeze` must be a bool, got {self.freeze!r}")

    def to_dict(self) -> dict:
        tower = self.tower.to_dict()
        tower.pop("transformers_version", None)
        return {
            "name": self.name,
            "tower": tower,
            "pooling": self.pooling,
            "num_tokens": self.num_tokens,
            "freeze": self.freeze,
            "tower_name_or_path": self.tower_name_or_path,
        }


class I2MoEConfig(PreTrainedConfig):
    r"""
    Configuration of [`I2MoEForClassification`]: an ordered set of named modalities, each with a
    tower, projected to a common width `hidden_size`, and a fusion backbone that maps all modality
    tokens to `num_labels` outputs.

    Args:
        modalities (`list[ModalityConfig | dict]`): the modalities, in order. The order fixes the
            columns of `modality_mask` and the order of the interaction experts.
        hidden_size (`int`): the common projection width d of all modality tokens.
        method (`str`): the interaction part; `"vanilla"` is one fusion backbone.
        fusion (`str`): the fusion backbone, a key of `FUSION_BACKBONES`
            (`"concat"`, `"transformer"`, `"lrtf"`).
        fusion_num_layers (`int`): transformer fusion: number of joint self-attention blocks.
        fusion_num_heads (`int`): transformer fusion: attention heads (must divide `hidden_size`).
        fusion_intermediate_size (`int`, *optional*): transformer fusion: MLP width (default 4d).
        fusion_hidden_size (`int`): hidden width of the MLP head of the concat and LRTF backbones.
        lrtf_rank (`int`), lrtf_output_size (`int`): low-rank tensor fusion rank and output width.
        dropout (`float`): dropout in projections and fusion.
        initializer_range (`float`): std of the normal init of the new (non-tower) weights.
        num_labels, id2label, label2id, problem_type: as in every transformers classifier;
            `problem_type` is `"single_label_classification"`, `"multi_label_classification"`
            or `"regression"` (inferred from `num_labels` and the labels when left unset).

    Example:

    ```python
    >>> from transformers import BertConfig
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig
    >>> config = I2MoEConfig(
    ...     modalities=[
    ...         {"name": "text", "tower": BertConfig(num_hidden_layers=2, hidden_size=64,
    ...                                              num_attention_heads=2, intermediate_size=128)},
    ...         {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=12)},
    ...     ],
    ...     hidden_size=64, fusion="transformer", num_labels=3,
    ... )
    >>> config.modality_names
    ['text', 'tabular']
    ```
    """

    model_type = "i2moe"
    # Diagnostic outputs that Trainer must not gather as predictions (they are scalars).
    keys_to_ignore_at_inference = ["interaction_loss", "loss_terms"]

    modalities: list | None = None
    hidden_size: int = 256
    method: str = "vanilla"
    fusion: str = "concat"
    fusion_num_layers: int = 2
    fusion_num_heads: int = 4
    fusion_intermediate_size: int | None = None
    fusion_hidden_size: int = 256
    lrtf_rank: int = 16
    lrtf_output_size: int = 128
    dropout: float = 0.1
    initializer_range: float = 0.02

    # --- I2MoE interaction experts (method="i2moe") ---

    # --- I2M2 unimodal heads ---

    # --- DMIL decomposition (method="dmil") ---

    # --- Saved format (reliability) ---
    # The layout of saved configs and weights this code reads; bumped on incompatible changes, so a
    # config.json from a newer layout fails with an error instead of loading into the wrong weights.
    i2moe_format_version: int = 1

    def __post_init__(self, **kwargs):
        _check_format_version(self.i2moe_format_version)
        self.modalities = _parse_modalities(self.modalities)
        for field in ("hidden_size", "fusion_num_layers", "fusion_num_heads", "fusion_hidden_size",
                      "lrtf_rank", "lrtf_output_size"):
            _require_positive_int(field, getattr(self, field), "I2MoEConfig")
        if self.fusion_intermediate_size is None:
            self.fusion_intermediate_size = 4 * self.hidden_size
        _require_positive_int("fusion_intermediate_size", self.fusion_intermediate_size, "I2MoEConfig")
        if self.method not in METHODS:
            raise ValueError(f"I2MoEConfig: unknown `method` {self.method!r}; expected one of {METHODS}")
        if self.fusion not in FUSION_BACKBONES:
            raise ValueError(
                f"I2MoEConfig: unknown `fusion` {self.fusion!r}; expected one of {sorted(FUSION_BACKBONES)}"
            )
        if self.fusion == "transformer" and self.hidden_size % self.fusion_num_heads:
            raise ValueError(
                f"I2MoEConfig: `hidden_size` ({self.hidden_size}) must be divisible by `fusion_num_heads` "
                f"({self.fusion_num_heads}) for transformer fusion"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"I2MoEConfig: `dropout` must be in [0, 1), got {self.dropout!r}")
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"I2MoEConfig: `problem_type` must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        # --- I2MoE validation ---

        # --- I2M2 validation ---

        # --- DMIL validation ---

        super().__post_init__(**kwargs)
        _require_positive_int("num_labels", self.num_labels, "I2MoEConfig")

    @property
    def modality_names(self) -> list[str]:
        return [modality.name for modality in self.modalities]

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["modalities"] = [modality.to_dict() for modality in self.modalities]
        return output


def _parse_modalities(modalities) -> list[ModalityConfig]:
    if not modalities:
        raise ValueError(
            "I2MoEConfig: `modalities` must name at least one modality, e.g. "
            "[{'name': 'image', 'tower': ViTConfig()}, {'name': 'text', 'tower': BertConfig()}]"
        )
    if not isinstance(modalities, (list, tuple)):
        raise TypeError(f"I2MoEConfig: `modalities` must be a list, got {type(modalities).__name__}")
    parsed = []
    for index, modality in enumerate(modalities):
        if isinstance(modality, dict):
            unknown = set(modality) - {"name", "tower", "pooling", "num_tokens", "freeze", "tower_name_or_path"}
            if unknown or "name" not in modality or "tower" not in modality:
                raise ValueError(
                    f"I2MoEConfig: modalities[{index}] must have keys `name` and `tower` (optional: pooling, "
                    f"num_tokens, freeze, tower_name_or_path); got {sorted(modality)}"
                )
            modality = ModalityConfig(**modality)
        elif isinstance(modality, ModalityConfig):
            modality = copy.deepcopy(modality)  # configs must not share state
        else:
            raise TypeError(
                f"I2MoEConfig: modalities[{index}] must be a ModalityConfig or a dict, got {type(modality).__name__}"
            )
        parsed.append(modality)
    names = [modality.name for modality in parsed]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"I2MoEConfig: two modalities share the name(s) {duplicates}; names must be unique")
    return parsed


FORMAT_VERSION = 1


def _check_format_version(version) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"I2MoEConfig: `i2moe_format_version` must be a positive int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"I2MoEConfig: `i2moe_format_version` is {version!r}, but this code reads versions 1 to {FORMAT_VERSION}: "
            "the config was written by an incompatible (newer) i2moe. Upgrade i2moe, or load the model with "
            "trust_remote_code=True to use the code saved beside it"
        )


def _require_positive_int(field: str, value, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: `{field}` must be a positive int, got {value!r}")


__all__ = ["I2MoEConfig", "I2MoEFeaturesConfig", "I2MoELeNetConfig", "ModalityConfig"]
