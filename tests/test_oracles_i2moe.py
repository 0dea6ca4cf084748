"""Independent oracles for I2MoE: the perturbation mask spelled out for an uneven layout, every
expert on every variant recomputed with the fusion formulas, each interaction loss term from
METHODS.md section 1, the reweighting softmax(MLP(z) / tau) with tau != 1, and the model's loss.
Experts are looked up by name (`component_names`), never by position."""

from __future__ import annotations

import math

import pytest
import torch

import oracle_access as access
import oracles
from conftest import make_config, make_inputs
from i2moe import FUSIONS, I2MoEForClassification, TokenLayout
from i2moe.configuration_i2moe import PERTURBATIONS
from i2moe.experts_i2moe import I2MoEInteraction


NUM_TOKENS = (2, 1, 3)
# Row 0: the clean input; row j + 1: every token of modality j perturbed, no other token.
VARIANT_MASK = torch.tensor([
    [0, 0, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0, 0],
    [0, 0, 0, 1, 1, 1],
], dtype=torch.bool)
SETTINGS = dict(hidden_size=8, fusion_num_heads=2, fusion_hidden_size=5, fusion_intermediate_size=12, lrtf_rank=3,
                lrtf_output_size=4, dropout=0.0, i2moe_reweight_dropout=0.0, i2moe_reweight_hidden_size=6,
                i2moe_reweight_num_layers=3, i2moe_temperature=2.5, i2moe_margin=0.75, i2moe_lambda_int=0.3)
FLOAT32_SOFTMAX = dict(rtol=1e-6, atol=1e-6)
EXPERTS = ["uniqueness_m0", "uniqueness_m1", "uniqueness_m2", "synergy", "redundancy"]


def interaction_and_config(fusion="concat", perturbation="zero", num_labels=3, **overrides):
    config = make_config(fusion, feature_sizes=(3, 3, 3), num_tokens=list(NUM_TOKENS), method="i2moe",
                         num_labels=num_labels, i2moe_perturbation=perturbation, **{**SETTINGS, **overrides})
    layout = TokenLayout(tuple(config.modality_names), NUM_TOKENS)
    interaction = I2MoEInteraction(config, layout).double().train()
    assert sorted(interaction.component_names) == sorted(EXPERTS)
    return oracles.randomize_parameters(interaction, seed=2), config


def batch(generator_seed=3, rows=4):
    generator = torch.Generator().manual_seed(generator_seed)
    tokens = torch.randn(rows, 6, 8, generator=generator, dtype=torch.float64)
    null_tokens = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    present = torch.ones(rows, 3, dtype=torch.bool)
    present[1, 2] = present[3, 0] = present[3, 1] = False
    return tokens, null_tokens, present


def captured_variants(interaction, tokens, present, null_tokens) -> torch.Tensor:
    """The experts' input in a training step, as (V, B, T, d)."""
    seen = []
    handle = interaction.experts.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    interaction(tokens, present=present, null_tokens=null_tokens)
    handle.remove()
    (variants,) = seen
    return variants.reshape(4, *tokens.shape)


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_perturbed_variant_replaces_every_token_of_its_modality_and_no_other(perturbation):
    interaction, _ = interaction_and_config(perturbation=perturbation)
    tokens, null_tokens, present = batch()
    variants = captured_variants(interaction, tokens, present, null_tokens)
    replacement = {
        "zero": torch.zeros_like(tokens),
        "mean": tokens.mean(0, keepdim=True).expand_as(tokens),
        "null": null_tokens.expand_as(tokens),
        "noise": None,
    }[perturbation]
    for variant in range(4):
        for token in range(6):
            got = variants[variant, :, token]
            if not VARIANT_MASK[variant, token]:
                torch.testing.assert_close(got, tokens[:, token], rtol=0, atol=0)
            elif replacement is None:  # fresh N(0, I) noise: nothing of the original token is left
                assert (got != tokens[:, token]).all(), (variant, token)
            else:
                torch.testing.assert_close(got, replacement[:, token], rtol=0, atol=0)


