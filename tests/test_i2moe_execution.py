"""I2MoE execution options (`config.i2moe`: execution, chunk_rows, checkpoint_experts,
perturbation_fraction): chunked execution against one stacked call, checkpointing against none,
and perturbation subsampling against the full interaction loss it estimates."""

from __future__ import annotations

import pytest
import torch

from conftest import make_config
from i2moe import FUSIONS, I2MoEConfig
from i2moe.experts_i2moe import I2MoEInteraction
from i2moe import experts_i2moe
from i2moe.fusion_i2moe import TokenLayout

NUM_TOKENS = (2, 1, 3)


def make_interaction(fusion="transformer", dtype=torch.float64, **i2moe) -> I2MoEInteraction:
    config = make_config(fusion, feature_sizes=(4, 4, 4), num_tokens=list(NUM_TOKENS), method="i2moe",
                         i2moe={"reweight_dropout": 0.0, **i2moe})
    layout = TokenLayout(tuple(config.modality_names), NUM_TOKENS)
    torch.manual_seed(0)
    interaction = I2MoEInteraction(config, layout)
    for module in interaction.modules():  # stacked weights start as torch.empty
        if hasattr(module, "init_parameters"):
            module.init_parameters(0.02)
    return interaction.to(dtype).train()


def inputs(batch=5, dtype=torch.float64):
    generator = torch.Generator().manual_seed(3)
    tokens = torch.randn(batch, sum(NUM_TOKENS), 16, generator=generator, dtype=dtype)
    null_tokens = torch.randn(sum(NUM_TOKENS), 16, generator=generator, dtype=dtype)
    present = torch.ones(batch, 3, dtype=torch.bool)
    present[1, 2] = present[3, 0] = False
    return tokens, present, null_tokens


def step(interaction, tokens, present, null_tokens, seed=1):
    """Logits, interaction loss terms and every parameter's gradient of `sum(logits) + L_int`."""
    interaction.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    result = interaction(tokens, present=present, null_tokens=null_tokens)
    (result.logits.sum() + result.interaction_loss).backward()
    grads = {name: parameter.grad.clone() for name, parameter in interaction.named_parameters()}
    terms = torch.stack([result.loss_terms[name] for name in interaction.component_names])
    return result.logits.detach(), terms.detach(), grads


def assert_same_step(first, second, tolerance=1e-5):
    for a, b in zip(first[:2], second[:2]):
        torch.testing.assert_close(a, b, atol=tolerance, rtol=tolerance)
    assert first[2].keys() == second[2].keys()
    for name in first[2]:
        torch.testing.assert_close(first[2][name], second[2][name], atol=tolerance, rtol=tolerance, msg=name)


def expert_call_rows(interaction, run):
    """The row count of every call of the stacked experts during `run()`."""
    calls = []
    handle = interaction.experts.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[1]))
    try:
        run()
    finally:
        handle.remove()
    return calls


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("chunk_rows", [1, 4, 7])  # 7 does not divide the 4 x 5 variant rows
def test_chunked_equals_stacked(fusion, chunk_rows):
    stacked = make_interaction(fusion, execution="stacked")
    chunked = make_interaction(fusion, execution="chunked", chunk_rows=chunk_rows)
    chunked.load_state_dict(stacked.state_dict())
    data = inputs()
    assert expert_call_rows(chunked, lambda: step(chunked, *data)) == [
        min(chunk_rows, 20 - start) for start in range(0, 20, chunk_rows)]  # V B = 4 x 5 rows
    assert_same_step(step(stacked, *data), step(chunked, *data))
    stacked.eval(), chunked.eval()
    with torch.no_grad():
        torch.testing.assert_close(stacked(*data).logits, chunked(*data).logits, atol=1e-5, rtol=1e-5)


def test_auto_chunks_on_cpu_to_the_cache_budget(monkeypatch):
    interaction = make_interaction("transformer", dtype=torch.float32)
    # One row: K = 5 experts x T = 6 tokens x MLP width 4 x 16 = 64, float32.
    monkeypatch.setattr(experts_i2moe, "CPU_CACHE_BUDGET_BYTES", 3 * 5 * 6 * 64 * 4)
    data = inputs(dtype=torch.float32)
    assert expert_call_rows(interaction, lambda: interaction(*data)) == [3] * 6 + [2]
    interaction.eval()
    with torch.no_grad():
        assert expert_call_rows(interaction, lambda: interaction(*data)) == [3, 2]  # the clean pass only
    stacked = make_interaction("transformer", dtype=torch.float32, execution="stacked").eval()
    with torch.no_grad():
        assert expert_call_rows(stacked, lambda: stacked(*data)) == [5]


