"""I2MoE for classification: modality towers, projection to shared tokens, null tokens for missing
modalities, an interaction part and the task loss.

The path of one batch, in `I2MoEForClassification.forward`:

1. `embed_modalities`: each modality's inputs (`{name}_{tower_input}`) go through its tower once;
   the tower's output is pooled (or resampled to P tokens), projected to width d and
   layer-normed; rows whose `modality_mask` entry is 0 get the modality's learned null tokens.
   Result: tokens `(B, T, d)`, T = sum of the modalities' token counts, in config order.
2. `self.interaction(tokens)`: the interaction part chosen by `config.method` (`"vanilla"`: one
   fusion backbone) returns logits and any auxiliary loss and interpretation outputs.
   With `config.i2m2_heads` (`_predict`), one unimodal head per modality (on the same tokens, or
   on its own towers' tokens) joins the interaction part in a product of experts
   (`combine_i2m2`); a missing modality's head drops out of its row's product.
3. The task loss for `config.problem_type`, plus the interaction part's auxiliary loss.

This file travels with saved models as Hub remote code: it imports only its sibling files.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from safetensors import SafetensorError
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .configuration_i2moe import I2MoEConfig, ModalityConfig, tower_hidden_size
from .dmil_i2moe import DMILInteraction
from .experts_i2moe import I2MoEInteraction
from .fusion_i2moe import InteractionOutput, TokenLayout, VanillaFusion
from .i2m2_i2moe import I2M2UnimodalHeads, assemble_i2m2, combine_i2m2
from .towers_i2moe import BUILTIN_TOWERS


logger = logging.get_logger(__name__)

# Tower `forward` arguments the model routes from `{modality}_{argument}` inputs.
TOWER_INPUT_ARGUMENTS = (
    "input_ids", "attention_mask", "token_type_ids", "pixel_values", "pixel_mask",
    "input_values", "input_features", "features",
)
_COLUMN_FILTER_HINT = (
    "With Trainer, set `remove_unused_columns=False`: the inputs are named '{modality}_{tower_input}', which "
    "are not fixed `forward` argument names, so the default column filter drops them."
)


@dataclass
class I2MoEOutput(ModelOutput):
    r"""
    Output of [`I2MoEForClassification`]. Fields that the configured parts do not produce are `None`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): task loss plus the interaction
            part's auxiliary loss; returned when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): the prediction.
        expert_logits (`torch.FloatTensor` of shape `(batch_size, num_experts, num_labels)`):
            I2MoE: each interaction expert's logits on the clean inputs.
        expert_weights (`torch.FloatTensor` of shape `(batch_size, num_experts)`): I2MoE: the
            reweighting model's per-sample expert weights (rows sum to 1).
        interaction_loss (`torch.FloatTensor` of shape `()`): I2MoE: the weak-supervision loss
            `L_int` (before `lambda_int`); DMIL: the sum of its auxiliary terms.
        loss_terms (`dict[str, torch.FloatTensor]`): every loss term by name (for logging).
        unimodal_logits (`torch.FloatTensor` of shape `(batch_size, num_modalities, num_labels)`):
            I2M2: each modality's unimodal head (zeros where the modality is missing: that head
            is not part of the row's product). DMIL: its level-1 heads; with I2M2 heads on a DMIL
            part, the I2M2 heads (the experts of the final product) take this field.
        component_logits (`torch.FloatTensor` of shape `(batch_size, num_components, num_labels)`):
            DMIL: the head of each component (uniqueness per modality, redundancy, synergy).
        gate_weights (`torch.FloatTensor` of shape `(batch_size, num_components)`): DMIL: the gate.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    expert_logits: torch.FloatTensor | None = None
    expert_weights: torch.FloatTensor | None = None
    interaction_loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None
    unimodal_logits: torch.FloatTensor | None = None
    component_logits: torch.FloatTensor | None = None
    gate_weights: torch.FloatTensor | None = None


# `config.method` -> interaction part. Constructor `(config, layout)`; forward
# `(tokens (B, T, d), present (B, M) bool, null_tokens (T, d), labels)` -> `InteractionOutput`.
INTERACTIONS: dict[str, type[nn.Module]] = {
    "vanilla": VanillaFusion, "i2moe": I2MoEInteraction, "dmil": DMILInteraction,
}


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


