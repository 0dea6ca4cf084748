"""I2MoE model configuration: named modalities with their towers, the fusion part on top, and the
settings of the interaction method in a sub-config of their own.

This file travels with saved models as Hub remote code: it imports only transformers and its sibling
`registry_i2moe` (names of the registered parts, no torch modules).
"""

from __future__ import annotations

import copy
import dataclasses
import keyword
from dataclasses import dataclass
from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from .registry_i2moe import FUSIONS, INTERACTIONS, POOLERS, Registry


# The layout of saved configs and weights (`I2MoEConfig.i2moe_format_version`). Version 3: the
# label-guided interaction losses are on by default; configs of earlier versions keep the paper's objective.
FORMAT_VERSION = 3
# `i2moe.label_guidance_weight` when unset, for single-label class indices (docs/i2moe.md, "Label-guided
# interaction losses": chosen over 1 on the planted attribution and AV-MNIST LF).
DEFAULT_LABEL_GUIDANCE_WEIGHT = 3.0
# The I2MoE paper's objective (its output-only interaction losses, no label-guided ones): pass as
# `i2moe=I2MOE_PAPER_OBJECTIVE` (or merge it into the `i2moe` settings) to train as the paper does.
I2MOE_PAPER_OBJECTIVE = {"label_guidance_weight": 0.0}
PERTURBATIONS = ("noise", "zero", "mean", "null")
UNIQUENESS_DISTANCES = ("logits", "normalized")
# The DMIL paper's stage-3 cross-entropy weights (components 0.8, level-1 heads 0.5): pass as
# `dmil=DMIL_PAPER_STAGE3_WEIGHTS` to train as the paper does (the defaults are 0.1 / 0.1, docs/dmil.md).
DMIL_PAPER_STAGE3_WEIGHTS = {"stage3_component_weight": 0.8, "stage3_unimodal_weight": 0.5}
EXECUTIONS = ("auto", "stacked", "chunked")
I2M2_MODES = ("product", "intra", "inter")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")
# Built-in tower configs by `model_type` (the towers themselves are in `registry_i2moe.TOWERS`).
TOWER_CONFIGS = Registry("tower config", {})

@TOWER_CONFIGS.register("i2moe_features")
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


@TOWER_CONFIGS.register("i2moe_lenet")
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


# Lite0 stages: (repeats, kernel size, stride, expansion ratio, input channels, output channels).
LITE0_STAGES = [
    [1, 3, 1, 1, 32, 16],
    [2, 3, 2, 6, 16, 24],
    [2, 5, 2, 6, 24, 40],
    [3, 3, 2, 6, 40, 80],
    [3, 5, 1, 6, 80, 112],
    [4, 5, 2, 6, 112, 192],
    [1, 3, 1, 6, 192, 320],
]


@TOWER_CONFIGS.register("i2moe_efficientnet_lite")
class I2MoEEfficientNetLiteConfig(PreTrainedConfig):
    r"""
    Configuration of [`I2MoEEfficientNetLiteModel`] (defaults: EfficientNet-Lite0, 4.7M parameters).

    Args:
        num_channels (`int`): input image channels.
        stem_channels (`int`): channels of the stride-2 3x3 stem convolution.
        stages (`list[list[int]]`): per stage `[repeats, kernel_size, stride, expand_ratio,
            in_channels, out_channels]` of its inverted-residual (MBConv) blocks.
        hidden_size (`int`): channels of the 1x1 head convolution: the width of the tower's output.
        batch_norm_eps (`float`), batch_norm_momentum (`float`): BatchNorm settings (TensorFlow's
            1e-3 and 0.99, i.e. PyTorch momentum 0.01).
        classifier_dropout_prob (`float`): dropout before the ImageNet classifier.

    Example:

    ```python
    >>> from i2moe import I2MoEEfficientNetLiteConfig
    >>> I2MoEEfficientNetLiteConfig().hidden_size
    1280
    ```
    """

    model_type = "i2moe_efficientnet_lite"
    num_channels: int = 3
    stem_channels: int = 32
    stages: list | None = None
    hidden_size: int = 1280
    batch_norm_eps: float = 1e-3
    batch_norm_momentum: float = 0.01
    classifier_dropout_prob: float = 0.2

    def __post_init__(self, **kwargs):
        if self.stages is None:
            self.stages = [list(stage) for stage in LITE0_STAGES]
        for index, stage in enumerate(self.stages):
            if len(stage) != 6 or any(isinstance(value, bool) or not isinstance(value, int) or value < 1 for value in stage):
                raise ValueError(
                    f"I2MoEEfficientNetLiteConfig: stages[{index}] must be 6 positive ints [repeats, kernel_size, stride, "
                    f"expand_ratio, in_channels, out_channels], got {stage!r}"
                )
        channels = [self.stem_channels] + [stage[5] for stage in self.stages[:-1]]
        mismatched = [index for index, (stage, expected) in enumerate(zip(self.stages, channels)) if stage[4] != expected]
        if mismatched:
            raise ValueError(
                f"I2MoEEfficientNetLiteConfig: stage(s) {mismatched} take in_channels that differ from the previous "
                "stage's out_channels (or stem_channels for stage 0)"
            )
        super().__post_init__(**kwargs)


