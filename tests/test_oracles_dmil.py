"""Independent oracle for DMIL: both decomposition levels, the synergy features, the component
heads and gate, and every loss term (per-head cross-entropies with each head against its own row's
label, the KLs, reconstructions and alignment) recomputed from the formulas in METHODS.md section 3
and the module's weights (read by parameter name); then each stage's loss composition."""

from __future__ import annotations

import itertools

import pytest
import torch

import oracles
from conftest import make_config, make_inputs
from i2moe import I2MoEForClassification, TokenLayout
from i2moe.dmil_i2moe import DMILInteraction


LATENT = 4
WEIGHTS = dict(dmil_kl_weight=0.03, dmil_reconstruction_weight=0.007, dmil_alignment_weight=0.05,
               dmil_stage2_component_weight=0.6, dmil_stage3_component_weight=0.9, dmil_stage3_unimodal_weight=0.4)
LABELS = torch.tensor([0, 2, 1, 1, 2])  # rows differ: a head read against another row's label shows
NOISE = 0.5  # the training-mode sample's epsilon, fixed (see `fixed_noise`)


def dmil_interaction(num_tokens, full, stage):
    config = make_config(feature_sizes=(3,) * len(num_tokens), num_tokens=list(num_tokens), method="dmil",
                         hidden_size=8, num_labels=3, dropout=0.0, dmil_latent_size=LATENT,
                         dmil_full_decomposition=full, dmil_stage=stage, **WEIGHTS)
    layout = TokenLayout(tuple(config.modality_names), tuple(num_tokens))
    return oracles.randomize_parameters(DMILInteraction(config, layout).double(), seed=11, scale=0.4), config


def vib(inputs, weights, prefix, stack, latent, noise):
    """Linear -> (mean, logvar clamped to [-10, 10]) -> mean + noise * exp(logvar / 2)."""
    out = oracles.stacked_affine(inputs, weights, f"{prefix}.linear", stack)
    mean, logvar = out[..., :latent], out[..., latent:].clamp(-10.0, 10.0)
    return mean + noise * torch.exp(0.5 * logvar), mean, logvar


def dmil_oracle(interaction, tokens, num_tokens, labels, noise):
    weights = dict(interaction.named_parameters())
    names = interaction.component_names
    num_modalities = len(num_tokens)
    pooled = oracles.modality_means(tokens, num_tokens)
    terms = {"kl_intra": 0.0, "reconstruction_intra": 0.0, "ce_unimodal": 0.0}
    task, task_mean, inter, unimodal = [], [], [], []
    for m, v in enumerate(pooled):  # level 1, modality by modality
        m_sample, m_mean, m_logvar = vib(v, weights, "intra.task_vib", m, LATENT, noise)
        n_sample, n_mean, n_logvar = vib(v, weights, "intra.inter_vib", m, LATENT, noise)
        decoded = oracles.mlp_head(torch.cat([m_sample, n_sample], -1), weights, "intra.decoder", m)
        logits = oracles.stacked_affine(m_sample, weights, "intra.head", m)
        terms["kl_intra"] += oracles.kl_standard_normal(m_mean, m_logvar) + oracles.kl_standard_normal(n_mean, n_logvar)
        terms["reconstruction_intra"] += oracles.mse(decoded, v)
        terms["ce_unimodal"] += oracles.cross_entropy(logits, labels)
        # The synergy reads the means of N_m (docs/dmil.md, "Synergy on the means"); the decoder the samples.
        task.append(m_sample), task_mean.append(m_mean), inter.append(n_mean), unimodal.append(logits)

    features = inter + [inter[i] * inter[j] for i, j in itertools.combinations(range(num_modalities), 2)]
    synergy = oracles.mlp_head(torch.cat(features, -1), weights, "synergy.mlp", 0)
    if interaction.full_decomposition:  # level 2
        r_sample, r_mean, r_logvar = vib(torch.cat(task_mean, -1), weights, "consistency.redundancy_vib", 0, LATENT,
                                         noise)
        terms.update(kl_consistency=oracles.kl_standard_normal(r_mean, r_logvar), alignment=0.0,
                     reconstruction_consistency=0.0)
        unique = []
        for m in range(num_modalities):
            # One linear gives q(R | M_m) (latent columns 0:L of mean and logvar) and U_m (L:2L).
            sample, mean, logvar = vib(task_mean[m], weights, "consistency.per_modality_vib", m, 2 * LATENT, noise)
            q_mean, u_mean, q_logvar, u_logvar = mean[:, :LATENT], mean[:, LATENT:], logvar[:, :LATENT], logvar[:, LATENT:]
            unique.append(sample[:, LATENT:])
            decoded = oracles.mlp_head(torch.cat([r_sample, unique[m]], -1), weights, "consistency.decoder", m)
            terms["kl_consistency"] += oracles.kl_standard_normal(u_mean, u_logvar)
            terms["alignment"] += oracles.kl(r_mean, r_logvar, q_mean, q_logvar)
            terms["reconstruction_consistency"] += oracles.mse(decoded, task_mean[m])
        components = dict(zip(names, unique + [r_sample, synergy]))
    else:
        components = dict(zip(names, task_mean + [synergy]))
    component_logits = [oracles.stacked_affine(components[name], weights, "component_heads", k)
                        for k, name in enumerate(names)]
    terms["ce_components"] = sum(oracles.cross_entropy(logits, labels) for logits in component_logits)
    gate = oracles.softmax(oracles.mlp_head(torch.cat([components[name] for name in names], -1), weights, "gate", 0))
    return {
        "terms": terms,
        "unimodal_logits": torch.stack(unimodal, 1),
        "component_logits": torch.stack(component_logits, 1),
        "component_weights": gate,
        "gated_logits": sum(gate[:, k:k + 1] * component_logits[k] for k in range(len(names))),
        "ensemble_logits": sum(oracles.log_softmax(logits) for logits in unimodal) / num_modalities,
    }