class ModalityProjection(nn.Module):
    """A tower's output -> this modality's tokens `(B, P, d)`: pool (P = 1) or resample (P > 1),
    project to the shared width d, layer-norm (so all modalities, null tokens and I2MoE's N(0, I)
    perturbations share one scale)."""

    def __init__(self, modality: ModalityConfig, config: I2MoEConfig):
        super().__init__()
        self.pooling = modality.pooling
        self.projection = nn.Linear(tower_hidden_size(modality.tower), config.hidden_size)
        self.resampler = (
            TokenResampler(config.hidden_size, modality.num_tokens, config.fusion_num_heads)
            if modality.num_tokens > 1
            else None
        )
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size)

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor | None, pooler_output) -> torch.Tensor:
        if self.resampler is not None:
            tokens = self.resampler(self.projection(sequence), mask)
        else:
            tokens = self.projection(self._pool(sequence, mask, pooler_output))[:, None]
        return self.layer_norm(self.dropout(tokens))

    def _pool(self, sequence: torch.Tensor, mask: torch.Tensor | None, pooler_output) -> torch.Tensor:
        if self.pooling == "cls":
            return sequence[:, 0]
        if self.pooling == "pooler":
            if pooler_output is None:
                raise ValueError("pooling='pooler' but this tower returns no `pooler_output`; use 'cls' or 'mean'")
            return pooler_output.flatten(1)
        if mask is None:
            return sequence.mean(1)
        weights = mask.to(sequence.dtype)[..., None]
        return (sequence * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class I2MoEPreTrainedModel(PreTrainedModel):
    config_class = I2MoEConfig
    base_model_prefix = "i2moe"
    main_input_name = "modality_mask"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["StackedTransformerBlock"]
    # `forward` takes `**modality_inputs`; without this Trainer would pass `num_items_in_batch` and
    # stop averaging the loss over gradient-accumulation steps (the reported loss would double).
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if hasattr(module, "init_parameters"):
            module.init_parameters(std)
        elif isinstance(module, I2MoEForClassification):
            init.normal_(module.null_tokens, mean=0.0, std=1.0)
        else:
            super()._init_weights(module)


class I2MoEForClassification(I2MoEPreTrainedModel):
    r"""
    Multimodal classifier (or regressor) over named modality towers.

    Inputs are keyword arguments named `{modality}_{tower_input}`, e.g. `image_pixel_values`,
    `text_input_ids`, `text_attention_mask`, `tabular_features` (see `input_names`), plus
    `modality_mask` `(batch, num_modalities)` with 1 where a modality is present. A modality whose
    mask entry is 0, or whose inputs are absent from the call, is replaced by its learned null
    tokens; a modality absent for the whole batch skips its tower.

    Note for `Trainer`: its default `remove_unused_columns=True` keeps only columns named like
    `forward` arguments, and the `{modality}_{tower_input}` inputs are not fixed names. Set
    `remove_unused_columns=False` (needed anyway when a processor runs in `with_transform`);
    a call that receives no modality input at all raises an error saying so.

    Example:

    ```python
    >>> import torch
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
    >>> config = I2MoEConfig(
    ...     modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=8)},
    ...                 {"name": "b", "tower": I2MoEFeaturesConfig(input_size=4)}],
    ...     hidden_size=32, fusion="transformer", num_labels=3,
    ... )
    >>> model = I2MoEForClassification(config)
    >>> out = model(a_features=torch.randn(2, 8), b_features=torch.randn(2, 4),
    ...             modality_mask=torch.tensor([[1, 1], [1, 0]]), labels=torch.tensor([0, 2]))
    >>> out.logits.shape
    torch.Size([2, 3])
    ```
    """

    def __init__(self, config: I2MoEConfig, towers: dict[str, PreTrainedModel] | None = None):
        super().__init__(config)
        towers = dict(towers or {})
        unknown = sorted(set(towers) - set(config.modality_names))
        if unknown:
            raise ValueError(f"towers given for unknown modalities {unknown}; the config has {config.modality_names}")
        self.layout = TokenLayout(
            tuple(config.modality_names), tuple(modality.num_tokens for modality in config.modalities)
        )
        self.towers = nn.ModuleDict()
        for modality in config.modalities:
            # A given tower is already flagged `_is_hf_initialized` by its own `post_init` or
            # `from_pretrained`, so this model's `post_init` leaves its weights untouched.
            tower = towers.get(modality.name) or _build_tower(modality.tower)
            modality.tower = tower.config  # one config object, so tower settings stay in sync
            _set_trainable(tower, modality)
            self.towers[modality.name] = tower
        self.projections = nn.ModuleDict(
            {modality.name: ModalityProjection(modality, config) for modality in config.modalities}
        )
        self.null_tokens = nn.Parameter(torch.empty(self.layout.total_tokens, config.hidden_size))
        self.interaction = INTERACTIONS[config.method](config, self.layout)
        self.i2m2 = self._build_i2m2_heads(towers) if config.i2m2_heads else None
        self._input_routes = {
            f"{name}_{argument}": (name, argument)
            for name, tower in self.towers.items()
            for argument in _tower_arguments(tower)
        }
        self.post_init()

    @property
    def input_names(self) -> list[str]:
        """The keyword arguments this model takes besides `labels`."""
        return [*self._input_routes, "modality_mask"]

    @classmethod
    def from_pretrained_towers(
        cls,
        towers: dict[str, str | PreTrainedModel],
        *,
        pooling: dict[str, str] | None = None,
        num_tokens: dict[str, int] | None = None,
        freeze: dict[str, bool] | None = None,
        tower_kwargs: dict[str, dict] | None = None,
        **config_kwargs,
    ) -> "I2MoEForClassification":
        r"""
        Build a model around pretrained towers, in the spirit of
        `VisionTextDualEncoderModel.from_vision_text_pretrained`.

        Args:
            towers: modality name -> a Hub id or local path (loaded with `AutoModel.from_pretrained`)
                or an already loaded `PreTrainedModel` (e.g. `CLIPVisionModel`), in modality order.
            pooling, num_tokens, freeze: per-modality settings (see `ModalityConfig`).
            tower_kwargs: per-modality keyword arguments for `AutoModel.from_pretrained`.
            config_kwargs: the remaining `I2MoEConfig` arguments (`hidden_size`, `fusion`,
                `num_labels`, `id2label`, ...).

        The towers keep their pretrained weights bit for bit; every other weight is new and logged.

        Example:

        ```python
        >>> from i2moe import I2MoEForClassification
        >>> model = I2MoEForClassification.from_pretrained_towers(  # doctest: +SKIP
        ...     {"image": "google/vit-base-patch16-224-in21k", "text": "bert-base-uncased"},
        ...     pooling={"text": "cls"}, hidden_size=256, fusion="transformer", num_labels=10)
        ```
        """
        pooling, num_tokens, freeze, tower_kwargs = pooling or {}, num_tokens or {}, freeze or {}, tower_kwargs or {}
        for option, values in {"pooling": pooling, "num_tokens": num_tokens, "freeze": freeze,
                               "tower_kwargs": tower_kwargs}.items():
            unknown = sorted(set(values) - set(towers))
            if unknown:
                raise ValueError(f"`{option}` names modalities {unknown} that are not in `towers` ({list(towers)})")
        loaded, modalities = {}, []
        for name, source in towers.items():
            tower = source if isinstance(source, PreTrainedModel) else AutoModel.from_pretrained(source, **tower_kwargs.get(name, {}))
            loaded[name] = tower
            modalities.append(
                ModalityConfig(
                    name=name, tower=tower.config, pooling=pooling.get(name, "mean"),
                    num_tokens=num_tokens.get(name, 1), freeze=freeze.get(name, False),
                    tower_name_or_path=source if isinstance(source, str) else tower.config.name_or_path or None,
                )
            )
        model = cls(I2MoEConfig(modalities=modalities, **config_kwargs), towers=loaded)
        pretrained = ("towers.",)
        if model.i2m2 is not None and model.i2m2.separate_towers:  # copies of the given towers
            overrides = model.config.i2m2_tower_overrides or {}
            pretrained += tuple(f"i2m2.towers.{name}." for name in loaded if name not in overrides)
        new_weights = [name for name, _ in model.named_parameters() if not name.startswith(pretrained)]
        logger.warning(
            f"The towers {list(towers)} keep their pretrained weights; these weights are newly initialized "
            f"and need training: {new_weights}"
        )
        return model

    @classmethod
    def from_i2m2_parts(
        cls,
        unimodal: dict[str, "str | I2MoEForClassification"],
        inter: "str | I2MoEForClassification | None" = None,
        **config_overrides,
    ) -> "I2MoEForClassification":
        r"""
        Assemble an I2M2 model from separately trained parts (the paper's staged initialisation:
        train each unimodal model and the inter model alone, load them into the product, then
        fine-tune the product jointly).

        Args:
            unimodal: modality name -> a trained one-modality model of this class (a path or the
                model) with `method="vanilla"` and `fusion="concat"`: its tower, projection and MLP
                head become that modality's unimodal branch.
            inter: the trained multimodal model (any `method` and `fusion`) whose towers,
                projections, null tokens and interaction part are loaded unchanged. `None` builds
                the intra-only baseline (`i2m2_mode="intra"`) whose towers are the unimodal ones.
            config_overrides: further `I2MoEConfig` fields. With an inter part the default is
                `i2m2_separate_towers=True`, and `i2m2_tower_overrides` records how the unimodal
                towers differ from the inter part's (e.g. narrower LeNets).

        Every loaded weight equals the part's weight bit for bit. Returns the model in eval mode
        (as `from_pretrained` does); call `.train()` to fine-tune.

        Example:

        ```python
        >>> from i2moe import I2MoEForClassification
        >>> model = I2MoEForClassification.from_i2m2_parts(  # doctest: +SKIP
        ...     unimodal={"image": "runs/image-only", "audio": "runs/audio-only"}, inter="runs/late-fusion")
        >>> model.config.i2m2_mode, model.config.i2m2_separate_towers  # doctest: +SKIP
        ('product', True)
        ```
        """
        return assemble_i2m2(cls, unimodal, inter, **config_overrides)

    # Names of submodules kept in eval mode by `train()` (BatchNorm statistics fixed, no dropout):
    # set by training schedules that freeze part of the model, e.g. DMIL's stage 2.
    frozen_modules: tuple[str, ...] = ()

    # Set by the i2moe package to `i2moe.hub.push_to_hub` (model + processor + model card in one commit).
    # Remote code never imports the package, so a model loaded that way keeps transformers' `push_to_hub`.
    hub_publisher = None

    def push_to_hub(self, repo_id: str, *, processor=None, **kwargs):
        r"""
        Upload the model (safetensors + remote code) to the Hub. With the i2moe package installed this is
        `i2moe.hub.push_to_hub(model, repo_id, processor=processor, **kwargs)`: the processor and a model
        card with results and the interaction composition go in the same commit (see `docs/publishing.md`).
        Without the package (a model loaded as remote code) it is transformers' `push_to_hub`.

        Example:

        ```python
        >>> model.push_to_hub("my-org/my-model", processor=processor, dataset_name="my data",  # doctest: +SKIP
        ...                   eval_results={"accuracy": 0.9})
        ```
        """
        if self.hub_publisher is None:
            if processor is not None:
                raise ValueError("push_to_hub(processor=...) needs the i2moe package; push the processor itself instead")
            return super().push_to_hub(repo_id, **kwargs)
        return self.hub_publisher(self, repo_id, processor=processor, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> "I2MoEForClassification":
        """`PreTrainedModel.from_pretrained`, with clear errors where transformers would only warn
        and initialise new weights, or fail with a message that names neither file nor field: a
        checkpoint whose modalities differ from the `config` passed in, and a weights file that
        cannot be read (truncated or corrupt)."""
        return_loading_info = kwargs.pop("output_loading_info", False)
        config = kwargs.get("config")
        if isinstance(config, PreTrainedConfig):
            _check_saved_modalities(pretrained_model_name_or_path, config, kwargs)
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise OSError(
                f"{pretrained_model_name_or_path}: the safetensors weights cannot be read ({error}); the file is "
                "truncated or corrupt: download or save it again"
            ) from error
        _check_loaded_modalities(model.config, loading_info)
        model._refreeze_towers()
        return (model, loading_info) if return_loading_info else model

    def _towers_of(self, modality: ModalityConfig) -> list[PreTrainedModel]:
        """The modality's tower, and its I2M2 unimodal copy when the heads have separate towers."""
        towers = [self.towers[modality.name]]
        if self.i2m2 is not None and self.i2m2.separate_towers:
            towers.append(self.i2m2.towers[modality.name])
        return towers

    def _refreeze_towers(self) -> None:
        """Loading replaces the parameters, and new ones require gradients: freeze again what the
        config freezes, or fine-tuning a loaded model would silently train its frozen towers."""
        for modality in self.config.modalities:
            for tower in self._towers_of(modality):
                _set_trainable(tower, modality)

    def train(self, mode: bool = True) -> "I2MoEForClassification":
        super().train(mode)
        for modality in self.config.modalities:
            if modality.freeze:  # frozen towers keep BatchNorm statistics and skip dropout
                for tower in self._towers_of(modality):
                    tower.eval()
        for name in self.frozen_modules:
            self.get_submodule(name).eval()
        return self

    def forward(
        self,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_dict: bool | None = None,
        modality_names: list[str] | None = None,
        **modality_inputs: torch.Tensor,
    ) -> I2MoEOutput | tuple:
        r"""
        Args:
            modality_mask (`torch.Tensor` of shape `(batch_size, num_modalities)`, *optional*):
                1 (or True) where the modality is present, 0 where it is missing; columns in
                config order. Defaults to "present" for every modality whose inputs are given.
            labels (`torch.Tensor`, *optional*): class indices `(batch_size,)` for single-label
                classification, multi-hot `(batch_size, num_labels)` for multi-label, targets
                `(batch_size,)` or `(batch_size, num_labels)` for regression.
            modality_names (`list[str]`, *optional*): the column order of `modality_mask`, as the
                processor gives it; an error if it differs from `config.modality_names`.
            modality_inputs: the towers' inputs, named `{modality}_{tower_input}`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        # Stand-in for the lead's check (issue 16): the processor now sends its modality order.
        if modality_names is not None and list(modality_names) != list(self.config.modality_names):
            raise ValueError(
                f"modality_names: the processor's modality order {list(modality_names)} differs from the model's "
                f"{list(self.config.modality_names)}; build the processor with the modalities in config order"
            )
        routed = self._route_inputs(modality_inputs)
        present = self._presence(modality_mask, routed, _batch_size(routed, modality_mask))
        result = self._predict(routed, present, labels)
        loss = None
        if labels is not None:
            loss = self.task_loss(result.logits, labels)
            if result.auxiliary_loss is not None:
                loss = loss + result.auxiliary_loss
        output = I2MoEOutput(loss=loss, logits=result.logits, **result.extra_outputs)
        return output if return_dict else output.to_tuple()

    def _predict(self, routed: dict, present: torch.Tensor, labels: torch.Tensor | None) -> InteractionOutput:
        """Tokens -> the interaction part, and with I2M2 heads the product of experts (per
        `config.i2m2_mode`: product, intra-only or inter-only)."""
        mode = self.config.i2m2_mode if self.i2m2 is not None else "inter"
        shared_tokens = None
        if mode != "intra" or not self.i2m2.separate_towers:
            shared_tokens = self._embed(routed, present)
        if mode == "inter":
            return self.interaction(shared_tokens, present=present, null_tokens=self.null_tokens, labels=labels)
        inter = None
        if mode == "product":
            inter = self.interaction(shared_tokens, present=present, null_tokens=self.null_tokens, labels=labels)
        unimodal_tokens = self._embed(routed, present, self.i2m2) if self.i2m2.separate_towers else shared_tokens
        unimodal_logits = self.i2m2(unimodal_tokens)
        problem_type = self.config.problem_type or _infer_problem_type(self.config.num_labels, labels)
        logits = combine_i2m2(unimodal_logits, present, None if inter is None else inter.logits, problem_type)
        extra_outputs = dict(inter.extra_outputs) if inter is not None else {}
        # A missing modality's head is reported as zeros: it is not part of the product.
        extra_outputs["unimodal_logits"] = unimodal_logits.masked_fill(~present[..., None], 0.0)
        return InteractionOutput(
            logits=logits, auxiliary_loss=None if inter is None else inter.auxiliary_loss, extra_outputs=extra_outputs
        )

    def embed_modalities(self, modality_mask: torch.Tensor | None = None, **modality_inputs) -> torch.Tensor:
        """The fusion tokens `(B, T, d)` for a batch: each present modality through its tower once,
        the learned null tokens wherever a modality is missing (see `forward` for the inputs)."""
        routed = self._route_inputs(modality_inputs)
        return self._embed(routed, self._presence(modality_mask, routed, _batch_size(routed, modality_mask)))

    def _embed(self, routed: dict[str, dict[str, torch.Tensor]], present: torch.Tensor,
               encoder: nn.Module | None = None) -> torch.Tensor:
        """Tokens from `encoder`'s `towers`, `projections` and `null_tokens` (the model's own, or
        the I2M2 heads' separate unimodal ones)."""
        encoder = self if encoder is None else encoder
        batch_size = present.shape[0]
        chunks = []
        for index, name in enumerate(self.layout.names):
            null = encoder.null_tokens[self.layout.token_slice(index)].expand(batch_size, -1, -1)
            rows = present[:, index]
            if name not in routed or not rows.any():
                chunks.append(_with_idle_modality_parameters(encoder, name, null, self.training))
            elif rows.all():
                # `where` rather than a plain return keeps the null tokens in the graph, so every
                # parameter gets a gradient each step (DDP requires that).
                chunks.append(torch.where(rows[:, None, None], self._encode(name, routed[name], encoder), null))
            else:
                # Only the present rows go through the tower: no wasted compute, and placeholder
                # inputs never reach BatchNorm statistics.
                indices = rows.nonzero().squeeze(1)
                subset = {argument: value[indices] for argument, value in routed[name].items()}
                encoded = self._encode(name, subset, encoder)
                chunks.append(null.index_copy(0, indices, encoded.to(null.dtype)))
        return torch.cat(chunks, dim=1)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss for `config.problem_type` (inferred from `num_labels` and the labels if unset)."""
        problem_type = self.config.problem_type or _infer_problem_type(self.config.num_labels, labels)
        num_labels = self.config.num_labels
        if labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels: expected {logits.shape[0]} rows (the batch size), got shape {tuple(labels.shape)}")
        if problem_type == "single_label_classification":
            if labels.dim() != 1 or labels.is_floating_point():
                raise ValueError(
                    f"labels: single-label classification expects integer class indices of shape (batch,), got "
                    f"dtype {labels.dtype} and shape {tuple(labels.shape)}"
                )
            if not torch.compiler.is_compiling() and (labels.min() < 0 or labels.max() >= num_labels):
                raise ValueError(
                    f"labels: class indices must lie in [0, {num_labels - 1}] (num_labels={num_labels}), got values "
                    f"from {labels.min().item()} to {labels.max().item()}"
                )
            return F.cross_entropy(logits.float(), labels)
        if problem_type == "multi_label_classification":
            if labels.shape != logits.shape:
                raise ValueError(
                    f"labels: multi-label classification expects multi-hot labels of shape {tuple(logits.shape)}, "
                    f"got {tuple(labels.shape)}"
                )
            _check_finite_labels(labels)
            if not torch.compiler.is_compiling() and ((labels < 0) | (labels > 1)).any():
                raise ValueError(
                    f"labels: multi-label targets must lie in [0, 1] (multi-hot), got values from "
                    f"{labels.min().item()} to {labels.max().item()}"
                )
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        targets = labels.float().reshape(logits.shape) if labels.numel() == logits.numel() else None
        if targets is None:
            raise ValueError(
                f"labels: regression with num_labels={num_labels} expects {num_labels} target(s) per row, got shape "
                f"{tuple(labels.shape)}"
            )
        _check_finite_labels(targets)
        return F.mse_loss(logits.float(), targets)

    def _encode(self, name: str, tower_inputs: dict[str, torch.Tensor], encoder: nn.Module) -> torch.Tensor:
        tower = encoder.towers[name]
        _check_tower_inputs(name, tower_inputs, tower.config)
        with torch.set_grad_enabled(torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())):
            try:
                outputs = tower(**tower_inputs, return_dict=True)
            except (ValueError, TypeError) as error:  # say which modality's input was wrong
                raise type(error)(f"modality {name!r} (inputs {name}_*): {error}") from error
        sequence = outputs.last_hidden_state
        if sequence.dim() == 4:  # CNN feature map (B, C, h, w) -> spatial tokens (B, h*w, C)
            sequence = sequence.flatten(2).transpose(1, 2)
        mask = _sequence_mask(tower, tower_inputs.get("attention_mask"), sequence.shape[1])
        return encoder.projections[name](sequence, mask, getattr(outputs, "pooler_output", None))

    def _build_i2m2_heads(self, towers: dict[str, PreTrainedModel]) -> I2M2UnimodalHeads:
        """The unimodal heads; with `i2m2_separate_towers`, each with its own tower and projection
        (a copy of a given pretrained tower when its config is not overridden)."""
        config = self.config
        if not config.i2m2_separate_towers:
            return I2M2UnimodalHeads(config, self.layout)
        overrides = config.i2m2_tower_overrides or {}
        unimodal_towers = nn.ModuleDict()
        for modality in config.modalities:
            if modality.name in towers and modality.name not in overrides:
                # The copy keeps the `_is_hf_initialized` flags, so `post_init` leaves it untouched.
                tower = copy.deepcopy(towers[modality.name])
            else:
                tower = _build_tower(config.i2m2_tower_config(modality.name))
            _set_trainable(tower, modality)
            unimodal_towers[modality.name] = tower
        projections = nn.ModuleDict({
            modality.name: ModalityProjection(
                ModalityConfig(name=modality.name, tower=unimodal_towers[modality.name].config,
                               pooling=modality.pooling, num_tokens=modality.num_tokens),
                config,
            )
            for modality in config.modalities
        })
        return I2M2UnimodalHeads(config, self.layout, unimodal_towers, projections)

    def _route_inputs(self, modality_inputs: dict) -> dict[str, dict[str, torch.Tensor]]:
        routed: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in modality_inputs.items():
            if key not in self._input_routes:
                raise ValueError(
                    f"unexpected input {key!r}; this model takes {self.input_names} (tower inputs are named "
                    f"'{{modality}}_{{tower_input}}' for modalities {list(self.layout.names)})"
                )
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{key}: expected a torch.Tensor, got {type(value).__name__}")
            if value.dim() == 0:
                raise ValueError(f"{key}: expected a batch (a leading batch dimension), got a 0-dimensional tensor")
            name, argument = self._input_routes[key]
            routed.setdefault(name, {})[argument] = value
        return routed

    def _presence(self, modality_mask, routed: dict, batch_size: int) -> torch.Tensor:
        device = self.null_tokens.device
        if modality_mask is None:
            return torch.tensor([name in routed for name in self.layout.names], device=device).expand(batch_size, -1)
        expected = (batch_size, self.layout.num_modalities)
        if not isinstance(modality_mask, torch.Tensor) or tuple(modality_mask.shape) != expected:
            shape = tuple(modality_mask.shape) if isinstance(modality_mask, torch.Tensor) else type(modality_mask).__name__
            raise ValueError(
                f"modality_mask: expected shape {expected} (batch, modalities {list(self.layout.names)}), got {shape}"
            )
        if modality_mask.dtype != torch.bool and not ((modality_mask == 0) | (modality_mask == 1)).all():
            raise ValueError(f"modality_mask: values must be 0 or 1, got {modality_mask.unique().tolist()}")
        present = modality_mask.to(device=device, dtype=torch.bool)
        empty_rows = (~present.any(1)).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(f"modality_mask: rows {empty_rows} have no modality present; every sample needs at least one")
        for index, name in enumerate(self.layout.names):
            if name not in routed and present[:, index].any():
                raise ValueError(
                    f"modality_mask marks modality {name!r} present, but no '{name}_*' input was given "
                    f"(expected one of {[key for key, route in self._input_routes.items() if route[0] == name]}). "
                    f"{_COLUMN_FILTER_HINT}"
                )
        return present


# `from_pretrained` arguments that locate files, for reading the checkpoint's own config.json.
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _check_saved_modalities(path, config: PreTrainedConfig, kwargs: dict) -> None:
    """A `config` passed to `from_pretrained` must name the checkpoint's modalities, in its order:
    otherwise towers would be loaded into the wrong modality or silently re-initialised."""
    try:
        saved, _ = I2MoEConfig.get_config_dict(path, **{key: kwargs[key] for key in _HUB_KWARGS if key in kwargs})
    except OSError:  # no config.json beside the weights: the key check after loading still applies
        return
    saved_names = [modality.get("name") for modality in saved.get("modalities") or []]
    if saved_names and saved_names != list(config.modality_names):
        raise ValueError(
            f"{path}: the checkpoint holds modalities {saved_names}, but the `config` passed to from_pretrained has "
            f"{list(config.modality_names)}; load it with its own config (drop `config=`) or one with the same "
            "modalities in the same order"
        )


def _check_loaded_modalities(config: I2MoEConfig, loading_info: dict) -> None:
    """Tower or projection weights missing from the checkpoint, or left over in it, mean the
    checkpoint and the config disagree about the modalities."""
    def modalities_of(keys) -> list[str]:
        return sorted({key.split(".")[1] for key in keys if key.startswith(("towers.", "projections."))})

    missing, unexpected = modalities_of(loading_info["missing_keys"]), modalities_of(loading_info["unexpected_keys"])
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's weights do not match the config's modalities {list(config.modality_names)}: "
            f"no weights for {missing}, unused weights of {unexpected}; load it with the config it was saved with"
        )


def _with_idle_modality_parameters(encoder: nn.Module, name: str, null: torch.Tensor, training: bool) -> torch.Tensor:
    """`null` (the tokens of modality `name`, missing from the whole batch), tied to the
    modality's trainable tower and projection parameters in `encoder` by a zero-weighted term.

    DDP (without `find_unused_parameters=True`) needs a gradient for every trainable parameter
    in every step of every process; a tower skipped because its modality is missing from this
    process's batch would get none, and the step after fails. The zero-weighted term gives
    those parameters an exact zero gradient (summed with the other processes' real ones) while
    reading one element per parameter, instead of running the tower on placeholder data.
    """
    if not (training and torch.is_grad_enabled()):
        return null
    idle = [
        parameter
        for module in (encoder.towers[name], encoder.projections[name])
        for parameter in module.parameters()
        if parameter.requires_grad
    ]
    if not idle:
        return null
    anchor = torch.cat([parameter.reshape(-1)[:1] for parameter in idle]).sum() * 0.0
    return null + anchor.to(null.dtype)


def _build_tower(config) -> PreTrainedModel:
    builtin = BUILTIN_TOWERS.get(config.model_type)
    return builtin(config) if builtin is not None else AutoModel.from_config(config)


def _set_trainable(tower: PreTrainedModel, modality: ModalityConfig) -> None:
    if modality.freeze:
        tower.requires_grad_(False)
    elif modality.pooling != "pooler" and isinstance(getattr(tower, "pooler", None), nn.Module):
        # An unused pooler would get no gradient, which DDP reports as an error.
        tower.pooler.requires_grad_(False)


def _tower_arguments(tower: nn.Module) -> list[str]:
    parameters = inspect.signature(tower.forward).parameters
    return [argument for argument in TOWER_INPUT_ARGUMENTS if argument in parameters]


def _sequence_mask(tower, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The padding mask of the tower's output sequence, when one can be told."""
    if attention_mask is None:
        return None
    if attention_mask.shape[-1] == length:
        return attention_mask
    if hasattr(tower, "_get_feature_vector_attention_mask"):  # audio towers downsample their input
        return tower._get_feature_vector_attention_mask(length, attention_mask)
    return None


def _batch_size(routed: dict[str, dict[str, torch.Tensor]], modality_mask) -> int:
    sizes = {f"{name}_{argument}": value.shape[0] for name, inputs in routed.items() for argument, value in inputs.items()}
    if isinstance(modality_mask, torch.Tensor) and modality_mask.dim() > 0:
        sizes["modality_mask"] = modality_mask.shape[0]
    if not sizes:
        raise ValueError(f"the model received no modality inputs. {_COLUMN_FILTER_HINT}")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inputs disagree on the batch size: {sizes}")
    batch_size = next(iter(sizes.values()))
    if batch_size == 0:  # every loss of an empty batch is NaN
        raise ValueError(f"the batch is empty: inputs {sorted(sizes)} have 0 rows")
    return batch_size


# Tower inputs by what they must hold; `_check_tower_inputs` checks them before the tower runs.
_FLOAT_INPUTS = ("pixel_values", "input_values", "input_features", "features")
_TOKEN_ALIGNED_INPUTS = ("attention_mask", "token_type_ids")


def _check_tower_inputs(name: str, inputs: dict[str, torch.Tensor], tower_config) -> None:
    """Reject the inputs a tower would turn into a NaN loss silently (NaN or inf features) or fail on
    deep inside with an error that names neither the input nor the limit (integer pixels, token ids
    beyond the vocabulary or the position table, masks not aligned with the ids). Only the rows that
    reach the tower are checked: placeholder rows of missing samples may hold anything."""
    if torch.compiler.is_compiling():  # data-dependent checks would break the graph
        return
    for argument, value in inputs.items():
        key = f"{name}_{argument}"
        if argument in _FLOAT_INPUTS:
            if not value.is_floating_point():
                raise TypeError(f"{key}: expected a floating-point tensor, got dtype {value.dtype} (convert and "
                                "normalise it first, e.g. with the processor)")
            if not torch.isfinite(value).all():
                raise ValueError(f"{key}: contains NaN or inf values; clean or impute them before the model")
    input_ids = inputs.get("input_ids")
    if input_ids is None:
        return
    key = f"{name}_input_ids"
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.dim() != 2:
        raise TypeError(f"{key}: expected integer token ids of shape (batch, sequence), got dtype {input_ids.dtype} "
                        f"and shape {tuple(input_ids.shape)}")
    vocab_size = getattr(tower_config, "vocab_size", None)
    if vocab_size:
        low, high = torch.aminmax(input_ids)  # one pass, one device sync below
        if bool((low < 0) | (high >= vocab_size)):
            raise ValueError(f"{key}: token ids must lie in [0, {vocab_size - 1}] (the tower's vocab_size is "
                             f"{vocab_size}), got values from {low.item()} to {high.item()}; was the text "
                             "tokenized with this tower's tokenizer?")
    max_length = getattr(tower_config, "max_position_embeddings", None)
    if max_length and input_ids.shape[1] > max_length:
        raise ValueError(f"{key}: {input_ids.shape[1]} tokens, but the tower takes at most {max_length} "
                         "(max_position_embeddings); truncate the text, e.g. with the processor's `text_max_length`")
    for argument in _TOKEN_ALIGNED_INPUTS:
        if argument in inputs and inputs[argument].shape != input_ids.shape:
            raise ValueError(f"{name}_{argument}: expected the shape of {key} {tuple(input_ids.shape)}, got "
                             f"{tuple(inputs[argument].shape)}")


def _check_finite_labels(labels: torch.Tensor) -> None:
    if not torch.compiler.is_compiling() and labels.is_floating_point() and not torch.isfinite(labels).all():
        rows = (~torch.isfinite(labels.reshape(labels.shape[0], -1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"labels: rows {rows} hold NaN or inf targets; drop or fix them (the loss would be NaN)")


def _infer_problem_type(num_labels: int, labels: torch.Tensor | None) -> str:
    """transformers' rule; without labels (inference) a classifier is taken as single-label."""
    if num_labels == 1:
        return "regression"
    if labels is None or (labels.dim() == 1 and not labels.is_floating_point()):
        return "single_label_classification"
    return "multi_label_classification"


__all__ = ["I2MoEForClassification", "I2MoEOutput", "I2MoEPreTrainedModel"]
