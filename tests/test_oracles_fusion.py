"""Independent oracles for the fusion backbones and the modality embedding (pooling, resampling,
null tokens): every output recomputed from the weights with plain formulas (`oracles.py`), in
float64, on tiny tensors; bf16 autocast against fp32; activation checkpointing re-running the block."""

from __future__ import annotations

import pytest
import torch

import oracle_access as access
import oracles
from conftest import make_config, make_inputs, tiny_bert_config
from i2moe import FUSIONS, I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, TokenLayout, build_fusion


# Uneven counts exercise the per-modality split; equal counts > 1 the single-kernel reshape path.
LAYOUTS = {"uneven": (2, 1, 3), "equal": (2, 2, 2), "single": (1, 1, 1)}
SIZES = dict(hidden_size=8, fusion_num_heads=2, fusion_hidden_size=5, fusion_intermediate_size=12, lrtf_rank=3,
             lrtf_output_size=4, num_labels=3, dropout=0.0)


def fusion_config(fusion: str, num_tokens, **overrides):
    return make_config(fusion=fusion, feature_sizes=(3,) * len(num_tokens), num_tokens=list(num_tokens),
                       **{**SIZES, **overrides})


def backbone_and_weights(fusion, num_tokens, num_stacks, seed=0, **overrides):
    config = fusion_config(fusion, num_tokens, **overrides)
    layout = TokenLayout(tuple(config.modality_names), tuple(num_tokens))
    backbone = oracles.randomize_parameters(build_fusion(config, layout, num_stacks).double().eval(), seed)
    return config, backbone, dict(backbone.named_parameters())


