"""I2M2 (Inter- & Intra-Modality Modeling, NeurIPS 2024): unimodal heads combined with the
interaction part as a product of experts.

`log p(y | x) = log_softmax( sum_m log_softmax(u_m) + log_softmax(c) )`: one unimodal head per
modality (`u_m`, intra-modality dependencies) and the configured interaction part (`c`: vanilla
fusion, I2MoE or DMIL; inter-modality dependencies). A head whose modality is missing from a row
drops out of that row's product. `docs/i2m2.md` justifies the multi-label and regression rules.

This file travels with saved models as Hub remote code: it imports only torch, transformers and
its sibling files.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging

from .fusion_i2moe import ModalityMean, StackedMLPHead, TokenLayout


logger = logging.get_logger(__name__)


def combine_i2m2(
    unimodal_logits: torch.Tensor,
    present: torch.Tensor,
    inter_logits: torch.Tensor | None,
    problem_type: str,
) -> torch.Tensor:
    r"""
    The I2M2 product of experts, per row, over the heads of the modalities present in that row
    and (unless `inter_logits` is `None`, the intra-only baseline) the interaction part.

    Args:
        unimodal_logits: `(batch, num_modalities, num_labels)`, the unimodal heads' outputs.
        present: `(batch, num_modalities)` bool; a missing modality's head contributes nothing.
        inter_logits: `(batch, num_labels)` from the interaction part, or `None`.
        problem_type: how the experts combine:
            - `"single_label_classification"`: `log_softmax(sum_m log_softmax(u_m) + log_softmax(c))`,
              a normalised log-posterior (use it as logits: `softmax` of it is the product's posterior).
            - `"multi_label_classification"`: `sum_m u_m + c` per label: the product of Bernoulli
              experts (odds multiply, so logits add; `sigmoid` normalises).
            - `"regression"`: the mean of the present experts' predictions: the product of Gaussian
              experts with equal variance.

    Example:

    ```python
    >>> import torch
    >>> from i2moe.i2m2_i2moe import combine_i2m2
    >>> unimodal = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # two modalities, two classes
    >>> combined = combine_i2m2(unimodal, torch.tensor([[True, False]]), torch.zeros(1, 2),
    ...                         "single_label_classification")
    >>> torch.allclose(combined, torch.log_softmax(torch.tensor([[2.0, 0.0]]), -1))
    True
    ```
    """
    weights = present.to(torch.float32)[..., None]  # (B, M, 1)
    unimodal_logits = unimodal_logits.float()
    if problem_type == "single_label_classification":
        total = (weights * F.log_softmax(unimodal_logits, dim=-1)).sum(1)
        if inter_logits is not None:
            total = total + F.log_softmax(inter_logits.float(), dim=-1)
        return F.log_softmax(total, dim=-1)
    if problem_type == "multi_label_classification":
        total = (weights * unimodal_logits).sum(1)
        return total if inter_logits is None else total + inter_logits.float()
    if problem_type == "regression":
        total, count = (weights * unimodal_logits).sum(1), weights.sum(1)
        if inter_logits is not None:
            total, count = total + inter_logits.float(), count + 1
        return total / count
    raise ValueError(f"combine_i2m2: unknown problem_type {problem_type!r}")


class I2M2UnimodalHeads(nn.Module):
    """One MLP head per modality on the mean of that modality's tokens, all M heads as one stacked
    (batched) MLP: tokens `(B, T, d)` -> unimodal logits `(B, M, num_labels)`. The tokens are the
    model's shared ones, or those of its separate unimodal encoders (`config.i2m2.separate_towers`)."""

    def __init__(self, config, layout: TokenLayout):
        super().__init__()
        self.modality_mean = ModalityMean(layout)
        self.classifier = StackedMLPHead(
            layout.num_modalities, config.hidden_size, config.i2m2.head_hidden_size, config.num_labels, config.dropout
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = self.modality_mean(tokens).transpose(0, 1)  # (M, B, d): modality = stack axis
        return self.classifier(pooled).transpose(0, 1)


# Config keys that say where a tower config came from, not what it builds.
_PROVENANCE_KEYS = {"transformers_version", "_name_or_path", "name_or_path", "architectures", "dtype", "torch_dtype"}


def assemble_i2m2(model_class, unimodal: dict, inter=None, **config_overrides):
    """Implementation of `I2MoEForClassification.from_i2m2_parts` (see there)."""
    i2m2_overrides = dict(config_overrides.pop("i2m2", None) or {})
    for key in [key for key in config_overrides if key.startswith("i2m2_")]:  # the flat keywords of format 1
        value = config_overrides.pop(key)
        if key != "i2m2_heads":
            i2m2_overrides[key.removeprefix("i2m2_")] = value
    unimodal_models = {name: _load_part(model_class, part) for name, part in unimodal.items()}
    inter_model = None if inter is None else _load_part(model_class, inter)
    for name, part in unimodal_models.items():
        _check_unimodal_part(name, part)
    if inter_model is not None and inter_model.config.i2m2 is not None:
        raise ValueError("from_i2m2_parts: the `inter` part already has I2M2 heads; pass a model without them")
    names = inter_model.config.modality_names if inter_model is not None else list(unimodal_models)
    if sorted(names) != sorted(unimodal_models):
        raise ValueError(
            f"from_i2m2_parts: `unimodal` must hold one model per modality of the inter part {names}, "
            f"got {sorted(unimodal_models)}"
        )
    parts = list(unimodal_models.values()) + ([inter_model] if inter_model is not None else [])
    for field in ("hidden_size", "num_labels"):
        values = {getattr(part.config, field) for part in parts}
        if len(values) > 1:
            raise ValueError(f"from_i2m2_parts: the parts disagree on `{field}` ({sorted(values)}); it must be equal")
    head_sizes = {part.config.fusion_hidden_size for part in unimodal_models.values()}
    if len(head_sizes) > 1:
        raise ValueError(
            f"from_i2m2_parts: the unimodal parts' heads differ in width (`fusion_hidden_size` {sorted(head_sizes)}); "
            "the stacked unimodal heads need one width"
        )

    if inter_model is not None:
        config_dict = inter_model.config.to_dict()
        separate = i2m2_overrides.get("separate_towers", True)
        tower_overrides = {}
        for modality in inter_model.config.modalities:
            unimodal_modality = unimodal_models[modality.name].config.modalities[0]
            diff = _tower_overrides(modality.name, modality.tower, unimodal_modality.tower)
            if diff:
                tower_overrides[modality.name] = diff
            if (unimodal_modality.pooling, unimodal_modality.num_tokens) != (modality.pooling, modality.num_tokens):
                raise ValueError(
                    f"from_i2m2_parts: modality {modality.name!r} has pooling/num_tokens "
                    f"{unimodal_modality.pooling}/{unimodal_modality.num_tokens} in its unimodal part but "
                    f"{modality.pooling}/{modality.num_tokens} in the inter part"
                )
        i2m2 = {"separate_towers": separate, "tower_overrides": (tower_overrides or None) if separate else None}
    else:  # intra-only: the unimodal towers become the model's towers
        config_dict = next(iter(unimodal_models.values())).config.to_dict()
        config_dict["modalities"] = [unimodal_models[name].config.modalities[0].to_dict() for name in names]
        i2m2 = {"mode": "intra", "separate_towers": False}
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
        config_dict.pop(key, None)
    config_dict["i2m2"] = {**i2m2, "head_hidden_size": head_sizes.pop(), **i2m2_overrides}
    config_dict.update(config_overrides)
    model = model_class(model_class.config_class(**config_dict))

    if inter_model is not None:
        missing, unexpected = model.load_state_dict(inter_model.state_dict(), strict=False)
        if unexpected or any(not key.startswith(("i2m2_heads.", "unimodal_encoders.")) for key in missing):
            raise ValueError(f"from_i2m2_parts: the inter part does not fit: missing {missing}, unexpected {unexpected}")
    for index, name in enumerate(model.layout.names):
        part = unimodal_models[name]
        if model.unimodal_encoders is not None:  # their missing rows are zeros: no learned null tokens
            state = {key: value for key, value in part.encoders[name].state_dict().items() if key != "null_tokens"}
            model.unimodal_encoders[name].load_state_dict(state)
        elif inter_model is None:
            model.encoders[name].load_state_dict(part.encoders[name].state_dict())
        _copy_head(part.interaction.backbone.head, model.i2m2_heads.classifier, index)
    if inter_model is not None and model.unimodal_encoders is None:
        logger.warning(
            "from_i2m2_parts: i2m2.separate_towers=False, so the unimodal heads read the inter part's towers; "
            "the unimodal parts' towers are not used (only their heads are loaded)"
        )
    return model.eval()


def _load_part(model_class, part):
    if isinstance(part, model_class):
        return part
    if isinstance(part, (str, os.PathLike)):
        return model_class.from_pretrained(part)
    raise TypeError(f"from_i2m2_parts: a part must be a {model_class.__name__} or a path, got {type(part).__name__}")


def _check_unimodal_part(name: str, part) -> None:
    config = part.config
    if config.modality_names != [name] or config.method != "vanilla" or config.fusion != "concat" or config.i2m2 is not None:
        raise ValueError(
            f"from_i2m2_parts: the unimodal part for {name!r} must be a one-modality model (modality {name!r}) with "
            f"method='vanilla', fusion='concat' and no I2M2 heads; got modalities {config.modality_names}, "
            f"method={config.method!r}, fusion={config.fusion!r}, i2m2={config.i2m2}"
        )


def _tower_overrides(name: str, inter_tower, unimodal_tower) -> dict:
    """The tower-config fields in which the unimodal part's tower differs from the inter part's."""
    if inter_tower.model_type != unimodal_tower.model_type:
        raise ValueError(
            f"from_i2m2_parts: modality {name!r} has a {unimodal_tower.model_type!r} tower in its unimodal part but a "
            f"{inter_tower.model_type!r} tower in the inter part; the separate towers must be of one kind"
        )
    inter_fields, unimodal_fields = inter_tower.to_dict(), unimodal_tower.to_dict()
    return {
        key: value for key, value in unimodal_fields.items()
        if key not in _PROVENANCE_KEYS and inter_fields.get(key) != value
    }


@torch.no_grad()
def _copy_head(source: StackedMLPHead, target: StackedMLPHead, index: int) -> None:
    """A one-stack head (a unimodal part's concat head) into stack `index` of the stacked heads."""
    for layer in ("fc1", "fc2"):
        for tensor in ("weight", "bias"):
            getattr(getattr(target, layer), tensor)[index] = getattr(getattr(source, layer), tensor)[0]


__all__ = ["I2M2UnimodalHeads", "assemble_i2m2", "combine_i2m2"]
