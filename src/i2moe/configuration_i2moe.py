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

from .experts_i2moe import PERTURBATIONS
from .fusion_i2moe import FUSION_BACKBONES
from .towers_efficientnet_lite import I2MoEEfficientNetLiteConfig


POOLINGS = ("cls", "mean", "pooler")
METHODS = ("vanilla", "i2moe", "dmil")
I2M2_MODES = ("product", "intra", "inter")
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
BUILTIN_TOWER_CONFIGS = {
    cls.model_type: cls for cls in (I2MoEFeaturesConfig, I2MoELeNetConfig, I2MoEEfficientNetLiteConfig)
}


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
        method (`str`): the interaction part; `"vanilla"` is one fusion backbone, `"i2moe"` the
            I2MoE interaction experts (see `docs/i2moe.md`), `"dmil"` the DMIL decomposition (see
            `docs/dmil.md`).
        fusion (`str`): the fusion backbone, a key of `FUSION_BACKBONES`
            (`"concat"`, `"transformer"`, `"lrtf"`).
        fusion_num_layers (`int`): transformer fusion: number of joint self-attention blocks.
        fusion_num_heads (`int`): transformer fusion: attention heads (must divide `hidden_size`).
        fusion_intermediate_size (`int`, *optional*): transformer fusion: MLP width (default 4d).
        fusion_hidden_size (`int`): hidden width of the MLP head of the concat and LRTF backbones.
        lrtf_rank (`int`), lrtf_output_size (`int`): low-rank tensor fusion rank and output width.
        dropout (`float`): dropout in projections and fusion.
        initializer_range (`float`): std of the normal init of the new (non-tower) weights.
        i2moe_lambda_int (`float`): I2MoE: weight of the interaction loss, `loss = task + lambda_int * L_int`.
        i2moe_perturbation (`str`): I2MoE: what replaces a perturbed modality's tokens: `"noise"`
            (fresh N(0, I), the paper's choice), `"zero"`, `"mean"` (batch mean) or `"null"` (the
            learned null tokens used for missing modalities).
        i2moe_margin (`float`): I2MoE: margin of the uniqueness triplet loss.
        i2moe_temperature (`float`): I2MoE: softmax temperature of the reweighting model.
        i2moe_reweight_hidden_size (`int`), i2moe_reweight_num_layers (`int`),
        i2moe_reweight_dropout (`float`): I2MoE: the reweighting MLP (number of linear layers).
        i2moe_expert_loss_weight (`float`): I2MoE: weight of the experts' own task losses (mean over experts).
        i2moe_balance_weight (`float`): I2MoE: weight of `log K - H(mean expert weights)` (load balancing).
        i2moe_reweight_warmup_steps (`int`): I2MoE: training steps with equal expert weights first.
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
    i2moe_lambda_int: float = 0.1
    i2moe_perturbation: str = "noise"
    i2moe_margin: float = 1.0
    i2moe_temperature: float = 1.0
    i2moe_reweight_hidden_size: int = 128
    i2moe_reweight_num_layers: int = 2
    i2moe_reweight_dropout: float = 0.1
    # Weight of each expert's own task loss (mean over experts), added to the mixture's (issue 14).
    i2moe_expert_loss_weight: float = 0.0
    # Weight of the load-balancing term log K - H(batch-mean expert weights) (issue 14).
    i2moe_balance_weight: float = 0.0
    # Training forward passes with equal expert weights before the reweighting model is used (issue 14).
    i2moe_reweight_warmup_steps: int = 0

    # --- I2M2 unimodal heads ---
    # One unimodal classifier per modality combined with the interaction part as a product of
    # experts (I2M2, NeurIPS 2024); see `I2MoEForClassification` and docs/i2m2.md.
    i2m2_heads: bool = False
    # Which experts predict: "product" (unimodal heads x interaction part), "intra" (the product of
    # the unimodal heads alone) or "inter" (the interaction part alone). Every part exists in every
    # mode, so one checkpoint is evaluated in each mode by changing this field.
    i2m2_mode: str = "product"
    # The unimodal heads get their own copy of each modality's tower and projection (the paper's
    # separate unimodal networks) instead of reading the shared modality tokens.
    i2m2_separate_towers: bool = False
    # Separate towers only: tower-config fields that differ from the modality's tower, per modality
    # (e.g. {"image": {"base_channels": 3}} for narrower unimodal LeNets).
    i2m2_tower_overrides: dict | None = None
    # Hidden width of each unimodal head's MLP (default: `fusion_hidden_size`).
    i2m2_head_hidden_size: int | None = None

    # --- DMIL decomposition (method="dmil") ---
    # Width of every latent (M_m, N_m, R, U_m, S) of the decomposition.
    dmil_latent_size: int = 32
    # Weight of each KL-to-N(0, I) term of the variational bottlenecks.
    dmil_kl_weight: float = 0.02
    # Weight of the reconstruction losses (level 1: v_m from [M_m, N_m]; level 2: mu(M_m) from [R, U_m]).
    dmil_reconstruction_weight: float = 0.005
    # Weight of the redundancy alignment sum_m KL(q(R | all) || q(R | M_m)).
    dmil_alignment_weight: float = 0.02
    # Training stage (1: level 1 only; 2: level 2, heads and gate on a frozen level 1; 3: all);
    # it sets the loss composition, and in stage 1 the prediction (see `DMILInteraction`).
    dmil_stage: int = 1
    # Weights of the per-head cross-entropies: component heads in stage 2 and 3, unimodal (M_m) heads in stage 3.
    dmil_stage2_component_weight: float = 0.5
    dmil_stage3_component_weight: float = 0.8
    dmil_stage3_unimodal_weight: float = 0.5
    # Redundancy/uniqueness level on top of level 1. None: True for 2 modalities, False for more (the
    # paper validated only the intra-modality level beyond two); True for M > 2 is an extension.
    dmil_full_decomposition: bool | None = None

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
        if self.method == "i2moe":
            _validate_i2moe(self)

        # --- I2M2 validation ---
        self._validate_i2m2()

        # --- DMIL validation ---
        _require_positive_int("dmil_latent_size", self.dmil_latent_size, "I2MoEConfig")
        for field in ("dmil_kl_weight", "dmil_reconstruction_weight", "dmil_alignment_weight",
                      "dmil_stage2_component_weight", "dmil_stage3_component_weight", "dmil_stage3_unimodal_weight"):
            _require_number(field, getattr(self, field), minimum=0.0)
        if self.dmil_stage not in (1, 2, 3) or isinstance(self.dmil_stage, bool):
            raise ValueError(f"I2MoEConfig: `dmil_stage` must be 1, 2 or 3, got {self.dmil_stage!r}")
        if self.dmil_full_decomposition is None:
            self.dmil_full_decomposition = len(self.modalities) == 2
        if not isinstance(self.dmil_full_decomposition, bool):
            raise TypeError(f"I2MoEConfig: `dmil_full_decomposition` must be a bool or None, got {self.dmil_full_decomposition!r}")
        if self.method == "dmil":
            if len(self.modalities) < 2:
                raise ValueError(f"I2MoEConfig: method='dmil' decomposes at least 2 modalities, got {len(self.modalities)}")
            if self.problem_type not in (None, "single_label_classification"):
                raise ValueError(
                    f"I2MoEConfig: method='dmil' supports single-label classification only, got problem_type={self.problem_type!r}"
                )

        super().__post_init__(**kwargs)
        _require_positive_int("num_labels", self.num_labels, "I2MoEConfig")

    def _validate_i2m2(self) -> None:
        for field in ("i2m2_heads", "i2m2_separate_towers"):
            if not isinstance(getattr(self, field), bool):
                raise TypeError(f"I2MoEConfig: `{field}` must be a bool, got {getattr(self, field)!r}")
        if self.i2m2_mode not in I2M2_MODES:
            raise ValueError(f"I2MoEConfig: `i2m2_mode` must be one of {I2M2_MODES}, got {self.i2m2_mode!r}")
        if self.i2m2_mode != "product" and not self.i2m2_heads:
            raise ValueError(
                f"I2MoEConfig: `i2m2_mode={self.i2m2_mode!r}` selects among the I2M2 experts; set `i2m2_heads=True`"
            )
        if self.i2m2_head_hidden_size is None:
            self.i2m2_head_hidden_size = self.fusion_hidden_size
        _require_positive_int("i2m2_head_hidden_size", self.i2m2_head_hidden_size, "I2MoEConfig")
        overrides = self.i2m2_tower_overrides or {}
        if not isinstance(overrides, dict):
            raise TypeError(f"I2MoEConfig: `i2m2_tower_overrides` must be a dict, got {type(overrides).__name__}")
        if overrides and not (self.i2m2_heads and self.i2m2_separate_towers):
            raise ValueError(
                "I2MoEConfig: `i2m2_tower_overrides` configures the unimodal heads' own towers; it needs "
                "`i2m2_heads=True` and `i2m2_separate_towers=True`"
            )
        by_name = {modality.name: modality for modality in self.modalities}
        for name, fields in overrides.items():
            if name not in by_name:
                raise ValueError(
                    f"I2MoEConfig: `i2m2_tower_overrides` names modality {name!r}; the modalities are {list(by_name)}"
                )
            unknown = sorted(field for field in fields if not hasattr(by_name[name].tower, field))
            if unknown:
                raise ValueError(
                    f"I2MoEConfig: `i2m2_tower_overrides[{name!r}]` sets {unknown}, which "
                    f"{type(by_name[name].tower).__name__} does not have"
                )

    def i2m2_tower_config(self, name: str) -> PreTrainedConfig:
        """The config of modality `name`'s unimodal tower when `i2m2_separate_towers` is set: the
        modality's tower config with `i2m2_tower_overrides[name]` applied."""
        tower = next(modality.tower for modality in self.modalities if modality.name == name)
        tower = copy.deepcopy(tower)
        for field, value in (self.i2m2_tower_overrides or {}).get(name, {}).items():
            setattr(tower, field, value)
        return tower

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


