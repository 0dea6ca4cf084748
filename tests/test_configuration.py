import pytest
from transformers import AutoConfig, BertConfig, CLIPVisionConfig, ResNetConfig, ViTConfig

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoELeNetConfig, ModalityConfig

from conftest import make_config, tiny_bert_config


def test_round_trip_keeps_modalities_and_towers(tmp_path):
    config = I2MoEConfig(
        modalities=[
            ModalityConfig("image", ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=64, image_size=32, patch_size=8),
                           pooling="cls", num_tokens=4, freeze=True, tower_name_or_path="some/vit"),
            {"name": "text", "tower": tiny_bert_config(), "pooling": "mean"},
            {"name": "audio", "tower": I2MoELeNetConfig(base_channels=3, num_additional_layers=5)},
            {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=7)},
        ],
        hidden_size=64, fusion="transformer", num_labels=5, id2label={i: f"c{i}" for i in range(5)},
        problem_type="single_label_classification",
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, I2MoEConfig)
    assert loaded.modality_names == ["image", "text", "audio", "tabular"]
    assert [type(m.tower) for m in loaded.modalities] == [ViTConfig, BertConfig, I2MoELeNetConfig, I2MoEFeaturesConfig]
    assert loaded.modalities == config.modalities
    assert (loaded.modalities[0].pooling, loaded.modalities[0].num_tokens, loaded.modalities[0].freeze) == ("cls", 4, True)
    assert loaded.modalities[0].tower_name_or_path == "some/vit"
    assert loaded.modalities[0].tower.patch_size == 8
    assert loaded.modalities[2].tower.hidden_size == 96
    assert loaded.id2label[3] == "c3" and loaded.num_labels == 5
    assert loaded.to_dict()["modalities"] == config.to_dict()["modalities"]


@pytest.mark.parametrize("tower", [CLIPVisionConfig(), ResNetConfig(), BertConfig()])
def test_any_auto_tower_config_is_accepted(tower):
    config = I2MoEConfig(modalities=[{"name": "x", "tower": tower}])
    restored = I2MoEConfig.from_dict(config.to_dict()).modalities[0].tower
    assert type(restored) is type(tower) and restored.to_dict() == tower.to_dict()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fusion": "nope"}, "unknown `fusion`"),
        ({"hidden_size": 0}, "`hidden_size` must be a positive int"),
        ({"hidden_size": -3}, "`hidden_size` must be a positive int"),
        ({"method": "magic"}, "unknown `method`"),
        ({"fusion": "transformer", "hidden_size": 10, "fusion_num_heads": 4}, "divisible"),
        ({"dropout": 1.0}, "`dropout`"),
        ({"problem_type": "ranking"}, "`problem_type`"),
        ({"num_labels": 0}, "`num_labels`"),
    ],
)
def test_invalid_shared_values_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(**overrides)


def test_invalid_modalities_raise_clear_errors():
    tower = I2MoEFeaturesConfig(input_size=3)
    with pytest.raises(ValueError, match="at least one modality"):
        I2MoEConfig(modalities=[])
    with pytest.raises(ValueError, match="share the name"):
        I2MoEConfig(modalities=[{"name": "a", "tower": tower}, {"name": "a", "tower": tower}])
    with pytest.raises(ValueError, match="Python identifier"):
        I2MoEConfig(modalities=[{"name": "my image", "tower": tower}])
    with pytest.raises(ValueError, match="pooling` .*expected one of"):
        I2MoEConfig(modalities=[{"name": "a", "tower": tower, "pooling": "attention"}])
    with pytest.raises(ValueError, match="num_tokens"):
        I2MoEConfig(modalities=[{"name": "a", "tower": tower, "num_tokens": 0}])
    with pytest.raises(ValueError, match="must have keys"):
        I2MoEConfig(modalities=[{"name": "a", "tower": tower, "poling": "cls"}])
    with pytest.raises(ValueError, match="model_type"):
        I2MoEConfig(modalities=[{"name": "a", "tower": {"hidden_size": 3}}])
    with pytest.raises(ValueError, match="Unknown tower `model_type`"):
        I2MoEConfig(modalities=[{"name": "a", "tower": {"model_type": "not-a-model"}}])
    with pytest.raises(TypeError, match="`tower` must be"):
        I2MoEConfig(modalities=[{"name": "a", "tower": 3}])
    with pytest.raises(ValueError, match="input_size"):
        I2MoEFeaturesConfig(input_size=0)


def test_label_prior_is_checked_and_saved(tmp_path):
    config = make_config(label_prior=[0.5, 0.25, 0.25])
    config.save_pretrained(tmp_path)
    assert I2MoEConfig.from_pretrained(tmp_path).label_prior == [0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match="`label_prior` must be a list of 3 numbers"):
        make_config(label_prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="`label_prior` must be a list of 3 numbers"):
        make_config(label_prior="uniform")
    with pytest.raises(ValueError, match="class frequencies, all > 0"):
        make_config(label_prior=[1.0, 0.0, 0.0], problem_type="single_label_classification")
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        make_config(label_prior=[0.5, 1.0, 0.2], problem_type="multi_label_classification")
