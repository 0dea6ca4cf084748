"""Interaction attribution from modality subsets: redundancy, uniqueness and synergy per sample.

A model trained with modality dropout predicts from any subset S of its modalities (absent
modalities are its learned null tokens). `attribute` evaluates every subset per sample and
decomposes the log-likelihood gain of the explained label (docs/interpretation.md):

- `v(S) = log p(y | x_S)` for every nonempty S; `v(∅) = log p(y)` from the label prior;
  `i(S) = v(S) − v(∅)`, in nats.
- Two modalities: `R = min(i(a), i(b))`, `U_a = i(a) − R`, `U_b = i(b) − R`,
  `S = i(ab) − i(a) − i(b) + R`; `R + U_a + U_b + S = i(ab)`. Beside them the Harsanyi (Möbius)
  pair term `i(ab) − i(a) − i(b)` (= S − R), which needs no choice of redundancy.
- M modalities (the generalisation): the redundancy `R = min_k i(k)` is what *every* single
  modality already says, the game `r(S) = R` for every nonempty S. The rest, `i − r`, is split
  by its Möbius transform (Harsanyi dividends; `i2moe.decomposition_i2moe`): its singletons are the
  uniquenesses `U_k = i(k) − R` and each coalition T of two or more modalities gets a synergy
  `S_T`. The terms sum to `i(all)`, and for M = 2 they are the formulas above. Redundancy shared
  by only some of the modalities shows as negative pairwise synergy (the Harsanyi terms of a
  redundant pair are negative); read `harsanyi` for the raw dividends.
- A sample with missing modalities is decomposed over the modalities it has: `v(S)` uses the
  effective subset `S ∩ present` (`v(∅)` when that is empty), so a missing modality's uniqueness
  and every synergy involving it are 0, and the redundancy is the minimum over the present
  modalities (0 with only one present).

What is explained: the true label when the data has labels, else the model's prediction from
all present modalities. Single-label classification: `log softmax` of the label's logit.
Multi-label: per label, the Bernoulli log-likelihood (`values` then has a label axis).
Regression: `v(S) = −‖y − ŷ_S‖² / 2` (a unit-variance Gaussian log-likelihood up to a constant;
the prior is the Gaussian at the mean target, so standardise targets for comparable values).

For I2MoE and DMIL, each component's (expert's) own logits are attributed the same way
(`model_component_values`), beside the component weights (`model_component_weights`): what
interaction each expert actually carries, next to how much the model routes to it.

Example:

```python
>>> import torch
>>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
>>> from i2moe.attribution import attribute
>>> config = I2MoEConfig(
...     modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=3)},
...                 {"name": "b", "tower": I2MoEFeaturesConfig(input_size=2)}],
...     hidden_size=16, num_labels=2)
>>> model = I2MoEForClassification(config)
>>> data = [{"a_features": torch.randn(3), "b_features": torch.randn(2), "labels": i % 2} for i in range(10)]
>>> result = attribute(model, data, batch_size=4, progress=False, warn_untrained_dropout=False)
>>> result.component_names, result.values.shape
(['uniqueness_a', 'uniqueness_b', 'redundancy', 'synergy'], (10, 4))
>>> bool(abs(result.values.sum(1) - result.information).max() < 1e-5)  # the terms add up to i(all)
True
>>> result.prior_source
'data labels'
```
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .decomposition_i2moe import (all_subsets, bitmask, check_prior, coalitions, component_names_for, decompose,
                                  log_likelihood, moebius_matrix, prior_log_likelihood)


PROBLEM_TYPES = ("single_label_classification", "multi_label_classification", "regression")


# --- access to the model ------------------------------------------------------------------------

def _component_outputs(output) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """`(component_logits, component_weights)` of a model output; `None` for a model without
    interaction components (vanilla fusion)."""
    return getattr(output, "component_logits", None), getattr(output, "component_weights", None)


def _present_modalities(model, batch: Mapping) -> torch.Tensor:
    """`(B, M)` bool: the batch's `modality_mask`, or (without one) the modalities whose inputs
    are in the batch; as the model's `forward` reads them."""
    names = list(model.config.modality_names)
    mask = batch.get("modality_mask")
    if mask is not None:
        return torch.as_tensor(mask).bool()
    given = {model._input_routes[key][0] for key in batch if key in model._input_routes}
    batch_size = next(value.shape[0] for key, value in batch.items() if key in model._input_routes)
    return torch.tensor([name in given for name in names]).expand(batch_size, -1)