@pytest.mark.parametrize("num_stacks", [1, 3])
@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_backbone_equals_its_formula_for_every_stack(fusion, layout_name, num_stacks):
    num_tokens = LAYOUTS[layout_name]
    config, backbone, weights = backbone_and_weights(fusion, num_tokens, num_stacks)
    generator = torch.Generator().manual_seed(1)
    shared = torch.randn(1, 4, sum(num_tokens), 8, generator=generator, dtype=torch.float64)
    per_stack = torch.randn(num_stacks, 4, sum(num_tokens), 8, generator=generator, dtype=torch.float64)
    for tokens in (shared, per_stack):  # tokens shared by all stacks (broadcast) or one batch per stack
        logits = backbone(tokens)
        assert logits.shape == (num_stacks, 4, 3)
        for stack in range(num_stacks):
            expected = oracles.fusion(fusion, tokens[min(stack, tokens.shape[0] - 1)], weights, stack, num_tokens, config)
            torch.testing.assert_close(logits[stack], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_backbone_gradients_equal_the_formulas_gradients(fusion):
    """Backward through the batched kernels against autograd through the plain formula."""
    num_tokens = LAYOUTS["uneven"]
    config, backbone, weights = backbone_and_weights(fusion, num_tokens, num_stacks=2, num_labels=2)
    tokens = torch.randn(1, 3, sum(num_tokens), 8, dtype=torch.float64, requires_grad=True)
    target = torch.randn(2, 3, 2, dtype=torch.float64)
    names = list(weights)
    actual = torch.autograd.grad((backbone(tokens) * target).sum(), [tokens, *weights.values()])
    expected_output = sum((oracles.fusion(fusion, tokens[0], weights, s, num_tokens, config) * target[s]).sum()
                          for s in range(2))
    expected = torch.autograd.grad(expected_output, [tokens, *weights.values()])
    for name, got, want in zip(["tokens", *names], actual, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_bf16_autocast_matches_fp32_within_bf16_precision(fusion):
    """bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); through these few layers the logits
    must stay within 0.05 + 5% of the fp32 ones (a dtype bug, e.g. a bf16 product of LRTF's
    factors cast wrongly or a softmax overflowing, lands far outside)."""
    config = fusion_config(fusion, LAYOUTS["uneven"])
    layout = TokenLayout(tuple(config.modality_names), LAYOUTS["uneven"])
    backbone = oracles.randomize_parameters(build_fusion(config, layout, 2).eval(), seed=3, scale=0.3)
    tokens = torch.randn(1, 16, layout.total_tokens, 8)
    reference = backbone(tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = backbone(tokens)
    assert logits.dtype == torch.bfloat16
    assert reference.abs().max() > 0.5  # the comparison is of non-trivial logits
    torch.testing.assert_close(logits.float(), reference, rtol=0.05, atol=0.05)


# --- the modality embedding: tower output -> pooled or resampled, projected, layer-normed tokens ---


def bert_model(pooling: str, num_tokens: int = 1, **overrides) -> I2MoEForClassification:
    config = I2MoEConfig(
        modalities=[{"name": "text", "tower": tiny_bert_config(), "pooling": pooling, "num_tokens": num_tokens},
                    {"name": "tab", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=8, num_hidden_layers=1)}],
        hidden_size=8, fusion_num_heads=2, num_labels=2, dropout=0.0, **overrides,
    )
    return oracles.randomize_parameters(I2MoEForClassification(config).double().eval(), seed=5, scale=0.3)


def projected(model, name: str, vectors: torch.Tensor) -> torch.Tensor:
    """Projection then the affine LayerNorm, by hand."""
    norm = access.layer_norm(model, name)
    return oracles.layer_norm(oracles.linear(vectors, access.projection(model, name)), norm.weight, norm.bias, norm.eps)


TEXT_IDS = torch.tensor([[5, 7, 9, 11, 13], [3, 4, 8, 0, 0], [21, 2, 0, 0, 0]])
TEXT_MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
TAB_FEATURES = torch.randn(3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def text_tower_outputs(model):
    """What the (third-party) BERT tower returns for the batch: the oracles start from here."""
    with torch.no_grad():
        return access.tower(model, "text")(input_ids=TEXT_IDS, attention_mask=TEXT_MASK, return_dict=True)


def embed_text(model, **extra):
    with torch.no_grad():
        return model.embed_modalities(text_input_ids=TEXT_IDS, text_attention_mask=TEXT_MASK,
                                      tab_features=TAB_FEATURES, **extra)


@pytest.mark.parametrize("pooling", ["cls", "mean", "pooler"])
def test_pooled_token_equals_pooling_projection_and_layer_norm_by_hand(pooling):
    model = bert_model(pooling)
    outputs = text_tower_outputs(model)
    sequence, mask = outputs.last_hidden_state, TEXT_MASK.double()
    vectors = {
        "cls": sequence[:, 0],
        # mean over the real tokens only: padding must not count
        "mean": torch.stack([sequence[b, : int(mask[b].sum())].mean(0) for b in range(3)]),
        "pooler": outputs.pooler_output,
    }[pooling]
    tokens = embed_text(model)
    assert tokens.shape == (3, 2, 8)
    torch.testing.assert_close(tokens[:, 0], projected(model, "text", vectors), rtol=1e-10, atol=1e-10)


def test_mean_pooling_without_a_mask_averages_every_token():
    config = make_config(feature_sizes=(3, 2), hidden_size=8, dropout=0.0)
    model = oracles.randomize_parameters(I2MoEForClassification(config).double().eval(), seed=6, scale=0.3)
    features = torch.randn(2, 4, 3, dtype=torch.float64)  # a sequence of 4 feature vectors per row
    with torch.no_grad():
        sequence = access.tower(model, "m0")(features=features, return_dict=True).last_hidden_state
        tokens = model.embed_modalities(m0_features=features, m1_features=torch.randn(2, 2, dtype=torch.float64))
    expected = projected(model, "m0", sum(sequence[:, t] for t in range(4)) / 4)
    torch.testing.assert_close(tokens[:, 0], expected, rtol=1e-10, atol=1e-10)


def test_resampled_tokens_equal_masked_cross_attention_by_hand():
    """P = 3 learned queries attend over the projected sequence, padding keys masked out."""
    model = bert_model("mean", num_tokens=3)
    sequence = text_tower_outputs(model).last_hidden_state
    resampler = access.resampler(model, "text")
    heads = resampler.num_heads
    assert heads == 2
    keys_values = oracles.linear(oracles.linear(sequence, access.projection(model, "text")), resampler.key_value)
    key, value = (oracles.split_heads(keys_values[..., i * 8:(i + 1) * 8], heads) for i in range(2))
    query = oracles.split_heads(resampler.queries.expand(3, -1, -1), heads)
    attended = oracles.merge_heads(oracles.attention(query, key, value, TEXT_MASK.bool()))
    norm = access.layer_norm(model, "text")
    expected = oracles.layer_norm(oracles.linear(attended, resampler.out), norm.weight, norm.bias, norm.eps)
    tokens = embed_text(model)
    assert tokens.shape == (3, 4, 8)
    torch.testing.assert_close(tokens[:, :3], expected, rtol=1e-10, atol=1e-10)


def test_missing_rows_hold_the_null_tokens_and_present_rows_their_own_tokens():
    model = bert_model("cls", num_tokens=3)
    full = embed_text(model)
    mask = torch.tensor([[1, 1], [0, 1], [1, 0]])
    tokens = embed_text(model, modality_mask=mask)
    torch.testing.assert_close(tokens[1, :3], access.null_tokens(model, "text"), rtol=0, atol=0)
    torch.testing.assert_close(tokens[2, 3:], access.null_tokens(model, "tab"), rtol=0, atol=0)
    for row, columns in ((0, slice(None)), (1, slice(3, 4)), (2, slice(0, 3))):
        torch.testing.assert_close(tokens[row, columns], full[row, columns], rtol=1e-12, atol=1e-12)


# --- activation checkpointing ---


def test_activation_checkpointing_reruns_the_block_in_backward_and_changes_nothing():
    config = make_config(fusion="transformer", dropout=0.1)  # dropout: the re-run must replay the same masks
    inputs, labels = make_inputs(config), torch.tensor([0, 1, 2, 0])
    model = I2MoEForClassification(config).train()
    block = model.interaction.backbone.layers[0]
    # transformers checkpoints the block's `forward` (its own hooks stay outside the checkpoint):
    # count the runs of the block's first and last sub-layers.
    calls = []
    block.qkv.register_forward_hook(lambda *args: calls.append("qkv"))
    block.fc2.register_forward_hook(lambda *args: calls.append("fc2"))

    def step():
        calls.clear()
        model.zero_grad()
        torch.manual_seed(1)
        output = model(**inputs, labels=labels)
        forward_calls = len(calls)
        output.loss.backward()
        return output, forward_calls, len(calls), {n: p.grad.clone() for n, p in model.named_parameters()}

    plain_output, plain_forward, plain_total, plain_grads = step()
    assert (plain_forward, plain_total) == (2, 2)
    model.activation_checkpointing_enable()
    output, forward_calls, total_calls, grads = step()
    # Checkpointed: backward runs the whole block a second time.
    assert (forward_calls, total_calls) == (2, 4) and calls == ["qkv", "fc2"] * 2
    torch.testing.assert_close(output.logits, plain_output.logits, rtol=0, atol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_a_backbone_built_without_num_stacks_has_one_stack(fusion):
    config = fusion_config(fusion, LAYOUTS["uneven"])
    backbone = FUSIONS.get(fusion)(config, TokenLayout(tuple(config.modality_names), LAYOUTS["uneven"]))
    assert {parameter.shape[0] for parameter in backbone.parameters()} == {1}
    assert backbone(torch.randn(1, 2, 6, 8)).shape == (1, 2, 3)


def test_initial_weight_scales():
    """What `post_init` draws: stacked linears N(0, initializer_range) with zero bias; LRTF's
    Xavier-normal factors `sqrt(2 / (d + 1 + o))` and rank weights `sqrt(2 / (1 + R))`; DMIL's
    linears N(0, 1 / fan_in) (the VIB's unit noise would bury means drawn at 0.02)."""
    lrtf = I2MoEForClassification(make_config(fusion="lrtf", hidden_size=64, lrtf_rank=64, lrtf_output_size=32,
                                              fusion_hidden_size=64, initializer_range=0.05))
    dmil = I2MoEForClassification(make_config(method="dmil", hidden_size=64, dmil_latent_size=32))
    backbone = lrtf.interaction.backbone
    expected = {
        "lrtf head": (backbone.head.fc1.weight, 0.05),
        "lrtf factors": (backbone.factors, (2.0 / (64 + 1 + 32)) ** 0.5),
        "lrtf rank weights": (backbone.rank_weights, (2.0 / (1 + 64)) ** 0.5),
        "dmil vib": (dmil.interaction.intra.task_vib.linear.weight, 64 ** -0.5),
    }
    for name, (weight, std) in expected.items():
        assert abs(weight.mean().item()) < 0.2 * std, name
        assert weight.std().item() == pytest.approx(std, rel=0.2), name
    assert (backbone.head.fc1.bias == 0).all() and (backbone.fusion_bias == 0).all()
    assert (dmil.interaction.intra.task_vib.linear.bias == 0).all()


def test_a_modality_missing_from_every_row_skips_its_tower():
    model = bert_model("mean")
    calls = []
    access.tower(model, "text").register_forward_hook(lambda *args: calls.append(1))
    tokens = embed_text(model, modality_mask=torch.tensor([[0, 1]] * 3))
    assert calls == []
    torch.testing.assert_close(tokens[:, 0], access.null_tokens(model, "text").expand(3, -1), rtol=0, atol=0)
