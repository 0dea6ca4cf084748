"""Planted-interaction data and a small, fast training loop for the method benchmarks.

Each modality m carries one 4-valued symbol s_m, coded as a fixed random 16-d vector `E_m[s_m]`
plus N(0, noise²) noise; the label depends on the symbols in a planted way:

- `uniqueness_<m>`: y = s_m, the other symbols independent (only modality m says anything);
- `redundancy`: every symbol equals y (each modality alone says everything);
- `synergy`: y = (s_1 + s_2) mod 4 with s_1, s_2 independent (neither alone says anything; for
  3 modalities the third symbol is independent noise);
- `synergy_all` (3 modalities): y = (s_1 + s_2 + s_3) mod 4.

The codebooks come from a fixed seed (the same for every split and seed); the samples from the
split's own generator. Modality dropout (rate per modality, per sample, never every modality)
is applied by `train_model` through `modality_mask`, since the model has no such option yet
(issue 13 adds `config.modality_dropout`; switch `_dropout_mask` to it when merged).

This file is a benchmark helper (not part of the package): `methods_suite.py` and the ablation
scripts import it.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import torch

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
from i2moe.dmil_training import apply_dmil_stage


NUM_SYMBOLS = 4
FEATURES = 16
NOISE = 1.0
CODEBOOK_SEED = 2024
MODALITIES = {2: ("x1", "x2"), 3: ("x1", "x2", "x3")}


def planted_kinds(num_modalities: int) -> list[str]:
    names = MODALITIES[num_modalities]
    kinds = [f"uniqueness_{name}" for name in names] + ["redundancy", "synergy"]
    return kinds + (["synergy_all"] if num_modalities == 3 else [])


def planted_data(kind: str, num_modalities: int, size: int, seed: int, with_symbols: bool = False) -> dict[str, torch.Tensor]:
    """`{"<m>_features": (size, 16) for every modality, "labels": (size,)}` for `kind`, plus
    `"symbols"` (M, size) when `with_symbols` (for probes: not a model input)."""
    if kind not in planted_kinds(num_modalities):
        raise ValueError(f"planted kind must be one of {planted_kinds(num_modalities)}, got {kind!r}")
    names = MODALITIES[num_modalities]
    generator = torch.Generator().manual_seed(seed)
    symbols = torch.randint(NUM_SYMBOLS, (num_modalities, size), generator=generator)
    if kind == "redundancy":
        symbols[:] = symbols[0]
        labels = symbols[0]
    elif kind.startswith("uniqueness_"):
        labels = symbols[names.index(kind.removeprefix("uniqueness_"))]
    elif kind == "synergy":
        labels = (symbols[0] + symbols[1]) % NUM_SYMBOLS
    else:
        labels = symbols.sum(0) % NUM_SYMBOLS
    codebooks = torch.randn(num_modalities, NUM_SYMBOLS, FEATURES, generator=torch.Generator().manual_seed(CODEBOOK_SEED))
    batch = {}
    for index, name in enumerate(names):
        noise = NOISE * torch.randn(size, FEATURES, generator=generator)
        batch[f"{name}_features"] = codebooks[index, symbols[index]] + noise
    batch["labels"] = labels.clone()
    if with_symbols:
        batch["symbols"] = symbols
    return batch


def planted_config(num_modalities: int, method: str, **overrides) -> I2MoEConfig:
    """Feature towers (16 -> 32, one hidden layer), width 32, concat fusion (hidden 64), 4 classes,
    no dropout; `overrides` replace any field."""
    tower = {"input_size": FEATURES, "hidden_size": 32, "num_hidden_layers": 1}
    settings = dict(
        modalities=[{"name": name, "tower": I2MoEFeaturesConfig(**tower)} for name in MODALITIES[num_modalities]],
        hidden_size=32, fusion="concat", fusion_hidden_size=64, num_labels=NUM_SYMBOLS, dropout=0.0, method=method,
    )
    settings.update(overrides)
    return I2MoEConfig(**settings)


def _dropout_mask(size: int, num_modalities: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Per-sample modality presence: each modality dropped with probability `rate`; a row that
    would lose every modality keeps one chosen at random."""
    present = torch.rand(size, num_modalities, generator=generator) >= rate
    empty = ~present.any(1)
    keep = torch.randint(num_modalities, (size,), generator=generator)
    present[empty, keep[empty]] = True
    return present.long()


