"""Input and checkpoint checks of `I2MoEForClassification`, and the reading of checkpoints saved in an
older layout: everything that stands between the user's data and the model's data path, so that
`modeling_i2moe.py` reads as that path.

Each check raises an error that names the input (or file) and what was expected, where torch or
transformers would fail deep inside with an error that names neither, or silently compute the wrong
thing. Data-dependent checks are skipped under `torch.compile` (they would break the graph).

This file travels with saved models as Hub remote code: it imports only torch, transformers,
numpy, safetensors and its sibling `configuration_i2moe`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import PreTrainedConfig
from transformers.utils import cached_file

from .configuration_i2moe import I2MoEConfig


COLUMN_FILTER_HINT = (
    "With Trainer, set `remove_unused_columns=False`: the inputs are named '{modality}_{tower_input}', which "
    "are not fixed `forward` argument names, so the default column filter drops them."
)
# `from_pretrained` arguments that locate files, for reading the checkpoint's own config.json and weights.
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")

# Tower inputs by what they must hold; `check_tower_inputs` checks them before the tower runs.
_FLOAT_INPUTS = ("pixel_values", "input_values", "input_features", "features", "tower_features")
_TOKEN_ALIGNED_INPUTS = ("attention_mask", "token_type_ids")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_tower_inputs(name: str, inputs: dict[str, torch.Tensor], tower_config) -> None:
    """Reject the inputs a tower would turn into a NaN loss silently (NaN or inf features) or fail on
    deep inside with an error that names neither the input nor the limit (integer pixels, token ids
    beyond the vocabulary or the position table, masks not aligned with the ids). Only the rows that
    reach the tower are checked: placeholder rows of missing samples may hold anything."""
    if _compiling():
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


def check_cached_features(name: str, inputs: dict[str, torch.Tensor], width: int, resampled: bool) -> None:
    """`{name}_tower_features` must have the shape `ModalityEncoder.tower_features` gives."""
    features = inputs["tower_features"]
    expected = "(batch, length, width)" if resampled else "(batch, width)"
    if features.dim() != (3 if resampled else 2) or features.shape[-1] != width:
        raise ValueError(f"{name}_tower_features: expected shape {expected} with width {width} (the tower's output), "
                         f"got {tuple(features.shape)}; compute it with the model's `tower_features`")
    check_tower_inputs(name, {"tower_features": features}, None)


def as_tensor_input(key: str, value) -> torch.Tensor:
    """A model input given as a tensor, a numpy array or a (nested) list, as a tensor (what
    transformers' data collators accept); anything else is an error naming the input."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{key}: expected a tensor, numpy array or rectangular list of numbers: {error}") from None
    raise TypeError(f"{key}: expected a torch.Tensor (or a numpy array / list), got {type(value).__name__}")


def batch_size_of(routed: dict[str, dict[str, torch.Tensor]], modality_mask) -> int:
    sizes = {f"{name}_{argument}": value.shape[0] for name, inputs in routed.items() for argument, value in inputs.items()}
    if isinstance(modality_mask, torch.Tensor) and modality_mask.dim() > 0:
        sizes["modality_mask"] = modality_mask.shape[0]
    if not sizes:
        raise ValueError(f"the model received no modality inputs. {COLUMN_FILTER_HINT}")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inputs disagree on the batch size: {sizes}")
    batch_size = next(iter(sizes.values()))
    if batch_size == 0:  # every loss of an empty batch is NaN
        raise ValueError(f"the batch is empty: inputs {sorted(sizes)} have 0 rows")
    return batch_size


def check_modality_mask(modality_mask, expected: tuple[int, int], names: list[str]) -> None:
    if not isinstance(modality_mask, torch.Tensor) or tuple(modality_mask.shape) != expected:
        shape = tuple(modality_mask.shape) if isinstance(modality_mask, torch.Tensor) else type(modality_mask).__name__
        raise ValueError(f"modality_mask: expected shape {expected} (batch, modalities {names}), got {shape}")
    if modality_mask.dtype != torch.bool and not ((modality_mask == 0) | (modality_mask == 1)).all():
        raise ValueError(f"modality_mask: values must be 0 or 1, got {modality_mask.unique().tolist()}")


def check_presence(present: torch.Tensor, routed: dict, routes: dict[str, tuple[str, str]], names: list[str]) -> None:
    empty_rows = (~present.any(1)).nonzero().flatten().tolist()
    if empty_rows:
        raise ValueError(f"modality_mask: rows {empty_rows} have no modality present; every sample needs at least one")
    for index, name in enumerate(names):
        if name not in routed and present[:, index].any():
            raise ValueError(
                f"modality_mask marks modality {name!r} present, but no '{name}_*' input was given "
                f"(expected one of {[key for key, route in routes.items() if route[0] == name]}). {COLUMN_FILTER_HINT}"
            )


def check_modality_names(modality_names, expected: list[str]) -> None:
    """The processor's modality order (the `modality_names` it returns) must be the model's: the
    columns of `modality_mask` follow it."""
    if modality_names is not None and list(modality_names) != list(expected):
        raise ValueError(
            f"modality_names: the inputs were prepared for modalities {list(modality_names)} (in that order), but the "
            f"model's modalities are {list(expected)}; build the processor with the model's modality order"
        )


def check_labels(labels: torch.Tensor, logits_shape: tuple[int, int], problem_type: str) -> None:
    """`labels` against the `(batch_size, num_labels)` logits they are the targets of."""
    batch_size, num_labels = logits_shape
    if labels.shape[0] != batch_size:
        raise ValueError(f"labels: expected {batch_size} rows (the batch size), got shape {tuple(labels.shape)}")
    if problem_type == "single_label_classification":
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(
                f"labels: single-label classification expects integer class indices of shape (batch,), got "
                f"dtype {labels.dtype} and shape {tuple(labels.shape)}"
            )
        if not _compiling() and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(
                f"labels: class indices must lie in [0, {num_labels - 1}] (num_labels={num_labels}), got values "
                f"from {labels.min().item()} to {labels.max().item()}"
            )
    elif problem_type == "multi_label_classification":
        if tuple(labels.shape) != tuple(logits_shape):
            raise ValueError(
                f"labels: multi-label classification expects multi-hot labels of shape {tuple(logits_shape)}, "
                f"got {tuple(labels.shape)}"
            )
        _check_finite_labels(labels)
        if not _compiling() and ((labels < 0) | (labels > 1)).any():
            raise ValueError(
                f"labels: multi-label targets must lie in [0, 1] (multi-hot), got values from "
                f"{labels.min().item()} to {labels.max().item()}"
            )
    else:
        if labels.numel() != batch_size * num_labels:
            raise ValueError(
                f"labels: regression with num_labels={num_labels} expects {num_labels} target(s) per row, got shape "
                f"{tuple(labels.shape)}"
            )
        _check_finite_labels(labels)


def _check_finite_labels(labels: torch.Tensor) -> None:
    if not _compiling() and labels.is_floating_point() and not torch.isfinite(labels).all():
        rows = (~torch.isfinite(labels.reshape(labels.shape[0], -1))).any(1).nonzero().flatten().tolist()
        raise ValueError(f"labels: rows {rows} hold NaN or inf targets; drop or fix them (the loss would be NaN)")


def infer_problem_type(num_labels: int, labels: torch.Tensor | None) -> str:
    """transformers' rule; without labels a classifier is taken as single-label."""
    if num_labels == 1:
        return "regression"
    if labels is None or (labels.dim() == 1 and not labels.is_floating_point()):
        return "single_label_classification"
    return "multi_label_classification"


# --- checkpoints ---------------------------------------------------------------------------------

def saved_config_dict(path, kwargs: dict) -> dict | None:
    """The checkpoint's own config.json, or `None` when there is none beside the weights."""
    try:
        saved, _ = I2MoEConfig.get_config_dict(path, **{key: kwargs[key] for key in HUB_KWARGS if key in kwargs})
    except OSError:
        return None
    return saved


def check_saved_modalities(path, saved: dict | None, config: PreTrainedConfig) -> None:
    """A `config` passed to `from_pretrained` must name the checkpoint's modalities, in its order:
    otherwise towers would be loaded into the wrong modality or silently re-initialised."""
    saved_names = [modality.get("name") for modality in (saved or {}).get("modalities") or []]
    if saved_names and saved_names != list(config.modality_names):
        raise ValueError(
            f"{path}: the checkpoint holds modalities {saved_names}, but the `config` passed to from_pretrained has "
            f"{list(config.modality_names)}; load it with its own config (drop `config=`) or one with the same "
            "modalities in the same order"
        )


def check_loaded_weights(config, loading_info: dict) -> None:
    """Weights of the model's parts missing from the checkpoint, or left over in it, mean the
    checkpoint and the config disagree (another `method`, I2M2 heads added or removed, other
    modalities): the part would run with random weights."""
    def parts_of(keys) -> list[str]:
        return sorted({".".join(key.split(".")[:2]) if key.startswith(("encoders.", "unimodal_encoders.")) else key.split(".")[0]
                       for key in keys})

    missing, unexpected = parts_of(loading_info["missing_keys"]), parts_of(loading_info["unexpected_keys"])
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's weights do not match its config (method={config.method!r}, modalities "
            f"{list(config.modality_names)}, I2M2 heads: {config.i2m2 is not None}): no weights for {missing}, unused "
            f"weights of {unexpected}; load it with the config it was saved with"
        )


