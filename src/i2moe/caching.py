"""Frozen-tower feature caching: run each frozen tower once over a dataset, then train on its outputs.

A frozen tower gives the same output for a sample in every epoch of every run, yet a model fed raw
inputs runs it every time (on CPU, the towers are nearly all of a step's cost). This module computes
the outputs once per (dataset, tower, sub-processor) with a batched `Dataset.map`, saves them with
`save_to_disk` under `~/.cache/i2moe/features` (`$I2MOE_CACHE/features`, or `cache_dir=`) keyed by
the dataset's fingerprint and a hash of the tower's weights and processor, and loads them on the
next run. The model reads them as its `{modality}_tower_features` (and, for resampled modalities,
`{modality}_tower_features_mask`) inputs in place of the tower inputs (`ModalityEncoder.encode`).

```python
>>> from i2moe.caching import CachedFeaturesCollator, cache_tower_features
>>> train = cache_tower_features(model, processor, dataset["train"])        # doctest: +SKIP
>>> collator = CachedFeaturesCollator(processor, cached=["image", "text"])  # doctest: +SKIP
>>> Trainer(model=model, train_dataset=train, data_collator=collator, ...)  # doctest: +SKIP
```

The cached dataset holds `{modality}_tower_features` instead of the modality's raw column (so the
collator never decodes an image it does not need); a missing modality stays missing (`None`).

Outer ring: this file imports the package and `datasets`, and does not travel as remote code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, Features, List, Value, concatenate_datasets, load_from_disk
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase


logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("I2MOE_CACHE", Path.home() / ".cache" / "i2moe")) / "features"
# Samples per tower call on CPU (see `cache_tower_features`).
CPU_TOWER_BATCH_SIZE = 16
# Bump when what is stored changes, so stale caches are not reused.
_CACHE_VERSION = 1


def feature_column(name: str) -> str:
    """The dataset column (and model input) holding modality `name`'s cached tower output."""
    return f"{name}_tower_features"


def frozen_encoder(model, name: str):
    """Modality `name`'s `ModalityEncoder` in `model`, if its tower's output may be cached.

    The one place this module reaches model internals (the lead may switch it when merging)."""
    modality = {m.name: m for m in model.config.modalities}.get(name)
    if modality is None:
        raise ValueError(f"cache_tower_features: unknown modality {name!r}; the model has {model.config.modality_names}")
    if not modality.freeze:
        raise ValueError(f"cache_tower_features: the tower of modality {name!r} is trained (freeze=False), so its "
                         f"outputs change every step; cache only frozen towers (set freeze=True in its ModalityConfig)")
    if getattr(model, "unimodal_encoders", None) is not None:
        raise ValueError("cache_tower_features: this I2M2 model has separate unimodal towers, which would receive the "
                         "interaction towers' cached outputs; cache the towers of a model without `i2m2.separate_towers`")
    return model.encoders[name]


def cache_tower_features(model, processor, dataset: Dataset, modalities: list[str] | None = None,
                         cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                         tower_batch_size: int | None = None) -> Dataset:
    """`dataset` with each frozen modality's raw column replaced by its tower output (computed with a
    progress bar the first time, loaded from `cache_dir` afterwards).

    Args:
        model: an `I2MoEForClassification` whose towers produce the features.
        processor: the `I2MoEProcessor` that turns the raw column into tower inputs.
        dataset: a `datasets.Dataset` with one column per modality (`None` where missing).
        modalities: the modalities to cache (default: every modality with a frozen tower that has
            a column in `dataset`).
        cache_dir: where the features are saved (default `~/.cache/i2moe/features`).
        batch_size: samples per `map` batch (one processor call, one Arrow write).
        tower_batch_size: samples per tower call within a `map` batch. Default: 16 on CPU, where
            a small batch keeps a convolutional tower's activations in cache (EfficientNet-Lite0
            at 128x128 on 2 cores: 306 images/s at 16, 136 at 64, 88 at 256; MiniLM 348-381
            names/s from 16 to 64; `benchmarks/tower_batch_size.py`), else `batch_size`.

    Returns:
        The dataset with `{modality}_tower_features` columns (a `(h,)` vector per sample, or an
        `(L, h)` sequence for resampled modalities; `None` where the modality is missing) in place of
        the modalities' columns, in numpy format for those columns; feed it to the model through
        `CachedFeaturesCollator`.
    """
    if modalities is None:
        modalities = [m.name for m in model.config.modalities if m.freeze and m.name in dataset.column_names]
    cached = dataset
    for name in modalities:
        if name not in dataset.column_names:
            raise ValueError(f"cache_tower_features: the dataset has no column {name!r} (columns: {dataset.column_names})")
        encoder = frozen_encoder(model, name)
        chunk = tower_batch_size or (CPU_TOWER_BATCH_SIZE if encoder.projection.weight.device.type == "cpu" else batch_size)
        features = _load_or_compute(encoder, processor, dataset, name, Path(cache_dir or DEFAULT_CACHE_DIR), batch_size,
                                    chunk)
        cached = concatenate_datasets([cached.remove_columns(name), features], axis=1)
    return cached.with_format("numpy", columns=[feature_column(name) for name in modalities], output_all_columns=True)


