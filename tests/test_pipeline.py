"""`pipeline("multimodal-classification", ...)`: the task travels with a saved model's remote code and
works in a fresh process where i2moe is not installed; labels and scores are the softmax of the
model's logits (the oracle: a plain torch softmax + sort of the model's own forward)."""

import json

import pytest
import torch
from transformers import BertTokenizer, pipeline

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoEProcessor
from i2moe.processing_i2moe import I2MoEFeatureNormalizer

from conftest import tiny_bert_config
from test_remote_code import load_in_fresh_process_without_package


LABELS = {0: "shirt", 1: "shoes", 2: "watch", 3: "bag"}
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "red": 4, "blue": 5, "shirt": 6, "shoes": 7, "watch": 8}
SAMPLES = [{"text": "red shirt", "tabular": [0.5, -1.0, 2.0]}, {"text": "blue shoes"}, {"tabular": [1.0, 0.0, 0.0]},
           {"text": "watch", "tabular": None}]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline") / "model"
    config = I2MoEConfig(
        modalities=[{"name": "text", "tower": tiny_bert_config(), "pooling": "mean"},
                    {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=8)}],
        hidden_size=16, fusion="transformer", fusion_num_heads=2, method="i2moe", num_labels=4, id2label=LABELS,
    )
    model = I2MoEForClassification(config).eval()
    processor = I2MoEProcessor({"text": BertTokenizer(vocab_file=None, vocab=VOCAB),
                                "tabular": I2MoEFeatureNormalizer(feature_shape=[3])})
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def _expected(model, processor, sample: dict, top_k: int) -> list[dict]:
    with torch.no_grad():
        probabilities = torch.softmax(model(**processor([sample])).logits[0], dim=-1)
    order = sorted(range(len(LABELS)), key=lambda index: -float(probabilities[index]))[:top_k]
    return [{"label": LABELS[index], "score": float(probabilities[index])} for index in order]


def _assert_same_predictions(got: list[dict], expected: list[dict]) -> None:
    assert [entry["label"] for entry in got] == [entry["label"] for entry in expected]
    torch.testing.assert_close(torch.tensor([entry["score"] for entry in got]),
                               torch.tensor([entry["score"] for entry in expected]), rtol=0, atol=1e-6)


def test_saved_folder_names_the_task_and_holds_its_code(saved):
    _, _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["multimodal-classification"]["impl"] == "pipeline_i2moe.MultimodalClassificationPipeline"
    assert (folder / "pipeline_i2moe.py").is_file()


SNIPPET = """
from transformers import pipeline
classifier = pipeline("multimodal-classification", model={folder!r}, trust_remote_code=True)
samples = {samples!r}
errors = []
for bad in ({{"colour": "red"}}, "red shirt", {{"text": None}}):
    try:
        classifier(bad)
    except (TypeError, ValueError) as error:
        errors.append(str(error))
labels = {{"class": type(classifier).__module__ + "." + type(classifier).__name__,
          "one": classifier(samples[0], top_k=2), "all": classifier(samples, top_k=4), "errors": errors}}
"""


def test_pipeline_in_a_fresh_process_without_the_package(saved, tmp_path):
    model, processor, folder = saved
    snippet = SNIPPET.format(folder=str(folder), samples=SAMPLES)
    *_, result = load_in_fresh_process_without_package([folder], tmp_path, samples=SAMPLES, snippet=snippet)
    labels = result["snippet_labels"]
    assert labels["class"].startswith("transformers_modules.") and labels["class"].endswith("MultimodalClassificationPipeline")
    _assert_same_predictions(labels["one"], _expected(model, processor, SAMPLES[0], top_k=2))
    assert len(labels["all"]) == len(SAMPLES)
    for got, sample in zip(labels["all"], SAMPLES):
        _assert_same_predictions(got, _expected(model, processor, sample, top_k=4))
    unknown, not_a_dict, empty = labels["errors"]
    assert "unknown modality name(s) ['colour']" in unknown and "['text', 'tabular']" in unknown
    assert "must be a dict" in not_a_dict and "got str" in not_a_dict
    assert "has no modality" in empty


def test_pipeline_in_process_from_the_model_object(saved):
    model, processor, _ = saved
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    _assert_same_predictions(classifier(SAMPLES[1]), _expected(model, processor, SAMPLES[1], top_k=5))
    with pytest.raises(ValueError, match="`top_k` must be a positive int"):
        classifier(SAMPLES[1], top_k=0)