def _subset_outputs(model, batch: Mapping, subsets: torch.Tensor):
    """The model's eval-mode outputs for every modality subset in one batched pass
    (`I2MoEForClassification.forward_subsets`): output s is the forward with
    `modality_mask & subsets[s]`; `logits` `(S, B, C)` and the component fields `(S, B, K, ...)`.
    Rows whose effective subset is empty hold the all-null prediction: the caller replaces them
    with `v(∅)`."""
    return model.forward_subsets(subsets, **batch)


def _modality_dropout(model):
    """The model's training-time modality dropout rate(s), or None when it has none."""
    return getattr(model.config, "modality_dropout", None)


def _model_component_names(model, count: int) -> list[str]:
    names = getattr(getattr(model, "interaction", None), "component_names", None)
    if names is None or len(names) != count:
        return [f"component_{index}" for index in range(count)]
    return list(names)


# --- the label prior -----------------------------------------------------------------------------

def estimate_label_prior(targets: np.ndarray, problem_type: str, num_labels: int) -> np.ndarray:
    """Label frequencies (single- and multi-label) or the mean target (regression) of `targets`."""
    if problem_type == "single_label_classification":
        return np.bincount(targets.astype(int), minlength=num_labels) / len(targets)
    frequency = targets.reshape(len(targets), -1).mean(0)
    if problem_type == "multi_label_classification":  # a label never (or always) on has no information
        return np.clip(frequency, 1e-6, 1 - 1e-6)
    return frequency


# --- the result -----------------------------------------------------------------------------------

