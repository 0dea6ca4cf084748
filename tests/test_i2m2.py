"""I2M2: the product-of-experts rule, missing modalities, the intra/inter baselines and the staged
assembly from separately trained parts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification
from i2moe.registry_i2moe import INTERACTIONS
from i2moe.i2m2_i2moe import combine_i2m2

from conftest import make_config, make_inputs


def _log_softmax(values: list[float]) -> list[float]:
    log_total = math.log(sum(math.exp(value) for value in values))
    return [value - log_total for value in values]


def test_combination_rule_matches_a_hand_computation():
    unimodal = [[1.0, -0.5, 2.0], [0.3, 0.0, -1.0]]
    inter = [-2.0, 1.5, 0.25]
    summed = [sum(terms) for terms in zip(*map(_log_softmax, unimodal), _log_softmax(inter))]
    expected = _log_softmax(summed)
    combined = combine_i2m2(torch.tensor([unimodal]), torch.tensor([[True, True]]), torch.tensor([inter]),
                            "single_label_classification")
    torch.testing.assert_close(combined, torch.tensor([expected]))
    # The product of softmaxes equals the softmax of the summed logits.
    torch.testing.assert_close(combined, F.log_softmax(torch.tensor(unimodal).sum(0) + torch.tensor(inter), -1)[None])


def test_combination_rule_for_multi_label_and_regression():
    unimodal = torch.tensor([[[1.0, -2.0], [0.5, 0.5]]])
    inter = torch.tensor([[-1.0, 3.0]])
    both, first_only = torch.tensor([[True, True]]), torch.tensor([[True, False]])
    # Multi-label: Bernoulli experts multiply their odds, so per-label logits add.
    torch.testing.assert_close(combine_i2m2(unimodal, both, inter, "multi_label_classification"),
                               torch.tensor([[0.5, 1.5]]))
    torch.testing.assert_close(combine_i2m2(unimodal, first_only, inter, "multi_label_classification"),
                               torch.tensor([[0.0, 1.0]]))
    # Regression: equal-variance Gaussian experts -> the mean of the present experts.
    torch.testing.assert_close(combine_i2m2(unimodal, both, inter, "regression"), torch.tensor([[0.5 / 3, 1.5 / 3]]))
    torch.testing.assert_close(combine_i2m2(unimodal, first_only, None, "regression"), torch.tensor([[1.0, -2.0]]))


def _modes(model, inputs):
    """The same model's outputs in each I2M2 mode."""
    outputs = {}
    for mode in ("product", "intra", "inter"):
        model.config.i2m2.mode = mode
        outputs[mode] = model(**inputs)
    model.config.i2m2.mode = "product"
    return outputs


@pytest.mark.parametrize("separate_towers", [False, True])
def test_model_logits_are_the_product_of_its_heads_and_inter_part(separate_towers):
    config = make_config(i2m2_heads=True, i2m2_separate_towers=separate_towers)
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config)
    outputs = _modes(model, inputs)
    unimodal = outputs["product"].unimodal_logits
    assert unimodal.shape == (4, 2, 3)
    expected = F.log_softmax(F.log_softmax(unimodal, -1).sum(1) + F.log_softmax(outputs["inter"].logits, -1), -1)
    torch.testing.assert_close(outputs["product"].logits, expected)
    torch.testing.assert_close(outputs["intra"].logits, F.log_softmax(F.log_softmax(unimodal, -1).sum(1), -1))
    assert outputs["inter"].unimodal_logits is None


def test_missing_modality_head_drops_out_and_inter_part_sees_the_null_token():
    config = make_config(i2m2_heads=True, i2m2_separate_towers=True)
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config)
    inputs["modality_mask"][1, 1] = 0  # row 1 misses modality m1
    outputs = _modes(model, inputs)
    product, inter = outputs["product"], outputs["inter"]
    assert (product.unimodal_logits[1, 1] == 0).all() and (product.unimodal_logits[0, 1] != 0).any()
    expected_row = F.log_softmax(F.log_softmax(product.unimodal_logits[1, 0], -1) + F.log_softmax(inter.logits[1], -1), -1)
    torch.testing.assert_close(product.logits[1], expected_row)
    # Whatever the missing modality's input holds, the prediction for that row does not change.
    scrambled = dict(inputs, m1_features=inputs["m1_features"].clone())
    scrambled["m1_features"][1] = 100.0
    torch.testing.assert_close(model(**scrambled).logits[1], product.logits[1])
    # The inter part got the learned null token: the same logits as for a batch without m1 at all.
    model.config.i2m2.mode = "inter"
    alone = model(m0_features=inputs["m0_features"][1:2], modality_mask=torch.tensor([[1, 0]]))
    torch.testing.assert_close(alone.logits[0], inter.logits[1])


