import pytest
import torch
from transformers import AutoModel, BertModel, ViTConfig, ViTModel

from i2moe import FUSIONS, I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoELeNetConfig

import oracle_access as access
from oracles import randomize_parameters
from conftest import make_config, make_inputs, tiny_bert_config


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_forward_backward_with_rows_missing_a_modality(fusion):
    config = make_config(fusion=fusion, feature_sizes=(8, 4, 5), num_tokens=[1, 2, 1])
    model = I2MoEForClassification(config).train()
    inputs = make_inputs(config, batch_size=6)
    inputs["modality_mask"] = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]])
    output = model(**inputs, labels=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert output.logits.shape == (6, 3) and output.loss.ndim == 0
    output.loss.backward()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is not None for p in trainable.values())
    assert all(model.encoders[name].null_tokens.grad.abs().sum() > 0 for name in config.modality_names)


def test_missing_rows_see_exactly_the_null_tokens():
    config = make_config()
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config, batch_size=3)
    inputs["modality_mask"] = torch.tensor([[1, 1], [1, 0], [1, 0]])
    tokens = model.embed_modalities(**inputs)
    torch.testing.assert_close(tokens[1:, 1], model.null_tokens[1].expand(2, -1))
    # Whatever the placeholder inputs of a missing row hold, the prediction is the same.
    garbage = dict(inputs, m1_features=inputs["m1_features"].clone())
    garbage["m1_features"][1:] = 1e3
    torch.testing.assert_close(model(**garbage).logits, model(**inputs).logits)


def test_modality_missing_in_the_whole_batch_trains_and_skips_its_tower():
    config = make_config(feature_sizes=(8, 4))
    model = I2MoEForClassification(config).train()
    calls = []
    model.encoders["m1"].tower.register_forward_hook(lambda *args: calls.append(1))
    inputs = make_inputs(config, batch_size=4)
    del inputs["m1_features"]
    inputs["modality_mask"] = torch.tensor([[1, 0]] * 4)
    output = model(**inputs, labels=torch.tensor([0, 1, 2, 0]))
    output.loss.backward()
    assert not calls
    assert model.encoders["m1"].null_tokens.grad.abs().sum() > 0
    # Without a mask, modalities whose inputs are absent count as missing.
    no_mask = {k: v for k, v in inputs.items() if k != "modality_mask"}
    torch.testing.assert_close(model.eval()(**no_mask).logits, model(**inputs).logits)