@dataclass
class AttributionResult:
    """Per-sample interaction attribution of a model over a dataset (numpy arrays, N samples).

    Attributes:
        component_names: the K terms (`uniqueness_<m>`..., `redundancy`, synergy term(s)).
        values: `(N, K)` each sample's terms in nats (multi-label: `(N, L, K)`, per label); they
            sum to `information`.
        subset_names: the 2^M subsets, by bitmask (`"none"`, `"a"`, `"b"`, `"a+b"`, ...).
        subset_values: `(N, 2^M)` `v(S)` of the explained target (multi-label `(N, L, 2^M)`);
            column 0 is `v(∅)`, the prior.
        harsanyi_names, harsanyi: the raw Möbius dividends of `i` for every coalition of two or
            more modalities, `(N, 2^M − M − 1)` (multi-label `(N, L, ...)`); M = 2: `i(ab) − i(a) − i(b)`.
        modality_names, present: the modalities and `(N, M)` which ones each sample has.
        predictions: `(N,)` predicted classes, `(N, C)` multi-hot, or `(N, C)` regression outputs.
        labels: the targets given with the data, or None.
        explained: `"label"` (the true label) or `"prediction"` (no labels in the data).
        prior, prior_source: the label prior behind `v(∅)` (frequencies, or the mean target for
            regression) and where it came from (`"given"`, `"data labels"`, `"model predictions"`).
        problem_type, class_names: as the model's config.
        model_component_names, model_component_weights, model_component_values: I2MoE / DMIL:
            the model's components, their weights `(N, K')` with all present modalities, and the
            attribution of each component's own logits `(N, K', K)` (multi-label `(N, K', L, K)`).
        modality_dropout: the model's training modality dropout (None: it had none).
    """

    component_names: list[str]
    values: np.ndarray
    subset_names: list[str]
    subset_values: np.ndarray
    harsanyi_names: list[str]
    harsanyi: np.ndarray
    modality_names: list[str]
    present: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray | None
    explained: str
    prior: np.ndarray
    prior_source: str
    problem_type: str
    class_names: list[str]
    model_component_names: list[str] | None = None
    model_component_weights: np.ndarray | None = None
    model_component_values: np.ndarray | None = None
    modality_dropout: object = None

    @property
    def information(self) -> np.ndarray:
        """`i(all) = v(present modalities) − v(∅)`, what the sample's modalities say in all."""
        return self.subset_values[..., -1] - self.subset_values[..., 0]

    @property
    def dominant(self) -> np.ndarray:
        """Index of each sample's largest term (multi-label: per label)."""
        return self.values.argmax(-1)

    def summary(self, by: str = "label") -> dict:
        """Dataset level: per term the mean, std, quantiles (0/25/50/75/100) and `share_dominant`
        (the fraction of samples where it is the largest term), `overall` and `per_class` (grouped
        by true class with `by="label"` or predicted class with `by="prediction"`; multi-label:
        per label), the `dominant_type` (largest mean) overall and per class, the mean total
        information, and for I2MoE / DMIL per component its mean weight beside the mean
        attribution of its own logits."""
        if by not in ("label", "prediction"):
            raise ValueError(f"`by` must be 'label' or 'prediction', got {by!r}")
        rows, groups = self._rows(by)
        overall = self._describe(rows)
        per_class = {name: self._describe(group) for name, group in groups.items() if len(group)}
        summary = {
            "component_names": list(self.component_names),
            "num_samples": int(len(self.values)),
            "problem_type": self.problem_type,
            "explained": self.explained,
            "prior_source": self.prior_source,
            "prior": self.prior.tolist(),
            "modality_dropout": self.modality_dropout,
            "grouped_by": (by if self.problem_type != "multi_label_classification" else "label") if groups else None,
            "overall": overall,
            "dominant_type": _argmax_name(overall["mean"]),
            "per_class": per_class,
            "dominant_type_per_class": {name: _argmax_name(stats["mean"]) for name, stats in per_class.items()},
            "mean_information": float(self.information.mean()),
            "mean_harsanyi": dict(zip(self.harsanyi_names, _flat(self.harsanyi).mean(0).tolist())),
            "share_present": dict(zip(self.modality_names, self.present.mean(0).tolist())),
        }
        if self.model_component_names is not None:
            values = self.model_component_values
            values = values.reshape(len(values), values.shape[1], -1, values.shape[-1]).mean((0, 2))
            summary["model_components"] = {
                name: {"mean_weight": float(weight), "mean_values": dict(zip(self.component_names, row.tolist())),
                       "dominant_type": self.component_names[int(row.argmax())]}
                for name, weight, row in zip(self.model_component_names, self.model_component_weights.mean(0), values)
            }
        return summary

    def samples(self) -> list[dict]:
        """Sample-level records: presence, target, prediction, the terms (per label for
        multi-label), `v(S)` by subset, the Harsanyi terms and any component weights."""
        records = []
        for index in range(len(self.values)):
            record = {"index": index, "present": dict(zip(self.modality_names, self.present[index].tolist())),
                      "prediction": self._readable(self.predictions[index])}
            if self.labels is not None:
                record["label"] = self._readable(self.labels[index])
            record.update(self._terms(index))
            if self.model_component_weights is not None:
                record["model_component_weights"] = dict(zip(self.model_component_names,
                                                             self.model_component_weights[index].tolist()))
            records.append(record)
        return records

    def to_json(self, path: str | Path, by: str = "label") -> None:
        """Write the dataset-level summary and the sample-level records as one JSON file."""
        Path(path).write_text(json.dumps({"summary": self.summary(by), "samples": self.samples()}, indent=1) + "\n")

    def to_csv(self, path: str | Path) -> None:
        """Write one row per sample (multi-label: per sample and label): presence, label,
        prediction, the terms, the Harsanyi terms and `v(S)` per subset (`v_<subset>`)."""
        multi = self.problem_type == "multi_label_classification"
        columns = ["index", *(["label_name"] if multi else []), *(f"present_{m}" for m in self.modality_names),
                   "label", "prediction", "dominant", *self.component_names, *self.harsanyi_names,
                   *(f"v_{name}" for name in self.subset_names)]
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for index in range(len(self.values)):
                label = "" if self.labels is None else json.dumps(self._readable(self.labels[index]))
                prediction = json.dumps(self._readable(self.predictions[index]))
                fixed = [*self.present[index].astype(int).tolist(), label, prediction]
                for position, name in enumerate(self.class_names if multi else [None]):
                    values, harsanyi, subsets = (array[index, position] if multi else array[index]
                                                 for array in (self.values, self.harsanyi, self.subset_values))
                    writer.writerow([index, *([name] if multi else []), *fixed,
                                     self.component_names[int(values.argmax())], *values.tolist(),
                                     *harsanyi.tolist(), *subsets.tolist()])

    def _terms(self, index: int) -> dict:
        def named(values, harsanyi, subsets):
            return {"dominant": self.component_names[int(values.argmax())],
                    "values": dict(zip(self.component_names, values.tolist())),
                    "harsanyi": dict(zip(self.harsanyi_names, harsanyi.tolist())),
                    "subset_values": dict(zip(self.subset_names, subsets.tolist()))}

        if self.problem_type != "multi_label_classification":
            return named(self.values[index], self.harsanyi[index], self.subset_values[index])
        return {"per_label": {name: named(self.values[index, k], self.harsanyi[index, k], self.subset_values[index, k])
                              for k, name in enumerate(self.class_names)}}

    def _readable(self, value: np.ndarray):
        if self.problem_type == "single_label_classification":
            return self.class_names[int(value)]
        return np.asarray(value).tolist()

    def _rows(self, by: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """All `(rows, K)` values, and the rows of each class (multi-label: of each label)."""
        if self.problem_type == "multi_label_classification":
            return _flat(self.values), {name: self.values[:, k] for k, name in enumerate(self.class_names)}
        if self.problem_type == "regression":
            return self.values, {}
        if by == "label" and self.labels is None:
            return self.values, {}
        classes = self.labels if by == "label" else self.predictions
        return self.values, {name: self.values[classes == k] for k, name in enumerate(self.class_names)}

    def _describe(self, values: np.ndarray) -> dict:
        names = self.component_names
        share = np.bincount(values.argmax(-1), minlength=len(names)) / max(len(values), 1)
        quantiles = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0], axis=0)
        return {
            "count": int(len(values)),
            "mean": dict(zip(names, values.mean(0).tolist())),
            "std": dict(zip(names, values.std(0).tolist())),
            "quantiles": {name: quantiles[:, k].tolist() for k, name in enumerate(names)},
            "share_dominant": dict(zip(names, share.tolist())),
        }