def tower_config_from_dict(config_dict: dict) -> PreTrainedConfig:
    """Rebuild a tower config from its serialised form (a dict holding `model_type`)."""
    config_dict = dict(config_dict)
    config_dict.pop("transformers_version", None)
    model_type = config_dict.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"A modality's `tower` dict needs a `model_type` key, got keys {sorted(config_dict)}")
    if model_type in TOWER_CONFIGS:  # defined here, so they resolve where the package is not installed (remote code)
        return TOWER_CONFIGS.get(model_type)(**config_dict)
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
            or a built-in one (`I2MoEFeaturesConfig`, `I2MoELeNetConfig`, `I2MoEEfficientNetLiteConfig`).
        pooling (`str`): how the tower's token sequence becomes one vector when `num_tokens == 1`, a
            name registered in `POOLERS`: `"cls"` (first token), `"mean"` (mean over non-padding tokens
            and spatial positions), `"max"` (elementwise max over them) or `"pooler"` (the tower's
            `pooler_output`).
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
        POOLERS.check(self.pooling, f"modalities[{self.name!r}].pooling", owner="ModalityConfig")
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


class _Settings:
    """Shared behaviour of the method sub-configs: built from a dict (config.json) or themselves,
    validated on construction, written back as a plain dict."""

    @classmethod
    def parse(cls, value, field: str):
        if isinstance(value, cls):
            return copy.deepcopy(value)
        if isinstance(value, dict):
            known = {item.name for item in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"I2MoEConfig: `{field}` has unknown keys {unknown}; known: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"I2MoEConfig: `{field}` must be a {cls.__name__} or a dict, got {type(value).__name__}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class I2MoEExpertsConfig(_Settings):
    r"""
    Settings of the I2MoE interaction part (`method="i2moe"`; `docs/i2moe.md`).

    Args:
        lambda_int (`float`): weight of the interaction loss, `loss = task + lambda_int * L_int`.
        perturbation (`str`): what replaces a perturbed modality's tokens: `"noise"` (fresh N(0, I),
            the paper's choice), `"zero"`, `"mean"` (batch mean) or `"null"` (the learned null tokens).
        margin (`float`): margin of the uniqueness triplet loss.
        uniqueness_distance (`str`): the distance the uniqueness triplet loss compares: `"logits"`
            (Euclidean distance of the logits, the paper's) or `"normalized"` (of the unit-normalised
            logits: scale-free, like the synergy and redundancy cosines, so that the margin cannot be
            met by growing the logits; classification only).
        temperature (`float`): softmax temperature of the reweighting model.
        reweight_hidden_size (`int`), reweight_num_layers (`int`), reweight_dropout (`float`): the
            reweighting MLP (`num_layers` counts its linear layers).
        expert_loss_weight (`float`): weight of the experts' own task losses (mean over experts), added
            to the mixture's; 0 (the paper). Not the default: it closes part of the AV-MNIST gap but makes
            each expert learn the whole task, so an expert's name no longer says what it carries
            (docs/i2moe.md, "Collapse").
        label_guidance_weight (`float`, *optional*): weight of the label-guided interaction losses,
            added to the paper's output-only ones. Each expert's task loss on the perturbed variants its
            interaction says must still predict (uniqueness expert i: another modality perturbed, its
            clean output pulled to that prediction; redundancy: any one modality perturbed), and for
            synergy the task loss on the clean input plus the cross-entropy `H(uniform, p)` of each
            perturbed variant (it must predict with every modality and not without one). Single-label
            classification only. Unset (`None`, the default): `DEFAULT_LABEL_GUIDANCE_WEIGHT` (3) when the labels are
            class indices, 0 for regression and multi-label targets, resolved at the first labelled
            training call and stored here (so it is saved, like `problem_type`); 0 is the paper's
            objective, and configs saved before format version 3 load with 0 (docs/i2moe.md,
            "Label-guided interaction losses").
        balance_weight (`float`): weight of the load-balancing term `log K - H(batch-mean weights)`; 0.
        reweight_warmup_steps (`int`): training steps with equal expert weights before the reweighting
            model is used; 0.
        execution (`str`): how the K experts run over their input rows; the numbers are the same
            either way. `"stacked"`: one call over all rows (fewest kernel launches: GPUs);
            `"chunked"`: calls over chunks of rows (activations stay in cache: CPUs); `"auto"`:
            chunked on CPU, stacked elsewhere.
        chunk_rows (`int`, *optional*): rows per call when chunked; default: as many as keep one
            call's activations within `experts_i2moe.CPU_CACHE_BUDGET_BYTES`.
        checkpoint_experts (`bool`): activation checkpointing of the expert calls in training: their
            activations are recomputed in the backward pass instead of kept (less memory, one more
            forward pass of the experts).
        perturbation_fraction (`float`): the fraction of each batch's rows that get the M perturbed
            passes (a fresh uniform draw per step; 1.0, the default, is every row). The interaction
            loss on that subset is an unbiased estimate of the full one; the clean pass, and so the
            task loss, still covers every row.
    """

    lambda_int: float = 0.1
    perturbation: str = "noise"
    margin: float = 1.0
    uniqueness_distance: str = "logits"
    temperature: float = 1.0
    reweight_hidden_size: int = 128
    reweight_num_layers: int = 2
    reweight_dropout: float = 0.1
    expert_loss_weight: float = 0.0
    label_guidance_weight: float | None = None
    balance_weight: float = 0.0
    reweight_warmup_steps: int = 0
    execution: str = "auto"
    chunk_rows: int | None = None
    checkpoint_experts: bool = False
    perturbation_fraction: float = 1.0

    def __post_init__(self):
        if self.execution not in EXECUTIONS:
            raise ValueError(
                f"I2MoEConfig: `i2moe.execution` must be one of {EXECUTIONS}, got {self.execution!r}"
            )
        if self.chunk_rows is not None:
            _require_positive_int("i2moe.chunk_rows", self.chunk_rows, "I2MoEConfig")
        if not isinstance(self.checkpoint_experts, bool):
            raise TypeError(f"I2MoEConfig: `i2moe.checkpoint_experts` must be a bool, got {self.checkpoint_experts!r}")
        _require_number("i2moe.perturbation_fraction", self.perturbation_fraction, minimum=0.0, inclusive=False)
        if self.perturbation_fraction > 1.0:
            raise ValueError(
                f"I2MoEConfig: `i2moe.perturbation_fraction` is the fraction of rows that get perturbed passes, "
                f"in (0, 1]; got {self.perturbation_fraction!r}"
            )
        if self.uniqueness_distance not in UNIQUENESS_DISTANCES:
            raise ValueError(f"I2MoEConfig: `i2moe.uniqueness_distance` must be one of {UNIQUENESS_DISTANCES}, "
                             f"got {self.uniqueness_distance!r}")
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"I2MoEConfig: `i2moe.perturbation` must be one of {PERTURBATIONS}, got {self.perturbation!r}")
        for field in ("lambda_int", "margin", "expert_loss_weight", "balance_weight"):
            _require_number(f"i2moe.{field}", getattr(self, field), minimum=0.0)
        if self.label_guidance_weight is not None:
            _require_number("i2moe.label_guidance_weight", self.label_guidance_weight, minimum=0.0)
        if isinstance(self.reweight_warmup_steps, bool) or not isinstance(self.reweight_warmup_steps, int) \
                or self.reweight_warmup_steps < 0:
            raise ValueError(f"I2MoEConfig: `i2moe.reweight_warmup_steps` must be an int >= 0, got {self.reweight_warmup_steps!r}")
        _require_number("i2moe.temperature", self.temperature, minimum=0.0, inclusive=False)
        for field in ("reweight_hidden_size", "reweight_num_layers"):
            _require_positive_int(f"i2moe.{field}", getattr(self, field), "I2MoEConfig")
        _require_rate("i2moe.reweight_dropout", self.reweight_dropout)