def test_bad_inputs_raise_clear_errors():
    config = make_config()
    model = I2MoEForClassification(config)
    inputs = make_inputs(config, batch_size=2)
    with pytest.raises(ValueError, match="unexpected input 'pixel_values'"):
        model(**inputs, pixel_values=torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"modality_mask: expected shape \(2, 2\)"):
        model(**dict(inputs, modality_mask=torch.ones(2, 3)))
    with pytest.raises(ValueError, match="values must be 0 or 1"):
        model(**dict(inputs, modality_mask=torch.tensor([[1, 2], [1, 1]])))
    with pytest.raises(ValueError, match=r"rows \[1\] have no modality present"):
        model(**dict(inputs, modality_mask=torch.tensor([[1, 1], [0, 0]])))
    with pytest.raises(ValueError, match="disagree on the batch size"):
        model(**dict(inputs, m0_features=torch.randn(3, 8)))
    with pytest.raises(ValueError, match="no modality inputs.*remove_unused_columns=False"):
        model(labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="marks modality 'm1' present"):
        model(m0_features=inputs["m0_features"], modality_mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match="modality 'm0'.*features: expected 8 values"):
        model(**dict(inputs, m0_features=torch.randn(2, 7)))
    with pytest.raises(ValueError, match="NaN or inf"):
        model(**dict(inputs, m0_features=torch.tensor([[float("nan")] * 8] * 2)))
    with pytest.raises(TypeError, match="floating-point"):
        model(**dict(inputs, m0_features=torch.ones(2, 8, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"labels: class indices must lie in \[0, 2\]"):
        model(**inputs, labels=torch.tensor([0, 3]))
    # The first labelled call stored problem_type="single_label_classification"; a fresh model infers multi-label.
    with pytest.raises(ValueError, match=r"labels: single-label classification expects integer class indices"):
        model(**inputs, labels=torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match=r"labels: multi-label classification expects multi-hot labels of shape \(2, 3\)"):
        I2MoEForClassification(make_config())(**inputs, labels=torch.tensor([[0], [1]]))
    single = I2MoEForClassification(make_config(problem_type="single_label_classification"))
    with pytest.raises(ValueError, match="labels: single-label classification expects integer"):
        single(**inputs, labels=torch.tensor([0.0, 1.0]))


def test_loss_follows_the_problem_type():
    inputs_config = make_config(num_labels=4)
    inputs = make_inputs(inputs_config, batch_size=3)
    logits_of = lambda model: model(**inputs).logits  # noqa: E731
    model = I2MoEForClassification(make_config(num_labels=4, problem_type="multi_label_classification")).eval()
    multi_hot = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits_of(model), multi_hot.float())
    torch.testing.assert_close(model(**inputs, labels=multi_hot).loss, expected)

    model = I2MoEForClassification(make_config(num_labels=1)).eval()
    targets = torch.tensor([0.5, -1.0, 2.0])
    expected = torch.nn.functional.mse_loss(logits_of(model).squeeze(-1), targets)
    torch.testing.assert_close(model(**inputs, labels=targets).loss, expected)

    model = I2MoEForClassification(make_config(num_labels=4)).eval()
    classes = torch.tensor([3, 0, 1])
    expected = torch.nn.functional.cross_entropy(logits_of(model), classes)
    torch.testing.assert_close(model(**inputs, labels=classes).loss, expected)


def test_multiple_tokens_and_cnn_and_text_towers():
    config = I2MoEConfig(
        modalities=[
            {"name": "image", "tower": I2MoELeNetConfig(base_channels=3, num_additional_layers=2), "num_tokens": 3},
            {"name": "text", "tower": tiny_bert_config(), "pooling": "cls"},
        ],
        hidden_size=16, fusion="transformer", fusion_num_heads=2, num_labels=2,
    )
    model = I2MoEForClassification(config)
    cached = {f"{name}_{argument}" for name in ("image", "text") for argument in ("tower_features", "tower_features_mask")}
    assert set(model.input_names) == {"image_pixel_values", "text_input_ids", "text_attention_mask",
                                      "text_token_type_ids", "modality_mask", *cached}
    output = model(image_pixel_values=torch.randn(2, 1, 28, 28), text_input_ids=torch.randint(0, 100, (2, 6)),
                   text_attention_mask=torch.tensor([[1] * 6, [1] * 3 + [0] * 3]), labels=torch.tensor([0, 1]))
    assert output.logits.shape == (2, 2)
    assert model.embed_modalities(image_pixel_values=torch.randn(2, 1, 28, 28),
                                  text_input_ids=torch.randint(0, 100, (2, 6))).shape == (2, 4, 16)


def test_text_padding_does_not_change_mean_pooled_tokens():
    config = I2MoEConfig(modalities=[{"name": "text", "tower": tiny_bert_config()}], hidden_size=16, num_labels=2)
    model = I2MoEForClassification(config).eval()
    ids = torch.randint(1, 100, (1, 5))
    short = model.embed_modalities(text_input_ids=ids, text_attention_mask=torch.ones(1, 5, dtype=torch.long))
    padded = model.embed_modalities(text_input_ids=torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1),
                                    text_attention_mask=torch.tensor([[1] * 5 + [0] * 3]))
    torch.testing.assert_close(short, padded, rtol=1e-5, atol=1e-5)


def test_frozen_tower_gets_no_gradient_and_stays_in_eval_mode():
    config = I2MoEConfig(
        modalities=[{"name": "image", "tower": I2MoELeNetConfig(base_channels=3, num_additional_layers=2), "freeze": True},
                    {"name": "tab", "tower": I2MoEFeaturesConfig(input_size=3)}],
        hidden_size=16, num_labels=2,
    )
    model = I2MoEForClassification(config).train()
    assert not model.encoders["image"].tower.training and model.encoders["tab"].tower.training
    stats = model.encoders["image"].tower.blocks[0][1].running_mean.clone()
    output = model(image_pixel_values=torch.randn(4, 1, 28, 28) + 3, tab_features=torch.randn(4, 3),
                   labels=torch.tensor([0, 1, 0, 1]))
    output.loss.backward()
    assert all(p.grad is None for p in model.encoders["image"].tower.parameters())
    torch.testing.assert_close(model.encoders["image"].tower.blocks[0][1].running_mean, stats)


def test_frozen_tower_stays_frozen_after_loading(tmp_path):
    config = I2MoEConfig(
        modalities=[{"name": "image", "tower": I2MoELeNetConfig(base_channels=3, num_additional_layers=2), "freeze": True},
                    {"name": "tab", "tower": I2MoEFeaturesConfig(input_size=3)}],
        hidden_size=16, num_labels=2,
    )
    I2MoEForClassification(config).save_pretrained(tmp_path)
    loaded = I2MoEForClassification.from_pretrained(tmp_path).train()
    assert not any(p.requires_grad for p in loaded.encoders["image"].tower.parameters())
    assert all(p.requires_grad for p in loaded.encoders["tab"].tower.parameters())
    assert not loaded.encoders["image"].tower.training