def load_format1_state_dict(path, saved: dict, kwargs: dict) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint saved in format version 1, renamed and reshaped for this layout:
    `towers.<m>` / `projections.<m>` / `null_tokens` (all modalities' rows) become `encoders.<m>.*`;
    `i2m2.towers` / `i2m2.projections` become `unimodal_encoders.<m>.*`, `i2m2.classifier` becomes
    `i2m2_heads.classifier`; I2MoE's experts and reweighting output swap their last two stacks
    (version 1 ordered `..., synergy, redundancy`; now `..., redundancy, synergy`)."""
    locate = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
    index_file = cached_file(path, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **locate)
    if index_file is not None:
        with open(index_file) as handle:
            names = sorted(set(json.load(handle)["weight_map"].values()))
    else:
        names = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in names:
        state.update(load_file(os.fspath(cached_file(path, name, **locate))))
    return convert_format1_state_dict(state, saved)


def convert_format1_state_dict(state: dict[str, torch.Tensor], saved: dict) -> dict[str, torch.Tensor]:
    names = [modality["name"] for modality in saved["modalities"]]
    token_counts = [modality.get("num_tokens", 1) for modality in saved["modalities"]]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "null_tokens":
            for name, chunk in zip(names, value.split(token_counts, dim=0)):
                converted[f"encoders.{name}.null_tokens"] = chunk.clone()
            continue
        converted[_format1_key(key)] = value
    if saved.get("method") == "i2moe":
        swap = lambda tensor: torch.cat([tensor[:-2], tensor[-1:], tensor[-2:-1]])  # noqa: E731
        for key in converted:
            if key.startswith(("interaction.experts.", "interaction.reweighting.output.")):
                converted[key] = swap(converted[key])
    return converted


def _format1_key(key: str) -> str:
    for old, new in (("i2m2.towers.", "unimodal_encoders."), ("i2m2.projections.", "unimodal_encoders."),
                     ("i2m2.classifier.", "i2m2_heads.classifier."), ("towers.", "encoders."),
                     ("projections.", "encoders.")):
        if key.startswith(old):
            rest = key[len(old):]
            if old.endswith("towers."):  # '<m>.<tower key>' -> '<m>.tower.<tower key>'
                modality, _, tower_key = rest.partition(".")
                return f"{new}{modality}.tower.{tower_key}"
            return new + rest  # projections: '<m>.projection|resampler|layer_norm...' keep their names
    return key


__all__ = []
