"""I2MoEProcessor: missing modalities, every error, save / load / AutoProcessor / remote code, and the model on its output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoProcessor, BertConfig, BertTokenizer, ViTImageProcessor, Wav2Vec2FeatureExtractor

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoELeNetConfig, I2MoEProcessor
from i2moe.processing_i2moe import I2MoEFeatureNormalizer


WORDS = ["red", "blue", "shirt", "shoes", "men", "women", "watch", "bag"]
MODALITIES = ["image", "text", "tabular"]


def make_tokenizer() -> BertTokenizer:
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizer(vocab=vocab)


def make_processor(**kwargs) -> I2MoEProcessor:
    image_processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    normalizer = I2MoEFeatureNormalizer.fit([[2010.0, 1.0], [2012.0, 0.0], [2014.0, 1.0]], feature_names=["year", "men"])
    return I2MoEProcessor({"image": image_processor, "text": make_tokenizer(), "tabular": normalizer}, **kwargs)


def make_sample(index: int, present=(True, True, True)) -> dict:
    rng = np.random.default_rng(index)
    sample = {}
    if present[0]:
        sample["image"] = PIL.Image.fromarray(rng.integers(0, 255, (20 + index, 24, 3), dtype=np.uint8))
    if present[1]:
        sample["text"] = " ".join(rng.choice(WORDS, size=1 + index % 5))
    if present[2]:
        sample["tabular"] = [2010.0 + index, float(index % 2)]
    return sample


def same_batch(batch, expected) -> bool:
    """Same keys, equal tensors, equal `modality_names`."""
    return set(batch) == set(expected) and all(
        torch.equal(batch[key], expected[key]) if isinstance(expected[key], torch.Tensor) else batch[key] == expected[key]
        for key in expected
    )


def make_model(processor: I2MoEProcessor) -> I2MoEForClassification:
    config = I2MoEConfig(
        modalities=[
            {"name": "image", "tower": I2MoELeNetConfig(num_channels=3, base_channels=4, num_additional_layers=1)},
            {"name": "text", "tower": BertConfig(vocab_size=len(processor.processors["text"]), hidden_size=16,
                                                 num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)},
            {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=2, hidden_size=16, num_hidden_layers=1)},
        ],
        hidden_size=16, fusion="transformer", fusion_num_heads=2, num_labels=3, dropout=0.0,
    )
    return I2MoEForClassification(config).eval()


def test_output_holds_model_inputs_placeholders_and_mask():
    processor = make_processor()
    samples = [make_sample(0), make_sample(1, (False, True, True)), {"image": make_sample(2)["image"], "text": None}]
    batch = processor(samples)
    assert batch["modality_mask"].tolist() == [[1, 1, 1], [0, 1, 1], [1, 0, 0]]
    assert batch["image_pixel_values"].shape == (3, 3, 16, 16)
    assert (batch["image_pixel_values"][1] == 0).all()  # placeholder row
    assert set(batch) == {"image_pixel_values", "text_input_ids", "text_token_type_ids", "text_attention_mask",
                          "tabular_features", "modality_mask", "modality_names"}
    assert batch["modality_names"] == MODALITIES
    assert batch["text_attention_mask"][2].sum() == 0 and (batch["text_input_ids"][2] == 0).all()
    assert (batch["tabular_features"][2] == 0).all()
    # Standardised with the fitted statistics: year 2011 is 0.5 std below the mean 2012.
    assert batch["tabular_features"][1, 0].item() == pytest.approx((2011 - 2012) / np.std([2010, 2012, 2014]))


def test_modality_missing_from_the_whole_batch_has_no_keys_and_keyword_calls_match_sample_calls():
    processor = make_processor()
    samples = [make_sample(0, (False, True, True)), make_sample(1, (False, False, True))]
    batch = processor(samples, labels=[2, 0])
    assert not any(key.startswith("image_") for key in batch)
    assert batch["labels"].tolist() == [2, 0]
    keyword = processor(text=[samples[0]["text"], None], tabular=[s["tabular"] for s in samples], labels=[2, 0])
    assert same_batch(keyword, batch)


def test_labels_inside_samples_are_passed_through():
    batch = make_processor()([{**make_sample(0), "labels": 1}, {**make_sample(1), "labels": 0}])
    assert batch["labels"].tolist() == [1, 0]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()).filter(any), min_size=1, max_size=5))
def test_model_sees_each_sample_the_same_whatever_else_is_in_the_batch(presence):
    """The placeholders never leak: a sample's logits in a mixed batch equal its logits processed alone."""
    processor = make_processor()
    model = _shared_model(processor)
    samples = [make_sample(index, present) for index, present in enumerate(presence)]
    batch = processor(samples)
    assert batch["modality_mask"].tolist() == [[int(p) for p in present] for present in presence]
    with torch.no_grad():
        together = model(**batch).logits
        alone = torch.cat([model(**processor([sample])).logits for sample in samples])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