@pytest.mark.parametrize("method", INTERACTIONS.names())
def test_heads_combine_with_every_interaction_part(method):
    config = make_config(method=method, i2m2_heads=True)
    model = I2MoEForClassification(config)
    inputs = make_inputs(config)
    inputs["modality_mask"][0, 0] = 0
    out = model(**inputs, labels=torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    assert out.unimodal_logits.shape == (4, 2, 3) and torch.isfinite(out.loss)
    assert model.i2m2_heads.classifier.fc1.weight.grad.abs().sum() > 0
    model.eval()
    inter_only, product = _modes(model, inputs)["inter"], model(**inputs)
    # The interaction part's own outputs (expert weights, gates, ...) come through unchanged, except
    # `unimodal_logits`, which in the product are the I2M2 heads (DMIL's level-1 heads give way).
    extra = {key for key, value in inter_only.items() if value is not None} - {"logits", "loss", "unimodal_logits"}
    for key in extra:
        torch.testing.assert_close(product[key], inter_only[key], msg=key)
    heads = model.i2m2_heads(model.embed_modalities(**inputs)).masked_fill(~inputs["modality_mask"].bool()[..., None], 0.0)
    torch.testing.assert_close(product.unimodal_logits, heads)


def test_intra_and_inter_modes_use_only_their_parts():
    config = make_config(i2m2_heads=True)
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config)
    before = _modes(model, inputs)
    with torch.no_grad():
        for parameter in model.interaction.parameters():
            parameter.add_(1.0)
    after = _modes(model, inputs)
    torch.testing.assert_close(after["intra"].logits, before["intra"].logits)
    assert not torch.allclose(after["inter"].logits, before["inter"].logits)
    with torch.no_grad():
        for parameter in model.i2m2_heads.parameters():
            parameter.add_(1.0)
    torch.testing.assert_close(_modes(model, inputs)["inter"].logits, after["inter"].logits)


def test_multi_label_and_regression_train():
    for problem_type, num_labels, labels in (
        ("multi_label_classification", 3, torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 0], [0, 0, 0]])),
        ("regression", 1, torch.randn(4)),
    ):
        config = make_config(i2m2_heads=True, num_labels=num_labels, problem_type=problem_type)
        model = I2MoEForClassification(config)
        out = model(**make_inputs(config), labels=labels)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert model.i2m2_heads.classifier.fc2.weight.grad.abs().sum() > 0


def test_frozen_modality_keeps_both_its_towers_frozen_and_in_eval_mode(tmp_path):
    config = make_config(i2m2_heads=True, i2m2_separate_towers=True)
    config.modalities[0].freeze = True
    model = I2MoEForClassification(config)
    model.save_pretrained(tmp_path)
    for candidate in (model, I2MoEForClassification.from_pretrained(tmp_path)):
        candidate.train()
        for encoders in (candidate.encoders, candidate.unimodal_encoders):
            assert not encoders["m0"].tower.training and encoders["m1"].tower.training
            assert not any(p.requires_grad for p in encoders["m0"].tower.parameters())
            assert all(p.requires_grad for p in encoders["m1"].tower.parameters())


def test_config_validation():
    with pytest.raises(ValueError, match="i2m2.mode"):
        make_config(i2m2_mode="both", i2m2_heads=True)
    with pytest.raises(ValueError, match="i2m2_heads=True"):
        make_config(i2m2_mode="intra")
    with pytest.raises(ValueError, match="i2m2.separate_towers=True"):
        make_config(i2m2_heads=True, i2m2_tower_overrides={"m0": {"hidden_size": 8}})
    with pytest.raises(ValueError, match="'m7'"):
        make_config(i2m2_heads=True, i2m2_separate_towers=True, i2m2_tower_overrides={"m7": {"hidden_size": 8}})
    with pytest.raises(ValueError, match="no_such_field"):
        make_config(i2m2_heads=True, i2m2_separate_towers=True, i2m2_tower_overrides={"m0": {"no_such_field": 1}})


def _unimodal_part(name: str, input_size: int, tower_width: int) -> I2MoEForClassification:
    tower = I2MoEFeaturesConfig(input_size=input_size, hidden_size=tower_width, num_hidden_layers=1)
    config = I2MoEConfig(modalities=[{"name": name, "tower": tower}], hidden_size=16, fusion="concat",
                         fusion_hidden_size=12, num_labels=3, dropout=0.0)
    return I2MoEForClassification(config).eval()


def _assert_same_weights(module, reference):
    reference_state = reference.state_dict()
    state = module.state_dict()
    assert state.keys() == reference_state.keys()
    for key, value in state.items():
        assert torch.equal(value, reference_state[key]), key