@dataclass
class DMILConfig(_Settings):
    r"""
    Settings of the DMIL interaction part (`method="dmil"`; `docs/dmil.md`).

    Args:
        latent_size (`int`): width of every latent (M_m, N_m, R, U_m, S) of the decomposition.
        kl_weight (`float`): weight of each KL-to-N(0, I) term of the variational bottlenecks.
        reconstruction_weight (`float`): weight of the reconstruction losses (level 1: v_m from
            [M_m, N_m]; level 2: mu(M_m) from [R, U_m]).
        alignment_weight (`float`): weight of the redundancy alignment sum_m KL(q(R | all) || q(R | M_m)).
        stage (`int`): training stage (1: level 1 only; 2: level 2, heads and gate on a frozen level 1;
            3: all); it sets the loss composition, and in stage 1 the prediction.
        stage2_component_weight, stage3_component_weight (`float`): weights of the component heads'
            cross-entropies in stages 2 and 3; stage3_unimodal_weight: of the level-1 heads' in stage 3.
            Stage 3's are 0.1 and 0.1, not the paper's 0.8 and 0.5: with those, the fused prediction
            carries 1 of the 1 + 0.8 * K + 0.5 * M units of stage 3's loss and DMIL trailed a
            one-modality model on fashion products (docs/dmil.md, "Stage-3 weights").
        full_decomposition (`bool`, *optional*): the redundancy/uniqueness level on top of level 1.
            Default: True for 2 modalities, False for more (the paper validated only the
            intra-modality level beyond two; True for M > 2 is an extension).
    """

    latent_size: int = 32
    kl_weight: float = 0.02
    reconstruction_weight: float = 0.005
    alignment_weight: float = 0.02
    stage: int = 1
    stage2_component_weight: float = 0.5
    stage3_component_weight: float = 0.1
    stage3_unimodal_weight: float = 0.1
    full_decomposition: bool | None = None

    def __post_init__(self):
        _require_positive_int("dmil.latent_size", self.latent_size, "I2MoEConfig")
        for field in ("kl_weight", "reconstruction_weight", "alignment_weight", "stage2_component_weight",
                      "stage3_component_weight", "stage3_unimodal_weight"):
            _require_number(f"dmil.{field}", getattr(self, field), minimum=0.0)
        if self.stage not in (1, 2, 3) or isinstance(self.stage, bool):
            raise ValueError(f"I2MoEConfig: `dmil.stage` must be 1, 2 or 3, got {self.stage!r}")
        if self.full_decomposition is not None and not isinstance(self.full_decomposition, bool):
            raise TypeError(f"I2MoEConfig: `dmil.full_decomposition` must be a bool or None, got {self.full_decomposition!r}")


