"""Where two objects must agree, a disagreement is an error that names both sides (issue: nothing
silently wrong): processor and model modality order, config and weights, label maps, output paths;
and labels in the forms transformers accepts."""

import json

import numpy as np
import pytest
import torch

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification


def make_model(**overrides):
    config = I2MoEConfig(
        modalities=[{"name": "a", "tower": I2MoEFeaturesConfig(input_size=4, hidden_size=6)},
                    {"name": "b", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=5)}],
        hidden_size=8, num_labels=3, dropout=0.0, **overrides,
    )
    return I2MoEForClassification(config).eval()


INPUTS = {"a_features": torch.randn(4, 4), "b_features": torch.randn(4, 3),
          "modality_mask": torch.tensor([[1, 1], [1, 0], [0, 1], [1, 1]])}


@pytest.mark.parametrize("labels", [[0, 2, 1, 1], np.array([0, 2, 1, 1]), torch.tensor([0, 2, 1, 1])],
                         ids=["list", "numpy", "tensor"])
def test_labels_as_list_numpy_or_tensor_give_the_same_loss(labels):
    model = make_model()
    expected = torch.nn.functional.cross_entropy(model(**INPUTS).logits, torch.tensor([0, 2, 1, 1]))
    torch.testing.assert_close(model(**INPUTS, labels=labels).loss, expected)


def test_labels_that_are_not_numbers_name_the_field():
    with pytest.raises(TypeError, match="labels: expected a tensor"):
        make_model()(**INPUTS, labels=["cat", "dog", "cat", "dog"])


def test_processor_modality_order_must_be_the_models():
    model = make_model()
    model(**INPUTS, modality_names=["a", "b"])  # the processor's order, as it reports it
    with pytest.raises(ValueError, match=r"prepared for modalities \['b', 'a'\].*model's modalities are \['a', 'b'\]"):
        model(**INPUTS, modality_names=["b", "a"])


@pytest.mark.parametrize("edit", [{"method": "i2moe"}, {"i2m2": {}}, {"method": "dmil"}],
                         ids=["method changed", "I2M2 heads added", "dmil"])
def test_config_edited_to_another_part_does_not_load_random_weights(tmp_path, edit):
    make_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match="weights do not match its config.*no weights for"):
        I2MoEForClassification.from_pretrained(tmp_path)


def test_config_edited_to_drop_the_heads_leaves_unused_weights_and_fails(tmp_path):
    make_model(i2m2={}).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "i2m2": None}))
    with pytest.raises(ValueError, match=r"unused weights of \['i2m2_heads'\]"):
        I2MoEForClassification.from_pretrained(tmp_path)


def test_saving_onto_an_existing_file_is_an_error(tmp_path):
    path = tmp_path / "model.bin"
    path.write_text("not a folder")
    with pytest.raises(ValueError, match="is an existing file"):
        make_model().save_pretrained(path)
    assert path.read_text() == "not a folder"


def test_label_maps_must_agree_and_are_never_replaced():
    with pytest.raises(ValueError, match=r"`num_labels=5` but `id2label` names 2 labels"):
        make_model().config.__class__(modalities=[{"name": "a", "tower": I2MoEFeaturesConfig()}], num_labels=5,
                                      id2label={0: "cat", 1: "dog"})
    with pytest.raises(ValueError, match="is not the inverse"):
        I2MoEConfig(modalities=[{"name": "a", "tower": I2MoEFeaturesConfig()}], id2label={0: "cat", 1: "dog"},
                    label2id={"cat": 1, "dog": 0})
    config = I2MoEConfig(modalities=[{"name": "a", "tower": I2MoEFeaturesConfig()}], label2id={"cat": 0, "dog": 1, "eel": 2})
    assert config.num_labels == 3 and config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert I2MoEConfig.from_dict(config.to_dict()).id2label == {0: "cat", 1: "dog", 2: "eel"}


def test_sample_ids_must_be_one_integer_per_row():
    model = make_model(method="i2moe").train()
    with pytest.raises(ValueError, match=r"sample_ids: expected integer ids of shape \(4,\)"):
        model(**INPUTS, labels=torch.tensor([0, 1, 2, 0]), sample_ids=torch.arange(3))