@torch.no_grad()
def evaluate(model: I2MoEForClassification, data: dict[str, torch.Tensor], batch_size: int = 1024) -> dict:
    """Accuracy of `logits`, and per-component accuracy when the model reports components."""
    model.eval()
    size = len(data["labels"])
    correct, component_correct, weight_sum = 0, None, None
    for start in range(0, size, batch_size):
        batch = {name: column[start:start + batch_size] for name, column in data.items()}
        labels = batch.pop("labels")
        out = model(**batch)
        correct += int((out.logits.argmax(-1) == labels).sum())
        component_logits, weights = out.component_logits, out.component_weights
        if component_logits is not None:
            hits = (component_logits.argmax(-1) == labels[:, None]).sum(0)
            component_correct = hits if component_correct is None else component_correct + hits
            weight_sum = weights.sum(0) if weight_sum is None else weight_sum + weights.sum(0)
    metrics = {"accuracy": correct / size}
    if component_correct is not None:
        names = model.interaction.component_names
        metrics["component_accuracy"] = dict(zip(names, (component_correct / size).tolist()))
        metrics["mean_weight"] = dict(zip(names, (weight_sum / size).tolist()))
    return metrics


def lr_factor(schedule: str, warmup: int, total: int):
    """Trainer's `linear` / `cosine` schedules (`get_scheduler`) as a factor of the step, written so
    that linear without warm-up is `1 - step / total` to the last bit (the suite's earlier rows)."""
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"train_epochs: `schedule` must be 'linear' or 'cosine', got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 1 - progress) if schedule == "linear" else max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
    return factor


def train_epochs(model, train: dict, validation: dict, *, epochs: int, lr: float, batch_size: int, seed: int,
                 modality_dropout: float, weight_decay: float = 0.0, schedule: str = "linear", warmup_ratio: float = 0.0,
                 keep_best: bool = True, on_epoch=None) -> dict:
    """AdamW for `epochs` under Trainer's `schedule` (`"linear"`: its default, decay to 0; `"cosine"`)
    with `warmup_ratio` of the steps warming up; with `keep_best` the weights of the epoch with the
    best validation accuracy are loaded at the end (as `load_best_model_at_end`), else the last
    epoch's stay. Returns that epoch's validation metrics plus `best_epoch` (the epoch kept) and
    `history` (validation accuracy per epoch)."""
    size = len(train["labels"])
    steps_per_epoch = math.ceil(size / batch_size)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    total = max(epochs * steps_per_epoch, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, round(warmup_ratio * total), total))
    generator = torch.Generator().manual_seed(seed)
    num_modalities = len(model.config.modalities)
    best, best_state, history = None, None, []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(size, generator=generator)
        for start in range(0, size, batch_size):
            index = order[start:start + batch_size]
            batch = {name: column[index] for name, column in train.items()}
            if modality_dropout > 0:
                batch["modality_mask"] = _dropout_mask(len(index), num_modalities, modality_dropout, generator)
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        metrics = evaluate(model, validation)
        history.append(round(metrics["accuracy"], 4))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if not keep_best:
            best = {**metrics, "best_epoch": epoch + 1}
        elif best is None or metrics["accuracy"] > best["accuracy"]:
            best, best_state = {**metrics, "best_epoch": epoch + 1}, copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    return {**(best or {}), "history": history}


def train_dmil(model, train: dict, validation: dict, *, stages, batch_size: int, seed: int,
               modality_dropout: float, **fit) -> list[dict]:
    """DMIL's three stages as `run_dmil_schedule` runs them (`apply_dmil_stage`, a fresh optimiser
    per stage, each stage from the previous stage's best validation epoch), without Trainer's
    per-step overhead. `stages`: three (epochs, lr) pairs; `fit`: the rest of `train_epochs`'
    options (the schedule). Each stage keeps its best validation epoch whatever `fit["keep_best"]`
    says: the method starts every stage from the previous stage's best checkpoint."""
    fit = {**fit, "keep_best": True}
    results = []
    for stage, (epochs, lr) in enumerate(stages, start=1):
        apply_dmil_stage(model, stage)
        results.append(train_epochs(model, train, validation, epochs=epochs, lr=lr, batch_size=batch_size,
                                    seed=seed + stage, modality_dropout=modality_dropout, **fit))
    return results


def median(values) -> float:
    return float(np.median(values))




# --- resumable JSON-lines results ---


def finished_keys(path, key_fields) -> set[tuple]:
    """The keys (tuples of `key_fields`) of the rows already in the JSON-lines file `path`."""
    if not path.exists():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {tuple(row.get(field) for field in key_fields) for row in rows}


def append_row(path, row: dict) -> None:
    """Append one result row (a line of JSON) to `path`: an interrupted run keeps what it finished."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


__all__ = [
    "MODALITIES", "append_row", "evaluate", "finished_keys", "median", "planted_config", "planted_data", "planted_kinds",
    "read_rows", "train_dmil", "train_epochs",
]
