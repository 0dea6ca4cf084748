"""The fashion products builder on the real data: deterministic stratified splits, rare classes, errors, caching."""

from __future__ import annotations

from collections import Counter

import pytest

from i2moe.datasets_fashion import fashion_tabular_feature_names, load_fashion_products

from conftest import SHARED_DATA


pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "fashion-products" / "products.csv").exists(), reason="fashion products data not available"
)


@pytest.fixture(scope="module")
def fashion_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fashion-cache")


@pytest.fixture(scope="module")
def fashion(fashion_cache):
    return load_fashion_products(SHARED_DATA, cache_dir=fashion_cache, tabular_columns=["year", "gender"])


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


def test_rows_pair_the_photo_with_its_name_and_label(fashion):
    row = fashion["train"][0]
    assert row["image"].size == (224, 224) and row["image"].mode == "RGB"
    assert isinstance(row["text"], str) and row["text"]
    assert fashion_tabular_feature_names(fashion["train"]) == ["year", "gender=Boys", "gender=Girls", "gender=Men",
                                                                "gender=Unisex", "gender=Women"]
    assert len(row["tabular"]) == 6 and 2000 < row["tabular"][0] < 2020 and sum(row["tabular"][1:]) == 1


def test_same_seed_same_split_other_seed_other_split(fashion, fashion_cache, tmp_path):
    rebuilt = load_fashion_products(SHARED_DATA, cache_dir=tmp_path, tabular_columns=["year", "gender"])
    assert rebuilt["test"]["id"] == fashion["test"]["id"]
    reseeded = load_fashion_products(SHARED_DATA, seed=1, cache_dir=fashion_cache)
    assert set(reseeded["test"]["id"]) != set(fashion["test"]["id"])


def test_rare_classes_can_be_dropped(fashion_cache):
    dropped = load_fashion_products(SHARED_DATA, target="masterCategory", min_count=100, rare_classes="drop",
                                    cache_dir=fashion_cache)
    names = dropped["train"].features["labels"].names
    assert "other" not in names and set(names) == {"Accessories", "Apparel", "Footwear"}
    assert sum(dropped.num_rows.values()) < 9583


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
