"""DMIL's three-stage training schedule on top of `transformers.Trainer`.

1. Level 1 only (intra-modality VIBs, reconstruction, unimodal heads), towers trainable.
2. Towers, projections and level 1 frozen (weights, BatchNorm statistics, dropout); level 2,
   synergy, component heads and gate trained.
3. Everything trainable, the full loss.

Each stage is its own `Trainer` run: a fresh optimiser and scheduler, its own output folder
(`{output_dir}/stage{1,2,3}`), `load_best_model_at_end=True` with `metric_for_best_model` measured
on `eval_dataset` (the validation split: never pass the test split here), and the next stage
starts from that best model. A stage that finished writes `dmil_stage_complete.json` and its best
weights to `stage{k}/best`; calling `run_dmil_schedule` again skips finished stages and resumes an
interrupted one from its last checkpoint. Devices, mixed precision and distributed runs are
Trainer's business, so the schedule runs unchanged under `accelerate launch` / `torchrun`.

This module is not remote code: it imports the core, never the reverse.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import EvalPrediction, Trainer, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from .modeling_i2moe import I2MoEForClassification


logger = logging.get_logger(__name__)

STAGE_COMPLETE_FILE = "dmil_stage_complete.json"
BEST_MODEL_FOLDER = "best"


@dataclass
class DMILStage:
    """One stage of the schedule: its epochs, learning rate and any other `TrainingArguments`
    fields to override for this stage only (e.g. `{"optim": "sgd", "warmup_steps": 0}`)."""

    num_train_epochs: float
    learning_rate: float
    overrides: dict[str, Any] = field(default_factory=dict)


# The reference's epochs (10, 5, the rest) and stage-1/2 learning rates (4e-3, 1e-3); stage 3 at 1e-3,
# not the reference's 1e-5: at 1e-5 stage 3 cannot train a synergy that a frozen level 1 left weak
# (planted pure synergy: 37% at 1e-5, 94% at 1e-3; benchmarks/dmil_ablation.py, docs/dmil.md). The
# reference used SGD with momentum 0.9: pass `optim="sgd"` and `optim_args="momentum=0.9"` in `args`.
DEFAULT_DMIL_STAGES = (DMILStage(10, 4e-3), DMILStage(5, 1e-3), DMILStage(15, 1e-3))


def dmil_frozen_modules(model: I2MoEForClassification, stage: int) -> tuple[str, ...]:
    """Names of the submodules whose parameters stage `stage` freezes.

    Stage 1: the level-2 modules (redundancy/uniqueness, synergy, component heads, gate), which
    take no part in its loss. Stage 2: everything outside the interaction part (the encoders with
    their towers and null tokens, the I2M2 heads and their encoders) and level 1. Stage 3: none.
    """
    interaction = model.interaction
    level1 = [f"interaction.{name}" for name, module in interaction.named_children() if module in interaction.level1_modules]
    if stage == 1:
        return tuple(
            f"interaction.{name}" for name, module in interaction.named_children()
            if f"interaction.{name}" not in level1 and next(module.parameters(), None) is not None
        )
    if stage == 2:
        outside = [name for name, module in model.named_children() if name != "interaction" and next(module.parameters(), None) is not None]
        return (*outside, *level1)
    return ()


def apply_dmil_stage(model: I2MoEForClassification, stage: int) -> None:
    """Put a DMIL model in stage `stage`: set `config.dmil.stage` (the loss composition) and freeze
    the stage's modules through the model's own `set_frozen` (so a tower configured `freeze=True`,
    shared or I2M2-separate, stays frozen in every stage, and an unused tower pooler stays off);
    stage 2's frozen modules stay in eval mode (BatchNorm statistics and dropout) through `train()`.

    Example:

    ```python
    >>> from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
    >>> from i2moe.dmil_training import apply_dmil_stage
    >>> config = I2MoEConfig(modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=4)},
    ...                                  {"name": "b", "tower": I2MoEFeaturesConfig(input_size=4)}],
    ...                      hidden_size=16, method="dmil", num_labels=2)
    >>> model = I2MoEForClassification(config)
    >>> apply_dmil_stage(model, 2)
    >>> any(p.requires_grad for p in model.encoders.parameters()), model.train().encoders.training
    (False, False)
    ```
    """
    if model.config.method != "dmil":
        raise ValueError(f"apply_dmil_stage: the model's `config.method` must be 'dmil', got {model.config.method!r}")
    if stage not in (1, 2, 3):
        raise ValueError(f"apply_dmil_stage: `stage` must be 1, 2 or 3, got {stage!r}")
    model.config.dmil.stage = stage
    frozen = dmil_frozen_modules(model, stage)
    # Stage 1's frozen level-2 modules are simply unused; only stage 2 must pin BatchNorm/dropout. The
    # frozen level-1 VIBs stop sampling too: level 2 reads the means of M_m and N_m.
    model.set_frozen(frozen, eval_modules=frozen if stage == 2 else ())


def dmil_compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy of `logits` and synergy against the model's own unimodal (level-1) heads.

    The predictions tuple holds the model's array outputs in `I2MoEOutput` field order: `logits`
    first and `unimodal_logits` last (the scalar `interaction_loss` and `loss_terms` are kept out
    by `config.keys_to_ignore_at_inference`).
    """
    outputs = prediction.predictions if isinstance(prediction.predictions, tuple) else (prediction.predictions,)
    labels = np.asarray(prediction.label_ids)
    correct = outputs[0].argmax(-1) == labels
    metrics = {"accuracy": float(correct.mean())}
    if len(outputs) > 1:
        unimodal_correct = outputs[-1].argmax(-1) == labels[:, None]
        metrics["synergy"] = float((correct & ~unimodal_correct.any(1)).mean())
    return metrics


