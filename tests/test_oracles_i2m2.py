"""Independent oracle for I2M2: the product of experts per problem type, row by row over the
experts present in the row, and the model's unimodal heads recomputed from their weights."""

from __future__ import annotations

import pytest
import torch

import oracle_access as access
import oracles
from conftest import make_config, make_inputs
from i2moe import I2MoEForClassification
from i2moe.i2m2_i2moe import combine_i2m2


PROBLEM_TYPES = ["single_label_classification", "multi_label_classification", "regression"]
PRESENT = torch.tensor([[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 1]], dtype=torch.bool)


@pytest.mark.parametrize("with_inter", [True, False])
@pytest.mark.parametrize("problem_type", PROBLEM_TYPES)
def test_combination_equals_the_product_of_the_present_experts(problem_type, with_inter):
    generator = torch.Generator().manual_seed(21)
    unimodal = torch.randn(4, 3, 2, generator=generator, dtype=torch.float64) * 2
    inter = torch.randn(4, 2, generator=generator, dtype=torch.float64) * 2 if with_inter else None
    expected = oracles.combine_i2m2(unimodal, PRESENT, inter, problem_type)
    combined = combine_i2m2(unimodal, PRESENT, inter, problem_type)
    torch.testing.assert_close(combined.double(), expected, rtol=1e-6, atol=1e-6)  # computed in float32 by design


def test_single_label_product_by_hand():
    """Two experts on two classes: p1 = softmax(0, log 3) = (1/4, 3/4), p2 = (1/2, 1/2); the
    normalised product is (1/4 * 1/2, 3/4 * 1/2) / (1/2) = (1/4, 3/4)."""
    unimodal = torch.tensor([[[0.0, torch.log(torch.tensor(3.0))], [5.0, 5.0]]])
    combined = combine_i2m2(unimodal, torch.tensor([[True, True]]), None, "single_label_classification")
    torch.testing.assert_close(combined.exp(), torch.tensor([[0.25, 0.75]]))
    # A missing expert's (very confident) logits must not move the product.
    unimodal[0, 1] = torch.tensor([100.0, -100.0])
    combined = combine_i2m2(unimodal, torch.tensor([[True, False]]), None, "single_label_classification")
    torch.testing.assert_close(combined.exp(), torch.tensor([[0.25, 0.75]]))


@pytest.mark.parametrize("problem_type", PROBLEM_TYPES)
def test_model_logits_are_the_product_of_its_heads_from_their_weights(problem_type):
    num_labels = 1 if problem_type == "regression" else 3
    config = make_config(feature_sizes=(3, 3, 3), num_tokens=[2, 1, 3], hidden_size=8, fusion_hidden_size=5,
                         num_labels=num_labels, problem_type=problem_type, dropout=0.0, i2m2_heads=True)
    model = oracles.randomize_parameters(I2MoEForClassification(config).double().eval(), seed=22, scale=0.4)
    inputs = {key: value.double() if value.is_floating_point() else value for key, value in make_inputs(config).items()}
    inputs["modality_mask"] = PRESENT.long()
    output = model(**inputs)
    with torch.no_grad():
        tokens = model.embed_modalities(**inputs)
        inter = model.interaction(tokens, present=PRESENT, null_tokens=None).logits  # vanilla fusion, tested elsewhere
    heads = {f"head.{name}": value for name, value in access.i2m2_heads(model).named_parameters()}
    means = oracles.modality_means(tokens, (2, 1, 3))
    unimodal = torch.stack([oracles.mlp_head(means[m], heads, "head", m) for m in range(3)], 1)
    torch.testing.assert_close(output.logits.double(), oracles.combine_i2m2(unimodal, PRESENT, inter, problem_type),
                               rtol=1e-6, atol=1e-6)
    # Reported per-head logits: the head's output where the modality is present, zeros elsewhere.
    torch.testing.assert_close(output.unimodal_logits.double(), unimodal * PRESENT[..., None], rtol=1e-9, atol=1e-9)


def test_product_with_an_i2moe_part_keeps_its_interaction_loss():
    config = make_config(feature_sizes=(3, 3), method="i2moe", i2m2_heads=True, i2moe_lambda_int=0.4,
                         i2moe_perturbation="null", i2moe_reweight_dropout=0.0)
    model = I2MoEForClassification(config).train()
    labels = torch.tensor([0, 2, 1, 1])
    output = model(**make_inputs(config), labels=labels)
    # with the default label-guided losses (weight 3)
    interaction = 0.4 * output.loss_terms["interaction"] + 3.0 * output.loss_terms["label_guidance"]
    torch.testing.assert_close(output.interaction_loss, interaction)
    expected = oracles.cross_entropy(output.logits.double(), labels) + interaction.double()
    torch.testing.assert_close(output.loss.double(), expected, rtol=1e-6, atol=1e-6)