@dataclass
class I2M2Config(_Settings):
    r"""
    Settings of the I2M2 unimodal heads (NeurIPS 2024; `docs/i2m2.md`): one unimodal classifier per
    modality combined with the interaction part as a product of experts. `config.i2m2 = None` means
    no heads.

    Args:
        mode (`str`): which experts predict: `"product"` (unimodal heads x interaction part),
            `"intra"` (the product of the unimodal heads alone) or `"inter"` (the interaction part
            alone). Every part exists in every mode, so one checkpoint is evaluated in each mode by
            changing this field.
        separate_towers (`bool`): the heads get their own encoder (tower, projection) per modality,
            the paper's separate unimodal networks, instead of reading the shared modality tokens.
        tower_overrides (`dict`, *optional*): separate towers only: tower-config fields that differ
            from the modality's tower, per modality (e.g. `{"image": {"base_channels": 3}}`).
        head_hidden_size (`int`, *optional*): hidden width of each head's MLP (default:
            `fusion_hidden_size`).
    """

    mode: str = "product"
    separate_towers: bool = False
    tower_overrides: dict | None = None
    head_hidden_size: int | None = None

    def __post_init__(self):
        if self.mode not in I2M2_MODES:
            raise ValueError(f"I2MoEConfig: `i2m2.mode` must be one of {I2M2_MODES}, got {self.mode!r}")
        if not isinstance(self.separate_towers, bool):
            raise TypeError(f"I2MoEConfig: `i2m2.separate_towers` must be a bool, got {self.separate_towers!r}")
        if self.head_hidden_size is not None:
            _require_positive_int("i2m2.head_hidden_size", self.head_hidden_size, "I2MoEConfig")
        if self.tower_overrides is not None and not isinstance(self.tower_overrides, dict):
            raise TypeError(f"I2MoEConfig: `i2m2.tower_overrides` must be a dict, got {type(self.tower_overrides).__name__}")
        if self.tower_overrides and not self.separate_towers:
            raise ValueError(
                "I2MoEConfig: `i2m2.tower_overrides` configures the unimodal heads' own towers; it needs "
                "`i2m2.separate_towers=True`"
            )