_MODELS = {}


def _shared_model(processor):
    if "model" not in _MODELS:
        torch.manual_seed(0)
        _MODELS["model"] = make_model(processor)
    return _MODELS["model"]


def test_long_text_is_truncated_to_the_max_length():
    processor = make_processor(text_max_length=6)
    batch = processor(text=[" ".join(WORDS * 5), "red"])
    assert batch["text_input_ids"].shape == (2, 6)
    assert batch["text_input_ids"][0, -1].item() == processor.processors["text"].sep_token_id  # [SEP] kept
    assert make_processor()(text=[" ".join(WORDS * 5)])["text_input_ids"].shape[1] == 42  # no limit: 40 words + 2


def test_images_from_bytes_paths_and_dataset_dicts(tmp_path):
    processor = make_processor()
    image = make_sample(0)["image"]
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    image.save(tmp_path / "x.png")
    gray = image.convert("L")  # converted to RGB
    batch = processor(image=[image, buffer.getvalue(), str(tmp_path / "x.png"), {"bytes": buffer.getvalue(), "path": None}, gray])
    pixels = batch["image_pixel_values"]
    for row in range(1, 4):
        torch.testing.assert_close(pixels[row], pixels[0])
    assert pixels.shape == (5, 3, 16, 16)


def test_audio_feature_extractor_with_missing_rows():
    extractor = Wav2Vec2FeatureExtractor(sampling_rate=8000, do_normalize=True, return_attention_mask=True)
    processor = I2MoEProcessor({"audio": extractor, "text": make_tokenizer()})
    waves = [np.sin(np.arange(400) / 5.0), None, {"array": np.ones(200), "sampling_rate": 8000}]
    batch = processor(audio=waves, text=["red", "blue", "bag"])
    assert batch["audio_input_values"].shape == (3, 400)
    assert batch["audio_attention_mask"].sum(1).tolist() == [400, 0, 200]
    with pytest.raises(ValueError, match=r"modality 'audio': sample 1: audio at 16000 Hz.*expects 8000 Hz"):
        processor(audio=[np.ones(10), {"array": np.ones(10), "sampling_rate": 16000}], text=["red", "red"])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p(image=[None, None], text=["red", None]), ValueError, r"sample\(s\) \[1\] have no modality at all"),
        (lambda p: p([{"text": "red"}, {}]), ValueError, r"sample\(s\) \[1\] have no modality"),
        (lambda p: p(text=["red", "blue"], tabular=[[1.0, 2.0]]), ValueError, "disagree on the batch size.*'text': 2.*'tabular': 1"),
        (lambda p: p(text=["red"], labels=[0, 1]), ValueError, "disagree on the batch size"),
        (lambda p: p(audio=[np.ones(3)]), ValueError, r"unknown modality name\(s\) \['audio'\].*\['image', 'text', 'tabular'\]"),
        (lambda p: p([{"txt": "red"}]), ValueError, r"unknown modality name\(s\) \['txt'\] in sample 0"),
        (lambda p: p(text="red"), TypeError, "`text` must be a list with one entry per sample"),
        (lambda p: p({"text": ["red"]}), TypeError, "`samples` must be a list of dicts"),
        (lambda p: p(["red"]), TypeError, r"sample 0 must be a dict"),
        (lambda p: p(text=["red", 3]), TypeError, r"modality 'text': sample 1: expected a str, got int"),
        (lambda p: p(image=[make_sample(0)["image"], 7]), TypeError, r"modality 'image': sample 1: expected an image"),
        (lambda p: p(image=[b"\x89PNG\r\n not an image"]), ValueError, r"modality 'image': sample 0: cannot decode the image bytes"),
        (lambda p: p(text=["red"] * 3, tabular=[[1.0, 2.0], None, [float("nan"), 1.0]]), ValueError,
         r"modality 'tabular': sample 2, column 'year': value nan is not finite"),
        (lambda p: p(tabular=[[1.0, float("inf")]]), ValueError, r"sample 0, column 'men'"),
        (lambda p: p(tabular=[[1.0, 2.0, 3.0]]), ValueError, r"modality 'tabular': sample 0: expected shape \[2\], got \[3\]"),
        (lambda p: p(tabular=[["a", "b"]]), TypeError, r"modality 'tabular': sample 0: expected numbers"),
        (lambda p: p(), ValueError, "no inputs"),
        (lambda p: p(text=["red"], return_tensors="np"), ValueError, "torch tensors only"),
    ],
)
def test_errors_name_the_problem(call, error, match):
    with pytest.raises(error, match=match):
        call(make_processor())


