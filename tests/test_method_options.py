"""The method options of issue 14, each against a plain recomputation: I2MoE's expert task loss,
load-balancing term and reweighting warm-up; DMIL's synergy reading the means of N_m."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import make_config, make_inputs
from i2moe import I2MoEForClassification
from i2moe.experts_i2moe import weight_balance_loss


LABELS = torch.tensor([0, 1, 2, 0])


def test_balance_loss_hand_values():
    assert weight_balance_loss(torch.full((5, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-6)
    one_expert = torch.tensor([[0.0, 1.0, 0.0, 0.0]]).repeat(3, 1)
    assert weight_balance_loss(one_expert).item() == pytest.approx(math.log(4), rel=1e-6)
    # Two samples routed to different experts use both equally on average: log 2 - log 2 = 0.
    routed = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert weight_balance_loss(routed).item() == pytest.approx(0.0, abs=1e-6)


def _train_step_terms(config):
    torch.manual_seed(0)
    model = I2MoEForClassification(config).train()
    captured = {}
    model.interaction.experts.register_forward_hook(lambda module, args, out: captured.update(out=out))
    output = model(**make_inputs(config), labels=LABELS)
    return model, output, captured["out"]


def test_expert_task_loss_is_the_mean_of_each_experts_cross_entropy():
    config = make_config(method="i2moe", i2moe_expert_loss_weight=0.7, i2moe_reweight_dropout=0.0)
    model, output, experts_out = _train_step_terms(config)
    num_experts, batch = model.interaction.num_experts, len(LABELS)
    clean = experts_out.view(num_experts, 3, batch, -1)[:, 0]  # variant 0: the clean input
    expected = sum(F.cross_entropy(clean[k], LABELS) for k in range(num_experts)) / num_experts
    torch.testing.assert_close(output.loss_terms["expert_task"], expected)
    auxiliary = (config.i2moe.lambda_int * output.loss_terms["interaction"] + 0.7 * expected
                 + 3.0 * output.loss_terms["label_guidance"])  # the default label-guided losses
    torch.testing.assert_close(output.loss, model.task_loss(output.logits, LABELS) + auxiliary)


def test_balance_term_enters_the_loss_with_its_weight():
    config = make_config(method="i2moe", i2moe_balance_weight=0.3, i2moe_reweight_dropout=0.0)
    model, output, _ = _train_step_terms(config)
    usage = output.component_weights.mean(0)
    expected = math.log(len(usage)) + (usage * usage.log()).sum()
    torch.testing.assert_close(output.loss_terms["balance"], expected)
    auxiliary = (config.i2moe.lambda_int * output.loss_terms["interaction"] + 0.3 * expected
                 + 3.0 * output.loss_terms["label_guidance"])  # the default label-guided losses
    torch.testing.assert_close(output.loss, model.task_loss(output.logits, LABELS) + auxiliary)


def test_warmup_uses_equal_weights_then_the_reweighting_model():
    config = make_config(method="i2moe", i2moe_reweight_warmup_steps=2, i2moe_reweight_dropout=0.0)
    torch.manual_seed(0)
    model = I2MoEForClassification(config).train()
    inputs = make_inputs(config)
    for _ in range(2):
        output = model(**inputs, labels=LABELS)
        torch.testing.assert_close(output.component_weights, torch.full((4, 4), 0.25))
        torch.testing.assert_close(output.logits, output.component_logits.mean(1))
    output = model(**inputs, labels=LABELS)
    assert not torch.allclose(output.component_weights, torch.full((4, 4), 0.25))
    # Evaluation always uses the reweighting model, warm-up or not.
    fresh = I2MoEForClassification(config).eval()
    assert not torch.allclose(fresh(**inputs).component_weights, torch.full((4, 4), 0.25))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"i2moe_expert_loss_weight": -1.0}, "i2moe.expert_loss_weight"),
     ({"i2moe_balance_weight": -0.1}, "i2moe.balance_weight"),
     ({"i2moe_reweight_warmup_steps": -1}, "i2moe.reweight_warmup_steps"),
     ({"i2moe_reweight_warmup_steps": 2.5}, "i2moe.reweight_warmup_steps")],
)
def test_option_validation_names_the_field(overrides, field):
    with pytest.raises((ValueError, TypeError), match=field):
        make_config(method="i2moe", **overrides)


def test_dmil_synergy_reads_the_means_of_n_in_training():
    config = make_config(method="dmil", dmil_latent_size=8, dmil_stage=3)
    torch.manual_seed(0)
    model = I2MoEForClassification(config).train()
    seen = {}
    model.interaction.intra.inter_vib.register_forward_hook(lambda module, args, out: seen.update(pooled=args[0]))
    model.interaction.synergy.register_forward_hook(lambda module, args, out: seen.update(synergy_input=args[0]))
    model(**make_inputs(config), labels=LABELS)
    linear = model.interaction.intra.inter_vib.linear
    # The VIB's mean by hand: one matmul per modality, the first half of the outputs.
    mean = (torch.einsum("mbi,mio->mbo", seen["pooled"], linear.weight) + linear.bias)[..., :8]
    torch.testing.assert_close(seen["synergy_input"], mean)