# The method sub-config each `method` reads (vanilla fusion has none).
METHOD_SETTINGS = {"i2moe": I2MoEExpertsConfig, "dmil": DMILConfig}


class I2MoEConfig(PreTrainedConfig):
    r"""
    Configuration of [`I2MoEForClassification`]: an ordered set of named modalities, each with a
    tower, projected to a common width `hidden_size`, and an interaction part (`method`) over a
    fusion backbone that maps all modality tokens to `num_labels` outputs.

    Args:
        modalities (`list[ModalityConfig | dict]`): the modalities, in order. The order fixes the
            columns of `modality_mask` and the order of the uniqueness components.
        hidden_size (`int`): the common projection width d of all modality tokens.
        method (`str`): the interaction part, a name registered in `INTERACTIONS`: `"vanilla"` (one
            fusion backbone), `"i2moe"` (interaction experts, settings in `i2moe`) or `"dmil"` (the
            DMIL decomposition, settings in `dmil`).
        fusion (`str`): the fusion backbone, a name registered in `FUSIONS` (`"concat"`,
            `"transformer"`, `"lrtf"`).
        fusion_num_layers (`int`): transformer fusion: number of joint self-attention blocks.
        fusion_num_heads (`int`): transformer fusion: attention heads (must divide `hidden_size`).
        fusion_intermediate_size (`int`, *optional*): transformer fusion: MLP width (default 4d).
        fusion_hidden_size (`int`): hidden width of the MLP head of the concat and LRTF backbones.
        lrtf_rank (`int`), lrtf_output_size (`int`): low-rank tensor fusion rank and output width.
        dropout (`float`): dropout in projections and fusion.
        modality_dropout (`float`, `dict[str, float]` or `list[float]`): in training only, the rate
            at which each sample's modality is replaced by its null tokens (one rate for all, or one
            per modality by name or in order); a sample never loses all its present modalities.
            Needed for meaningful outputs on missing modalities and for `i2moe.attribution`.
        initializer_range (`float`): std of the normal init of the new (non-tower) weights.
        i2moe (`I2MoEExpertsConfig` or `dict`): the I2MoE settings (only with `method="i2moe"`).
        dmil (`DMILConfig` or `dict`): the DMIL settings (only with `method="dmil"`).
        i2m2 (`I2M2Config`, `dict` or `None`): I2M2 unimodal heads on top of any method; `None`: none.
        num_labels, id2label, label2id, problem_type: as in every transformers classifier;
            `problem_type` is `"single_label_classification"`, `"multi_label_classification"` or
            `"regression"`. Left unset it is `"regression"` for `num_labels=1` (single-label for DMIL),
            and otherwise resolved from the labels of the first labelled call and stored here (so
            it is saved, and inference uses the rule training used).
        label_prior (`list[float]`, *optional*): the training label distribution: class frequencies
            (single-label), each label's frequency in (0, 1) (multi-label), the mean target
            (regression). The interaction attribution's `v(∅)` (`i2moe.attribution.attribute`, the
            pipeline's `return_attribution`) when no prior is given; `examples/run_classification.py`
            sets it from the training split.

    The flat keywords of configs saved before format version 2 (`i2moe_lambda_int`, `dmil_stage`,
    `i2m2_heads`, `i2m2_mode`, ...) are still accepted and moved into the sub-configs.

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
    ...     hidden_size=64, fusion="transformer", num_labels=3, method="i2moe", i2moe={"lambda_int": 0.5},
    ... )
    >>> config.modality_names, config.i2moe.lambda_int
    (['text', 'tabular'], 0.5)
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
    modality_dropout: Any = 0.0
    initializer_range: float = 0.02
    i2moe: Any = None
    dmil: Any = None
    i2m2: Any = None
    label_prior: list | None = None
    # The layout of saved configs and weights this code reads; bumped on incompatible changes, so a
    # config.json from a newer layout fails with an error instead of loading into the wrong weights.
    # Version 1 (flat method fields, shared `towers`/`projections`/`null_tokens` weights) is converted
    # on load (`I2MoEForClassification.from_pretrained`).
    i2moe_format_version: int = FORMAT_VERSION

    def __post_init__(self, **kwargs):
        _check_format_version(self.i2moe_format_version)
        _move_flat_method_fields(self, kwargs)
        if self.i2moe_format_version < 3:
            _keep_the_paper_objective(self)
        self.i2moe_format_version = FORMAT_VERSION
        self.modalities = _parse_modalities(self.modalities)
        for field in ("hidden_size", "fusion_num_layers", "fusion_num_heads", "fusion_hidden_size",
                      "lrtf_rank", "lrtf_output_size"):
            _require_positive_int(field, getattr(self, field), "I2MoEConfig")
        if self.fusion_intermediate_size is None:
            self.fusion_intermediate_size = 4 * self.hidden_size
        _require_positive_int("fusion_intermediate_size", self.fusion_intermediate_size, "I2MoEConfig")
        INTERACTIONS.check(self.method, "method")
        FUSIONS.check(self.fusion, "fusion")
        if self.fusion == "transformer" and self.hidden_size % self.fusion_num_heads:
            raise ValueError(
                f"I2MoEConfig: `hidden_size` ({self.hidden_size}) must be divisible by `fusion_num_heads` "
                f"({self.fusion_num_heads}) for transformer fusion"
            )
        _require_rate("dropout", self.dropout)
        _check_modality_dropout(self.modality_dropout, self.modality_names)
        self._parse_method_settings()
        if self.i2m2 is not None:
            self.i2m2 = I2M2Config.parse(self.i2m2, "i2m2")
            self._validate_i2m2()
        _check_label_maps(self, kwargs)
        super().__post_init__(**kwargs)
        _require_positive_int("num_labels", self.num_labels, "I2MoEConfig")
        self._resolve_problem_type()
        _check_label_prior(self)

    def _parse_method_settings(self) -> None:
        """The active method's sub-config, built with defaults when not given; another method's is an error."""
        for method, settings_class in METHOD_SETTINGS.items():
            value = getattr(self, method)
            if method == self.method:
                setattr(self, method, settings_class.parse(settings_class() if value is None else value, method))
            elif value is not None:
                raise ValueError(
                    f"I2MoEConfig: `{method}` settings are given but `method` is {self.method!r}; set "
                    f"method={method!r} or drop `{method}`"
                )
        if self.method == "i2moe" and self.num_modalities < 2:
            raise ValueError(
                f"I2MoEConfig: method='i2moe' needs at least 2 modalities (uniqueness and synergy are defined "
                f"between modalities), got {self.num_modalities}"
            )
        if self.method == "dmil":
            if self.num_modalities < 2:
                raise ValueError(f"I2MoEConfig: method='dmil' decomposes at least 2 modalities, got {self.num_modalities}")
            if self.dmil.full_decomposition is None:
                self.dmil.full_decomposition = self.num_modalities == 2

    def _resolve_problem_type(self) -> None:
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(f"I2MoEConfig: `problem_type` must be one of {PROBLEM_TYPES}, got {self.problem_type!r}")
        if self.problem_type is None and self.num_labels == 1:
            self.problem_type = "regression"
        if self.method == "dmil":
            if self.problem_type not in (None, "single_label_classification"):
                raise ValueError(
                    f"I2MoEConfig: method='dmil' supports single-label classification only, got "
                    f"problem_type={self.problem_type!r}"
                )
            self.problem_type = "single_label_classification"
        if self.method == "i2moe" and self.problem_type == "regression" and self.i2moe.uniqueness_distance == "normalized":
            raise ValueError(
                "I2MoEConfig: `i2moe.uniqueness_distance='normalized'` needs classification logits (a normalised "
                "scalar output is only its sign); use 'logits' for regression"
            )
        if self.method == "i2moe" and self.i2moe.label_guidance_weight and \
                self.problem_type not in (None, "single_label_classification"):
            raise ValueError(
                f"I2MoEConfig: `i2moe.label_guidance_weight` needs single-label classification (its losses are "
                f"cross-entropies to class indices), got problem_type={self.problem_type!r}; set it to 0"
            )

    def _validate_i2m2(self) -> None:
        if self.i2m2.head_hidden_size is None:
            self.i2m2.head_hidden_size = self.fusion_hidden_size
        by_name = {modality.name: modality for modality in self.modalities}
        for name, fields in (self.i2m2.tower_overrides or {}).items():
            if name not in by_name:
                raise ValueError(f"I2MoEConfig: `i2m2.tower_overrides` names modality {name!r}; the modalities are {list(by_name)}")
            unknown = sorted(field for field in fields if not hasattr(by_name[name].tower, field))
            if unknown:
                raise ValueError(
                    f"I2MoEConfig: `i2m2.tower_overrides[{name!r}]` sets {unknown}, which "
                    f"{type(by_name[name].tower).__name__} does not have"
                )

    def i2m2_tower_config(self, name: str) -> PreTrainedConfig:
        """The config of modality `name`'s unimodal tower when `i2m2.separate_towers` is set: the
        modality's tower config with `i2m2.tower_overrides[name]` applied."""
        tower = copy.deepcopy(next(modality.tower for modality in self.modalities if modality.name == name))
        for field, value in (self.i2m2.tower_overrides or {}).get(name, {}).items():
            setattr(tower, field, value)
        return tower

    def modality_dropout_rates(self) -> list[float]:
        """`modality_dropout` as one rate per modality, in modality order."""
        rates = self.modality_dropout
        if isinstance(rates, dict):
            return [float(rates.get(name, 0.0)) for name in self.modality_names]
        if isinstance(rates, (list, tuple)):
            return [float(rate) for rate in rates]
        return [float(rates)] * self.num_modalities

    @property
    def modality_names(self) -> list[str]:
        return [modality.name for modality in self.modalities]

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["modalities"] = [modality.to_dict() for modality in self.modalities]
        for method in ("i2moe", "dmil", "i2m2"):
            value = getattr(self, method)
            output[method] = None if value is None else value.to_dict()
        return output


