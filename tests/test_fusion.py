"""Every registered fusion backbone, tested the moment it is registered."""

import pytest
import torch

from i2moe import FUSIONS, TokenLayout, build_fusion

from conftest import make_config


BACKBONES = FUSIONS.names()
LAYOUTS = {"one_token_each": (1, 1, 1), "unequal_tokens": (2, 1, 3)}


def _backbone(fusion, num_tokens, num_stacks=1):
    config = make_config(fusion=fusion, feature_sizes=(3,) * len(num_tokens), num_tokens=list(num_tokens))
    layout = TokenLayout(tuple(config.modality_names), tuple(num_tokens))
    return config, layout, build_fusion(config, layout, num_stacks).eval()


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("fusion", BACKBONES)
def test_stacked_backbone_equals_its_copies_run_one_by_one(fusion, layout_name):
    num_tokens = LAYOUTS[layout_name]
    config, layout, stacked = _backbone(fusion, num_tokens, num_stacks=3)
    tokens = torch.randn(1, 5, layout.total_tokens, config.hidden_size)
    logits = stacked(tokens)
    assert logits.shape == (3, 5, config.num_labels)
    for index in range(3):
        _, _, single = _backbone(fusion, num_tokens, num_stacks=1)
        single.load_state_dict({name: value[index : index + 1] for name, value in stacked.state_dict().items()})
        torch.testing.assert_close(single(tokens)[0], logits[index], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fusion", BACKBONES)
def test_every_parameter_gets_a_gradient_and_every_modality_matters(fusion):
    config, layout, backbone = _backbone(fusion, (1, 2, 1))
    backbone.train()
    tokens = torch.randn(1, 6, layout.total_tokens, config.hidden_size, requires_grad=True)
    backbone(tokens).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())
    for index in range(layout.num_modalities):
        per_token = tokens.grad[0, :, layout.token_slice(index)]
        assert per_token.abs().sum() > 0, f"modality {index} does not influence the {fusion} output"


def test_transformer_block_residual_adds_the_block_input():
    """With the attention and MLP outputs zeroed, a block must return its input unchanged (the
    reference implementation's block returned a function of the attention output only)."""
    config, layout, backbone = _backbone("transformer", (1, 1, 1))
    block = backbone.layers[0]
    for linear in (block.out, block.fc2):
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
    hidden = torch.randn(1, 3, layout.total_tokens, config.hidden_size)
    torch.testing.assert_close(block(hidden), hidden)


def test_lrtf_factors_are_registered_parameters():
    _, _, backbone = _backbone("lrtf", (1, 1, 1))
    names = {name for name, _ in backbone.named_parameters()}
    assert {"factors", "rank_weights", "fusion_bias"} <= names


def test_register_fusion_rejects_a_duplicate_name():
    from i2moe import register_fusion

    with pytest.raises(ValueError, match="already registered"):
        register_fusion("concat")(object)