def test_noise_perturbation_is_standard_normal():
    interaction, _ = interaction_and_config(perturbation="noise")
    tokens, null_tokens, present = batch(rows=400)
    variants = captured_variants(interaction, tokens + 5.0, present, null_tokens)
    noise = torch.cat([variants[j + 1][:, VARIANT_MASK[j + 1]] for j in range(3)], dim=1).flatten()
    assert abs(noise.mean().item()) < 0.05 and abs(noise.std().item() - 1.0) < 0.05


def oracle_step(interaction, config, fusion, tokens, null_tokens, present, perturbation, regression):
    """Experts (by name), their weights and logits, and the loss terms, from the formulas."""
    weights = dict(interaction.experts.named_parameters())
    replacement = {"zero": torch.zeros_like(tokens), "null": null_tokens.expand_as(tokens),
                   "mean": tokens.mean(0, keepdim=True).expand_as(tokens)}[perturbation]
    variants = [torch.where(VARIANT_MASK[v][None, :, None], replacement, tokens) for v in range(4)]
    outputs = {
        name: torch.stack([oracles.fusion(fusion, variant, weights, interaction.component_names.index(name),
                                          NUM_TOKENS, config) for variant in variants])
        for name in EXPERTS
    }
    features = torch.cat(oracles.modality_means(tokens, NUM_TOKENS), dim=-1)
    component_weights = oracles.reweighting(features, interaction.reweighting, temperature=2.5)
    clean = torch.stack([outputs[name][0] for name in interaction.component_names], dim=1)  # (B, K, C)
    logits = (component_weights[..., None] * clean).sum(1)
    terms = oracles.i2moe_loss_terms(outputs, present, EXPERTS, margin=0.75, regression=regression)
    return outputs, component_weights, logits, terms


@pytest.mark.parametrize("regression", [False, True])
@pytest.mark.parametrize("perturbation", ["zero", "mean", "null"])
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_training_step_equals_the_oracle(fusion, perturbation, regression):
    interaction, config = interaction_and_config(fusion, perturbation, num_labels=1 if regression else 3,
                                                 problem_type="regression" if regression else None)
    tokens, null_tokens, present = batch()
    result = interaction(tokens, present=present, null_tokens=null_tokens)
    outputs, component_weights, logits, terms = oracle_step(
        interaction, config, fusion, tokens, null_tokens, present, perturbation, regression)
    close = dict(rtol=1e-9, atol=1e-9)
    extra = result
    for index, name in enumerate(interaction.component_names):
        torch.testing.assert_close(extra["component_logits"][:, index], outputs[name][0], **close, msg=name)
        torch.testing.assert_close(extra["loss_terms"][name].double(), terms[name], **close, msg=name)
    # The weights come out of a float32 softmax (by design: they must sum to 1 under autocast too).
    torch.testing.assert_close(extra["component_weights"].double(), component_weights, **FLOAT32_SOFTMAX)
    torch.testing.assert_close(result.logits, logits, **FLOAT32_SOFTMAX)
    interaction_loss = torch.stack(list(terms.values())).mean()
    torch.testing.assert_close(extra["loss_terms"]["interaction"].double(), interaction_loss, **close)
    torch.testing.assert_close(result.interaction_loss.double(), 0.3 * interaction_loss, **close)


def test_inference_uses_the_clean_pass_only():
    interaction, config = interaction_and_config("lrtf")
    tokens, null_tokens, present = batch()
    result = interaction.eval()(tokens, present=present, null_tokens=null_tokens)
    _, component_weights, logits, _ = oracle_step(interaction, config, "lrtf", tokens, null_tokens, present, "zero", False)
    torch.testing.assert_close(result.logits, logits, **FLOAT32_SOFTMAX)
    torch.testing.assert_close(result.component_weights.double(), component_weights, **FLOAT32_SOFTMAX)
    assert result.interaction_loss is None