def test_checkpointing_gives_the_same_step_with_dropout():
    """The recomputation replays the same dropout masks (dropout 0.3 here, so a wrong mask shows)."""
    config_dropout = {"dropout": 0.3}
    plain = _with_dropout(make_interaction(execution="chunked", chunk_rows=6), **config_dropout)
    checkpointed = _with_dropout(make_interaction(execution="chunked", chunk_rows=6, checkpoint_experts=True),
                                 **config_dropout)
    checkpointed.load_state_dict(plain.state_dict())
    data = inputs()
    assert_same_step(step(plain, *data), step(checkpointed, *data))


def _with_dropout(interaction, dropout):
    for module in interaction.experts.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = dropout
    return interaction


def test_checkpointing_frees_the_expert_activations():
    """With checkpointing, the autograd graph keeps only each call's input, not its activations."""
    data = inputs(batch=16, dtype=torch.float32)
    saved = {}
    for flag in (False, True):
        interaction = make_interaction(dtype=torch.float32, execution="stacked", checkpoint_experts=flag)
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            interaction(*data)
        saved[flag] = sum(sizes)
    assert saved[True] < 0.2 * saved[False], saved


def test_subsampled_loss_is_unbiased_over_the_row_draws(monkeypatch):
    """With one row drawn (fraction 0.2 of 5), the loss's mean over the 5 equally likely draws is the
    full-batch loss (all modalities present, deterministic perturbation); the logits are the full ones.
    The label-guided terms too: each drawn row's with its own label."""
    full = make_interaction(perturbation="zero", label_guidance_weight=1.0)
    subsampled = make_interaction(perturbation="zero", perturbation_fraction=0.2, label_guidance_weight=1.0)
    subsampled.load_state_dict(full.state_dict())
    tokens, _, null_tokens = inputs()
    present, labels = torch.ones(5, 3, dtype=torch.bool), torch.tensor([1, 0, 1, 1, 0])
    expected = full(tokens, present, null_tokens, labels=labels)
    estimates = []
    for row in range(5):
        monkeypatch.setattr(subsampled, "_loss_rows", lambda batch, device, row=row: torch.tensor([row]))
        result = subsampled(tokens, present, null_tokens, labels=labels)
        torch.testing.assert_close(result.logits, expected.logits, atol=1e-10, rtol=1e-10)
        estimates.append(torch.stack([result.loss_terms["interaction"], result.loss_terms["label_guidance"]]))
    full_terms = torch.stack([expected.loss_terms["interaction"], expected.loss_terms["label_guidance"]])
    torch.testing.assert_close(torch.stack(estimates).mean(0), full_terms, atol=1e-10, rtol=1e-10)


def test_subsampling_draws_a_uniform_subset_and_runs_fewer_rows():
    interaction = make_interaction(dtype=torch.float32, perturbation_fraction=0.25, execution="stacked")
    counts = torch.zeros(8)
    torch.manual_seed(0)
    for _ in range(800):
        rows = interaction._loss_rows(8, torch.device("cpu"))
        assert rows.numel() == 2 and rows.unique().numel() == 2
        counts[rows] += 1
    assert (counts - 200).abs().max() < 50, counts  # each row drawn with probability 1/4
    data = inputs(batch=8, dtype=torch.float32)
    assert expert_call_rows(interaction, lambda: interaction(*data)) == [8 + 3 * 2]  # B clean + M R perturbed


def test_configs_without_the_execution_fields_load_with_the_defaults():
    config = make_config("transformer", method="i2moe")
    saved = config.to_dict()
    for field in ("execution", "chunk_rows", "checkpoint_experts", "perturbation_fraction"):
        del saved["i2moe"][field]
    loaded = I2MoEConfig.from_dict(saved).i2moe
    assert (loaded.execution, loaded.chunk_rows, loaded.checkpoint_experts, loaded.perturbation_fraction) == (
        "auto", None, False, 1.0)


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"execution": "fast"}, "i2moe.execution"), ({"chunk_rows": 0}, "i2moe.chunk_rows"),
     ({"perturbation_fraction": 1.5}, "i2moe.perturbation_fraction"),
     ({"perturbation_fraction": 0.0}, "i2moe.perturbation_fraction"),
     ({"checkpoint_experts": 1}, "i2moe.checkpoint_experts")],
)
def test_bad_execution_settings_name_the_field(settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make_config("transformer", method="i2moe", i2moe=settings)