def run_dmil_schedule(
    model: I2MoEForClassification,
    args: TrainingArguments,
    train_dataset,
    eval_dataset,
    *,
    stages: tuple[DMILStage, DMILStage, DMILStage] = DEFAULT_DMIL_STAGES,
    data_collator=None,
    compute_metrics=dmil_compute_metrics,
    callbacks=None,
    resume: bool = True,
) -> list[dict[str, float]]:
    r"""
    Train a DMIL model through its three stages, each from the previous stage's best checkpoint.

    Args:
        model: an `I2MoEForClassification` with `config.method == "dmil"`; trained in place and
            left in stage 3 holding the best stage-3 weights.
        args: the base `TrainingArguments`. Each stage runs with `output_dir/stage{k}`, its own
            epochs and learning rate (`stages`), `load_best_model_at_end=True` and
            `metric_for_best_model` (default `"accuracy"`, from `compute_metrics`). When
            `eval_strategy` is `"no"` both it and `save_strategy` become `"epoch"` (best-checkpoint
            selection needs evaluations and checkpoints at the same steps). Set
            `remove_unused_columns=False`, as for every `I2MoEForClassification`.
        train_dataset: the training split.
        eval_dataset: the **validation** split that chooses each stage's best checkpoint.
        stages: the three `DMILStage`s.
        data_collator, compute_metrics, callbacks: passed to every stage's `Trainer`.
        resume: skip stages whose `dmil_stage_complete.json` exists (loading their best weights)
            and resume an unfinished stage from its last checkpoint. `False` trains every stage
            from the start.

    Returns:
        The validation metrics of each stage's best model.

    Example:

    ```python
    >>> from transformers import TrainingArguments
    >>> from i2moe.dmil_training import DMILStage, run_dmil_schedule
    >>> args = TrainingArguments("runs/dmil", per_device_train_batch_size=64, eval_strategy="epoch",
    ...                          save_strategy="epoch", remove_unused_columns=False, report_to="none")
    >>> metrics = run_dmil_schedule(model, args, splits["train"], splits["validation"],  # doctest: +SKIP
    ...                             stages=(DMILStage(10, 4e-3), DMILStage(5, 1e-3), DMILStage(5, 1e-5)))
    ```
    """
    if len(stages) != 3:
        raise ValueError(f"run_dmil_schedule: `stages` must hold 3 DMILStage, got {len(stages)}")
    if eval_dataset is None:
        raise ValueError("run_dmil_schedule: `eval_dataset` (the validation split) is required to choose each stage's best checkpoint")
    results = []
    for stage, settings in enumerate(stages, start=1):
        apply_dmil_stage(model, stage)
        stage_dir = Path(args.output_dir) / f"stage{stage}"
        complete_file = stage_dir / STAGE_COMPLETE_FILE
        if resume and complete_file.exists():
            _load_weights(model, stage_dir / BEST_MODEL_FOLDER)
            results.append(json.loads(complete_file.read_text())["metrics"])
            logger.info(f"DMIL stage {stage} already complete in {stage_dir}; loaded its best model")
            continue
        trainer = Trainer(
            model=model, args=_stage_arguments(args, stage_dir, settings), train_dataset=train_dataset,
            eval_dataset=eval_dataset, data_collator=data_collator, compute_metrics=compute_metrics,
            callbacks=callbacks,
        )
        checkpoint = get_last_checkpoint(str(stage_dir)) if resume and stage_dir.is_dir() else None
        trainer.train(resume_from_checkpoint=checkpoint)
        metrics = trainer.evaluate()  # the best model, loaded at the end of training
        trainer.save_model(str(stage_dir / BEST_MODEL_FOLDER))
        if trainer.is_world_process_zero():
            complete_file.write_text(json.dumps(
                {"stage": stage, "metrics": metrics, "best_model_checkpoint": trainer.state.best_model_checkpoint},
                indent=2,
            ))
        trainer.accelerator.wait_for_everyone()
        results.append(metrics)
    return results


def _stage_arguments(args: TrainingArguments, stage_dir: Path, settings: DMILStage) -> TrainingArguments:
    changes = {
        "output_dir": str(stage_dir),
        "num_train_epochs": settings.num_train_epochs,
        "learning_rate": settings.learning_rate,
        "load_best_model_at_end": True,
        "metric_for_best_model": args.metric_for_best_model or "accuracy",
    }
    if args.eval_strategy == "no":
        changes.update(eval_strategy="epoch", save_strategy="epoch")
    changes.update(settings.overrides)
    if changes["metric_for_best_model"] != args.metric_for_best_model and "greater_is_better" not in settings.overrides:
        changes["greater_is_better"] = None  # re-inferred from the metric's name
    return dataclasses.replace(args, **changes)


def _load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load a `save_pretrained` folder's safetensors weights (single file or shards) into `model`."""
    index_file = folder / "model.safetensors.index.json"
    files = (
        sorted({folder / name for name in json.loads(index_file.read_text())["weight_map"].values()})
        if index_file.exists()
        else [folder / "model.safetensors"]
    )
    state = {}
    for file in files:
        state.update(load_file(os.fspath(file), device=str(model.device)))
    model.load_state_dict(state, strict=True)


__all__ = [
    "DEFAULT_DMIL_STAGES",
    "DMILStage",
    "apply_dmil_stage",
    "dmil_compute_metrics",
    "dmil_frozen_modules",
    "run_dmil_schedule",
]