@pytest.mark.parametrize("from_disk", [False, True])
def test_staged_assembly_loads_the_parts_bit_for_bit(tmp_path, from_disk):
    unimodal = {"m0": _unimodal_part("m0", 8, 10), "m1": _unimodal_part("m1", 4, 6)}
    inter = I2MoEForClassification(make_config(fusion="lrtf", fusion_hidden_size=20)).eval()
    parts = {"unimodal": unimodal, "inter": inter}
    if from_disk:
        for name, part in unimodal.items():
            part.save_pretrained(tmp_path / name)
        inter.save_pretrained(tmp_path / "inter")
        parts = {"unimodal": {name: str(tmp_path / name) for name in unimodal}, "inter": str(tmp_path / "inter")}
    model = I2MoEForClassification.from_i2m2_parts(**parts)
    assert model.config.i2m2.separate_towers and model.config.i2m2.mode == "product"
    assert model.config.i2m2.tower_overrides == {"m0": {"hidden_size": 10}, "m1": {"hidden_size": 6}}
    for name in ("encoders", "interaction"):
        _assert_same_weights(getattr(model, name), getattr(inter, name))
    assert torch.equal(model.null_tokens, inter.null_tokens)  # the shared encoders' null tokens come from inter
    for index, (name, part) in enumerate(unimodal.items()):
        _assert_same_weights(model.unimodal_encoders[name].tower, part.encoders[name].tower)
        unimodal_projection = {key: value for key, value in part.encoders[name].state_dict().items() if key != "null_tokens"}
        assert model.unimodal_encoders[name].state_dict().keys() == unimodal_projection.keys()
        assert all(torch.equal(model.unimodal_encoders[name].state_dict()[key], value) for key, value in unimodal_projection.items())
        source, target = part.interaction.backbone.head, model.i2m2_heads.classifier
        for layer in ("fc1", "fc2"):
            for tensor in ("weight", "bias"):
                assert torch.equal(getattr(getattr(target, layer), tensor)[index],
                                   getattr(getattr(source, layer), tensor)[0])
    # The assembled product predicts exactly what the product of the parts' predictions is.
    config = model.config
    inputs = make_inputs(config)
    parts_log_prior = sum(
        F.log_softmax(part(**{f"{name}_features": inputs[f"{name}_features"]}).logits, -1)
        for name, part in unimodal.items()
    )
    expected = F.log_softmax(parts_log_prior + F.log_softmax(inter(**inputs).logits, -1), -1)
    torch.testing.assert_close(model(**inputs).logits, expected)
    # A saved assembly loads back to the same predictions.
    model.save_pretrained(tmp_path / "i2m2")
    reloaded = I2MoEForClassification.from_pretrained(tmp_path / "i2m2")
    torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)


def test_intra_only_assembly_uses_the_unimodal_towers():
    unimodal = {"m0": _unimodal_part("m0", 8, 10), "m1": _unimodal_part("m1", 4, 6)}
    model = I2MoEForClassification.from_i2m2_parts(unimodal)
    assert model.config.i2m2.mode == "intra" and not model.config.i2m2.separate_towers
    inputs = make_inputs(model.config)
    for name, part in unimodal.items():
        _assert_same_weights(model.encoders[name].tower, part.encoders[name].tower)
    expected = F.log_softmax(sum(
        F.log_softmax(part(**{f"{name}_features": inputs[f"{name}_features"]}).logits, -1)
        for name, part in unimodal.items()
    ), -1)
    torch.testing.assert_close(model(**inputs).logits, expected)


def test_assembly_rejects_parts_that_do_not_fit():
    unimodal = {"m0": _unimodal_part("m0", 8, 10), "m1": _unimodal_part("m1", 4, 6)}
    inter = I2MoEForClassification(make_config())
    with pytest.raises(ValueError, match="one model per modality"):
        I2MoEForClassification.from_i2m2_parts({"m0": unimodal["m0"]}, inter)
    with pytest.raises(ValueError, match="one-modality model"):
        I2MoEForClassification.from_i2m2_parts({"m0": inter, "m1": unimodal["m1"]}, inter)
    wide = I2MoEForClassification(make_config(hidden_size=32))
    with pytest.raises(ValueError, match="hidden_size"):
        I2MoEForClassification.from_i2m2_parts(unimodal, wide)


def test_i2m2_model_loads_as_remote_code_without_the_package(tmp_path):
    from test_remote_code import load_in_fresh_process_without_package

    config = make_config(i2m2_heads=True, i2m2_separate_towers=True, i2m2_tower_overrides={"m0": {"hidden_size": 8}})
    model = I2MoEForClassification(config).eval()
    model.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "i2m2_i2moe.py").exists()
    inputs = make_inputs(config)
    inputs["modality_mask"][0, 1] = 0
    [result] = load_in_fresh_process_without_package([tmp_path / "model"], tmp_path, inputs=inputs)
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)
