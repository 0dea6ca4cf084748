"""I2MoE for classification: one encoder per modality, an interaction part, I2M2 heads, the task loss.

The path of one batch, in `I2MoEForClassification.forward` (input and checkpoint checks live in
`checks_i2moe.py`):

1. `_route_inputs` / `_presence`: the inputs `{modality}_{tower_input}` grouped by modality, and
   which rows hold which modality (`modality_mask`); in training, `_drop_modalities` applies
   `config.modality_dropout`.
2. `_encode`: each modality's `ModalityEncoder` (`encoders_i2moe.py`) runs its tower once on the
   rows that hold it, pools or resamples, projects and layer-norms, and fills the other rows with
   its learned null tokens: tokens `(B, T, d)`, T = the modalities' token counts, in config order.
   With separate I2M2 towers, the `unimodal_encoders` do the same for the unimodal heads.
3. `_predict`: the interaction part chosen by `config.method` (registered in `INTERACTIONS`:
   vanilla fusion, I2MoE's experts, DMIL) maps the tokens to an `InteractionOutput`; with
   `config.i2m2`, the unimodal heads join it in a product of experts (`combine_i2m2`), a missing
   modality's head dropping out of its row's product.
4. `_task_loss` for `config.problem_type`, plus the part's `interaction_loss`.

This file travels with saved models as Hub remote code: it imports only its sibling files.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from safetensors import SafetensorError
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput, logging

from .checks_i2moe import (
    as_tensor_input, batch_size_of, check_labels, check_loaded_weights, check_modality_mask,
    check_modality_names, check_presence, check_saved_modalities, infer_problem_type, load_format1_state_dict,
    saved_config_dict,
)
from .configuration_i2moe import I2MoEConfig, ModalityConfig
from .dmil_i2moe import DMILInteraction  # noqa: F401  (registers the interaction parts,
from .encoders_i2moe import ModalityEncoder
from .experts_i2moe import I2MoEInteraction  # noqa: F401  and saves their files as remote code)
from .fusion_i2moe import InteractionOutput, TokenLayout
from .i2m2_i2moe import I2M2UnimodalHeads, assemble_i2m2, combine_i2m2
from .noise_i2moe import CounterNoise, uniform
from .pipeline_i2moe import CUSTOM_PIPELINES  # (registers the pipeline task, and saves its file as remote code)
from .registry_i2moe import INTERACTIONS


logger = logging.get_logger(__name__)


@dataclass
class I2MoEOutput(ModelOutput):
    r"""
    Output of [`I2MoEForClassification`]: the loss and the fields of the interaction part's
    `InteractionOutput`, under the same names. Fields that the configured parts do not produce are `None`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): task loss plus `interaction_loss`;
            returned when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): the prediction.
        component_logits (`torch.FloatTensor` of shape `(batch_size, num_components, num_labels)`):
            I2MoE / DMIL: each interaction component's logits (I2MoE's experts on the clean inputs,
            DMIL's component heads), in the order of `model.interaction.component_names`:
            `uniqueness_<modality>`..., `redundancy`, `synergy`.
        component_weights (`torch.FloatTensor` of shape `(batch_size, num_components)`): I2MoE's
            reweighting model or DMIL's gate: the per-sample weights of the components (rows sum to 1).
        unimodal_logits (`torch.FloatTensor` of shape `(batch_size, num_modalities, num_labels)`):
            I2M2: each modality's unimodal head (zeros where the modality is missing: that head is not
            part of the row's product). DMIL: its level-1 heads; with I2M2 heads on a DMIL part, the
            I2M2 heads (the experts of the final product) take this field.
        interaction_loss (`torch.FloatTensor` of shape `()`): the auxiliary loss the interaction part
            adds to the task loss, weighted (I2MoE: `i2moe.lambda_int * L_int`; DMIL: the stage's terms).
        loss_terms (`dict[str, torch.FloatTensor]`): every loss term unweighted, by name (for logging;
            I2MoE's `L_int` is `loss_terms["interaction"]`).

    `expert_logits`, `expert_weights` and `gate_weights` are deprecated aliases of
    `component_logits` and `component_weights`.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    component_logits: torch.FloatTensor | None = None
    component_weights: torch.FloatTensor | None = None
    unimodal_logits: torch.FloatTensor | None = None
    interaction_loss: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.FloatTensor] | None = None

    @property
    def expert_logits(self) -> torch.FloatTensor | None:
        _warn_renamed("expert_logits", "component_logits")
        return self.component_logits

    @property
    def expert_weights(self) -> torch.FloatTensor | None:
        _warn_renamed("expert_weights", "component_weights")
        return self.component_weights

    @property
    def gate_weights(self) -> torch.FloatTensor | None:
        _warn_renamed("gate_weights", "component_weights")
        return self.component_weights


def _warn_renamed(old: str, new: str) -> None:
    warnings.warn(f"I2MoEOutput.{old} is deprecated; use `{new}`", FutureWarning, stacklevel=3)


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
        if hasattr(module, "init_parameters"):
            module.init_parameters(self.config.initializer_range)
        else:
            super()._init_weights(module)


class I2MoEForClassification(I2MoEPreTrainedModel):
    r"""
    Multimodal classifier (or regressor) over named modality towers.

    Inputs are keyword arguments named `{modality}_{tower_input}`, e.g. `image_pixel_values`,
    `text_input_ids`, `text_attention_mask`, `tabular_features` (see `input_names`), plus
    `modality_mask` `(batch, num_modalities)` with 1 where a modality is present. A modality whose
    mask entry is 0, or whose inputs are absent from the call, is replaced by its learned null
    tokens; a modality absent for the whole batch skips its tower. A frozen tower's outputs can be
    passed instead of its inputs, as `{modality}_tower_features` (see `ModalityEncoder.tower_features`).

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
        # Saved with the config: `pipeline("multimodal-classification", model=folder, trust_remote_code=True)`.
        config.custom_pipelines = {task: dict(spec) for task, spec in CUSTOM_PIPELINES.items()}
        towers = dict(towers or {})
        unknown = sorted(set(towers) - set(config.modality_names))
        if unknown:
            raise ValueError(f"towers given for unknown modalities {unknown}; the config has {config.modality_names}")
        self.layout = TokenLayout(
            tuple(config.modality_names), tuple(modality.num_tokens for modality in config.modalities)
        )
        self.encoders = nn.ModuleDict(
            {modality.name: ModalityEncoder(modality, config, towers.get(modality.name)) for modality in config.modalities}
        )
        for modality in config.modalities:  # one config object, so tower settings stay in sync
            modality.tower = self.encoders[modality.name].tower.config
        self.interaction = INTERACTIONS.get(config.method)(config, self.layout)
        self.i2m2_heads = I2M2UnimodalHeads(config, self.layout) if config.i2m2 is not None else None
        separate = config.i2m2 is not None and config.i2m2.separate_towers
        self.unimodal_encoders = self._build_unimodal_encoders(towers) if separate else None
        self._input_routes = {
            f"{name}_{argument}": (name, argument)
            for name, encoder in self.encoders.items()
            for argument in encoder.input_arguments
        }
        self._token_modality = [index for index, count in enumerate(self.layout.num_tokens) for _ in range(count)]
        self._noise_step = 0  # training steps with `sample_ids`: the counter of `CounterNoise`
        self.post_init()
        self.set_frozen()

    def _build_unimodal_encoders(self, towers: dict[str, PreTrainedModel]) -> nn.ModuleDict:
        """I2M2's separate unimodal networks: per modality a tower (a copy of a given pretrained tower
        when `i2m2.tower_overrides` does not change it) with its own projection."""
        overrides = self.config.i2m2.tower_overrides or {}
        encoders = nn.ModuleDict()
        for modality in self.config.modalities:
            # The copy keeps the `_is_hf_initialized` flags, so `post_init` leaves it untouched.
            copied = modality.name in towers and modality.name not in overrides
            tower = copy.deepcopy(towers[modality.name]) if copied else None
            unimodal = ModalityConfig(
                name=modality.name, tower=self.config.i2m2_tower_config(modality.name), pooling=modality.pooling,
                num_tokens=modality.num_tokens, freeze=modality.freeze,
            )
            encoders[modality.name] = ModalityEncoder(unimodal, self.config, tower, learned_null_tokens=False)
        return encoders

    @property
    def input_names(self) -> list[str]:
        """The keyword arguments this model takes besides `labels`."""
        return [*self._input_routes, "modality_mask"]

    @property
    def null_tokens(self) -> torch.Tensor:
        """All modalities' learned null tokens `(T, d)`, in token order."""
        return torch.cat([encoder.null_tokens for encoder in self.encoders.values()])

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
        pretrained = tuple(f"encoders.{name}.tower." for name in loaded)
        if model.unimodal_encoders is not None:  # copies of the given towers
            overrides = model.config.i2m2.tower_overrides or {}
            pretrained += tuple(f"unimodal_encoders.{name}.tower." for name in loaded if name not in overrides)
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
                the intra-only baseline (`i2m2.mode="intra"`) whose towers are the unimodal ones.
            config_overrides: further `I2MoEConfig` fields. With an inter part the default is
                `i2m2={"separate_towers": True}`, and `i2m2.tower_overrides` records how the unimodal
                towers differ from the inter part's (e.g. narrower LeNets).

        Every loaded weight equals the part's weight bit for bit. Returns the model in eval mode
        (as `from_pretrained` does); call `.train()` to fine-tune.

        Example:

        ```python
        >>> from i2moe import I2MoEForClassification
        >>> model = I2MoEForClassification.from_i2m2_parts(  # doctest: +SKIP
        ...     unimodal={"image": "runs/image-only", "audio": "runs/audio-only"}, inter="runs/late-fusion")
        >>> model.config.i2m2.mode, model.config.i2m2.separate_towers  # doctest: +SKIP
        ('product', True)
        ```
        """
        return assemble_i2m2(cls, unimodal, inter, **config_overrides)

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
        checkpoint whose modalities differ from the `config` passed in, weights that do not match
        the config (another method, I2M2 heads added or removed), and a weights file that cannot be
        read (truncated or corrupt). Checkpoints saved in format version 1 are converted."""
        return_loading_info = kwargs.pop("output_loading_info", False)
        saved = saved_config_dict(pretrained_model_name_or_path, kwargs)
        config = kwargs.get("config")
        if isinstance(config, PreTrainedConfig):
            check_saved_modalities(pretrained_model_name_or_path, saved, config)
        source = pretrained_model_name_or_path
        try:
            if saved is not None and saved.get("i2moe_format_version", 1) == 1 and "state_dict" not in kwargs:
                kwargs["state_dict"] = load_format1_state_dict(source, saved, kwargs)
                kwargs.setdefault("config", I2MoEConfig.from_dict(saved))  # converted to the grouped settings
                source = None  # transformers takes the weights from `state_dict` alone
            model, loading_info = super().from_pretrained(source, *model_args, output_loading_info=True, **kwargs)
        except SafetensorError as error:
            raise OSError(
                f"{pretrained_model_name_or_path}: the safetensors weights cannot be read ({error}); the file is "
                "truncated or corrupt: download or save it again"
            ) from error
        check_loaded_weights(model.config, loading_info)
        model.set_frozen()  # loading replaces the parameters, and new ones require gradients
        return (model, loading_info) if return_loading_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, but a path that is an existing file is an error (transformers
        only logs it and saves nothing)."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained: {save_directory} is an existing file; give a directory to save the model in")
        return super().save_pretrained(save_directory, *args, **kwargs)

    # --- freezing ---------------------------------------------------------------------------------

    def set_frozen(self, modules: tuple[str, ...] = (), eval_modules: tuple[str, ...] | None = None) -> None:
        """The one place that decides which parameters train: every parameter but those of the
        towers the config freezes (each `ModalityEncoder.apply_freezing`, shared and I2M2 separate
        towers alike) and of the submodules named in `modules` (e.g. DMIL's stage 2). `eval_modules`
        (default: `modules`) stay in eval mode through `train()` (BatchNorm statistics, dropout)."""
        self.requires_grad_(True)
        for encoder in self._all_encoders():
            encoder.apply_freezing()
        for name in modules:
            self.get_submodule(name).requires_grad_(False)
        self.frozen_modules = tuple(modules)
        self.eval_modules = tuple(modules if eval_modules is None else eval_modules)
        self.train(self.training)

    def train(self, mode: bool = True) -> "I2MoEForClassification":
        super().train(mode)  # each encoder keeps a frozen tower in eval mode
        for name in getattr(self, "eval_modules", ()):
            self.get_submodule(name).eval()
        return self

    def _all_encoders(self) -> list[ModalityEncoder]:
        encoders = list(self.encoders.values())
        return encoders + (list(self.unimodal_encoders.values()) if self.unimodal_encoders is not None else [])

    # --- the data path ------------------------------------------------------------------------------

    def forward(
        self,
        modality_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        modality_names: list[str] | None = None,
        sample_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **modality_inputs: torch.Tensor,
    ) -> I2MoEOutput | tuple:
        r"""
        Args:
            modality_mask (`torch.Tensor` of shape `(batch_size, num_modalities)`, *optional*):
                1 (or True) where the modality is present, 0 where it is missing; columns in
                config order. Defaults to "present" for every modality whose inputs are given.
            labels (`torch.Tensor`, numpy array or list, *optional*): class indices `(batch_size,)`
                for single-label classification, multi-hot `(batch_size, num_labels)` for
                multi-label, targets `(batch_size,)` or `(batch_size, num_labels)` for regression.
            modality_names (`list[str]`, *optional*): the modality order the inputs were prepared in
                (the processor returns it); an error if it is not the model's.
            sample_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*): an id per sample
                (e.g. its dataset index). In training, the method's noise (I2MoE perturbations,
                DMIL samples, modality dropout) is then drawn per sample (`noise_i2moe.CounterNoise`),
                so a run on several processes equals the run on one; without them, from torch's RNG.
            modality_inputs: the towers' inputs, named `{modality}_{tower_input}`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        check_modality_names(modality_names, self.config.modality_names)
        routed = self._route_inputs(modality_inputs)
        present = self._presence(modality_mask, routed, batch_size_of(routed, modality_mask))
        if labels is not None:
            labels = as_tensor_input("labels", labels).to(present.device)
        problem_type = self._problem_type(labels)
        if labels is not None:  # before the interaction part's own losses read them
            check_labels(labels, (present.shape[0], self.config.num_labels), problem_type)
        noise = self._training_noise(sample_ids, present.shape[0])
        if self.training:
            present = self._drop_modalities(present, noise)
        tokens, unimodal_tokens = self._encode(routed, present)
        result = self._predict(tokens, unimodal_tokens, present, labels, problem_type, noise)
        loss = None
        if labels is not None:
            loss = self._task_loss(result.logits, labels, problem_type)
            if result.interaction_loss is not None:
                loss = loss + result.interaction_loss
        output = I2MoEOutput(loss=loss, **result)
        return output if return_dict else output.to_tuple()

    def forward_subsets(self, subsets: torch.Tensor, modality_mask: torch.Tensor | None = None,
                        modality_names: list[str] | None = None, **modality_inputs: torch.Tensor) -> I2MoEOutput:
        """The model's outputs with only a subset of the modalities present, for S subsets at once:
        every tower runs once, each subset's tokens are built by null-token replacement and the S
        variants are stacked along the batch through the interaction part and heads (as I2MoE
        stacks its perturbed variants). Output s equals `forward(modality_mask=modality_mask &
        subsets[s], ...)` in eval mode; rows where that leaves no modality hold the all-null
        prediction. Used by `i2moe.attribution`.

        Args:
            subsets (`torch.BoolTensor` of shape `(S, num_modalities)`): the modalities kept, per subset.
            modality_mask, modality_names, modality_inputs: as in `forward`.

        Returns:
            `I2MoEOutput` whose tensors have a leading subset axis: `logits` `(S, B, C)`,
            `component_logits` `(S, B, K, C)`, `component_weights` `(S, B, K)`, ...
        """
        if self.training:
            raise ValueError("forward_subsets: call `model.eval()` first (the subsets are compared without dropout)")
        check_modality_names(modality_names, self.config.modality_names)
        routed = self._route_inputs(modality_inputs)
        present = self._presence(modality_mask, routed, batch_size_of(routed, modality_mask))
        subsets = as_tensor_input("subsets", subsets).to(device=present.device)
        if subsets.dim() != 2 or subsets.shape[1] != self.layout.num_modalities:
            raise ValueError(f"subsets: expected shape (num_subsets, {self.layout.num_modalities}) (modalities "
                             f"{list(self.layout.names)}), got {tuple(subsets.shape)}")
        num_subsets, batch = subsets.shape[0], present.shape[0]
        tokens, unimodal_tokens = self._encode(routed, present)
        kept = (present[None] & subsets.bool()[:, None]).flatten(0, 1)  # (S·B, M)
        kept_tokens = kept[:, torch.tensor(self._token_modality, device=kept.device)][..., None]  # (S·B, T, 1)

        def restrict(tokens: torch.Tensor | None, null: torch.Tensor) -> torch.Tensor | None:
            return None if tokens is None else torch.where(kept_tokens, tokens.repeat(num_subsets, 1, 1), null)

        stacked = restrict(tokens, self.null_tokens)
        if unimodal_tokens is tokens:
            stacked_unimodal = stacked
        else:
            stacked_unimodal = restrict(unimodal_tokens, torch.zeros_like(self.null_tokens))
        result = self._predict(stacked, stacked_unimodal, kept, None, self._problem_type(None))
        return I2MoEOutput(**{key: value.unflatten(0, (num_subsets, batch)) for key, value in result.items()
                              if isinstance(value, torch.Tensor)})

    def embed_modalities(self, modality_mask: torch.Tensor | None = None, **modality_inputs) -> torch.Tensor:
        """The fusion tokens `(B, T, d)` for a batch: each present modality through its encoder once,
        the learned null tokens wherever a modality is missing (see `forward` for the inputs)."""
        routed = self._route_inputs(modality_inputs)
        present = self._presence(modality_mask, routed, batch_size_of(routed, modality_mask))
        return self._modality_tokens(self.encoders, routed, present)

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
        device = self.device
        names = list(self.layout.names)
        if modality_mask is None:
            return torch.tensor([name in routed for name in names], device=device).expand(batch_size, -1)
        check_modality_mask(modality_mask, (batch_size, len(names)), names)
        present = modality_mask.to(device=device, dtype=torch.bool)
        check_presence(present, routed, self._input_routes, names)
        return present

    def _training_noise(self, sample_ids, batch_size: int) -> CounterNoise | None:
        """This training step's per-sample noise source, when the batch carries `sample_ids`."""
        if not self.training or sample_ids is None:
            return None
        sample_ids = as_tensor_input("sample_ids", sample_ids)
        if tuple(sample_ids.shape) != (batch_size,) or sample_ids.is_floating_point():
            raise ValueError(f"sample_ids: expected integer ids of shape ({batch_size},), got dtype {sample_ids.dtype} "
                             f"and shape {tuple(sample_ids.shape)}")
        self._noise_step += 1
        return CounterNoise(torch.initial_seed(), self._noise_step, sample_ids.to(self.device))

    def _drop_modalities(self, present: torch.Tensor, noise: CounterNoise | None = None) -> torch.Tensor:
        """`config.modality_dropout`: each present modality of each row dropped at its rate, except
        that a row never loses all of them: it then keeps one, chosen at random."""
        rates = self.config.modality_dropout_rates()
        if max(rates) == 0.0:
            return present
        kept = present & (uniform(noise, present, stream=0) >= present.new_tensor(rates, dtype=torch.float))
        choice = uniform(noise, present, stream=1).masked_fill(~present, -1.0).argmax(1)
        rescued = F.one_hot(choice, present.shape[1]).bool() & ~kept.any(1, keepdim=True)
        return kept | rescued

    def _encode(self, routed: dict, present: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The interaction part's tokens and the unimodal heads' tokens (the same tensor unless the
        heads have separate towers); `None` for what the I2M2 mode does not use."""
        mode = self._i2m2_mode()
        separate = self.unimodal_encoders is not None
        tokens = None if mode == "intra" and separate else self._modality_tokens(self.encoders, routed, present)
        if self.i2m2_heads is None or mode == "inter":
            return tokens, None
        return tokens, self._modality_tokens(self.unimodal_encoders, routed, present) if separate else tokens

    def _modality_tokens(self, encoders: nn.ModuleDict, routed: dict, present: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [encoder(routed.get(name), present[:, index]) for index, (name, encoder) in enumerate(encoders.items())],
            dim=1,
        )

    def _predict(self, tokens, unimodal_tokens, present: torch.Tensor, labels, problem_type: str,
                 noise: CounterNoise | None = None) -> InteractionOutput:
        """Tokens -> the interaction part, and with I2M2 heads the product of experts (per
        `config.i2m2.mode`: product, intra-only or inter-only)."""
        mode = self._i2m2_mode()
        inter = None
        if mode != "intra":
            inter = self.interaction(tokens, present=present, null_tokens=self.null_tokens, labels=labels, noise=noise)
        if mode == "inter":
            return inter
        unimodal_logits = self.i2m2_heads(unimodal_tokens)
        logits = combine_i2m2(unimodal_logits, present, None if inter is None else inter.logits, problem_type)
        # A missing modality's head is reported as zeros: it is not part of the product.
        unimodal_logits = unimodal_logits.masked_fill(~present[..., None], 0.0)
        return InteractionOutput(**{**(inter or {}), "logits": logits, "unimodal_logits": unimodal_logits})

    def _i2m2_mode(self) -> str:
        return self.config.i2m2.mode if self.i2m2_heads is not None else "inter"

    def _problem_type(self, labels: torch.Tensor | None) -> str:
        """`config.problem_type`, resolved from the first labelled call when unset and stored there
        (so it is saved, and inference uses the rule training used); unset and unlabelled: single-label."""
        if self.config.problem_type is None:
            if labels is None:
                return "single_label_classification"
            self.config.problem_type = infer_problem_type(self.config.num_labels, labels)
        return self.config.problem_type

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of `logits` for `config.problem_type` (see `_problem_type`)."""
        problem_type = self._problem_type(labels)
        check_labels(labels, tuple(logits.shape), problem_type)
        return self._task_loss(logits, labels, problem_type)

    @staticmethod
    def _task_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.float(), labels)
        if problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        return F.mse_loss(logits.float(), labels.float().reshape(logits.shape))


__all__ = ["I2MoEForClassification", "I2MoEOutput", "I2MoEPreTrainedModel"]