def stage_loss(stage, terms, config_weights=WEIGHTS):
    kl, rec, align = (config_weights[f"dmil_{key}_weight"] for key in ("kl", "reconstruction", "alignment"))
    level1 = kl * terms["kl_intra"] + rec * terms["reconstruction_intra"]
    level2 = (kl * terms.get("kl_consistency", 0.0) + align * terms.get("alignment", 0.0)
              + rec * terms.get("reconstruction_consistency", 0.0))
    if stage == 1:
        return terms["ce_unimodal"] + level1
    if stage == 2:
        return config_weights["dmil_stage2_component_weight"] * terms["ce_components"] + level2
    return (config_weights["dmil_stage3_unimodal_weight"] * terms["ce_unimodal"]
            + config_weights["dmil_stage3_component_weight"] * terms["ce_components"] + level1 + level2)


@pytest.fixture
def fixed_noise(monkeypatch):
    """The VIB's training sample `mean + eps * exp(logvar / 2)` with eps = NOISE everywhere."""
    monkeypatch.setattr(torch, "randn_like", lambda tensor, **kwargs: torch.full_like(tensor, NOISE, **kwargs))


CASES = {"two_full": ((2, 1), True), "three_level1": ((2, 1, 3), False), "three_full": ((2, 1, 3), True)}
CLOSE = dict(rtol=1e-6, atol=1e-6)  # the VIBs and softmaxes run in float32 by design


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_output_and_loss_term_equals_the_oracle(case, stage, training, fixed_noise):
    num_tokens, full = CASES[case]
    interaction, _ = dmil_interaction(num_tokens, full, stage)
    interaction.train(training)
    tokens = torch.randn(5, sum(num_tokens), 8, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    result = interaction(tokens, present=torch.ones(5, len(num_tokens), dtype=torch.bool), null_tokens=None,
                         labels=LABELS)
    expected = dmil_oracle(interaction, tokens, num_tokens, LABELS, NOISE if training else 0.0)
    extra = result
    got_terms = extra["loss_terms"]
    wanted_terms = {name: value for name, value in expected["terms"].items() if stage > 1 or name != "ce_components"}
    if stage == 1:
        wanted_terms = {name: wanted_terms[name] for name in ("kl_intra", "reconstruction_intra", "ce_unimodal")}
    assert set(got_terms) == set(wanted_terms)
    for name, value in wanted_terms.items():
        torch.testing.assert_close(got_terms[name].double(), value, **CLOSE, msg=name)
    torch.testing.assert_close(extra["unimodal_logits"].double(), expected["unimodal_logits"], **CLOSE)
    torch.testing.assert_close(result.interaction_loss.double(), stage_loss(stage, expected["terms"]), **CLOSE)
    if stage == 1:
        torch.testing.assert_close(result.logits.double(), expected["ensemble_logits"], **CLOSE)
        return
    torch.testing.assert_close(extra["component_logits"].double(), expected["component_logits"], **CLOSE)
    torch.testing.assert_close(extra["component_weights"].double(), expected["component_weights"], **CLOSE)
    torch.testing.assert_close(result.logits.double(), expected["gated_logits"], **CLOSE)


def test_model_loss_adds_the_task_cross_entropy_to_the_stage_loss():
    config = make_config(feature_sizes=(3, 3), num_tokens=[2, 1], method="dmil", hidden_size=8, num_labels=3,
                         dropout=0.0, dmil_latent_size=LATENT, dmil_stage=3, **WEIGHTS)
    model = oracles.randomize_parameters(I2MoEForClassification(config).double().eval(), seed=13, scale=0.4)
    inputs = {key: value.double() if value.is_floating_point() else value
              for key, value in make_inputs(config, batch_size=5).items()}
    output = model(**inputs, labels=LABELS)
    with torch.no_grad():
        tokens = model.embed_modalities(**inputs)
    expected = dmil_oracle(model.interaction, tokens, (2, 1), LABELS, noise=0.0)
    task = oracles.cross_entropy(expected["gated_logits"], LABELS)
    torch.testing.assert_close(output.loss.double(), task + stage_loss(3, expected["terms"]), **CLOSE)