def _flat(values: np.ndarray) -> np.ndarray:
    return values.reshape(-1, values.shape[-1])


def _argmax_name(values: dict) -> str:
    return max(values, key=values.get)


# --- the pass over the data -----------------------------------------------------------------------

def attribute(model, data, batch_size: int = 32, collate_fn=None, prior=None, progress: bool = True,
              device: str | torch.device | None = None, warn_untrained_dropout: bool = True) -> AttributionResult:
    """Attribute each sample's prediction to redundancy, uniqueness and synergy of its modalities.

    Args:
        model: an `I2MoEForClassification` of any method (vanilla, I2MoE, DMIL, with or without
            I2M2 heads), trained with modality dropout.
        data: a `DataLoader`, or a dataset (a `datasets.Dataset`, a torch `Dataset`, a list of
            dicts) of model inputs, optionally with `labels` (explained when given) and a
            `modality_mask` (a sample's missing modalities stay missing in every subset).
        batch_size, collate_fn: used to batch a dataset (ignored for a `DataLoader`).
        prior: the training label distribution behind `v(∅)`: class frequencies or counts
            (single-label), each label's frequency (multi-label), or the mean target
            (regression). Default: the model's `config.label_prior` (the training split's, set by
            `examples/run_classification.py`), else estimated from `data`'s labels, else without
            labels from the model's mean prediction; `result.prior_source` says which.
        progress: show a progress bar (tqdm).
        device: where to run (default: the model's device).
        warn_untrained_dropout: warn when the model's config has no modality dropout (its
            strict-subset predictions then come from null tokens it never learned to use).
    """
    if warn_untrained_dropout and not _modality_dropout(model):
        warnings.warn("attribute: the model's config has no `modality_dropout`; a model trained without it never "
                      "learned to predict from a subset of its modalities, so the attribution describes its null "
                      "tokens rather than the data. Train with modality dropout.", UserWarning, stacklevel=2)
    problem_type = _problem_type(model)
    collected = _collect_subset_likelihoods(model, data, batch_size, collate_fn, progress, device, problem_type)
    num_labels = model.config.num_labels
    if prior is not None:
        prior, prior_source = check_prior(prior, problem_type, num_labels, "attribute"), "given"
    elif getattr(model.config, "label_prior", None) is not None:
        prior = check_prior(model.config.label_prior, problem_type, num_labels, "attribute (config.label_prior)")
        prior_source = "config.label_prior"
    elif collected["labels"] is not None:
        prior, prior_source = estimate_label_prior(collected["labels"], problem_type, num_labels), "data labels"
    else:
        prior, prior_source = collected["prior_predictions"].mean(0), "model predictions"
        if problem_type == "multi_label_classification":
            prior = np.clip(prior, 1e-6, 1 - 1e-6)
    return _assemble(model, collected, prior, prior_source, problem_type)