def test_pretrained_towers_are_bit_identical_after_building(tmp_path):
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             image_size=32, patch_size=8))
    bert = BertModel(tiny_bert_config())
    vit.save_pretrained(tmp_path / "vit")
    bert.save_pretrained(tmp_path / "bert")
    model = I2MoEForClassification.from_pretrained_towers(
        {"image": str(tmp_path / "vit"), "text": bert}, pooling={"image": "cls"}, hidden_size=16, num_labels=3,
    )
    reference_vit = ViTModel.from_pretrained(tmp_path / "vit")
    for name, source in (("image", reference_vit.state_dict()), ("text", bert.state_dict())):
        tower_state = model.encoders[name].tower.state_dict()
        for key, value in source.items():
            assert torch.equal(tower_state[key], value), f"{name}.{key} changed while building the model"
    assert model.config.modalities[0].tower_name_or_path == str(tmp_path / "vit")
    with pytest.raises(ValueError, match="not in `towers`"):
        I2MoEForClassification.from_pretrained_towers({"text": bert}, freeze={"image": True}, num_labels=2)


def test_from_pretrained_towers_logs_the_new_weights(tmp_path, caplog):
    bert = BertModel(tiny_bert_config())
    from transformers.utils import logging

    logging.enable_propagation()
    with caplog.at_level("WARNING"):
        I2MoEForClassification.from_pretrained_towers({"text": bert}, hidden_size=16, num_labels=2)
    logging.disable_propagation()
    assert "newly initialized" in caplog.text and "null_tokens" in caplog.text and "encoders.text.tower." not in caplog.text


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_save_and_load_give_identical_logits_through_auto_model(tmp_path, fusion):
    config = make_config(fusion=fusion, num_tokens=[2, 1])
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config)
    model.save_pretrained(tmp_path)
    files = {path.name for path in tmp_path.iterdir()}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert {"configuration_i2moe.py", "modeling_i2moe.py", "fusion_i2moe.py", "towers_i2moe.py"} <= files
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is I2MoEForClassification
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)


def test_tuple_output():
    config = make_config(fusion="transformer")
    model = I2MoEForClassification(config).eval()
    inputs, labels = make_inputs(config), torch.tensor([0, 1, 2, 0])
    output = model(**inputs, labels=labels)
    loss, logits = model(**inputs, labels=labels, return_dict=False)[:2]
    torch.testing.assert_close(logits, output.logits, rtol=0, atol=0)
    torch.testing.assert_close(loss, output.loss, rtol=0, atol=0)


BF16_METHODS = {
    "vanilla": {},
    "i2moe": dict(method="i2moe", i2moe_reweight_dropout=0.0, i2moe_perturbation="null"),
    "dmil": dict(method="dmil", dmil_stage=3, dmil_latent_size=8),
    "i2m2": dict(i2m2_heads=True),
}


@pytest.mark.parametrize("method", sorted(BF16_METHODS))
def test_bf16_autocast_matches_fp32(method):
    """bf16 keeps 8 mantissa bits (relative step 2^-8); a few layers deep, the logits, the loss
    and the expert / gate weights must stay within 0.05 + 5% of fp32 (the loss arithmetic and the
    weights run in float32 by design). A dtype bug lands far outside; `isfinite` would not see it."""
    config = make_config(fusion="transformer", **BF16_METHODS[method])
    model = randomize_parameters(I2MoEForClassification(config), seed=4, scale=0.3).train()
    for name in config.modality_names:  # deterministic: no tower dropout (the interaction part has none)
        access.tower(model, name).eval()
    if method == "dmil":
        model.eval()  # the VIBs sample in training mode
    inputs, labels = make_inputs(config, batch_size=6), torch.tensor([0, 1, 2, 0, 1, 2])
    reference = model(**inputs, labels=labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(**inputs, labels=labels)
    output.loss.backward()
    assert reference.logits.abs().max() > 0.3  # non-trivial logits
    close = dict(rtol=0.05, atol=0.05)
    torch.testing.assert_close(output.logits.float(), reference.logits, **close)
    torch.testing.assert_close(output.loss, reference.loss, **close)
    for field in ("component_weights", "component_weights", "interaction_loss"):
        if field in reference:  # a ModelOutput holds only the fields the method produced
            torch.testing.assert_close(output[field].float(), reference[field], **close, msg=field)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
