"""`pipeline("multimodal-classification", ...)`: the task travels with a saved model's remote code and
works in a fresh process where i2moe is not installed; labels and scores are the softmax of the
model's logits (the oracle: a plain torch softmax + sort of the model's own forward)."""

import json
import math

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
          "one": classifier(samples[0], top_k=2), "all": classifier(samples, top_k=4), "errors": errors,
          "attributed": classifier(samples, top_k=2, return_attribution=True, label_prior={prior!r})}}
"""


def test_pipeline_in_a_fresh_process_without_the_package(saved, tmp_path):
    model, processor, folder = saved
    snippet = SNIPPET.format(folder=str(folder), samples=SAMPLES, prior=PRIOR)
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
    for got, sample in zip(labels["attributed"], SAMPLES):
        _assert_same_predictions(got, _expected(model, processor, sample, top_k=2))
        for entry in got:
            _assert_attribution(entry, _expected_attribution(model, processor, sample, entry["label"]))


def test_pipeline_in_process_from_the_model_object(saved):
    model, processor, _ = saved
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    _assert_same_predictions(classifier(SAMPLES[1]), _expected(model, processor, SAMPLES[1], top_k=5))
    with pytest.raises(ValueError, match="`top_k` must be a positive int"):
        classifier(SAMPLES[1], top_k=0)


# --- per-sample attribution: the oracle is one plain forward per modality subset ----------------

PRIOR = [4, 2, 1, 1]  # training label counts; the prior is their frequencies


def _expected_attribution(model, processor, sample: dict, label: str, prior=PRIOR, multi_label=False) -> dict:
    """The two-modality formulas of docs/interpretation.md by hand, from `model(modality_mask=...)`;
    multi-label: `v(S) = log sigmoid(logit)` of the label, `v(∅) = log` of its frequency."""
    index = {name: key for key, name in LABELS.items()}[label]
    inputs = processor([sample])
    present = inputs["modality_mask"][0].tolist()
    frequency = prior[index] if multi_label else prior[index] / sum(prior)
    log_prior = torch.log(torch.tensor(frequency, dtype=torch.float64))

    def gain(mask):  # i(S) = log p(label | x_S) − log p(label), 0 with nothing left
        mask = [keep and has for keep, has in zip(mask, present)]
        if not any(mask):
            return 0.0
        with torch.no_grad():
            logits = model(**{**inputs, "modality_mask": torch.tensor([mask])}).logits[0].double()
        log_likelihood = torch.nn.functional.logsigmoid(logits) if multi_label else logits.log_softmax(-1)
        return float(log_likelihood[index] - log_prior)

    i_text, i_tabular, i_both = gain([1, 0]), gain([0, 1]), gain([1, 1])
    redundancy = min(i_text, i_tabular) if all(present) else 0.0
    return {"uniqueness_text": i_text - redundancy, "uniqueness_tabular": i_tabular - redundancy,
            "redundancy": redundancy, "synergy": i_both - i_text - i_tabular + redundancy}


def _assert_attribution(entry: dict, expected: dict) -> None:
    assert list(entry["attribution"]) == list(expected)
    torch.testing.assert_close(torch.tensor(list(entry["attribution"].values()), dtype=torch.float64),
                               torch.tensor(list(expected.values()), dtype=torch.float64), rtol=0, atol=1e-5)


def test_pipeline_attribution_of_each_returned_label_matches_one_forward_per_subset(saved):
    model, processor, _ = saved
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    for sample in SAMPLES:  # both modalities, text only, tabular only, an explicit None
        got = classifier(sample, top_k=3, return_attribution=True, label_prior=PRIOR)
        _assert_same_predictions(got, _expected(model, processor, sample, top_k=3))
        for entry in got:
            _assert_attribution(entry, _expected_attribution(model, processor, sample, entry["label"]))
            # The terms add up to log p(label | sample) − log p(label).
            index = {name: key for key, name in LABELS.items()}[entry["label"]]
            total = math.log(entry["score"]) - math.log(PRIOR[index] / sum(PRIOR))
            assert abs(sum(entry["attribution"].values()) - total) < 1e-5


def test_pipeline_attribution_reads_the_configs_label_prior_and_refuses_without_one(saved):
    model, processor, _ = saved
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    with pytest.raises(ValueError, match=r"needs the training label distribution: pass `label_prior=\[...\]`"):
        classifier(SAMPLES[0], return_attribution=True)
    with pytest.raises(ValueError, match="must hold 4 values"):
        classifier(SAMPLES[0], return_attribution=True, label_prior=[1, 2])
    with pytest.raises(ValueError, match="only used with `return_attribution=True`"):
        classifier(SAMPLES[0], label_prior=PRIOR)
    model.config.label_prior = [value / sum(PRIOR) for value in PRIOR]
    try:
        got = classifier(SAMPLES[0], top_k=1, return_attribution=True)
    finally:
        model.config.label_prior = None
    _assert_attribution(got[0], _expected_attribution(model, processor, SAMPLES[0], got[0]["label"]))
    assert classifier(SAMPLES[0], top_k=1)[0].keys() == {"label", "score"}  # nothing added unless asked


def test_pipeline_attribution_of_a_multi_label_model(saved):
    _, processor, _ = saved
    torch.manual_seed(1)
    config = I2MoEConfig(
        modalities=[{"name": "text", "tower": tiny_bert_config(), "pooling": "mean"},
                    {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=8)}],
        hidden_size=16, method="i2moe", num_labels=4, id2label=LABELS, problem_type="multi_label_classification",
    )
    model = I2MoEForClassification(config).eval()
    classifier = pipeline("multimodal-classification", model=model, processor=processor)
    frequencies = [0.5, 0.2, 0.1, 0.3]
    for sample in SAMPLES[:2]:
        for entry in classifier(sample, top_k=4, return_attribution=True, label_prior=frequencies):
            _assert_attribution(entry, _expected_attribution(model, processor, sample, entry["label"], frequencies,
                                                             multi_label=True))
