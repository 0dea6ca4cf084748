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
import numbers
import os
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
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
                array = _as_numpy(value)
                if array.dtype.kind == "c":  # the cast below would drop the imaginary part with only a warning
                    raise TypeError(f"complex dtype {array.dtype}")
                array = array.astype(np.float32)
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
    Values: text `str` (one with no visible character counts as empty: an error); image a PIL image
    of any mode, an array / tensor (HWC or CHW; uint8, uint16, or float in [0, 1] or [0, 255]),
    encoded bytes, a `{"bytes": ..., "path": ...}` dict (a `datasets.Image(decode=False)` value) or
    a file path, made 8-bit RGB with EXIF orientation applied and alpha composited over white;
    audio a mono waveform (int8 / int16 / int32 / uint8 PCM or float in [-1, 1]; array, tensor, a
    `datasets.Audio` dict or a torchcodec `AudioDecoder`) at the feature extractor's sampling rate
    (state a bare array's rate with `sampling_rate=`), made float in [-1, 1]; features a number
    array. docs/processor.md lists every conversion; anything else is an error naming the
    modality and the sample.

    Returns a `BatchFeature`: `{modality}_{tower_input}` tensors for every modality present in at
    least one sample (placeholder rows where it is missing), `modality_mask` `(batch, modalities)`
    with 1 where present, `modality_names` (the column order of `modality_mask`, checked by the
    model) and `labels` when given.

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
            if not isinstance(name, str) or not name.isidentifier() or name == "labels":
                raise ValueError(f"I2MoEProcessor: modality names must be Python identifiers other than 'labels', got {name!r}")
            self.kinds[name] = _kind_of(name, processor)
            if self.kinds[name] == "text" and processor.pad_token is None:
                # Without it, batches of texts of different lengths fail and single texts do not.
                raise ValueError(
                    f"I2MoEProcessor: modality {name!r}: the tokenizer has no pad token, which batches need; set one, "
                    "e.g. tokenizer.pad_token = tokenizer.eos_token"
                )
        if text_max_length is not None and (
            isinstance(text_max_length, bool) or not isinstance(text_max_length, numbers.Integral) or text_max_length < 1
        ):
            raise ValueError(f"I2MoEProcessor: `text_max_length` must be a positive int, got {text_max_length!r}")
        self.text_max_length = None if text_max_length is None else int(text_max_length)
        for name in self.modality_names:
            if self.kinds[name] == "text":
                self._text_max_length(name)  # a limit that leaves no room for text is refused now, not per batch

    @property
    def modality_names(self) -> list[str]:
        """The modalities, in the order of the columns of `modality_mask`."""
        return list(self.processors)

    def __call__(self, samples: list[dict] | None = None, labels=None, return_tensors: str = "pt",
                 sampling_rate: int | None = None, **modalities) -> BatchFeature:
        """`sampling_rate` (optional) is the rate of bare audio arrays; a mismatch with the feature
        extractor's rate is an error (a `datasets.Audio` dict carries its own rate)."""
        if return_tensors != "pt":
            raise ValueError(f"I2MoEProcessor returns torch tensors only: `return_tensors` must be 'pt', got {return_tensors!r}")
        if sampling_rate is not None and "audio" not in self.kinds.values():
            raise ValueError(f"I2MoEProcessor: `sampling_rate` given, but none of the modalities {self.modality_names} is audio")
        columns, labels = self._columns(samples, labels, modalities)
        batch_size = len(next(iter(columns.values())))
        for name, values in columns.items():
            nan_rows = [row for row, value in enumerate(values) if _is_nan_scalar(value)]
            if nan_rows:
                raise ValueError(
                    f"I2MoEProcessor: modality {name!r}: sample(s) {nan_rows} are NaN; mark a missing modality with None "
                    "(pandas: df.astype(object).where(df.notna(), None))"
                )
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
                encoded = self._encode(name, values, rows.tolist(), sampling_rate)
            except (ValueError, TypeError) as error:  # say which modality; keep the kind of error
                raise (TypeError if isinstance(error, TypeError) else ValueError)(f"modality {name!r}: {error}") from error
            for key, tensor in encoded.items():
                output[f"{name}_{key}"] = _scatter_rows(tensor, rows, batch_size, self._fill_value(name, key))
        output["modality_mask"] = present
        # The column order of `modality_mask`: the model refuses a batch whose order differs from its config's.
        output["modality_names"] = self.modality_names
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
            if not any(name in sample for sample in samples for name in self.modality_names):
                raise ValueError(
                    f"I2MoEProcessor: none of the {len(samples)} samples has a key for any of the modalities "
                    f"{self.modality_names} (keys: {sorted({key for sample in samples for key in sample})}). Used as a "
                    "Trainer `data_collator`? Set `TrainingArguments(remove_unused_columns=False)`: otherwise the Trainer "
                    "drops every dataset column that is not an argument of the model's `forward`, the raw modalities included"
                )
            if any("labels" in sample for sample in samples):
                if labels is not None or not all("labels" in sample for sample in samples):
                    raise ValueError("I2MoEProcessor: `labels` must be given for every sample, once")
                labels = [sample["labels"] for sample in samples]
            if labels is not None and _labels_length(labels) != len(samples):
                raise ValueError(f"I2MoEProcessor: inputs disagree on the batch size: {len(samples)} samples, {len(labels)} labels")
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
            lengths["labels"] = _labels_length(labels)
        if len(set(lengths.values())) > 1:
            raise ValueError(f"I2MoEProcessor: inputs disagree on the batch size: {lengths}")
        if not next(iter(lengths.values())):
            raise ValueError("I2MoEProcessor: got empty lists")
        batch_size = next(iter(lengths.values()))
        return {name: modalities.get(name) or [None] * batch_size for name in self.modality_names}, labels

    def _check_names(self, names: list, where: str) -> None:
        unknown = sorted(set(names) - set(self.modality_names), key=str)
        if unknown:
            hint = "; name the label column `labels`" if {"label", "label_ids"} & set(unknown) else ""
            raise ValueError(
                f"I2MoEProcessor: unknown modality name(s) {unknown} in {where}; this processor has "
                f"{self.modality_names} (and `labels`){hint}"
            )

    def _encode(self, name: str, values: list, rows: list[int], sampling_rate: int | None) -> dict[str, torch.Tensor]:
        processor, kind = self.processors[name], self.kinds[name]
        if kind == "text":
            for value, row in zip(values, rows):
                _check_text(value, row)
            max_length = self._text_max_length(name)
            encoded = dict(processor(values, padding=True, truncation=max_length is not None, max_length=max_length,
                                     return_special_tokens_mask=True, return_tensors="pt"))
            _check_texts_have_tokens(encoded, rows)
            return encoded
        if kind == "image":
            return dict(processor([_load_image(value, row) for value, row in zip(values, rows)], return_tensors="pt"))
        if kind == "audio":
            waveforms = [_load_waveform(value, row, processor.sampling_rate, sampling_rate) for value, row in zip(values, rows)]
            return dict(processor(waveforms, sampling_rate=processor.sampling_rate, padding=True,
                                  return_attention_mask=True, return_tensors="pt"))
        return dict(processor(values, return_tensors="pt", sample_indices=rows))

    def _text_max_length(self, name: str) -> int | None:
        """The token limit of modality `name`'s texts: `text_max_length`, else the tokenizer's
        `model_max_length`; None for a tokenizer that knows no limit (it reports the sentinel
        int(1e30)). A limit of no more than the special tokens would leave every text empty."""
        tokenizer = self.processors[name]
        max_length = self.text_max_length or tokenizer.model_max_length
        if max_length >= _NO_LIMIT:
            return None
        special = tokenizer.num_special_tokens_to_add()
        if max_length <= special:
            source = "`text_max_length`" if self.text_max_length else f"the {name!r} tokenizer's `model_max_length`"
            raise ValueError(
                f"I2MoEProcessor: {source} is {max_length}, but the {name!r} tokenizer adds {special} special tokens to "
                f"every text, which leaves no room for the text; use at least {special + 1}"
            )
        return max_length

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
    """`labels` (a list, array or tensor with one entry per sample) as one tensor."""
    if isinstance(labels, torch.Tensor):
        labels = _as_numpy(labels)
    unlabelled = [row for row, label in enumerate(labels) if label is None or _is_nan_scalar(label)]
    if unlabelled:
        raise ValueError(
            f"I2MoEProcessor: `labels` of sample(s) {unlabelled} are missing (None or NaN); every sample needs a label "
            "(drop the unlabelled samples, or leave `labels` out at inference)"
        )
    try:
        array = np.asarray(labels)
    except ValueError:  # numpy refuses rows of different lengths
        lengths = sorted({int(np.size(label)) for label in labels})
        raise ValueError(
            f"I2MoEProcessor: `labels` rows have different lengths {lengths}; multi-hot rows must all have num_labels entries"
        ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"I2MoEProcessor: `labels` must be numbers (class indices, multi-hot rows or regression targets), got "
            f"dtype {array.dtype}; map label names to ids first (config.label2id)"
        )
    return torch.as_tensor(array)


def _labels_length(labels) -> int:
    if isinstance(labels, (str, bytes, dict)) or not hasattr(labels, "__len__") or getattr(labels, "ndim", 1) == 0:
        raise TypeError(f"I2MoEProcessor: `labels` must be a list with one entry per sample, got {type(labels).__name__}")
    return len(labels)


def _is_nan_scalar(value) -> bool:
    """A float NaN (what pandas puts in an empty cell), which is not a missing-value marker here."""
    return isinstance(value, (float, np.floating)) and bool(np.isnan(value))


def _scatter_rows(tensor: torch.Tensor, rows: torch.Tensor, batch_size: int, fill_value: int) -> torch.Tensor:
    """The present rows' tensor spread over the whole batch, placeholder `fill_value` elsewhere."""
    if len(rows) == batch_size:
        return tensor
    full = torch.full((batch_size, *tensor.shape[1:]), fill_value, dtype=tensor.dtype)
    full[rows] = tensor
    return full


# PIL modes with 16-bit (or wider) integer or float pixels: `convert("RGB")` clips them to 0..255
# (a 16-bit photo turns white), so they take the array path, which scales them.
_DEEP_PIL_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_IMAGE_CHANNELS = (1, 3, 4)
_IMAGE_SHAPES = "(H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4"


def _load_image(value, row: int) -> PIL.Image.Image:
    """Any accepted image value as an 8-bit RGB PIL image, the one form that every image processor
    reads the same way (it rescales by 1/255 and normalises). Each conversion is listed in
    docs/processor.md; anything that cannot be converted provably right is an error naming the sample."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):  # datasets.Image(decode=False)
        if not value.get("bytes") and not value.get("path"):
            raise TypeError(f"sample {row}: the image dict has neither `bytes` nor `path`; pass None to mark the image missing")
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (str, os.PathLike, bytes, bytearray)):
        value = _decode_image(value, row)
    if isinstance(value, PIL.Image.Image):
        return _pil_to_rgb(value, row)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return PIL.Image.fromarray(_array_to_rgb8(value, row))
    raise TypeError(
        f"sample {row}: expected an image (PIL image, array, tensor, bytes, file path or {{'bytes', 'path'}} dict), "
        f"got {type(value).__name__}"
    )


def _decode_image(source, row: int) -> PIL.Image.Image:
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ValueError(
            f"sample {row}: the processor does not download images ({source!r}); load it first, e.g. with "
            "transformers.image_utils.load_image(url)"
        )
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with PIL.Image.open(stream) as image:
            image.load()
            return image.copy()
    except (OSError, PIL.UnidentifiedImageError, ValueError) as error:
        what = "bytes" if isinstance(source, (bytes, bytearray)) else f"file {str(source)!r}"
        raise ValueError(f"sample {row}: cannot decode the image {what} ({error})") from None


def _pil_to_rgb(image: PIL.Image.Image, row: int) -> PIL.Image.Image:
    # Phone photos are stored as the sensor saw them, with an EXIF tag saying how to turn them for
    # display; transformers' `load_image` and `datasets.Image` apply it, so do we. The tag is removed
    # from the result, so an image that was turned already is not turned again.
    image = PIL.ImageOps.exif_transpose(image)
    if image.mode in _DEEP_PIL_MODES:
        return PIL.Image.fromarray(_array_to_rgb8(np.asarray(image), row, bit_depth=None if image.mode == "F" else 16))
    if image.mode == "La":  # premultiplied alpha: PIL reaches RGBA from it only through LA
        image = image.convert("LA")
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        return PIL.Image.fromarray(_array_to_rgb8(np.asarray(image.convert("RGBA")), row))
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_rgb8(value, row: int, bit_depth: int | None = None) -> np.ndarray:
    """An image array or tensor as `(H, W, 3)` uint8: channels moved last, values scaled to 0..255
    (`_image_to_uint8`), grey repeated to RGB, alpha composited over white."""
    array = _as_numpy(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"sample {row}: expected an image array of numbers, got dtype {array.dtype}")
    pixels = _image_to_uint8(_channels_last(array, row), row, bit_depth)
    if pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if pixels.shape[-1] == 4:
        # A transparent pixel's colour is arbitrary (often black): show it as a viewer on a white page does.
        alpha = pixels[..., 3:].astype(np.float64) / 255.0
        return np.rint(pixels[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return pixels


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        # numpy has no bfloat16; half precision is widened too, which changes no value.
        return (value.float() if value.dtype in (torch.bfloat16, torch.float16) else value).numpy()
    return np.asarray(value)


def _channels_last(array: np.ndarray, row: int) -> np.ndarray:
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[..., None]
    elif array.ndim == 3 and (shape[0] in _IMAGE_CHANNELS) != (shape[-1] in _IMAGE_CHANNELS):
        array = array if shape[-1] in _IMAGE_CHANNELS else np.moveaxis(array, 0, -1)
    elif array.ndim == 3 and shape[0] in _IMAGE_CHANNELS:
        raise ValueError(
            f"sample {row}: image array of shape {shape} is ambiguous: both its first and last dimensions could be the "
            "channels; pass it as a PIL image (PIL.Image.fromarray) or an array of height and width above 4"
        )
    else:
        hint = " (a batch of one image? pass one image per sample)" if array.ndim == 4 and shape[0] == 1 else ""
        raise ValueError(f"sample {row}: expected an image array of shape {_IMAGE_SHAPES}; got shape {shape}{hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"sample {row}: the image array of shape {shape} has no pixels")
    return array


def _image_to_uint8(array: np.ndarray, row: int, bit_depth: int | None) -> np.ndarray:
    """Pixel values as 0..255. Floats in [0, 1] (torchvision's ToTensor) are scaled by 255, floats
    with a maximum above 1 are read as [0, 255]; uint16 arrays and 16-bit PIL modes as 0..65535;
    other integers must be 8-bit values. Negative or larger values are refused: a normalised image
    would otherwise be normalised a second time."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "b":
        return array.astype(np.uint8) * 255
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"sample {row}: the image array contains NaN or inf")
    low, high = array.min().item(), array.max().item()
    if array.dtype.kind == "f":
        maximum = 1.0 if high <= 1.0 else 255.0
    else:
        depth = bit_depth or (16 if array.dtype == np.uint16 else 8)
        maximum = 2**depth - 1
    if low < 0 or high > maximum or (array.dtype.kind == "f" and high > 255):
        expected = "[0, 1] or [0, 255]" if array.dtype.kind == "f" else f"0..{maximum} ({bit_depth or 'an integer array is read as 8'}-bit)"
        raise ValueError(
            f"sample {row}: image values range from {low:g} to {high:g} (dtype {array.dtype}); expected {expected}. "
            "Pass the raw image: the image processor normalises it (negative values suggest it is normalised already)"
            + ("; cast a 16-bit image to uint16" if array.dtype.kind in "iu" else "")
        )
    return np.rint(array.astype(np.float64) * (255.0 / maximum)).astype(np.uint8)


# Integer PCM: (offset, full scale) per sample format; WAV's 8-bit PCM is unsigned around 128.
_PCM_FORMATS = {"int8": (0, 2**7), "int16": (0, 2**15), "int32": (0, 2**31), "uint8": (2**7, 2**7)}


def _load_waveform(value, row: int, sampling_rate: int, declared_rate: int | None) -> np.ndarray:
    """Any accepted audio value as a mono float32 waveform in [-1, 1]: what every audio feature
    extractor expects, and what reaches the model as is when `do_normalize=False`."""
    value, rate = _unpack_audio(value, row)
    rate = rate if rate is not None else declared_rate
    if rate is not None and rate != sampling_rate:
        raise ValueError(
            f"sample {row}: audio at {rate} Hz, but the feature extractor expects {sampling_rate} Hz; "
            "resample it first (e.g. dataset.cast_column(..., Audio(sampling_rate=...)))"
        )
    if not isinstance(value, (np.ndarray, torch.Tensor, list, tuple)):
        raise TypeError(f"sample {row}: expected a 1-D waveform (array, tensor or datasets.Audio dict), got {type(value).__name__}")
    return _waveform_to_unit_float(_mono(_as_numpy(value), row), row)


def _unpack_audio(value, row: int):
    """(samples, sampling rate or None) from a `datasets.Audio` dict, a torchcodec `AudioDecoder`
    (what `datasets` 4+ decodes audio to) or a bare waveform."""
    if isinstance(value, dict):
        if "array" not in value:
            raise TypeError(f"sample {row}: an audio dict needs an `array` (a decoded datasets.Audio value), got keys {sorted(value)}")
        return value["array"], value.get("sampling_rate")
    if hasattr(value, "get_all_samples"):
        samples = value.get_all_samples()
        return samples.data, samples.sample_rate
    return value, None


def _mono(array: np.ndarray, row: int) -> np.ndarray:
    if array.ndim == 2 and 1 in array.shape:  # one channel with a channel axis (torchaudio, torchcodec)
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(
            f"sample {row}: expected a mono 1-D waveform, got shape {tuple(array.shape)}; for stereo, average the "
            "channel axis first (e.g. wave.mean(axis=0)) or decode it as mono (datasets.Audio(num_channels=1))"
        )
    if not len(array):
        raise ValueError(f"sample {row}: the waveform is empty")
    return array


def _waveform_to_unit_float(array: np.ndarray, row: int) -> np.ndarray:
    if array.dtype.kind in "iu":
        if array.dtype.name not in _PCM_FORMATS:
            raise TypeError(
                f"sample {row}: integer audio of dtype {array.dtype} has no known sample format (a list of Python ints "
                f"becomes int64); pass {sorted(_PCM_FORMATS)} PCM or floats in [-1, 1]"
            )
        offset, scale = _PCM_FORMATS[array.dtype.name]
        return ((array.astype(np.float64) - offset) / scale).astype(np.float32)
    if array.dtype.kind != "f":
        raise TypeError(f"sample {row}: expected audio samples of a real number type, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError(f"sample {row}: the waveform contains NaN or inf")
    peak = float(np.abs(array).max())
    if peak > 1.0:
        raise ValueError(
            f"sample {row}: float audio must lie in [-1, 1], but its peak is {peak:g}; integer PCM cast to float? pass "
            "the int16 array (or divide by 32768); clip overshoots with np.clip(wave, -1, 1)"
        )
    return array.astype(np.float32)


# Characters that show nothing: whitespace and separators, control characters, format characters
# (zero-width space and joiners, byte-order mark, soft hyphen, direction marks), unassigned code points.
_INVISIBLE_CATEGORIES = {"Zs", "Zl", "Zp", "Cc", "Cf", "Cn", "Cs"}


def _check_text(value, row: int) -> None:
    if not isinstance(value, str):
        raise TypeError(f"sample {row}: expected a str, got {type(value).__name__}")
    if all(unicodedata.category(character) in _INVISIBLE_CATEGORIES for character in value):
        raise ValueError(
            f"sample {row}: the text is empty; pass None to mark the text missing (no visible character: only "
            "whitespace, control or zero-width characters, if any)"
        )


def _check_texts_have_tokens(encoded: dict, rows: list[int]) -> None:
    """A text the tokenizer reduces to special tokens only (e.g. lone accents that BERT strips)
    would be a 'present' text of `[CLS] [SEP]`: the same as an empty one."""
    special = encoded.pop("special_tokens_mask")  # padding counts as special
    for row, has_tokens in zip(rows, (special == 0).any(dim=1).tolist()):
        if not has_tokens:
            raise ValueError(
                f"sample {row}: the text is empty; pass None to mark the text missing (the tokenizer leaves only special tokens)"
            )


__all__ = ["I2MoEFeatureNormalizer", "I2MoEProcessor"]
