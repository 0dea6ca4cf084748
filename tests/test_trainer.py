"""The model under `transformers.Trainer`: loss reporting, learning, metrics, column filtering."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from i2moe import I2MoEForClassification
from i2moe.registry_i2moe import INTERACTIONS

from conftest import make_config


def synthetic_dataset(size: int = 64, seed: int = 0) -> Dataset:
    """Label = argmax of three fixed projections of modality m0 (learnable), m1 is noise."""
    generator = np.random.default_rng(seed)
    m0 = generator.normal(size=(size, 8)).astype(np.float32)
    m1 = generator.normal(size=(size, 4)).astype(np.float32)
    labels = (m0[:, :3]).argmax(1)
    mask = np.ones((size, 2), dtype=np.int64)
    mask[::5, 1] = 0
    return Dataset.from_dict(
        {"m0_features": m0, "m1_features": m1, "modality_mask": mask, "labels": labels}
    ).with_format("torch")


def deterministic_model(method: str = "vanilla") -> I2MoEForClassification:
    config = make_config(method=method, dropout=0.0)
    for modality in config.modalities:
        modality.tower.hidden_dropout_prob = 0.0
    return I2MoEForClassification(config)


def training_args(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                    num_train_epochs=1, report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                    remove_unused_columns=False, disable_tqdm=True, seed=0)
    settings.update(overrides)
    return TrainingArguments(**settings)


def test_reported_training_loss_is_the_mean_per_sample_loss_with_gradient_accumulation(tmp_path):
    model = deterministic_model()
    dataset = synthetic_dataset(32)
    with torch.no_grad():  # lr 0: the weights never change, so each step's loss is known in advance
        batch = {key: dataset[:][key] for key in dataset.column_names}
        expected = model.eval()(**batch).loss.item()
    trainer = Trainer(model=model, args=training_args(tmp_path, learning_rate=0.0, gradient_accumulation_steps=2,
                                                      per_device_train_batch_size=4), train_dataset=dataset)
    result = trainer.train()
    assert result.training_loss == pytest.approx(expected, rel=1e-4)


def test_short_training_run_lowers_the_loss(tmp_path):
    model = deterministic_model()
    train, evaluation = synthetic_dataset(256, seed=0), synthetic_dataset(64, seed=1)
    trainer = Trainer(model=model, args=training_args(tmp_path, learning_rate=3e-3, num_train_epochs=4,
                                                      gradient_accumulation_steps=2),
                      train_dataset=train, eval_dataset=evaluation)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.8 * before


@pytest.mark.parametrize("method", INTERACTIONS.names())
def test_compute_metrics_receives_the_logits(tmp_path, method):
    seen = {}

    def compute_metrics(prediction):
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        seen["shape"] = logits.shape
        return {"accuracy": float((logits.argmax(-1) == prediction.label_ids).mean())}

    trainer = Trainer(model=deterministic_model(method), args=training_args(tmp_path),
                      eval_dataset=synthetic_dataset(20), compute_metrics=compute_metrics)
    metrics = trainer.evaluate()
    assert seen["shape"] == (20, 3)
    evaluation = synthetic_dataset(20)[:]
    with torch.no_grad():
        logits = trainer.model.eval()(**{k: v for k, v in evaluation.items() if k != "labels"}).logits
    assert metrics["eval_accuracy"] == pytest.approx((logits.argmax(-1) == evaluation["labels"]).float().mean().item())


def test_default_column_filter_gets_a_clear_error_naming_the_setting(tmp_path):
    trainer = Trainer(model=deterministic_model(), args=training_args(tmp_path, remove_unused_columns=True),
                      train_dataset=synthetic_dataset(16))
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer.train()