@pytest.mark.parametrize("regression, distance", [(False, "logits"), (True, "logits"), (False, "normalized")])
def test_loss_terms_of_given_outputs_equal_the_formulas(regression, distance):
    """`interaction_loss_terms` on arbitrary expert outputs (K, V, B, C), rows with missing modalities."""
    num_labels = 1 if regression else 4
    interaction, _ = interaction_and_config(num_labels=num_labels, problem_type="regression" if regression else None,
                                            i2moe={"uniqueness_distance": distance})
    generator = torch.Generator().manual_seed(4)
    outputs = torch.randn(5, 4, 5, num_labels, generator=generator, dtype=torch.float64)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    terms = interaction.interaction_loss_terms(outputs, present)
    by_name = {name: outputs[interaction.component_names.index(name)] for name in EXPERTS}
    expected = oracles.i2moe_loss_terms(by_name, present, EXPERTS, margin=0.75, regression=regression,
                                        normalized=distance == "normalized")
    for name in EXPERTS:
        torch.testing.assert_close(terms[interaction.component_names.index(name)], expected[name],
                                   rtol=1e-9, atol=1e-9, msg=name)


def test_label_guidance_terms_of_given_outputs_equal_the_formulas():
    """`label_guidance_terms` on arbitrary outputs (K, V, B, C), rows with missing modalities."""
    interaction, _ = interaction_and_config(num_labels=4, i2moe={"label_guidance_weight": 1.0})
    generator = torch.Generator().manual_seed(5)
    outputs = torch.randn(5, 4, 5, 4, generator=generator, dtype=torch.float64)
    present = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    labels = torch.tensor([3, 0, 2, 1, 1])
    terms = interaction.label_guidance_terms(outputs, present, labels)
    by_name = {name: outputs[interaction.component_names.index(name)] for name in EXPERTS}
    expected = oracles.i2moe_label_guidance_terms(by_name, present, labels, EXPERTS)
    for name in EXPERTS:
        torch.testing.assert_close(terms[interaction.component_names.index(name)], expected[name],
                                   rtol=1e-9, atol=1e-9, msg=name)


def test_label_guidance_by_hand_and_the_uniqueness_target_is_detached():
    """Two classes, one row, label 0. Synergy: clean logits (0, 0) and every perturbed output (log 3, 0),
    p = (3/4, 1/4): log 2 + H(uniform, p) = log 2 + (log(4/3) + log 4) / 2. Uniqueness m0: its
    outputs with m1 / m2 perturbed are the targets its clean output is pulled to, so their gradient is
    the cross-entropy's alone."""
    interaction, _ = interaction_and_config(num_labels=2, i2moe={"label_guidance_weight": 1.0})
    outputs = torch.zeros(5, 4, 1, 2, dtype=torch.float64)
    synergy, unique = interaction.component_names.index("synergy"), interaction.component_names.index("uniqueness_m0")
    outputs[synergy, 1:, 0] = torch.tensor([math.log(3.0), 0.0])
    outputs[unique, 0, 0] = torch.tensor([2.0, -1.0])
    outputs[unique, 2:, 0] = torch.tensor([[0.5, 0.0], [-1.0, 1.0]])
    outputs.requires_grad_(True)
    present, labels = torch.ones(1, 3, dtype=torch.bool), torch.tensor([0])
    terms = interaction.label_guidance_terms(outputs, present, labels)
    assert terms[synergy].item() == pytest.approx(math.log(2.0) + (math.log(4.0 / 3.0) + math.log(4.0)) / 2)
    terms[unique].backward()
    perturbed = outputs[unique, 2:, 0].detach().requires_grad_(True)
    cross_entropy = -torch.log_softmax(perturbed, -1)[:, 0].mean()  # the mean over the two positives
    (expected,) = torch.autograd.grad(cross_entropy, perturbed)
    torch.testing.assert_close(outputs.grad[unique, 2:, 0], expected)
    assert outputs.grad[unique, 0, 0].abs().sum() > 0  # the clean output is what the consistency term moves