def test_construction_errors():
    with pytest.raises(ValueError, match="non-empty dict"):
        I2MoEProcessor({})
    with pytest.raises(TypeError, match="modality 'x': unsupported sub-processor str"):
        I2MoEProcessor({"x": "tokenizer"})
    with pytest.raises(ValueError, match="Python identifiers"):
        I2MoEProcessor({"my text": make_tokenizer()})
    with pytest.raises(ValueError, match="`feature_names`"):
        I2MoEFeatureNormalizer(feature_shape=[2], feature_names=["a"])
    with pytest.raises(ValueError, match="column 'b'"):
        I2MoEFeatureNormalizer.fit([[1.0, 2.0], [1.0, float("nan")]], feature_names=["a", "b"])


def test_save_and_load_round_trip_with_auto_processor(tmp_path):
    processor = make_processor(text_max_length=12)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["modalities"] == [{"name": "image", "kind": "image"}, {"name": "text", "kind": "text"},
                                   {"name": "tabular", "kind": "features"}]
    assert saved["auto_map"] == {"AutoProcessor": "processing_i2moe.I2MoEProcessor"}
    assert (tmp_path / "processing_i2moe.py").exists() and (tmp_path / "tabular" / "preprocessor_config.json").exists()
    samples = [make_sample(0), make_sample(1, (True, False, True))]
    expected = processor(samples)
    for loaded in (I2MoEProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is I2MoEProcessor and loaded.modality_names == MODALITIES and loaded.text_max_length == 12
        batch = loaded(samples)
        assert same_batch(batch, expected)


def test_remote_code_loads_without_the_package(tmp_path):
    processor = make_processor()
    processor.save_pretrained(tmp_path)
    expected = processor([make_sample(0), make_sample(1, (False, True, True))])
    torch.save(dict(expected), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["i2moe"] = None  # the package is not importable
        import numpy as np, PIL.Image, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        rng = np.random.default_rng(0)
        image = PIL.Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        text0 = " ".join(rng.choice({WORDS!r}, size=1))
        rng = np.random.default_rng(1)
        text1 = " ".join(rng.choice({WORDS!r}, size=2))
        batch = processor([{{"image": image, "text": text0, "tabular": [2010.0, 0.0]}},
                           {{"text": text1, "tabular": [2011.0, 1.0]}}])
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert set(batch) == set(expected), (set(batch), set(expected))
        assert all(torch.equal(batch[key], expected[key]) if torch.is_tensor(expected[key])
                   else batch[key] == expected[key] for key in batch)
        print("ok", type(processor).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok I2MoEProcessor" in result.stdout