# Version-1 flat fields -> (sub-config, field). A flat field of a method the config does not use
# had no effect then and is dropped.
_FLAT_FIELDS = {
    **{f"i2moe_{name}": ("i2moe", name) for name in
       ("lambda_int", "perturbation", "margin", "temperature", "reweight_hidden_size", "reweight_num_layers",
        "reweight_dropout", "expert_loss_weight", "balance_weight", "reweight_warmup_steps")},
    **{f"dmil_{name}": ("dmil", name) for name in
       ("latent_size", "kl_weight", "reconstruction_weight", "alignment_weight", "stage", "stage2_component_weight",
        "stage3_component_weight", "stage3_unimodal_weight", "full_decomposition")},
    **{f"i2m2_{name}": ("i2m2", name) for name in ("mode", "separate_towers", "tower_overrides", "head_hidden_size")},
}


def _move_flat_method_fields(config: I2MoEConfig, kwargs: dict) -> None:
    """Move the flat keywords of format version 1 (also accepted from callers) into the sub-configs."""
    i2m2_heads = kwargs.pop("i2m2_heads", None)
    flat = {key: kwargs.pop(key) for key in list(kwargs) if key in _FLAT_FIELDS}
    if not flat and i2m2_heads is None:
        return
    grouped: dict[str, dict] = {}
    for key, value in flat.items():
        method, field = _FLAT_FIELDS[key]
        grouped.setdefault(method, {})[field] = value
    for method in METHOD_SETTINGS:
        settings = grouped.pop(method, None)
        if settings is None or method != config.method:
            continue
        current = getattr(config, method)
        current = current.to_dict() if isinstance(current, _Settings) else dict(current or {})
        setattr(config, method, {**settings, **current})
    i2m2 = grouped.pop("i2m2", {})
    if i2m2_heads and config.i2m2 is None:
        config.i2m2 = i2m2
    elif not i2m2_heads and config.i2m2 is None and (
            i2m2.get("mode", "product") != "product" or i2m2.get("separate_towers") or i2m2.get("tower_overrides")):
        raise ValueError(
            f"I2MoEConfig: {sorted(f'i2m2_{key}' for key in i2m2)} configure the I2M2 heads; set `i2m2_heads=True` "
            "(or pass `i2m2={...}`)"
        )


