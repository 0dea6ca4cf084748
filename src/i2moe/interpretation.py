"""Interpretation of interaction-aware models: which interaction type each prediction relies on.

Works with any model whose output carries per-component weights and logits (`component_weights`,
`component_logits`): I2MoE (its reweighting model's weights of its experts) or DMIL (its gate); the
names of the components come from `model.interaction.component_names`.

- Sample level: each sample's weights `w` (K values summing to 1) and per-class contributions
  `w_k · y_k` (their sum over k is the sample's logits).
- Dataset level (`InterpretationResult.summary`): the distribution of each weight over the data
  (mean, std, quartiles), overall and per class, the share of samples each type dominates, the
  type with the largest mean weight and, with single-label labels, each component's accuracy on
  its own beside the model's.

Read a large weight as "the model leans on this component", not yet as "the data has this
interaction": the reweighting model sees every modality, so it can route samples between
components (and the components can cancel each other's logits), which lets a mixture of
components that are each at chance solve a task none of them solves alone. A component that
carries a prediction is accurate on its own; `component_accuracy` shows which ones are.
For what the data and the model carry, whatever the method, use the other half of the
interpretation API, `i2moe.attribution.attribute` (docs/interpretation.md): it measures each
sample's redundancy, uniqueness and synergy from the model's predictions on every subset of its
modalities, and attributes each I2MoE / DMIL component's own logits beside its weight.

Example:

```python
>>> import torch
>>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
>>> from i2moe.interpretation import interpret
>>> config = I2MoEConfig(
...     modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=3)},
...                 {"name": "b", "tower": I2MoEFeaturesConfig(input_size=2)}],
...     hidden_size=16, method="i2moe", num_labels=2)
>>> model = I2MoEForClassification(config)
>>> data = [{"a_features": torch.randn(3), "b_features": torch.randn(2), "labels": i % 2} for i in range(10)]
>>> result = interpret(model, data, batch_size=4, progress=False)
>>> result.weights.shape, result.contributions.shape
((10, 4), (10, 4, 2))
>>> sorted(result.summary()["overall"])
['mean_weight', 'quantiles', 'share_dominant', 'std_weight']
```
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader


@dataclass
class InterpretationResult:
    """Per-sample interpretation outputs of a model over a dataset (numpy arrays, N samples).

    Attributes:
        component_names: the K interaction types (e.g. `uniqueness_image`, ..., `redundancy`, `synergy`).
        weights: `(N, K)` each sample's component weights (rows sum to 1).
        component_logits: `(N, K, C)` each component's logits.
        logits: `(N, C)` the model's prediction.
        labels: `(N,)` class indices, `(N, C)` multi-hot or regression targets, or None.
        class_names: names of the C outputs (from `config.id2label`).
    """

    component_names: list[str]
    weights: np.ndarray
    component_logits: np.ndarray
    logits: np.ndarray
    labels: np.ndarray | None
    class_names: list[str]

    @property
    def contributions(self) -> np.ndarray:
        """`(N, K, C)`: `w_k · y_k`, each component's share of each class logit."""
        return self.weights[:, :, None] * self.component_logits

    @property
    def predictions(self) -> np.ndarray:
        """`(N,)` predicted class indices (argmax of the logits)."""
        return self.logits.argmax(-1)

    @property
    def dominant(self) -> np.ndarray:
        """`(N,)` index of each sample's largest weight."""
        return self.weights.argmax(-1)

    def samples(self) -> list[dict]:
        """Sample-level records: weights and per-class contributions by component name."""
        # The properties compute over the whole dataset: once, not once per sample.
        predictions, dominant, contributions = self.predictions, self.dominant, self.contributions
        records = []
        for index in range(len(self.weights)):
            record = {
                "index": index,
                "prediction": self.class_names[predictions[index]],
                "dominant": self.component_names[dominant[index]],
                "weights": dict(zip(self.component_names, self.weights[index].tolist())),
                "contributions": {
                    name: dict(zip(self.class_names, values.tolist()))
                    for name, values in zip(self.component_names, contributions[index])
                },
            }
            if self.labels is not None:
                record["label"] = _label_value(self.labels[index], self.class_names)
            records.append(record)
        return records

    def summary(self, by: str = "label") -> dict:
        """Dataset level: per interaction type, the weight distribution (`mean_weight`, `std_weight`,
        `quantiles` 0/25/50/75/100) and `share_dominant` (fraction of samples where it has the
        largest weight), `overall` and `per_class` (grouped by true class with `by="label"`,
        single-label data only, or by predicted class with `by="prediction"`), and `dominant_type`,
        the type with the largest mean weight overall and per class. With single-label class
        labels, also `accuracy` (the model's) and `component_accuracy` (each component's own
        logits, argmax): a component with a large weight but chance accuracy is being routed
        to or cancelled by the others, not predicting by itself."""
        if by not in ("label", "prediction"):
            raise ValueError(f"`by` must be 'label' or 'prediction', got {by!r}")
        groups = self._class_groups(by)
        overall = self._describe(np.ones(len(self.weights), dtype=bool))
        per_class = {name: self._describe(rows) for name, rows in groups.items() if rows.any()}
        summary = {
            "component_names": list(self.component_names),
            "num_samples": int(len(self.weights)),
            "grouped_by": by if groups else None,
            "overall": overall,
            "dominant_type": _argmax_name(overall["mean_weight"]),
            "per_class": per_class,
            "dominant_type_per_class": {name: _argmax_name(stats["mean_weight"]) for name, stats in per_class.items()},
        }
        if self._has_class_labels():
            summary["accuracy"] = float((self.predictions == self.labels).mean())
            component_hits = self.component_logits.argmax(-1) == self.labels[:, None]
            summary["component_accuracy"] = dict(zip(self.component_names, component_hits.mean(0).tolist()))
        return summary

    def to_json(self, path: str | Path, by: str = "label") -> None:
        """Write the dataset-level summary and the sample-level records as one JSON file."""
        Path(path).write_text(json.dumps({"summary": self.summary(by), "samples": self.samples()}, indent=1) + "\n")

    def to_csv(self, path: str | Path) -> None:
        """Write one row per sample: label, prediction, dominant type, each weight and each
        component's contribution to every class (`contribution_<component>_<class>`)."""
        columns = ["index", "label", "prediction", "dominant", *(f"weight_{n}" for n in self.component_names)]
        columns += [f"contribution_{n}_{c}" for n in self.component_names for c in self.class_names]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for record in self.samples():
                label = record.get("label", "")
                writer.writerow([
                    record["index"], json.dumps(label) if isinstance(label, list) else label, record["prediction"],
                    record["dominant"], *record["weights"].values(),
                    *(value for per_class in record["contributions"].values() for value in per_class.values()),
                ])

    def _class_groups(self, by: str) -> dict[str, np.ndarray]:
        if by == "label":
            if not self._has_class_labels():
                return {}  # no labels, multi-label or regression: no class grouping by label
            classes = self.labels
        else:
            if len(self.class_names) < 2:
                return {}
            classes = self.predictions
        return {name: classes == index for index, name in enumerate(self.class_names)}

    def _has_class_labels(self) -> bool:
        """Single-label class indices (not absent, multi-hot or regression targets)."""
        return self.labels is not None and self.labels.ndim == 1 and not np.issubdtype(self.labels.dtype, np.floating)

    def _describe(self, rows: np.ndarray) -> dict:
        weights = self.weights[rows]
        dominant = np.bincount(weights.argmax(-1), minlength=len(self.component_names)) / max(len(weights), 1)
        quantiles = np.quantile(weights, [0.0, 0.25, 0.5, 0.75, 1.0], axis=0)
        return {
            "mean_weight": dict(zip(self.component_names, weights.mean(0).tolist())),
            "std_weight": dict(zip(self.component_names, weights.std(0).tolist())),
            "quantiles": {name: quantiles[:, k].tolist() for k, name in enumerate(self.component_names)},
            "share_dominant": dict(zip(self.component_names, dominant.tolist())),
        }


