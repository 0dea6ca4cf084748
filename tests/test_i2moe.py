"""I2MoE: the interaction losses against hand computations, the vectorised path against a naive
per-expert loop, gradients, perturbation options, missing modalities, precision, compile, and two
synthetic tasks where the dominant interaction type is known."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config, make_inputs
from i2moe import FUSIONS, I2MoEForClassification, build_fusion
from i2moe.configuration_i2moe import I2MOE_PAPER_OBJECTIVE, PERTURBATIONS
from i2moe.experts_i2moe import I2MoEInteraction
from i2moe.fusion_i2moe import TokenLayout
from i2moe.synthetic import dominant_by_quadrant, interpret_synthetic, train_synthetic


def initialised(module: torch.nn.Module) -> torch.nn.Module:
    """Stacked backbone weights start as `torch.empty` (the model's `post_init` fills them)."""
    for submodule in module.modules():
        if hasattr(submodule, "init_parameters"):
            submodule.init_parameters(0.02)
    return module


def make_interaction(num_modalities=2, num_labels=3, fusion="concat", **overrides) -> I2MoEInteraction:
    config = make_config(fusion, feature_sizes=(4,) * num_modalities, method="i2moe", num_labels=num_labels,
                         i2moe_reweight_dropout=0.0, **overrides)
    layout = TokenLayout(tuple(config.modality_names), (1,) * num_modalities)
    return initialised(I2MoEInteraction(config, layout))


def reference_loss_terms(outputs, present, margin=1.0, regression=False):
    """METHODS.md section 1, one expert and one term at a time, written as plainly as possible."""
    num_experts, num_variants, batch, _ = outputs.shape
    num_modalities = num_variants - 1
    terms = []
    for i in range(num_modalities):  # uniqueness expert i
        values = []
        for j in range(num_modalities):
            if j == i:
                continue
            for b in range(batch):
                if present[b, i] and present[b, j]:
                    anchor, positive, negative = outputs[i, 0, b], outputs[i, j + 1, b], outputs[i, i + 1, b]
                    values.append(torch.relu(torch.dist(anchor, positive) - torch.dist(anchor, negative) + margin))
        terms.append(torch.stack(values).mean() if values else torch.tensor(0.0))
    for sign, expert in ((-1, num_modalities), (1, num_modalities + 1)):  # redundancy, synergy
        values = []
        for j in range(num_modalities):
            for b in range(batch):
                if present[b, j]:
                    clean, perturbed = outputs[expert, 0, b], outputs[expert, j + 1, b]
                    if regression:
                        similarity = torch.exp(-(clean - perturbed).pow(2).sum())
                    else:
                        similarity = F.cosine_similarity(clean, perturbed, dim=0)
                    values.append(similarity if sign == 1 else 1 - similarity)
        terms.append(torch.stack(values).mean())
    return torch.stack(terms)


def test_triplet_loss_hand_computed():
    interaction = make_interaction(num_modalities=2, num_labels=2)
    outputs = torch.zeros(4, 3, 2, 2)
    # Uniqueness expert 0: anchor 0; negative (own modality 0 perturbed) at distance 5;
    # positive (modality 1 perturbed) at distance 1 in row 0 and 10 in row 1.
    outputs[0, 1] = torch.tensor([[3.0, 4.0], [3.0, 4.0]])
    outputs[0, 2] = torch.tensor([[0.0, 1.0], [6.0, 8.0]])
    # relu(1 - 5 + 1) = 0 and relu(10 - 5 + 1) = 6: mean 3.
    terms = interaction.interaction_loss_terms(outputs, torch.ones(2, 2, dtype=torch.bool))
    assert terms[0].item() == pytest.approx(3.0, abs=1e-5)
    # Uniqueness expert 1 sees all-zero outputs: relu(0 - 0 + margin) = 1.
    assert terms[1].item() == pytest.approx(1.0, abs=1e-5)


def test_synergy_and_redundancy_hand_computed():
    interaction = make_interaction(num_modalities=2, num_labels=2)
    outputs = torch.zeros(4, 3, 1, 2)
    clean = torch.tensor([1.0, 0.0])
    # Perturbed outputs at 90 degrees (cos 0) and 180 degrees (cos -1) from the clean one.
    for expert in (2, 3):
        outputs[expert, 0, 0] = clean
        outputs[expert, 1, 0] = torch.tensor([0.0, 2.0])
        outputs[expert, 2, 0] = torch.tensor([-3.0, 0.0])
    terms = dict(zip(interaction.component_names, interaction.interaction_loss_terms(outputs, torch.ones(1, 2, dtype=torch.bool))))
    assert terms["synergy"].item() == pytest.approx((0.0 - 1.0) / 2, abs=1e-5)  # mean cos
    assert terms["redundancy"].item() == pytest.approx((1.0 + 2.0) / 2, abs=1e-5)  # mean (1 - cos)


@pytest.mark.parametrize("num_modalities", [2, 3])
@pytest.mark.parametrize("regression", [False, True])
def test_loss_terms_match_reference_with_missing_modalities(num_modalities, regression):
    num_labels = 1 if regression else 4
    interaction = make_interaction(num_modalities, num_labels=num_labels)
    assert interaction.regression == regression
    outputs = torch.randn(num_modalities + 2, num_modalities + 1, 6, num_labels)
    present = torch.rand(6, num_modalities) > 0.3
    present[:, 0] |= ~present.any(1)  # every row keeps a modality
    expected = reference_loss_terms(outputs, present, regression=regression)
    torch.testing.assert_close(interaction.interaction_loss_terms(outputs, present), expected, atol=1e-5, rtol=1e-5)


def test_regression_synergy_pushes_outputs_apart():
    """The reference's regression synergy loss had the wrong sign: here, descending the synergy
    term must move the perturbed output away from the clean one."""
    interaction = make_interaction(num_modalities=2, num_labels=1)
    synergy = interaction.component_names.index("synergy")
    outputs = torch.zeros(4, 3, 1, 1)
    outputs[synergy, 1:] = 0.3
    outputs.requires_grad_(True)
    interaction.interaction_loss_terms(outputs, torch.ones(1, 2, dtype=torch.bool))[synergy].backward()
    # Gradient descent subtracts the gradient: the perturbed outputs (0.3) must grow.
    assert (outputs.grad[synergy, 1:] < 0).all()


def _naive_forward(interaction: I2MoEInteraction, config, layout, tokens, present, null_tokens, noise):
    """Per expert, per variant: a single-stack copy of expert k's weights on hand-built inputs."""
    layout_slices = [interaction.variant_mask[j + 1, 0, :, 0] for j in range(interaction.num_modalities)]
    replacement = {"noise": noise, "zero": torch.zeros_like(tokens), "mean": tokens.mean(0, keepdim=True).expand_as(tokens),
                   "null": null_tokens.expand_as(tokens)}[interaction.perturbation]
    variants = [tokens]
    for mask in layout_slices:
        perturbed = tokens.clone()
        perturbed[:, mask] = replacement[:, mask]
        variants.append(perturbed)
    outputs = []
    for k in range(interaction.num_experts):
        stacked = dict(interaction.experts.named_parameters())
        single = build_fusion(config, layout, num_stacks=1).to(tokens.dtype)
        with torch.no_grad():
            for name, parameter in single.named_parameters():
                parameter.copy_(stacked[name][k : k + 1])
        single.train(interaction.training)
        outputs.append(torch.stack([single(variant[None])[0] for variant in variants]))
    outputs = torch.stack(outputs)  # (K, V, B, C)
    weights = interaction.reweighting(interaction.modality_mean(tokens).flatten(1))
    logits = (weights[:, :, None] * outputs[:, 0].transpose(0, 1)).sum(1)
    return outputs, logits, reference_loss_terms(outputs, present, interaction.margin, interaction.regression)


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_vectorised_path_equals_naive_per_expert_loop(fusion, perturbation):
    config = make_config(fusion, feature_sizes=(4, 4, 4), num_tokens=[2, 1, 3], method="i2moe",
                         i2moe_reweight_dropout=0.0, i2moe_perturbation=perturbation)
    layout = TokenLayout(tuple(config.modality_names), (2, 1, 3))
    # float64: the comparison is of two algorithms, and the triplet's square roots of near-zero
    # distances (zero/mean perturbations of LRTF) amplify float32 rounding past 1e-5.
    interaction = initialised(I2MoEInteraction(config, layout)).train().double()
    tokens = torch.randn(5, 6, config.hidden_size, dtype=torch.float64)
    null_tokens = torch.randn(6, config.hidden_size, dtype=torch.float64)
    present = torch.ones(5, 3, dtype=torch.bool)
    present[1, 2] = present[3, 0] = False
    torch.manual_seed(1)
    result = interaction(tokens, present=present, null_tokens=null_tokens)
    torch.manual_seed(1)
    noise = torch.randn_like(tokens)
    outputs, logits, terms = _naive_forward(interaction, config, layout, tokens, present, null_tokens, noise)
    torch.testing.assert_close(result.component_logits, outputs[:, 0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.logits, logits, atol=1e-5, rtol=1e-5)
    loss_terms = result.loss_terms
    torch.testing.assert_close(torch.stack([loss_terms[name] for name in interaction.component_names]), terms,
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_terms["interaction"], terms.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.interaction_loss, config.i2moe.lambda_int * terms.mean(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_gradients_reach_every_expert_and_the_reweighting_model(fusion):
    config = make_config(fusion, method="i2moe", i2moe_lambda_int=0.5)
    model = I2MoEForClassification(config).train()
    output = model(**make_inputs(config, batch_size=6), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    output.loss.backward()
    interaction = model.interaction
    for name, parameter in interaction.experts.named_parameters():
        assert parameter.shape[0] == interaction.num_experts
        per_expert = parameter.grad.flatten(1).abs().sum(1)
        assert (per_expert > 0).all(), f"{name}: experts {per_expert.eq(0).nonzero().flatten().tolist()} got no gradient"
    for name, parameter in interaction.reweighting.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    for name, parameter in model.encoders.named_parameters():
        if name.endswith("null_tokens"):  # every modality is present: the null tokens are not used
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_outputs_for_every_backbone_and_problem_type(fusion, problem_type):
    num_labels = 1 if problem_type == "regression" else 3
    config = make_config(fusion, method="i2moe", num_labels=num_labels, problem_type=problem_type,
                         feature_sizes=(8, 4, 6))
    model = I2MoEForClassification(config)
    labels = {"single_label_classification": torch.tensor([0, 2, 1, 1]),
              "multi_label_classification": torch.randint(0, 2, (4, 3)).float(),
              "regression": torch.randn(4)}[problem_type]
    output = model(**make_inputs(config), labels=labels)
    assert output.component_logits.shape == (4, 5, num_labels)
    assert output.component_weights.shape == (4, 5)
    torch.testing.assert_close(output.component_weights.sum(-1), torch.ones(4))
    torch.testing.assert_close(output.logits, torch.einsum("bk,bkc->bc", output.component_weights, output.component_logits))
    # The label-guided losses are on by default (weight 3) for class indices only.
    guided = problem_type == "single_label_classification"
    assert set(output.loss_terms) == {*model.interaction.component_names, "interaction", *["label_guidance"] * guided}
    expected = model.task_loss(output.logits, labels) + config.i2moe.lambda_int * output.loss_terms["interaction"]
    if guided:
        expected = expected + 3.0 * output.loss_terms["label_guidance"]
    torch.testing.assert_close(output.loss, expected)
    assert config.i2moe.label_guidance_weight == (3.0 if guided else 0.0)  # resolved and stored, as problem_type
    assert torch.isfinite(output.loss)


def test_inference_runs_only_the_clean_pass():
    config = make_config("transformer", method="i2moe")
    model = I2MoEForClassification(config).eval()
    calls = []
    model.interaction.experts.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    with torch.no_grad():
        output = model(**make_inputs(config), labels=torch.tensor([0, 1, 2, 0]))
    assert calls == [torch.Size([1, 4, 2, 16])]
    assert output.interaction_loss is None and output.loss_terms is None
    torch.testing.assert_close(output.loss, model.task_loss(output.logits, torch.tensor([0, 1, 2, 0])))
    model.train()
    calls.clear()
    model(**make_inputs(config), labels=torch.tensor([0, 1, 2, 0]))
    assert calls == [torch.Size([1, 3 * 4, 2, 16])]  # (M + 1) variants stacked along the batch, one call


def test_eval_is_deterministic():
    config = make_config("transformer", method="i2moe")
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config)
    torch.testing.assert_close(model(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_missing_modality_rows_are_masked_out_of_the_losses():
    interaction = make_interaction(num_modalities=2)
    outputs = torch.randn(4, 3, 3, 3)
    present = torch.tensor([[True, True], [True, False], [True, True]])
    changed = outputs.clone()
    changed[:, 2, 1] += 100.0  # row 1 with modality 1 (missing) perturbed: must not matter
    changed[1, :, 1] += 50.0  # uniqueness expert of modality 1 on row 1, where modality 1 is missing
    torch.testing.assert_close(interaction.interaction_loss_terms(outputs, present),
                               interaction.interaction_loss_terms(changed, present))


def test_torch_compile_smoke():
    config = make_config("transformer", method="i2moe")
    layout = TokenLayout(tuple(config.modality_names), (1, 1))
    interaction = initialised(I2MoEInteraction(config, layout)).train()
    compiled = torch.compile(interaction, backend="aot_eager", fullgraph=True)
    tokens = torch.randn(4, 2, 16)
    present = torch.ones(4, 2, dtype=torch.bool)
    # With labels: the default objective, label-guided terms and their first-call resolution included.
    result = compiled(tokens, present=present, null_tokens=torch.zeros(2, 16), labels=torch.tensor([0, 1, 2, 0]))
    result.interaction_loss.backward()
    assert torch.isfinite(result.interaction_loss) and "label_guidance" in result.loss_terms
    interaction.eval()
    torch.testing.assert_close(compiled(tokens, present=present, null_tokens=torch.zeros(2, 16)).logits,
                               interaction(tokens, present=present, null_tokens=torch.zeros(2, 16)).logits)


def test_save_and_load_round_trip(tmp_path):
    config = make_config("lrtf", method="i2moe", i2moe_perturbation="null", i2moe_temperature=2.0,
                         i2moe={"uniqueness_distance": "normalized", "label_guidance_weight": 0.5})
    model = I2MoEForClassification(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "experts_i2moe.py").exists()  # remote code travels with the model
    loaded = I2MoEForClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.i2moe.perturbation == "null" and loaded.config.i2moe.temperature == 2.0
    assert loaded.config.i2moe.uniqueness_distance == "normalized" and loaded.config.i2moe.label_guidance_weight == 0.5
    inputs = {**make_inputs(config), "labels": torch.tensor([0, 1, 2, 0])}
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    # The loss's constant routing (which distance each term reads) is rebuilt on loading, not stored.
    terms = []
    for copy in (model, loaded):
        torch.manual_seed(3)  # the reweighting dropout
        terms.append(copy.train()(**inputs).loss_terms)
    assert "label_guidance" in terms[1]
    for name, value in terms[0].items():
        torch.testing.assert_close(terms[1][name], value, msg=name)


@pytest.mark.parametrize("version, saved, expected", [
    (2, {}, 0.0),  # saved before the default changed: it trained the paper's objective, and still does
    (2, {"label_guidance_weight": 1.5}, 1.5),
    (3, {}, None),  # today's default: on for class indices
])
def test_saved_configs_keep_the_objective_they_were_trained_with(tmp_path, version, saved, expected):
    model = I2MoEForClassification(make_config(method="i2moe", i2moe={"reweight_dropout": 0.0}))
    model.save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    stored = json.loads(config_file.read_text())
    assert stored["i2moe"]["label_guidance_weight"] is None and stored["i2moe_format_version"] == 3
    del stored["i2moe"]["label_guidance_weight"]
    stored["i2moe"].update(saved)
    config_file.write_text(json.dumps({**stored, "i2moe_format_version": version}))
    loaded = I2MoEForClassification.from_pretrained(tmp_path)
    assert loaded.config.i2moe.label_guidance_weight == expected
    inputs = {**make_inputs(loaded.config), "labels": torch.tensor([0, 1, 2, 0])}
    terms = loaded.train()(**inputs).loss_terms
    assert ("label_guidance" in terms) == (expected != 0.0)
    # Resolved at that first labelled call and saved: the number, whatever later defaults say.
    loaded.save_pretrained(tmp_path / "again")
    saved_weight = json.loads((tmp_path / "again" / "config.json").read_text())["i2moe"]["label_guidance_weight"]
    assert saved_weight == (3.0 if expected is None else expected)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"i2moe_perturbation": "gaussian"}, "i2moe.perturbation"),
        ({"i2moe": {"temperature": 0.0}}, "i2moe.temperature"),
        ({"i2moe_lambda_int": -1.0}, "i2moe.lambda_int"),
        ({"i2moe": {"reweight_num_layers": 0}}, "i2moe.reweight_num_layers"),
        ({"i2moe_reweight_dropout": 1.0}, "i2moe.reweight_dropout"),
        ({"i2moe": {"no_such_setting": 1}}, "unknown keys"),
        ({"feature_sizes": (8,)}, "at least 2 modalities"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(method="i2moe", **overrides)


def _synthetic_summary(task, steps, lr, perturbation, seed=0, **i2moe):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead (and the suite runs in parallel)
    try:
        model = train_synthetic(task, steps=steps, lr=lr, seed=seed, i2moe={"perturbation": perturbation, **i2moe})
        return interpret_synthetic(model, task).summary()
    finally:
        torch.set_num_threads(threads)


def test_synthetic_tasks_name_the_known_ones_on_a_typo():
    with pytest.raises(ValueError, match=r"\['synergy', 'uniqueness'\], got 'xor'"):
        train_synthetic("xor", steps=1, lr=1e-3)
    for batch_size in (0, 2.5):  # an empty or fractional batch is named, not a torch error
        with pytest.raises(ValueError, match=rf"synthetic_batch: `size` must be an int >= 1, got {batch_size}"):
            train_synthetic("synergy", steps=1, lr=1e-3, batch_size=batch_size)


def test_label_from_one_modality_favours_its_uniqueness_expert():
    summary = _synthetic_summary("uniqueness", steps=100, lr=1e-2, perturbation="noise")
    assert summary["accuracy"] > 0.9
    assert summary["dominant_type"] == "uniqueness_a", summary["overall"]["mean_weight"]
    assert summary["component_accuracy"]["uniqueness_a"] > 0.9  # it predicts by itself, not by routing


def test_label_guidance_makes_the_synergy_expert_learn_xor_alone():
    """`label_guidance_weight` (docs/i2moe.md, "Label-guided interaction losses"): on XOR the synergy
    expert learns the label by itself (with the paper's losses alone no expert does, the test below;
    5 of 5 seeds with this recipe, where a uniqueness expert still reaches 0.74 on 2 of them); on the
    sign of `a[0]` the uniqueness expert of `a` carries it and that of `b` is at chance."""
    xor = _synthetic_summary("synergy", steps=300, lr=1e-2, perturbation="noise", label_guidance_weight=3.0)
    assert xor["accuracy"] > 0.9
    assert xor["component_accuracy"]["synergy"] > 0.9, xor["component_accuracy"]
    unique = _synthetic_summary("uniqueness", steps=100, lr=1e-2, perturbation="noise", label_guidance_weight=3.0)
    assert unique["dominant_type"] == "uniqueness_a", unique["overall"]["mean_weight"]
    alone = unique["component_accuracy"]
    assert alone["uniqueness_a"] > 0.9 and alone["uniqueness_b"] < 0.6, alone


def test_xor_label_is_learned_by_routing_not_by_the_synergy_expert():
    """What the method as specified does on XOR (13 of 15 runs learn it at λ_int 0.5 in
    `benchmarks/i2moe_synthetic_interactions.py`; docs/i2moe.md, "What the weights mean"): the model
    learns it, no expert does on its own, and the reweighting model sends each sign quadrant to a
    different expert with a near-one weight. So the synergy weight is not the largest; if a change
    to the method makes this fail, the docs' account of the weights needs revisiting too. The paper's
    objective, pinned: the default's label-guided losses make the synergy expert learn XOR itself."""
    model = train_synthetic("synergy", steps=300, lr=3e-3, seed=0, i2moe=I2MOE_PAPER_OBJECTIVE)
    result = interpret_synthetic(model, "synergy")
    summary = result.summary()
    assert summary["accuracy"] > 0.9
    assert max(summary["component_accuracy"].values()) < 0.75, summary["component_accuracy"]
    assert result.weights.max(-1).mean() > 0.8  # hard routing
    routed_to = dominant_by_quadrant(result, "synergy")
    assert len(set(routed_to.values())) >= 2, routed_to