def _validate_i2moe(config: "I2MoEConfig") -> None:
    if config.num_modalities < 2:
        raise ValueError(
            f"I2MoEConfig: method='i2moe' needs at least 2 modalities (uniqueness and synergy are defined "
            f"between modalities), got {config.num_modalities}"
        )
    if config.i2moe_perturbation not in PERTURBATIONS:
        raise ValueError(
            f"I2MoEConfig: `i2moe_perturbation` must be one of {PERTURBATIONS}, got {config.i2moe_perturbation!r}"
        )
    for field in ("i2moe_lambda_int", "i2moe_margin", "i2moe_expert_loss_weight", "i2moe_balance_weight"):
        _require_number(field, getattr(config, field), minimum=0.0)
    if isinstance(config.i2moe_reweight_warmup_steps, bool) or not isinstance(config.i2moe_reweight_warmup_steps, int) \
            or config.i2moe_reweight_warmup_steps < 0:
        raise ValueError(
            f"I2MoEConfig: `i2moe_reweight_warmup_steps` must be an int >= 0, got {config.i2moe_reweight_warmup_steps!r}"
        )
    _require_number("i2moe_temperature", config.i2moe_temperature, minimum=0.0, inclusive=False)
    for field in ("i2moe_reweight_hidden_size", "i2moe_reweight_num_layers"):
        _require_positive_int(field, getattr(config, field), "I2MoEConfig")
    if not 0.0 <= config.i2moe_reweight_dropout < 1.0:
        raise ValueError(
            f"I2MoEConfig: `i2moe_reweight_dropout` must be in [0, 1), got {config.i2moe_reweight_dropout!r}"
        )


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


def _require_number(field: str, value, minimum: float, inclusive: bool = True) -> None:
    """An `I2MoEConfig` field that must be a real number (not a bool) >= `minimum` (> if not `inclusive`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum or (
            not inclusive and value == minimum):
        raise ValueError(f"I2MoEConfig: `{field}` must be a number {'>=' if inclusive else '>'} {minimum:g}, "
                         f"got {value!r}")


def _require_positive_int(field: str, value, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: `{field}` must be a positive int, got {value!r}")


__all__ = ["I2MoEConfig", "I2MoEFeaturesConfig", "I2MoELeNetConfig", "ModalityConfig"]