def _problem_type(model) -> str:
    problem_type = getattr(model.config, "problem_type", None)
    if problem_type is None:  # transformers' rule without labels: one output is regression
        problem_type = "regression" if model.config.num_labels == 1 else "single_label_classification"
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"attribute: config.problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
    return problem_type


def _collect_subset_likelihoods(model, data, batch_size, collate_fn, progress, device, problem_type) -> dict:
    """One pass: per batch the subset outputs, the explained target, and `v(S)` for the effective
    subsets (the empty ones left at NaN until the prior is known)."""
    from tqdm.auto import tqdm

    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size, collate_fn=collate_fn)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    subsets = all_subsets(model.config.num_modalities).to(device)
    subset_masks = bitmask(subsets)
    parts: dict[str, list] = {key: [] for key in ("subset_values", "component_values", "component_weights",
                                                  "present", "targets", "labels", "predictions", "prior_predictions")}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc="attribute", disable=not progress):
                if not isinstance(batch, Mapping):
                    raise TypeError(f"attribute: batches must be dicts of model inputs, got {type(batch).__name__}; "
                                    "pass a `collate_fn` that returns a dict")
                batch = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                         for key, value in dict(batch).items()}
                labels = batch.pop("labels", None)
                present = _present_modalities(model, batch).to(device)
                outputs = _subset_outputs(model, batch, subsets)
                full = outputs.logits[-1].float()  # all subsets include every present modality
                prediction, prior_prediction = _prediction(full, problem_type)
                target = _explained_target(labels, prediction, problem_type)
                # v(S) at the effective subset S ∩ present; NaN where that is empty (filled with v(∅)).
                effective = (subset_masks[:, None] & bitmask(present)[None]) != 0  # (S, B)
                values = log_likelihood(outputs.logits, target, problem_type)  # (S, B, L)
                values = values.masked_fill(~effective[..., None], float("nan"))
                parts["subset_values"].append(values.permute(1, 2, 0).cpu())  # (B, L, S)
                component_logits, component_weights = _component_outputs(outputs)
                if component_logits is not None:
                    component = log_likelihood(component_logits, target[:, None], problem_type)  # (S, B, K', L)
                    component = component.masked_fill(~effective[..., None, None], float("nan"))
                    parts["component_values"].append(component.permute(1, 2, 3, 0).cpu())
                    parts["component_weights"].append(component_weights[-1].float().cpu())
                parts["present"].append(present.cpu())
                parts["targets"].append(target.float().cpu())
                parts["predictions"].append(prediction.cpu())
                parts["prior_predictions"].append(prior_prediction.cpu())
                if labels is not None:
                    parts["labels"].append(torch.as_tensor(labels).cpu())
    finally:
        model.train(was_training)
    if not parts["present"]:
        raise ValueError("attribute: `data` yielded no batches")
    collected = {key: torch.cat(value).numpy() if value else None for key, value in parts.items()}
    if collected["labels"] is not None and len(collected["labels"]) != len(collected["present"]):
        raise ValueError("attribute: only some batches carry `labels`; give labels for every sample or for none")
    return collected