def interpret(model, data, batch_size: int = 32, collate_fn=None, progress: bool = True,
              device: str | torch.device | None = None) -> InterpretationResult:
    """Run `model` (in eval mode, without gradients) over `data` and collect its interpretation outputs.

    Args:
        model: an `I2MoEForClassification` with `method="i2moe"` (or `"dmil"`), or any model whose
            output has `component_weights` and `component_logits`.
        data: a `DataLoader`, or a dataset (a `datasets.Dataset`, a torch `Dataset` or a list of
            dicts) of model inputs; a `labels` column, if present, is kept for per-class summaries.
        batch_size, collate_fn: used to batch a dataset (ignored for a `DataLoader`).
        progress: show a progress bar (tqdm).
        device: where to run (default: the model's device).
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, collate_fn=collate_fn)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    collected: dict[str, list] = {"weights": [], "component_logits": [], "logits": [], "labels": []}
    try:
        from tqdm.auto import tqdm

        batches = tqdm(loader, desc="interpret", disable=not progress)
        with torch.no_grad():
            for batch in batches:
                if not isinstance(batch, Mapping):
                    raise TypeError(
                        f"interpret: batches must be dicts of model inputs (e.g. 'image_pixel_values', 'labels'), "
                        f"got {type(batch).__name__}; pass a `collate_fn` that returns a dict"
                    )
                batch = dict(batch)
                labels = batch.pop("labels", None)
                inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}
                output = model(**inputs)
                weights, component_logits = _weights_and_logits(output)
                collected["weights"].append(weights.float().cpu())
                collected["component_logits"].append(component_logits.float().cpu())
                collected["logits"].append(output.logits.float().cpu())
                if labels is not None:
                    collected["labels"].append(torch.as_tensor(labels).cpu())
    finally:
        model.train(was_training)
    if not collected["weights"]:
        raise ValueError("interpret: `data` yielded no batches")
    config = model.config
    num_labels = collected["logits"][0].shape[-1]
    id2label = getattr(config, "id2label", None) or {}
    class_names = [str(id2label.get(index, f"LABEL_{index}")) for index in range(num_labels)]
    labels = torch.cat(collected["labels"]).numpy() if collected["labels"] else None
    if labels is not None and len(labels) != sum(len(w) for w in collected["weights"]):
        labels = None  # only some batches carried labels
    return InterpretationResult(
        component_names=list(_component_names(model, collected["weights"][0].shape[-1])),
        weights=torch.cat(collected["weights"]).numpy(),
        component_logits=torch.cat(collected["component_logits"]).numpy(),
        logits=torch.cat(collected["logits"]).numpy(),
        labels=labels,
        class_names=class_names,
    )


def _weights_and_logits(output) -> tuple[torch.Tensor, torch.Tensor]:
    weights, logits = getattr(output, "component_weights", None), getattr(output, "component_logits", None)
    if weights is None or logits is None:
        raise ValueError(
            "interpret: the model's output has no `component_weights` / `component_logits` (I2MoE's reweighting, "
            "DMIL's gate); build the model with method='i2moe' or 'dmil' (DMIL: stage 2 or 3)"
        )
    return weights, logits


def _component_names(model, count: int) -> list[str]:
    names = getattr(getattr(model, "interaction", None), "component_names", None)
    if names is None or len(names) != count:
        return [f"component_{index}" for index in range(count)]
    return list(names)


def _argmax_name(values: dict) -> str:
    return max(values, key=values.get)


def _label_value(label: np.ndarray, class_names: list[str]):
    if label.ndim == 0 and not np.issubdtype(label.dtype, np.floating):
        return class_names[int(label)]
    return label.tolist()


__all__ = ["InterpretationResult", "interpret"]