def _check_label_maps(config: I2MoEConfig, kwargs: dict) -> None:
    """`num_labels`, `id2label` and `label2id` must agree: transformers would only warn, then replace
    the given label names by `LABEL_i`. A `label2id` alone gives the `id2label` it inverts."""
    id2label, label2id, num_labels = config.id2label, config.label2id, kwargs.get("num_labels")
    if label2id is not None and id2label is None:
        id2label = config.id2label = {int(index): label for label, index in label2id.items()}
    if id2label is None:
        return
    id2label = {int(index): label for index, label in id2label.items()}
    if num_labels is not None and len(id2label) != num_labels:
        raise ValueError(f"I2MoEConfig: `num_labels={num_labels}` but `id2label` names {len(id2label)} labels "
                         f"({list(id2label.values())[:5]}...); give one, or make them agree")
    if sorted(id2label) != list(range(len(id2label))):
        raise ValueError(f"I2MoEConfig: `id2label` keys must be 0..{len(id2label) - 1}, got {sorted(id2label)}")
    if label2id is not None and {label: int(index) for label, index in label2id.items()} != {
            label: index for index, label in id2label.items()}:
        raise ValueError(f"I2MoEConfig: `label2id` {dict(label2id)} is not the inverse of `id2label` {id2label}")


def _check_label_prior(config: I2MoEConfig) -> None:
    prior = config.label_prior
    if prior is None:
        return
    if not isinstance(prior, (list, tuple)) or len(prior) != config.num_labels or not all(
            isinstance(value, (int, float)) and not isinstance(value, bool) for value in prior):
        raise ValueError(f"I2MoEConfig: `label_prior` must be a list of {config.num_labels} numbers (one per label), "
                         f"got {prior!r}")
    config.label_prior = [float(value) for value in prior]
    if config.problem_type == "single_label_classification" and any(value <= 0 for value in prior):
        raise ValueError(f"I2MoEConfig: `label_prior` holds class frequencies, all > 0; got {list(prior)}")
    if config.problem_type == "multi_label_classification" and any(not 0 < value < 1 for value in prior):
        raise ValueError(f"I2MoEConfig: a multi-label `label_prior` holds each label's frequency, in (0, 1); got {list(prior)}")