def _prediction(logits: torch.Tensor, problem_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The prediction, and the per-sample quantity whose mean is the prior without labels."""
    if problem_type == "single_label_classification":
        return logits.argmax(-1), logits.softmax(-1)
    if problem_type == "multi_label_classification":
        return (logits > 0).long(), logits.sigmoid()
    return logits, logits


def _explained_target(labels, prediction: torch.Tensor, problem_type: str) -> torch.Tensor:
    if labels is None:
        return prediction
    labels = torch.as_tensor(labels, device=prediction.device)
    if problem_type == "single_label_classification":
        return labels.long()
    return labels.float().reshape(prediction.shape)


def _assemble(model, collected: dict, prior: np.ndarray, prior_source: str, problem_type: str) -> AttributionResult:
    """`v(∅)` from the prior, empty effective subsets filled with it, then the decomposition."""
    names = list(model.config.modality_names)
    prior_values = prior_log_likelihood(collected["targets"], prior, problem_type)  # (N, L)
    subset_values = collected["subset_values"]  # (N, L, 2^M − 1)
    subset_values = np.concatenate([prior_values[..., None], subset_values], -1)
    subset_values = np.where(np.isnan(subset_values), prior_values[..., None], subset_values)
    present = collected["present"]
    values, harsanyi = decompose(subset_values - prior_values[..., None], present[:, None, :])
    result = dict(values=values, subset_values=subset_values, harsanyi=harsanyi)
    if problem_type != "multi_label_classification":  # one target per sample: drop the label axis
        result = {key: value[:, 0] for key, value in result.items()}
    component = {}
    if collected["component_values"] is not None:
        component_values = collected["component_values"]  # (N, K', L, 2^M − 1)
        component_values = np.concatenate(
            [np.broadcast_to(prior_values[:, None, :, None], component_values.shape[:3] + (1,)), component_values], -1)
        component_values = np.where(np.isnan(component_values), prior_values[:, None, :, None], component_values)
        component_values, _ = decompose(component_values - prior_values[:, None, :, None], present[:, None, None, :])
        if problem_type != "multi_label_classification":
            component_values = component_values[:, :, 0]
        weights = collected["component_weights"]
        component = dict(model_component_names=_model_component_names(model, weights.shape[1]),
                         model_component_weights=weights, model_component_values=component_values)
    num_outputs = model.config.num_labels
    id2label = getattr(model.config, "id2label", None) or {}
    dropout = _modality_dropout(model)
    return AttributionResult(
        component_names=component_names_for(names),
        subset_names=["none" if not coalition else "+".join(names[k] for k in coalition)
                      for coalition in coalitions(len(names))],
        harsanyi_names=["harsanyi_" + "_".join(names[k] for k in coalition)
                        for coalition in coalitions(len(names)) if len(coalition) >= 2],
        modality_names=names, present=present, predictions=collected["predictions"], labels=collected["labels"],
        explained="label" if collected["labels"] is not None else "prediction", prior=np.asarray(prior),
        prior_source=prior_source, problem_type=problem_type,
        class_names=[str(id2label.get(index, f"LABEL_{index}")) for index in range(num_outputs)],
        modality_dropout=dropout.tolist() if hasattr(dropout, "tolist") else dropout, **result, **component,
    )


__all__ = ["AttributionResult", "all_subsets", "attribute", "component_names_for", "decompose", "estimate_label_prior",
           "moebius_matrix"]
