"""Processor for I2MoE models: one sub-processor per named modality, any modality may be missing.

`I2MoEProcessor` holds a dict `{modality name: sub-processor}` in the model config's modality
order: a tokenizer (text), an image processor (images), an audio feature extractor (waveforms) or an
`I2MoEFeatureNormalizer` (float features: tabular columns, precomputed spectrograms). A batch comes
out as the model's inputs `{modality}_{tower_input}` plus `modality_mask` `(batch, modalities)`.

Missing modalities: a sample may lack any modality (its value is `None` or its key is absent). Its
row of that modality's tensors is a placeholder (pad token ids with attention mask 0 for text,
zeros otherwise) and its `modality_mask` entry is 0; the model never runs a tower on such a row and
puts the modality's learned null tokens in its place. A modality missing from the whole batch has
no keys in the output at all (the model then skips its tower). See `docs/processor.md`.

This file travels with saved models as Hub remote code: it imports only transformers, torch, numpy,
PIL and the standard library, and never the model.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer, BatchFeature
from transformers.dynamic_module_utils import custom_object_save
from transformers.feature_extraction_utils import FeatureExtractionMixin
from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name
from transformers.image_processing_base import ImageProcessingMixin
from transformers.processing_utils import ProcessorMixin
from transformers.tokenization_utils_base import PreTrainedTokenizerBase
from transformers.utils import PROCESSOR_NAME


# What a modality's sub-processor is, told by its class; saved in processor_config.json so that
# loading knows which Auto class reads each subfolder.
KINDS = ("text", "image", "audio", "features")
# The keyword arguments of `from_pretrained` that locate files, passed on to every sub-processor.
_NO_LIMIT = 10**12
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "trust_remote_code")


class I2MoEFeatureNormalizer(FeatureExtractionMixin):
    r"""
    Stacks float feature arrays of a fixed shape and standardises them: `(x - mean) / std`, with
    `mean` and `std` fitted on training data ([`~I2MoEFeatureNormalizer.fit`]) and saved as JSON.
    Without `mean` / `std` the arrays pass through unchanged (precomputed spectrograms, images).

    Args:
        feature_shape (`list[int]`): shape of one sample, e.g. `[12]` for 12 tabular columns or
            `[1, 112, 112]` for a spectrogram.
        mean, std (`float` or nested `list[float]` of `feature_shape`, *optional*): the statistics;
            a column whose training std is 0 is given std 1 (it is only centred).
        feature_names (`list[str]`, *optional*): names of the columns of 1-D features, used in errors.
        input_name (`str`): the tower input this produces (`"features"` for `I2MoEFeaturesModel`,
            `"pixel_values"` for `I2MoELeNetModel`).

    Example:

    ```python
    >>> from i2moe.processing_i2moe import I2MoEFeatureNormalizer
    >>> normalizer = I2MoEFeatureNormalizer.fit([[1.0, 10.0], [3.0, 10.0]], feature_names=["age", "size"])
    >>> normalizer([[2.0, 12.0]])["features"]
    tensor([[0., 2.]])
    ```
    """

    model_input_names = ["features"]

    def __init__(self, feature_shape=None, mean=None, std=None, feature_names=None, input_name="features", **kwargs):
        super().__init__(**kwargs)
        if feature_shape is None or any(not isinstance(size, int) or size < 1 for size in feature_shape):
            raise ValueError(f"I2MoEFeatureNormalizer: `feature_shape` must be a list of positive ints, got {feature_shape!r}")
        if (mean is None) != (std is None):
            raise ValueError("I2MoEFeatureNormalizer: give both `mean` and `std`, or neither")
        self.feature_shape = list(feature_shape)
        self.mean, self.std = mean, std
        if std is not None and not (np.asarray(std, dtype=np.float64) > 0).all():
            raise ValueError("I2MoEFeatureNormalizer: every `std` must be > 0")
        if feature_names is not None and (len(self.feature_shape) != 1 or len(feature_names) != self.feature_shape[0]):
            raise ValueError(
                f"I2MoEFeatureNormalizer: `feature_names` ({len(feature_names)} names) must name the "
                f"{self.feature_shape} columns of 1-D features"
            )
        self.feature_names = None if feature_names is None else list(feature_names)
        self.input_name = input_name
        self.model_input_names = [input_name]

    @classmethod
    def fit(cls, values, feature_names=None, input_name: str = "features") -> "I2MoEFeatureNormalizer":
        """A normaliser with the per-column mean and std of `values` (a list of samples or an array)."""
        stacked = np.asarray(values, dtype=np.float64)
        if stacked.ndim < 2 or len(stacked) < 2:
            raise ValueError(f"I2MoEFeatureNormalizer.fit: need at least 2 samples of features, got shape {stacked.shape}")
        unchecked = cls(feature_shape=list(stacked.shape[1:]), feature_names=feature_names, input_name=input_name)
        unchecked._check_finite(stacked, range(len(stacked)))
        std = stacked.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # constant columns: centre only, never divide by 0
        return cls(feature_shape=list(stacked.shape[1:]), mean=stacked.mean(axis=0).tolist(), std=std.tolist(),
                   feature_names=feature_names, input_name=input_name)

    def __call__(self, values, return_tensors: str | None = "pt", sample_indices: list[int] | None = None) -> BatchFeature:
        """Stacked (and standardised) features `(batch, *feature_shape)`; `sample_indices` are the
        numbers errors give the samples (default 0, 1, ...)."""
        sample_indices = list(range(len(values))) if sample_indices is None else sample_indices
        arrays = []
        for index, value in zip(sample_indices, values):
            try:
                array = np.asarray(value.numpy() if isinstance(value, torch.Tensor) else value, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise TypeError(f"sample {index}: expected numbers of shape {self.feature_shape}, got {type(value).__name__} ({error})") from None
            if list(array.shape) != self.feature_shape:
                raise ValueError(f"sample {index}: expected shape {self.feature_shape}, got {list(array.shape)}")
            arrays.append(array)
        stacked = np.stack(arrays) if arrays else np.zeros([0, *self.feature_shape], dtype=np.float32)
        self._check_finite(stacked, sample_indices)
        if self.mean is not None:
            stacked = (stacked - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return BatchFeature({self.input_name: stacked.astype(np.float32)}, tensor_type=return_tensors)

    def _check_finite(self, stacked: np.ndarray, sample_indices) -> None:
        bad = np.argwhere(~np.isfinite(stacked))
        if len(bad):
            sample, *position = bad[0].tolist()
            sample = list(sample_indices)[sample]
            column = self.feature_names[position[0]] if self.feature_names else tuple(position) if len(position) > 1 else position[0]
            raise ValueError(
                f"sample {sample}, column {column!r}: value {stacked[tuple(bad[0])]} is not finite (NaN or inf); "
                "impute or drop it before processing"
            )


class I2MoEProcessor(ProcessorMixin):
    r"""
    Turns raw multimodal samples into the inputs of an [`I2MoEForClassification`], any modality of
    any sample possibly missing.

    Args:
        processors (`dict[str, processor]`): modality name -> sub-processor, in the model config's
            modality order (which fixes the columns of `modality_mask`). A sub-processor is a
            tokenizer (`PreTrainedTokenizerBase`), an image processor, an audio feature extractor,
            or an [`I2MoEFeatureNormalizer`].
        text_max_length (`int`, *optional*): texts longer than this many tokens (special tokens
            included) are truncated to it (default: the tokenizer's `model_max_length`, e.g. 512
            for BERT; a tokenizer without a limit and no `text_max_length` truncates nothing).

    Calling it: `processor(samples)` with a list of dicts `{modality: value}` (a missing key or
    `None` is a missing modality; a `labels` key is passed through), or `processor(image=[...],
    text=[...], labels=[...])` with one equally long list per modality (`None` entries are missing).
    Values: text `str`; image a PIL image (converted to RGB), an array / tensor, encoded bytes, a
    `{"bytes": ..., "path": ...}` dict (a `datasets.Image(decode=False)` value) or a file path;
    audio a 1-D waveform (array, tensor or a `datasets.Audio` dict with `array` and
    `sampling_rate`, at the feature extractor's sampling rate); features a number array.

    Returns a `BatchFeature` of torch tensors: `{modality}_{tower_input}` for every modality present
    in at least one sample (placeholder rows where it is missing), `modality_mask` `(batch,
    modalities)` with 1 where present, and `labels` when given.

    Example:

    ```python
    >>> from transformers import BertTokenizer
    >>> from i2moe import I2MoEProcessor
    >>> from i2moe.processing_i2moe import I2MoEFeatureNormalizer
    >>> processor = I2MoEProcessor({"text": BertTokenizer(vocab_file=None, vocab={"[PAD]": 0, "[UNK]": 1,
    ...                             "[CLS]": 2, "[SEP]": 3, "red": 4, "shirt": 5}),
    ...                             "tabular": I2MoEFeatureNormalizer(feature_shape=[2])})
    >>> batch = processor([{"text": "red shirt", "tabular": [1.0, 2.0]}, {"tabular": [0.5, 0.0]}])
    >>> batch["modality_mask"].tolist(), batch["text_input_ids"].tolist()
    ([[1, 1], [0, 1]], [[2, 4, 5, 3], [0, 0, 0, 0]])
    ```
    """

    def __init__(self, processors: dict[str, Any] | None = None, text_max_length: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(processors, dict) or not processors:
            raise ValueError(
                "I2MoEProcessor: `processors` must be a non-empty dict {modality name: sub-processor}, e.g. "
                "{'image': image_processor, 'text': tokenizer}"
            )
        self.processors = dict(processors)
        self.kinds = {}
        for name, processor in self.processors.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"I2MoEProcessor: modality names must be Python identifiers, got {name!r}")
            self.kinds[name] = _kind_of(name, processor)
        if text_max_length is not None and (not isinstance(text_max_length, int) or text_max_length < 1):
            raise ValueError(f"I2MoEProcessor: `text_max_length` must be a positive int, got {text_max_length!r}")
        self.text_max_length = text_max_length

    @property
    def modality_names(self) -> list[str]:
        """The modalities, in the order of the columns of `modality_mask`."""
        return list(self.processors)

    def __call__(self, samples: list[dict] | None = None, labels=None, return_tensors: str = "pt", **modalities) -> BatchFeature:
        if return_tensors != "pt":
            raise ValueError(f"I2MoEProcessor returns torch tensors only: `return_tensors` must be 'pt', got {return_tensors!r}")
        columns, labels = self._columns(samples, labels, modalities)
        batch_size = len(next(iter(columns.values())))
        present = torch.tensor(
            [[columns[name][row] is not None for name in self.modality_names] for row in range(batch_size)],
            dtype=torch.long,
        ).reshape(batch_size, len(self.modality_names))
        empty = (present.sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"I2MoEProcessor: sample(s) {empty} have no modality at all (each needs at least one of "
                f"{self.modality_names}); drop them before processing"
            )
        output = {}
        for column, name in enumerate(self.modality_names):
            rows = present[:, column].nonzero().flatten()
            if len(rows) == 0:
                continue  # missing in the whole batch: no keys, the model skips the tower
            values = [columns[name][row] for row in rows.tolist()]
            try:
                encoded = self._encode(name, values, rows.tolist())
            except (ValueError, TypeError) as error:  # say which modality; keep the kind of error
                raise (TypeError if isinstance(error, TypeError) else ValueError)(f"modality {name!r}: {error}") from error
            for key, tensor in encoded.items():
                output[f"{name}_{key}"] = _scatter_rows(tensor, rows, batch_size, self._fill_value(name, key))
        output["modality_mask"] = present
        if labels is not None:
            output["labels"] = _labels_tensor(labels)
        return BatchFeature(output)

    def _columns(self, samples, labels, modalities: dict) -> tuple[dict[str, list], Any]:
        """Per-modality lists of equal length (None = missing), from either calling convention."""
        if samples is not None and modalities:
            raise ValueError("I2MoEProcessor: pass either a list of samples or per-modality lists, not both")
        if samples is not None:
            if isinstance(samples, dict) or not isinstance(samples, (list, tuple)):
                raise TypeError(
                    f"I2MoEProcessor: `samples` must be a list of dicts {{modality: value}}, got {type(samples).__name__}; "
                    "pass per-modality lists as keyword arguments instead (processor(image=[...], text=[...]))"
                )
            if not samples:
                raise ValueError("I2MoEProcessor: got an empty list of samples")
            for index, sample in enumerate(samples):
                if not isinstance(sample, dict):
                    raise TypeError(f"I2MoEProcessor: sample {index} must be a dict {{modality: value}}, got {type(sample).__name__}")
                self._check_names([key for key in sample if key != "labels"], f"sample {index}")
            if any("labels" in sample for sample in samples):
                if labels is not None or not all("labels" in sample for sample in samples):
                    raise ValueError("I2MoEProcessor: `labels` must be given for every sample, once")
                labels = [sample["labels"] for sample in samples]
            columns = {name: [sample.get(name) for sample in samples] for name in self.modality_names}
            return columns, labels
        if not modalities:
            raise ValueError(f"I2MoEProcessor: no inputs; pass samples or lists for some of {self.modality_names}")
        self._check_names(list(modalities), "keyword arguments")
        lengths = {}
        modalities = dict(modalities)
        for name, values in modalities.items():
            # Any sized iterable works (a list, a `datasets` column, an array of rows), but not one sample.
            if isinstance(values, (str, bytes, dict, PIL.Image.Image)) or not hasattr(values, "__len__") or not hasattr(values, "__iter__"):
                raise TypeError(
                    f"I2MoEProcessor: `{name}` must be a list with one entry per sample (None where missing), "
                    f"got {type(values).__name__}"
                )
            modalities[name] = list(values)
            lengths[name] = len(values)
        if labels is not None:
            lengths["labels"] = len(labels)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"I2MoEProcessor: inputs disagree on the batch size: {lengths}")
        if not next(iter(lengths.values())):
            raise ValueError("I2MoEProcessor: got empty lists")
        batch_size = next(iter(lengths.values()))
        return {name: modalities.get(name) or [None] * batch_size for name in self.modality_names}, labels

    def _check_names(self, names: list, where: str) -> None:
        unknown = sorted(set(names) - set(self.modality_names), key=str)
        if unknown:
            raise ValueError(
                f"I2MoEProcessor: unknown modality name(s) {unknown} in {where}; this processor has "
                f"{self.modality_names} (and `labels`)"
            )

    def _encode(self, name: str, values: list, rows: list[int]) -> dict[str, torch.Tensor]:
        processor, kind = self.processors[name], self.kinds[name]
        if kind == "text":
            for value, row in zip(values, rows):
                if not isinstance(value, str):
                    raise TypeError(f"sample {row}: expected a str, got {type(value).__name__}")
                if not value.strip():  # would become a present text of special tokens only
                    raise ValueError(f"sample {row}: the text is empty; pass None to mark the text missing")
            max_length = self.text_max_length or processor.model_max_length
            # Tokenizers that know no limit report a sentinel (int(1e30)): then nothing is truncated.
            limited = max_length < _NO_LIMIT
            return dict(processor(values, padding=True, truncation=limited, max_length=max_length if limited else None,
                                  return_tensors="pt"))
        if kind == "image":
            return dict(processor([_load_image(value, row) for value, row in zip(values, rows)], return_tensors="pt"))
        if kind == "audio":
            waveforms = [_load_waveform(value, row, processor.sampling_rate) for value, row in zip(values, rows)]
            return dict(processor(waveforms, sampling_rate=processor.sampling_rate, padding=True,
                                  return_attention_mask=True, return_tensors="pt"))
        return dict(processor(values, return_tensors="pt", sample_indices=rows))

    def _fill_value(self, name: str, key: str) -> int:
        if self.kinds[name] == "text" and key == "input_ids":
            return self.processors[name].pad_token_id or 0
        return 0

    def to_dict(self) -> dict[str, Any]:
        output = {
            "processor_class": type(self).__name__,
            "modalities": [{"name": name, "kind": kind} for name, kind in self.kinds.items()],
            "text_max_length": self.text_max_length,
        }
        if getattr(self, "auto_map", None):
            output["auto_map"] = self.auto_map
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> list[str]:
        """Writes `processor_config.json` (modality names and kinds) and each sub-processor into a
        subfolder named after its modality; with `register_for_auto_class`, also this file and the
        `auto_map` that lets `AutoProcessor.from_pretrained(..., trust_remote_code=True)` load it.
        `push_to_hub=True` uploads the folder afterwards (`repo_id` defaults to the folder name)."""
        os.makedirs(save_directory, exist_ok=True)
        if self._auto_class is not None:
            custom_object_save(self, save_directory, config=self)
        for name, processor in self.processors.items():
            processor.save_pretrained(os.path.join(save_directory, name))
        output_file = os.path.join(save_directory, PROCESSOR_NAME)
        Path(output_file).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if push_to_hub:
            self.push_to_hub(kwargs.pop("repo_id", Path(save_directory).name), **kwargs)
        return [output_file]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "I2MoEProcessor":
        """Loads `processor_config.json` and each modality's sub-processor from its subfolder."""
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
        subfolder = kwargs.get("subfolder") or ""
        processor_dict, _ = cls.get_processor_dict(
            pretrained_model_name_or_path, **{key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"},
            subfolder=subfolder,
        )
        if "modalities" not in processor_dict:
            raise ValueError(
                f"{pretrained_model_name_or_path}: processor_config.json has no `modalities`; it was not saved by "
                "I2MoEProcessor.save_pretrained"
            )
        processors = {}
        for modality in processor_dict["modalities"]:
            name, kind = modality["name"], modality["kind"]
            if kind not in KINDS:
                raise ValueError(f"{pretrained_model_name_or_path}: modality {name!r} has unknown kind {kind!r}; expected one of {KINDS}")
            location = {"subfolder": os.path.join(subfolder, name) if subfolder else name}
            if kind == "text":
                loader = _tokenizer_class(pretrained_model_name_or_path, location["subfolder"], hub_kwargs)
            else:
                loader = {"image": AutoImageProcessor, "audio": AutoFeatureExtractor, "features": I2MoEFeatureNormalizer}[kind]
            auto = loader in (AutoTokenizer, AutoImageProcessor, AutoFeatureExtractor)
            sub_kwargs = hub_kwargs if auto else {key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"}
            processors[name] = loader.from_pretrained(pretrained_model_name_or_path, **location, **sub_kwargs)
        return cls(processors, text_max_length=processor_dict.get("text_max_length"))

    def __repr__(self) -> str:
        lines = [f"- {name} ({self.kinds[name]}): {type(processor).__name__}" for name, processor in self.processors.items()]
        return f"{type(self).__name__}:\n" + "\n".join(lines)


def _tokenizer_class(location, subfolder: str, hub_kwargs: dict):
    """The class named in the saved `tokenizer_config.json` (`AutoTokenizer` for custom tokenizers).
    `AutoTokenizer` would first look for a model `config.json` in the subfolder, which a processor's
    subfolder never has: offline, from a cache filled by `snapshot_download`, that look-up fails."""
    kwargs = {key: value for key, value in hub_kwargs.items() if key != "trust_remote_code"}
    tokenizer_config = get_tokenizer_config(location, subfolder=subfolder, **kwargs)
    class_name = tokenizer_config.get("tokenizer_class")
    if not class_name or "auto_map" in tokenizer_config:
        return AutoTokenizer
    return tokenizer_class_from_name(class_name) or AutoTokenizer


def _kind_of(name: str, processor) -> str:
    if isinstance(processor, PreTrainedTokenizerBase):
        return "text"
    if isinstance(processor, ImageProcessingMixin):
        return "image"
    if isinstance(processor, I2MoEFeatureNormalizer):
        return "features"
    if isinstance(processor, FeatureExtractionMixin) and hasattr(processor, "sampling_rate"):
        return "audio"
    raise TypeError(
        f"I2MoEProcessor: modality {name!r}: unsupported sub-processor {type(processor).__name__}; expected a tokenizer, "
        "an image processor, an audio feature extractor or an I2MoEFeatureNormalizer"
    )


def _labels_tensor(labels) -> torch.Tensor:
    array = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"I2MoEProcessor: `labels` must be numbers (class indices, multi-hot rows or regression targets), got "
            f"dtype {array.dtype}; map label names to ids first (config.label2id)"
        )
    return torch.as_tensor(array)


def _scatter_rows(tensor: torch.Tensor, rows: torch.Tensor, batch_size: int, fill_value: int) -> torch.Tensor:
    """The present rows' tensor spread over the whole batch, placeholder `fill_value` elsewhere."""
    if len(rows) == batch_size:
        return tensor
    full = torch.full((batch_size, *tensor.shape[1:]), fill_value, dtype=tensor.dtype)
    full[rows] = tensor
    return full


def _load_image(value, row: int):
    """A PIL image (RGB) or an array from any of the accepted image values."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets.Image(decode=False)
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        source = io.BytesIO(value) if isinstance(value, (bytes, bytearray)) else value
        try:
            with PIL.Image.open(source) as image:
                image.load()
                value = image.copy()
        except (OSError, PIL.UnidentifiedImageError, ValueError) as error:
            what = "bytes" if isinstance(value, (bytes, bytearray)) else f"file {str(value)!r}"
            raise ValueError(f"sample {row}: cannot decode the image {what} ({error})") from None
    if isinstance(value, PIL.Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _check_image_array(value, row)
    raise TypeError(
        f"sample {row}: expected an image (PIL image, array, tensor, bytes, file path or {{'bytes', 'path'}} dict), "
        f"got {type(value).__name__}"
    )


def _check_image_array(value, row: int):
    """An image given as an array must look like one: otherwise the image processor fails with a
    message that names no sample, or scales NaN into the pixels."""
    array = value.numpy() if isinstance(value, torch.Tensor) else value
    if array.dtype.kind not in "biuf":
        raise TypeError(f"sample {row}: expected an image array of numbers, got dtype {array.dtype}")
    channel_first, channel_last = (array.shape[0], array.shape[-1]) if array.ndim == 3 else (None, None)
    if array.ndim not in (2, 3) or (array.ndim == 3 and channel_first not in (1, 3, 4) and channel_last not in (1, 3, 4)):
        raise ValueError(
            f"sample {row}: expected an image array of shape (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4; "
            f"got shape {tuple(array.shape)}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"sample {row}: the image array contains NaN or inf")
    return value


def _load_waveform(value, row: int, sampling_rate: int) -> np.ndarray:
    if isinstance(value, dict):
        if "array" not in value:
            raise TypeError(f"sample {row}: an audio dict needs an `array` (a decoded datasets.Audio value), got keys {sorted(value)}")
        if value.get("sampling_rate", sampling_rate) != sampling_rate:
            raise ValueError(
                f"sample {row}: audio at {value['sampling_rate']} Hz, but the feature extractor expects {sampling_rate} Hz; "
                "resample it first (e.g. dataset.cast_column(..., Audio(sampling_rate=...)))"
            )
        value = value["array"]
    if isinstance(value, torch.Tensor):
        value = value.numpy()
    if not isinstance(value, (np.ndarray, list, tuple)):
        raise TypeError(f"sample {row}: expected a 1-D waveform (array, tensor or datasets.Audio dict), got {type(value).__name__}")
    waveform = np.asarray(value, dtype=np.float32)
    if waveform.ndim != 1 or not len(waveform):
        raise ValueError(f"sample {row}: expected a non-empty 1-D waveform, got shape {waveform.shape}")
    if not np.isfinite(waveform).all():
        raise ValueError(f"sample {row}: the waveform contains NaN or inf")
    return waveform


__all__ = ["I2MoEFeatureNormalizer", "I2MoEProcessor"]