def _check_modality_dropout(rates, names: list[str]) -> None:
    if isinstance(rates, dict):
        unknown = sorted(set(rates) - set(names))
        if unknown:
            raise ValueError(f"I2MoEConfig: `modality_dropout` names modalities {unknown}; the modalities are {names}")
        values = list(rates.values())
    elif isinstance(rates, (list, tuple)):
        if len(rates) != len(names):
            raise ValueError(f"I2MoEConfig: `modality_dropout` holds {len(rates)} rates for {len(names)} modalities {names}")
        values = list(rates)
    else:
        values = [rates]
    for value in values:
        _require_rate("modality_dropout", value)


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


def _keep_the_paper_objective(config: I2MoEConfig) -> None:
    """A config saved before format version 3 trained I2MoE with the paper's objective: an unset
    `label_guidance_weight` there means 0, not today's default, so training it further continues
    the same objective."""
    if config.method != "i2moe" or isinstance(config.i2moe, I2MoEExpertsConfig):
        return
    config.i2moe = {"label_guidance_weight": 0.0, **(config.i2moe or {})}


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


def _require_rate(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"I2MoEConfig: `{field}` must be in [0, 1), got {value!r}")


def _require_positive_int(field: str, value, owner: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: `{field}` must be a positive int, got {value!r}")


__all__ = [
    "DMILConfig",
    "I2M2Config",
    "I2MoEConfig",
    "I2MoEEfficientNetLiteConfig",
    "I2MoEExpertsConfig",
    "I2MoEFeaturesConfig",
    "I2MoELeNetConfig",
    "ModalityConfig",
]