def test_label_guidance_needs_single_label_classification():
    with pytest.raises(ValueError, match="label_guidance_weight.*single-label"):
        make_config(method="i2moe", num_labels=1, i2moe={"label_guidance_weight": 1.0})
    with pytest.raises(ValueError, match="label_guidance_weight"):
        make_config(method="i2moe", i2moe={"label_guidance_weight": -1.0})
    interaction, _ = interaction_and_config(num_labels=3, i2moe={"label_guidance_weight": 1.0})
    outputs, present = torch.zeros(5, 4, 2, 3, dtype=torch.float64), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"label_guidance_weight.*class indices.*shape \(2, 3\)"):
        interaction.label_guidance_terms(outputs, present, torch.zeros(2, 3))


@pytest.mark.parametrize("labels, message", [([0, 1, 3, 0], r"labels: class indices must lie in \[0, 2\]"),
                                             ([0, 1, 2], "labels: expected 4 rows")])
def test_bad_labels_are_named_before_the_label_guided_losses_read_them(labels, message):
    config = make_config("concat", method="i2moe", num_labels=3, i2moe={"label_guidance_weight": 1.0})
    model = I2MoEForClassification(config).train()
    with pytest.raises(ValueError, match=message):
        model(**make_inputs(config), labels=torch.tensor(labels))


def test_triplet_margin_and_distances_by_hand():
    """One row, two-class outputs whose distances are 3-4-5 triangles: numbers checkable on paper."""
    interaction, _ = interaction_and_config(num_labels=2)
    outputs = torch.zeros(5, 4, 1, 2, dtype=torch.float64)
    expert = interaction.component_names.index("uniqueness_m0")
    outputs[expert, 1, 0] = torch.tensor([3.0, 4.0])  # negative (own modality perturbed): distance 5
    outputs[expert, 2, 0] = torch.tensor([0.0, 1.0])  # positive: distance 1 -> relu(1 - 5 + 0.75) = 0
    outputs[expert, 3, 0] = torch.tensor([6.0, 8.0])  # positive: distance 10 -> relu(10 - 5 + 0.75) = 5.75
    terms = interaction.interaction_loss_terms(outputs, torch.ones(1, 3, dtype=torch.bool))
    assert terms[expert].item() == pytest.approx(5.75 / 2)
    # Experts with all-zero outputs: every distance 0, so each uniqueness term is the margin.
    assert terms[interaction.component_names.index("uniqueness_m1")].item() == pytest.approx(0.75)


def test_normalized_triplet_by_hand_and_free_of_the_logits_scale():
    """`uniqueness_distance="normalized"`: distances of unit vectors, so scaling an expert's
    outputs leaves its term unchanged (the Euclidean one changes: grown tenfold, these outputs meet its margin)."""
    terms_by_scale = {}
    for distance in ("logits", "normalized"):
        interaction, _ = interaction_and_config(num_labels=2, i2moe={"uniqueness_distance": distance})
        expert = interaction.component_names.index("uniqueness_m0")
        outputs = torch.ones(5, 4, 1, 2, dtype=torch.float64)
        outputs[expert, 0, 0] = torch.tensor([1.0, 0.0])  # anchor
        outputs[expert, 1, 0] = torch.tensor([0.0, 2.0])  # negative: unit distance sqrt(2)
        outputs[expert, 2, 0] = torch.tensor([3.0, 0.0])  # positive: unit distance 0 -> relu(0 - sqrt 2 + 0.75) = 0
        outputs[expert, 3, 0] = torch.tensor([0.0, -1.0])  # positive: unit distance sqrt(2) -> relu(0.75)
        present = torch.ones(1, 3, dtype=torch.bool)
        terms = [interaction.interaction_loss_terms(scale * outputs, present)[expert].item() for scale in (1.0, 10.0)]
        terms_by_scale[distance] = terms
    assert terms_by_scale["normalized"] == pytest.approx([0.75 / 2, 0.75 / 2])
    # Euclidean, scale 1: relu(2 - sqrt 5 + 0.75) = 0.514 and relu(sqrt 2 - sqrt 5 + 0.75) = 0 -> mean 0.257;
    # scale 10: relu(20 - 10 sqrt 5 + 0.75) = 0 too: the same outputs, grown, meet the margin.
    assert terms_by_scale["logits"] == pytest.approx([(2 - 5 ** 0.5 + 0.75) / 2, 0.0])


