"""The model's shape: every registered part in every combination runs forward and backward, saves
and loads; checkpoints of the old format load to the same predictions; freezing lives in one place."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
from i2moe.dmil_training import apply_dmil_stage
from i2moe.registry_i2moe import FUSIONS, INTERACTIONS

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
HEADS = {"no heads": None, "I2M2 shared": {}, "I2M2 separate towers": {"separate_towers": True}}


def make_model(fusion, method, heads, frozen, **settings) -> I2MoEForClassification:
    config = I2MoEConfig(
        modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=5, hidden_size=6), "freeze": frozen},
                    {"name": "b", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=4), "num_tokens": 2}],
        hidden_size=8, fusion=fusion, fusion_num_heads=2, fusion_hidden_size=8, lrtf_rank=2, lrtf_output_size=4,
        num_labels=3, method=method, i2m2=HEADS[heads], dropout=0.0, **settings,
    )
    return I2MoEForClassification(config)


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Every modality is missing in some row, so every null token takes part.
    # b is a sequence (6 rows of 4 vectors), resampled to 2 tokens.
    return {"a_features": torch.randn(6, 5, generator=generator), "b_features": torch.randn(6, 4, 3, generator=generator),
            "modality_mask": torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0], [0, 1]])}


def assert_gradients_where_trainable(model):
    missing = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert missing == []
    touched = [name for name, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert touched == []


@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen tower"])
@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("method", INTERACTIONS.names())
@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_registered_combination_trains_saves_and_loads(tmp_path, fusion, method, heads, frozen):
    torch.manual_seed(0)
    model = make_model(fusion, method, heads, frozen)
    if method == "dmil":
        apply_dmil_stage(model, 3)
    model.train()
    output = model(**batch(), labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    output.loss.backward()
    assert_gradients_where_trainable(model)
    tower_a = [model.encoders["a"].tower] + ([model.unimodal_encoders["a"].tower] if model.unimodal_encoders else [])
    assert all(any(p.requires_grad for p in tower.parameters()) != frozen for tower in tower_a)
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = I2MoEForClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch(1)).logits, model(**batch(1)).logits, rtol=0, atol=0)
    assert all(any(p.requires_grad for p in tower.parameters()) != frozen
               for tower in [loaded.encoders["a"].tower] + ([loaded.unimodal_encoders["a"].tower] if loaded.unimodal_encoders else []))
    # Training a loaded model computes what the original computes (its constant buffers were restored).
    labels = torch.tensor([2, 1, 0, 2, 1, 0])
    losses = []
    for candidate in (model, loaded):
        torch.manual_seed(5)
        losses.append(candidate.train()(**batch(1), labels=labels).loss)
    torch.testing.assert_close(losses[1], losses[0])


@pytest.mark.parametrize("name", ["i2moe_i2m2_separate", "dmil_stage3", "vanilla_lrtf_i2m2"])
def test_format1_checkpoint_loads_to_the_same_predictions(name):
    saved = load_file(str(FIXTURES / name / "inputs_and_outputs.safetensors"))
    model = I2MoEForClassification.from_pretrained(FIXTURES / name)
    assert model.config.i2moe_format_version == 3  # converted on load
    with torch.no_grad():
        output = model(**{key: saved[key] for key in ("a_features", "b_features", "modality_mask")})
    torch.testing.assert_close(output.logits, saved["expected_logits"])
    if "expected_expert_logits" in saved:  # format 1 ordered I2MoE's experts `..., synergy, redundancy`
        old_order = [0, 1, 3, 2]
        torch.testing.assert_close(output.component_logits, saved["expected_expert_logits"][:, old_order])
        torch.testing.assert_close(output.component_weights, saved["expected_expert_weights"][:, old_order])
        assert model.config.i2moe.lambda_int == 0.3 and model.config.i2m2.separate_towers
        assert model.config.i2moe.label_guidance_weight == 0.0  # saved before the default: the paper's objective
    if "expected_gate_weights" in saved:
        torch.testing.assert_close(output.component_weights, saved["expected_gate_weights"])
        assert model.config.dmil.stage == 3


def test_format1_checkpoint_resaves_in_the_current_format(tmp_path):
    model = I2MoEForClassification.from_pretrained(FIXTURES / "i2moe_i2m2_separate")
    model.save_pretrained(tmp_path)
    reloaded = I2MoEForClassification.from_pretrained(tmp_path)
    inputs = batch()
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**inputs).logits, model.eval()(**inputs).logits, rtol=0, atol=0)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_dmil_stages_keep_a_frozen_pretrained_style_tower_frozen(stage):
    """A BERT-style tower with a pooler, frozen by the config, and I2M2 separate towers: every stage
    leaves frozen what the config freezes (both copies, pooler included) and gives every trainable
    parameter a gradient."""
    bert = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    config = I2MoEConfig(
        modalities=[{"name": "text", "tower": bert, "freeze": True, "pooling": "cls"},
                    {"name": "tab", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=4)}],
        hidden_size=8, num_labels=3, method="dmil", i2m2={"separate_towers": True}, dropout=0.0,
    )
    model = I2MoEForClassification(config)
    apply_dmil_stage(model, stage)
    for encoders in (model.encoders, model.unimodal_encoders):
        assert not any(p.requires_grad for p in encoders["text"].tower.parameters())
    trainable_pooler = [p.requires_grad for p in model.unimodal_encoders["tab"].tower.parameters()]
    assert all(trainable_pooler) == (stage != 2)
    model.train()
    assert not model.encoders["text"].tower.training and not model.unimodal_encoders["text"].tower.training
    generator = torch.Generator().manual_seed(0)
    inputs = {"text_input_ids": torch.randint(0, 50, (6, 5), generator=generator),
              "text_attention_mask": torch.ones(6, 5, dtype=torch.long),
              "tab_features": torch.randn(6, 3, generator=generator),
              "modality_mask": torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1], [1, 0], [0, 1]])}
    model(**inputs, labels=torch.tensor([0, 1, 2, 0, 1, 2])).loss.backward()
    assert_gradients_where_trainable(model)


def test_problem_type_is_resolved_once_and_saved(tmp_path):
    """Multi-label I2M2: predictions with and without labels use the same rule, also after loading."""
    model = make_model("concat", "vanilla", "I2M2 shared", False).eval()
    assert model.config.problem_type is None
    inputs = batch()
    with_labels = model(**inputs, labels=torch.tensor([[1, 0, 1]] * 6, dtype=torch.float)).logits
    assert model.config.problem_type == "multi_label_classification"
    torch.testing.assert_close(model(**inputs).logits, with_labels)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(I2MoEForClassification.from_pretrained(tmp_path)(**inputs).logits, with_labels)


def test_modality_dropout_drops_per_sample_in_training_only():
    model = make_model("concat", "vanilla", "no heads", False, modality_dropout={"a": 0.5, "b": 0.5})
    present = torch.ones(4000, 2, dtype=torch.bool)
    torch.manual_seed(0)
    kept = model._drop_modalities(present)
    assert kept.any(1).all()  # never every modality of a sample
    # Dropped a with p 0.5 and b with p 0.5, both-dropped rows (p 0.25) keep one at random: P(a kept) = 0.5 + 0.125.
    assert kept[:, 0].float().mean().item() == pytest.approx(0.625, abs=0.03)
    assert (kept[:, 0] & kept[:, 1]).float().mean().item() == pytest.approx(0.25, abs=0.03)
    only_b = torch.tensor([[False, True]] * 100)
    assert torch.equal(model._drop_modalities(only_b), only_b)  # the only present modality is never dropped
    model.eval()
    inputs = batch()
    torch.testing.assert_close(model(**inputs).logits, model(**inputs).logits)


def test_forward_subsets_equals_a_forward_per_subset():
    for method in INTERACTIONS.names():
        model = make_model("transformer", method, "I2M2 separate towers", False).eval()
        inputs = batch()
        subsets = torch.tensor([[True, False], [False, True], [True, True]])
        with torch.no_grad():
            stacked = model.forward_subsets(subsets, **inputs, modality_names=["a", "b"])  # as the processor gives it
            for index, subset in enumerate(subsets):
                mask = inputs["modality_mask"].bool() & subset
                rows = mask.any(1)
                single = model(**{**{k: v[rows] for k, v in inputs.items() if k != "modality_mask"}, "modality_mask": mask[rows]})
                torch.testing.assert_close(stacked.logits[index, rows], single.logits, atol=1e-5, rtol=1e-5)