def _load_or_compute(encoder, processor, dataset: Dataset, name: str, cache_dir: Path, batch_size: int,
                     tower_batch_size: int) -> Dataset:
    path = cache_dir / f"{name}-{_cache_key(encoder, processor, dataset, name)}"
    if not (path / "dataset_info.json").exists():
        # In memory, then saved once: a map over an Arrow-backed dataset would otherwise also write
        # a cache file beside the source dataset.
        features = dataset.select_columns([name]).map(
            lambda batch: {feature_column(name): _tower_outputs(encoder, processor, name, batch[name], tower_batch_size)},
            batched=True, batch_size=batch_size, remove_columns=[name], keep_in_memory=True,
            features=Features({feature_column(name): _feature_type(encoder)}), desc=f"{name} tower features",
        )
        features.save_to_disk(str(path))
        logger.info(f"{name}: tower features computed and saved to {path}")
    else:
        logger.info(f"{name}: tower features loaded from {path}")
    return load_from_disk(str(path))


def _cache_key(encoder, processor, dataset: Dataset, name: str) -> str:
    """Changes with the data (the dataset's fingerprint), the tower's weights and what the encoder
    reads of it (pooling, resampling), and the modality's sub-processor."""
    weights = hashlib.sha256()
    for key, tensor in sorted(encoder.tower.state_dict().items()):
        weights.update(key.encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return Hasher.hash((
        _CACHE_VERSION, dataset._fingerprint, weights.hexdigest(), encoder.pooling, encoder.resampler is not None,
        _processor_settings(processor.processors[name]), processor.text_max_length,
    ))


def _processor_settings(sub_processor) -> str:
    """What a sub-processor does, without the folder it was loaded from: the same tokenizer or image
    processor loaded from another place (another virtual environment, another cache) finds the
    same cached features."""
    if isinstance(sub_processor, PreTrainedTokenizerBase):
        # The effective settings (not `init_kwargs`, which hold only what the constructor was given).
        backend = getattr(sub_processor, "backend_tokenizer", None)
        if backend is not None:  # normaliser, pre-tokeniser, vocabulary, post-processor
            pipeline = json.loads(backend.to_str())
            pipeline.pop("truncation", None), pipeline.pop("padding", None)  # state of the last call
        else:
            pipeline = sorted(sub_processor.get_vocab().items())
        described = [pipeline, sub_processor.model_max_length, sub_processor.padding_side,
                     sub_processor.truncation_side, sub_processor.all_special_tokens]
    else:
        described = sub_processor.to_dict()
    return json.dumps([type(sub_processor).__name__, described], default=str, sort_keys=True)


def _feature_type(encoder):
    vector = List(Value("float32"))
    return List(vector) if encoder.resampler is not None else vector


@torch.no_grad()
def _tower_outputs(encoder, processor, name: str, values: list, tower_batch_size: int) -> list:
    """One `map` batch of raw values (`None` where missing) -> one array per sample (or `None`):
    the pooled `(h,)` vector, or for resampled modalities the `(L, h)` sequence without its padding."""
    rows = [row for row, value in enumerate(values) if value is not None]
    outputs = [None] * len(values)
    device = encoder.projection.weight.device
    for start in range(0, len(rows), tower_batch_size):
        chunk = rows[start:start + tower_batch_size]
        encoded = processor(**{name: [values[row] for row in chunk]})
        inputs = {key[len(name) + 1:]: tensor.to(device) for key, tensor in encoded.items() if key.startswith(f"{name}_")}
        features, mask = encoder.tower_features(inputs)
        features = features.float().cpu().numpy()
        lengths = [features.shape[1]] * len(chunk) if mask is None else mask.sum(1).tolist()
        for index, row in enumerate(chunk):
            # Padding is kept out of the cache (the collator pads to each batch's longest): a padded
            # position is masked out of the resampler's attention, so only the valid ones matter.
            outputs[row] = features[index, : int(lengths[index])] if features.ndim == 3 else features[index]
    return outputs


class CachedFeaturesCollator:
    r"""
    Rows of a `cache_tower_features` dataset -> model inputs: the cached modalities' features
    stacked (sequences padded, with `{modality}_tower_features_mask`), the other modalities through
    the processor, `modality_mask` over all of them, and `labels` when the rows have them.

    Args:
        processor (`I2MoEProcessor`): the model's processor (its modality order fixes `modality_mask`).
        cached (`list[str]`): the modalities whose `{modality}_tower_features` columns the rows hold.
        missing (`str`, *optional*): a modality removed from every row (evaluation with it missing).
    """

    def __init__(self, processor, cached: list[str], missing: str | None = None):
        unknown = sorted(set(cached) - set(processor.modality_names) | ({missing} - {None} - set(processor.modality_names)))
        if unknown:
            raise ValueError(f"CachedFeaturesCollator: unknown modality name(s) {unknown}; the processor has "
                             f"{processor.modality_names}")
        self.processor, self.cached, self.missing = processor, list(cached), missing
        self.raw = [name for name in processor.modality_names if name not in self.cached and name != missing]

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        present = torch.tensor([[self._value(row, name) is not None for name in self.processor.modality_names]
                                for row in rows], dtype=torch.long)
        batch = self._raw_inputs(rows)
        for name in self.cached:
            if name != self.missing:
                batch.update(_stack_features(name, [self._value(row, name) for row in rows]))
        batch["modality_mask"] = present
        if rows and "labels" in rows[0]:
            batch["labels"] = torch.as_tensor(np.asarray([row["labels"] for row in rows]))
        return batch

    def _value(self, row: dict, name: str):
        if name == self.missing:
            return None
        return row.get(feature_column(name)) if name in self.cached else row.get(name)

    def _raw_inputs(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """The processor's inputs for the modalities not cached, on the rows that hold one of them
        (the processor refuses a sample without any modality), scattered back into the batch. The
        other rows get zeros: a row whose modality is missing never reaches that tower."""
        with_raw = [index for index, row in enumerate(rows) if any(row.get(name) is not None for name in self.raw)]
        if not with_raw:
            return {}
        encoded = self.processor([{name: rows[index].get(name) for name in self.raw} for index in with_raw])
        scatter = torch.tensor(with_raw)
        batch = {}
        for key, tensor in encoded.items():
            if key in ("modality_mask", "labels", "modality_names"):  # the batch's own are built by the collator
                continue
            full = tensor.new_zeros((len(rows), *tensor.shape[1:]))
            full[scatter] = tensor
            batch[key] = full
        return batch


def _stack_features(name: str, values: list) -> dict[str, torch.Tensor]:
    """Cached features of one modality (`None` where missing) -> `{name}_tower_features` `(B, h)`, or
    `(B, L, h)` with `{name}_tower_features_mask` `(B, L)` for sequences; no keys when none is present."""
    arrays = [np.asarray(value, dtype=np.float32) for value in values if value is not None]
    if not arrays:
        return {}
    width = arrays[0].shape[-1]
    if arrays[0].ndim == 1:
        stacked = np.zeros((len(values), width), dtype=np.float32)
        for row, value in enumerate(values):
            if value is not None:
                stacked[row] = value
        return {feature_column(name): torch.from_numpy(stacked)}
    length = max(array.shape[0] for array in arrays)
    stacked = np.zeros((len(values), length, width), dtype=np.float32)
    mask = np.zeros((len(values), length), dtype=np.int64)
    for row, value in enumerate(values):
        if value is not None:
            stacked[row, : len(value)] = value
            mask[row, : len(value)] = 1
    return {feature_column(name): torch.from_numpy(stacked), f"{feature_column(name)}_mask": torch.from_numpy(mask)}


__all__ = ["CachedFeaturesCollator", "cache_tower_features", "feature_column"]