def test_uniqueness_distance_must_be_known_and_normalized_needs_classification():
    with pytest.raises(ValueError, match=r"i2moe.uniqueness_distance.*one of \('logits', 'normalized'\)"):
        make_config(method="i2moe", i2moe={"uniqueness_distance": "cosine"})
    with pytest.raises(ValueError, match="normalized.*classification"):
        make_config(method="i2moe", num_labels=1, i2moe={"uniqueness_distance": "normalized"})


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_reweighting_is_the_softmax_of_the_mlp_over_the_temperature(temperature):
    interaction, _ = interaction_and_config(i2moe_temperature=temperature, i2moe_reweight_num_layers=2)
    features = torch.randn(6, 24, dtype=torch.float64)
    expected = oracles.reweighting(features, interaction.reweighting, temperature)
    torch.testing.assert_close(interaction.reweighting(features).double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("guidance", [0.0, 0.7])
def test_model_loss_is_task_loss_plus_lambda_times_the_interaction_loss(guidance):
    """... plus `label_guidance_weight` times the mean of the label-guided terms where it is set."""
    config = make_config("transformer", feature_sizes=(3, 3, 3), num_tokens=list(NUM_TOKENS), method="i2moe",
                         num_labels=3, i2moe_perturbation="null", i2moe={"label_guidance_weight": guidance}, **SETTINGS)
    model = oracles.randomize_parameters(I2MoEForClassification(config).double().train(), seed=8, scale=0.3)
    for name in config.modality_names:  # the towers' own dropout off: both passes must see the same tokens
        access.tower(model, name).eval()
    inputs = {key: value.double() if value.is_floating_point() else value for key, value in make_inputs(config).items()}
    inputs["modality_mask"] = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 0]])
    labels = torch.tensor([2, 0, 1, 1])
    output = model(**inputs, labels=labels)
    with torch.no_grad():
        tokens = model.embed_modalities(**inputs)
    interaction = model.interaction
    outputs, _, logits, terms = oracle_step(interaction, config, "transformer", tokens, model.null_tokens,
                                            inputs["modality_mask"].bool(), "null", False)
    torch.testing.assert_close(output.logits, logits, **FLOAT32_SOFTMAX)
    expected = oracles.cross_entropy(logits, labels) + 0.3 * torch.stack(list(terms.values())).mean()
    guided = oracles.i2moe_label_guidance_terms(outputs, inputs["modality_mask"].bool(), labels, EXPERTS)
    expected = expected + guidance * torch.stack(list(guided.values())).mean()
    torch.testing.assert_close(output.loss.double(), expected, **FLOAT32_SOFTMAX)


@pytest.mark.parametrize("method", ["i2moe", "dmil"])
def test_saved_weights_are_the_parameters_only(method):
    """The fixed loss matrices and masks are non-persistent buffers: rebuilt from the config, never
    saved (a saved copy would go stale and break loading across versions)."""
    config = make_config(feature_sizes=(3, 3, 3), method=method)
    model = I2MoEForClassification(config)
    assert set(model.state_dict()) == {name for name, _ in model.named_parameters()}
