"""DMIL: the decomposition part, its three-stage schedule and the synergy metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback, TrainingArguments

from conftest import make_config, make_inputs
from oracles import randomize_parameters
from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoELeNetConfig
from i2moe.configuration_i2moe import DMIL_PAPER_STAGE3_WEIGHTS
from i2moe.dmil_i2moe import gaussian_kl, gaussian_kl_standard_normal
from i2moe.dmil_training import DMILStage, run_dmil_schedule


SYNERGY_METRIC = Path(__file__).resolve().parents[1] / "src" / "i2moe" / "metrics" / "synergy"


# The paper's stage-3 weights (0.8 on the components' cross-entropies, 0.5 on the level-1 heads'); the
# package's are 0.1 / 0.1 (docs/dmil.md, "Stage-3 weights").
PAPER_STAGE3 = {"dmil_stage3_component_weight": 0.8, "dmil_stage3_unimodal_weight": 0.5}


def test_the_named_paper_weights_are_the_papers():
    assert DMIL_PAPER_STAGE3_WEIGHTS == {name.removeprefix("dmil_"): value for name, value in PAPER_STAGE3.items()}


def dmil_config(feature_sizes=(8, 4), **overrides) -> I2MoEConfig:
    settings = dict(method="dmil", dmil_latent_size=8)
    settings.update(overrides)
    return make_config(feature_sizes=feature_sizes, **settings)


def training_arguments(output_dir, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=16, per_device_eval_batch_size=256,
        eval_strategy="epoch", save_strategy="epoch", logging_strategy="no", report_to="none",
        remove_unused_columns=False, use_cpu=True, seed=0, dataloader_num_workers=0, disable_tqdm=True,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


# --- the variational bottleneck ---


def test_kl_to_standard_normal_matches_monte_carlo():
    generator = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(3, 5, generator=generator), torch.randn(3, 5, generator=generator)
    samples = mean + (0.5 * logvar).exp() * torch.randn(200_000, 3, 5, generator=generator, dtype=torch.float64)
    posterior = torch.distributions.Normal(mean.double(), (0.5 * logvar.double()).exp())
    prior = torch.distributions.Normal(0.0, 1.0)
    monte_carlo = (posterior.log_prob(samples) - prior.log_prob(samples)).mean()
    assert gaussian_kl_standard_normal(mean, logvar).item() == pytest.approx(monte_carlo.item(), rel=0.02)


def test_kl_between_gaussians_matches_monte_carlo():
    generator = torch.Generator().manual_seed(2)
    mean_p, logvar_p, mean_q, logvar_q = (torch.randn(4, 6, generator=generator) for _ in range(4))
    p = torch.distributions.Normal(mean_p.double(), (0.5 * logvar_p.double()).exp())
    q = torch.distributions.Normal(mean_q.double(), (0.5 * logvar_q.double()).exp())
    samples = p.sample((200_000,))
    monte_carlo = (p.log_prob(samples) - q.log_prob(samples)).mean()
    assert gaussian_kl(mean_p, logvar_p, mean_q, logvar_q).item() == pytest.approx(monte_carlo.item(), rel=0.03)
    assert gaussian_kl(mean_p, logvar_p, mean_p, logvar_p).item() == pytest.approx(0.0, abs=1e-6)


# --- the decomposition part ---


@pytest.mark.parametrize(
    "feature_sizes, full, expected",
    [
        ((8, 4), None, ["uniqueness_m0", "uniqueness_m1", "redundancy", "synergy"]),
        ((8, 4, 6), None, ["intra_m0", "intra_m1", "intra_m2", "synergy"]),
        ((8, 4, 6), True, ["uniqueness_m0", "uniqueness_m1", "uniqueness_m2", "redundancy", "synergy"]),
    ],
)
def test_outputs_per_stage(feature_sizes, full, expected):
    config = dmil_config(feature_sizes, dmil_full_decomposition=full)
    model = I2MoEForClassification(config)
    assert model.interaction.component_names == expected
    inputs, labels = make_inputs(config, batch_size=5), torch.tensor([0, 1, 2, 0, 1])
    for stage in (1, 2, 3):
        config.dmil.stage = stage
        out = model(**inputs, labels=labels)
        assert out.logits.shape == (5, 3) and out.unimodal_logits.shape == (5, len(feature_sizes), 3)
        assert torch.allclose(out.interaction_loss + model.task_loss(out.logits, labels), out.loss)
        if stage == 1:
            assert out.component_weights is None and not out.logits.requires_grad
            assert set(out.loss_terms) == {"kl_intra", "reconstruction_intra", "ce_unimodal"}
            continue
        assert out.component_logits.shape == (5, len(expected), 3)
        assert torch.allclose(out.component_weights.sum(-1), torch.ones(5))
        assert torch.allclose(out.logits, (out.component_weights[..., None] * out.component_logits).sum(1), atol=1e-6)
        assert ("alignment" in out.loss_terms) == (len(expected) > len(feature_sizes) + 1)


def test_stage_loss_composition():
    config = dmil_config(dmil_stage=3, **PAPER_STAGE3)
    model = I2MoEForClassification(config)
    inputs, labels = make_inputs(config, batch_size=6), torch.tensor([0, 1, 2, 0, 1, 2])
    torch.manual_seed(3)
    out = model(**inputs, labels=labels)
    terms = out.loss_terms
    level1 = config.dmil.kl_weight * terms["kl_intra"] + config.dmil.reconstruction_weight * terms["reconstruction_intra"]
    level2 = (config.dmil.kl_weight * terms["kl_consistency"] + config.dmil.alignment_weight * terms["alignment"]
              + config.dmil.reconstruction_weight * terms["reconstruction_consistency"])
    expected = 0.5 * terms["ce_unimodal"] + 0.8 * terms["ce_components"] + level1 + level2
    assert torch.allclose(out.interaction_loss, expected)
    # Stage 1: the loss is level 1 only, so no gradient reaches level 2.
    config.dmil.stage = 1
    model(**inputs, labels=labels).loss.backward()
    assert all(p.grad is None for p in model.interaction.gate.parameters())
    assert model.interaction.intra.task_vib.linear.weight.grad.abs().sum() > 0


def test_eval_is_deterministic_and_training_samples():
    config = dmil_config(dmil_stage=3)
    model = I2MoEForClassification(config)
    inputs = make_inputs(config, batch_size=4)
    model.eval()
    assert torch.equal(model(**inputs).logits, model(**inputs).logits)
    model.train()
    assert not torch.equal(model(**inputs).logits, model(**inputs).logits)


def test_bf16_weights_match_fp32():
    """The model cast to bf16 (weights and activations; the VIBs' outputs stay float32): eval-mode
    logits and loss within bf16 precision of the fp32 model's (autocast: test_modeling)."""
    config = dmil_config(dmil_stage=3)
    inputs, labels = make_inputs(config, batch_size=4), torch.tensor([0, 1, 2, 0])
    model = randomize_parameters(I2MoEForClassification(config), seed=1, scale=0.3).eval()
    reference = model(**inputs, labels=labels)
    out = model.to(torch.bfloat16)(**inputs, labels=labels)
    assert reference.logits.abs().max() > 0.3 and out.component_weights.shape == (4, 4)
    torch.testing.assert_close(out.logits.float(), reference.logits, rtol=0.05, atol=0.05)
    torch.testing.assert_close(out.loss.float(), reference.loss, rtol=0.05, atol=0.05)


def test_config_validation():
    with pytest.raises(ValueError, match="dmil.stage"):
        dmil_config(dmil_stage=4)
    with pytest.raises(ValueError, match="at least 2 modalities"):
        dmil_config(feature_sizes=(8,))
    with pytest.raises(ValueError, match="dmil.kl_weight"):
        dmil_config(dmil_kl_weight=-1.0)


# --- the schedule ---


def _lenet_dmil_config() -> I2MoEConfig:
    """A BatchNorm tower (tiny LeNet on 8x8 images) beside a feature tower."""
    return I2MoEConfig(
        modalities=[{"name": "image", "tower": I2MoELeNetConfig(base_channels=2, num_additional_layers=1)},
                    {"name": "tab", "tower": I2MoEFeaturesConfig(input_size=4, hidden_size=8, num_hidden_layers=1)}],
        hidden_size=16, method="dmil", dmil_latent_size=8, num_labels=2, dropout=0.1,
    )


def _lenet_dataset(size: int, seed: int) -> Dataset:
    generator = np.random.default_rng(seed)
    mask = np.ones((size, 2), dtype=np.int64)
    mask[: size // 4, 1] = 0  # some rows lack `tab`, so the null tokens get gradients too
    return Dataset.from_dict({
        "image_pixel_values": generator.normal(size=(size, 1, 8, 8)).astype(np.float32),
        "tab_features": generator.normal(size=(size, 4)).astype(np.float32),
        "modality_mask": mask,
        "labels": generator.integers(0, 2, size=size),
    }).with_format("torch")


class _Snapshots(TrainerCallback):
    """The model's full state (parameters and buffers) at the start and end of every stage."""

    def __init__(self):
        self.states = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.states[(Path(args.output_dir).name, "begin")] = _state(model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.states[(Path(args.output_dir).name, "end")] = _state(model)


def _state(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def test_schedule_freezes_stage_2_and_trains_everything_in_stage_3(tmp_path):
    model = I2MoEForClassification(_lenet_dmil_config())
    snapshots = _Snapshots()
    dataset = _lenet_dataset(48, seed=0)
    stages = (DMILStage(1, 1e-2), DMILStage(1, 1e-2), DMILStage(1, 1e-2))
    metrics = run_dmil_schedule(model, training_arguments(tmp_path), dataset, _lenet_dataset(16, seed=1),
                                stages=stages, callbacks=[snapshots])
    assert len(metrics) == 3 and all("eval_accuracy" in m for m in metrics)
    assert model.config.dmil.stage == 3

    begin, end = snapshots.states[("stage2", "begin")], snapshots.states[("stage2", "end")]
    upstream = ("encoders.", "interaction.intra.")
    frozen = [name for name in begin if name.startswith(upstream)]
    assert any("running_mean" in name for name in frozen)  # BatchNorm statistics are covered
    changed_frozen = [name for name in frozen if not torch.equal(begin[name], end[name])]
    assert changed_frozen == []
    trained = [name for name in begin if name.startswith(("interaction.consistency.", "interaction.gate."))]
    assert trained and all(not torch.equal(begin[name], end[name]) for name in trained)

    begin, end = snapshots.states[("stage3", "begin")], snapshots.states[("stage3", "end")]
    unchanged = [name for name in begin if begin[name].is_floating_point() and torch.equal(begin[name], end[name])]
    # No image is missing in this data, so the image's null tokens never enter a prediction.
    assert unchanged == ["encoders.image.null_tokens"]


class _Interrupt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if Path(args.output_dir).name == "stage2" and state.global_step == 5:
            raise KeyboardInterrupt("simulated interruption")


def test_schedule_resumes_an_interrupted_stage(tmp_path):
    def run(output_dir, callbacks=None):
        torch.manual_seed(0)
        model = I2MoEForClassification(dmil_config(dropout=0.0))
        features = np.random.default_rng(0).normal(size=(64, 12)).astype(np.float32)
        dataset = Dataset.from_dict({"m0_features": features[:, :8], "m1_features": features[:, 8:],
                                     "labels": np.arange(64) % 3}).with_format("torch")
        metrics = run_dmil_schedule(model, training_arguments(output_dir), dataset, dataset,
                                    stages=(DMILStage(1, 1e-2), DMILStage(2, 1e-2), DMILStage(1, 1e-3)),
                                    callbacks=callbacks)
        return model, metrics

    reference, _ = run(tmp_path / "uninterrupted")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "interrupted", callbacks=[_Interrupt()])
    stage1_marker = tmp_path / "interrupted" / "stage1" / "dmil_stage_complete.json"
    stage1_written = stage1_marker.stat().st_mtime_ns
    assert not (tmp_path / "interrupted" / "stage2" / "dmil_stage_complete.json").exists()
    assert (tmp_path / "interrupted" / "stage2" / "checkpoint-4").is_dir()

    resumed, metrics = run(tmp_path / "interrupted")
    assert stage1_marker.stat().st_mtime_ns == stage1_written  # stage 1 was not trained again
    state = json.loads((tmp_path / "interrupted" / "stage2" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    for (name, expected), actual in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(actual, expected, msg=f"{name} differs after resuming")


def _xor_dataset(size: int, seed: int) -> Dataset:
    """Each modality holds one noisy bit; the label is their XOR, so neither modality alone says anything."""
    generator = np.random.default_rng(seed)
    bits = generator.integers(0, 2, size=(size, 2))
    signs = 2.0 * bits - 1.0
    noise = 0.3 * generator.normal(size=(size, 2, 4))
    features = (signs[..., None] * np.ones(4) + noise).astype(np.float32)
    return Dataset.from_dict({"m0_features": features[:, 0], "m1_features": features[:, 1],
                              "labels": bits[:, 0] ^ bits[:, 1]}).with_format("torch")


# The defaults train the mixture more and each component less than the paper's weights: at this small
# budget only the paper's make the synergy component a classifier on its own (with the defaults the
# gate, routing between components, carries the XOR on some seeds).
@pytest.mark.parametrize("stage3_weights, synergy_alone", [({}, False), (PAPER_STAGE3, True)], ids=["defaults", "paper"])
def test_xor_relies_on_synergy_and_beats_the_unimodal_ensemble(tmp_path, stage3_weights, synergy_alone):
    # A reconstruction weight well above the reference's makes N_m keep each modality's bit in stage 1
    # (with 0.005 the KL term wins and N_m carries little until stage 3 trains it through the synergy head).
    config = dmil_config((4, 4), num_labels=2, dmil_reconstruction_weight=1.0, dmil_kl_weight=0.001, **stage3_weights)
    model = I2MoEForClassification(config)
    validation, test = _xor_dataset(256, seed=1), _xor_dataset(512, seed=2)
    metrics = run_dmil_schedule(
        model, training_arguments(tmp_path, per_device_train_batch_size=32), _xor_dataset(640, seed=0), validation,
        stages=(DMILStage(2, 1e-2), DMILStage(6, 1e-2), DMILStage(2, 1e-3)),
    )
    # Stage 1 trains each modality's head alone; its prediction is the unimodal ensemble, additive in
    # the modalities, and an additive rule gets at most 3 of the 4 XOR cells right.
    ensemble_accuracy = metrics[0]["eval_accuracy"]
    assert ensemble_accuracy <= 0.8

    model.eval()
    test = test[:]
    with torch.no_grad():
        out = model(m0_features=test["m0_features"], m1_features=test["m1_features"])
    accuracy = (out.logits.argmax(-1) == test["labels"]).float().mean().item()
    assert accuracy > 0.95 and accuracy > ensemble_accuracy + 0.15
    if synergy_alone:
        # The synergy component carries the XOR on its own (the gate splits its weight between it and
        # redundancy since the synergy reads the means of N_m: read the components, not the gate alone).
        names = model.interaction.component_names
        own_accuracy = (out.component_logits.argmax(-1) == test["labels"][:, None]).float().mean(0)
        assert own_accuracy[names.index("synergy")] > 0.95, dict(zip(names, own_accuracy.tolist()))
        assert out.component_weights.mean(0)[names.index("synergy")] > 0.3


# --- the synergy metric ---


def test_synergy_metric_offline():
    import evaluate

    synergy = evaluate.load(str(SYNERGY_METRIC))
    result = synergy.compute(predictions=[1, 0, 1, 2], references=[1, 0, 0, 2],
                             unimodal_predictions=[[0, 0], [0, 1], [1, 1], [2, 0]])
    # Sample 0 is right while both unimodal models are wrong; sample 1 is right but so is one of them.
    assert result["synergy"] == 0.25 and result["accuracy"] == 0.75
    assert result["unimodal_accuracy"] == [0.5, 0.0]
    with pytest.raises(ValueError, match="unimodal_predictions"):
        synergy.compute(predictions=[1, 0], references=[1, 0], unimodal_predictions=[[0], [0, 1]])


def test_component_weights_in_the_interpretation_api():
    from i2moe.interpretation import interpret

    config = dmil_config(dmil_stage=3)
    model = I2MoEForClassification(config)
    inputs = make_inputs(config, batch_size=6)
    rows = [{key: value[i] for key, value in inputs.items()} | {"labels": torch.tensor(i % 3)} for i in range(6)]
    result = interpret(model, rows, batch_size=4, progress=False)
    assert result.component_names == ["uniqueness_m0", "uniqueness_m1", "redundancy", "synergy"]
    np.testing.assert_allclose(result.weights.sum(1), 1.0, rtol=1e-5)
    with torch.no_grad():
        expected = model.eval()(**inputs).component_weights.numpy()
    np.testing.assert_allclose(result.weights, expected, rtol=1e-5, atol=1e-6)
