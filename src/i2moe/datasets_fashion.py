"""Fashion Product Images (small) as a `datasets.DatasetDict`: product photo + product name (+ optional tabular columns).

The data: 9583 product photos (224x224 RGB, `images/{id}.jpg`) and one row each of `products.csv`
(`id, gender, masterCategory, subCategory, articleType, baseColour, season, year, usage,
productDisplayName`), read from `../shared/data/fashion-products` (or `data_dir` / `$I2MOE_DATA_DIR`).

What this builder decides (see `docs/data.md`):

- **Target.** Any categorical column (`target`, default `articleType`: 75 classes, from 1647 T-shirts
  down to single items). Classes with fewer than `min_count` products are merged into one class
  named `"other"` (`rare_classes="other"`, the default: every product stays) or removed
  (`rare_classes="drop"`).
- **Split.** Fixed and stratified by class: within each class the products are shuffled with `seed`
  and `val_fraction` / `test_fraction` of them (at least one each when a class has three or more
  products) go to validation / test, the rest to train. The same arguments always give the same
  split, on every machine.
- **Tabular columns** (optional, `tabular_columns`): `year` as a number, every other column one-hot
  with the categories seen in train (unseen ones give an all-zero block). Columns that nearly
  determine the target (e.g. `subCategory` for `articleType`) make the task trivial: the builder
  refuses to use the target itself and leaves that judgement to the caller otherwise.

The result is cached with `save_to_disk` under `cache_dir` (default `~/.cache/i2moe/datasets`) keyed
by every argument and the CSV's size and modification time.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, Image, Sequence, Value, load_from_disk

from .data_utils import check_cache_dir, check_int, check_number, resolve_data_dir


FASHION_SUBDIR = "fashion-products"
FASHION_SOURCE = (
    "Kaggle 'Fashion Product Images (Small)' by P. Aggarwal "
    "(https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-small); the copy used here packs "
    "images from github.com/GaneshNeupane01/Fashion-Recommendation-System and metadata from "
    "github.com/animmala3942/FashionProductRecommendationSystem as `fashion-products/images/{id}.jpg` + "
    "`fashion-products/products.csv`"
)
CATEGORICAL_COLUMNS = ("gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "usage")
NUMERIC_COLUMNS = ("year",)
RARE_CLASS_NAME = "other"
DEFAULT_CACHE_DIR = Path(os.environ.get("I2MOE_CACHE", Path.home() / ".cache" / "i2moe")) / "datasets"
# Bump when the builder's output changes, so stale caches are not reused.
_BUILDER_VERSION = 1


def load_fashion_products(
    data_dir: str | os.PathLike | None = None,
    target: str = "articleType",
    seed: int = 0,
    min_count: int = 20,
    rare_classes: str = "other",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    tabular_columns: tuple[str, ...] | list[str] = (),
    cache_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """The fashion products as `train` / `validation` / `test` splits.

    Columns: `image` (a `datasets.Image`: decodes to a PIL image), `text` (productDisplayName),
    `labels` (a `ClassLabel`; `dataset["train"].features["labels"].names` are the class names),
    `id` (the product id), and `tabular` (float32 list) when `tabular_columns` is given; the
    tabular feature names are `fashion_tabular_feature_names(dataset["train"])`.

    Args:
        data_dir: the data root holding `fashion-products/` (default `$I2MOE_DATA_DIR` or `../shared/data`).
        target: the categorical column to predict (one of `CATEGORICAL_COLUMNS`).
        seed: seeds the stratified split; the same seed gives the same split everywhere.
        min_count: classes with fewer products than this are rare (see `rare_classes`).
        rare_classes: `"other"` merges rare classes into one class `"other"`; `"drop"` removes them.
        val_fraction, test_fraction: share of each class that goes to validation and test.
        tabular_columns: metadata columns to add as float features (`year`, or categorical columns one-hot).
        cache_dir: where the built dataset is cached (default `~/.cache/i2moe/datasets`, or `$I2MOE_CACHE/datasets`).

    Example:

    ```python
    >>> from i2moe.datasets_fashion import load_fashion_products
    >>> dataset = load_fashion_products()  # doctest: +SKIP
    >>> dataset["train"][0]["text"], dataset["train"].features["labels"].num_classes  # doctest: +SKIP
    ('Puma Men Black Sports Shoes', 40)
    ```
    """
    _check_arguments(target, seed, min_count, rare_classes, val_fraction, test_fraction, tabular_columns)
    check_cache_dir("load_fashion_products", cache_dir)
    root = resolve_data_dir(data_dir, f"{FASHION_SUBDIR}/products.csv", FASHION_SOURCE) / FASHION_SUBDIR
    csv_path = root / "products.csv"
    settings = {
        "version": _BUILDER_VERSION, "root": str(root.resolve()), "csv_size": csv_path.stat().st_size,
        "csv_mtime": csv_path.stat().st_mtime_ns, "target": target, "seed": int(seed), "min_count": int(min_count),
        "rare_classes": rare_classes, "val_fraction": float(val_fraction), "test_fraction": float(test_fraction),
        "tabular_columns": list(tabular_columns),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache_path = Path(cache_dir or DEFAULT_CACHE_DIR) / f"fashion-products-{key}"
    if (cache_path / "dataset_dict.json").exists():
        return load_from_disk(str(cache_path))
    dataset = _build(root, csv_path, settings)
    dataset.save_to_disk(str(cache_path))
    return load_from_disk(str(cache_path))


def fashion_tabular_feature_names(split: Dataset) -> list[str]:
    """Names of the `tabular` features of a split built with `tabular_columns` (empty list otherwise)."""
    return json.loads(split.info.description or "{}").get("tabular_feature_names", [])


def _check_arguments(target, seed, min_count, rare_classes, val_fraction, test_fraction, tabular_columns) -> None:
    where = "load_fashion_products"
    if target not in CATEGORICAL_COLUMNS:
        raise ValueError(f"{where}: `target` must be one of {CATEGORICAL_COLUMNS}, got {target!r}")
    check_int(where, "seed", seed, 0)
    check_int(where, "min_count", min_count, 1)
    if rare_classes not in ("other", "drop"):
        raise ValueError(f"{where}: `rare_classes` must be 'other' or 'drop', got {rare_classes!r}")
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        check_number(where, name, fraction, 0.0, 0.5, "(0, 0.5)")
        if fraction == 0.0:
            raise ValueError(f"{where}: `{name}` must be a finite number in (0, 0.5), got {fraction!r}")
    if isinstance(tabular_columns, str) or not isinstance(tabular_columns, (list, tuple)):
        raise TypeError(f"{where}: `tabular_columns` must be a list of column names, got {tabular_columns!r}")
    repeated = sorted({column for column in tabular_columns if list(tabular_columns).count(column) > 1})
    if repeated:
        raise ValueError(f"{where}: `tabular_columns` names {repeated} more than once")
    unknown = sorted(set(tabular_columns) - set(CATEGORICAL_COLUMNS) - set(NUMERIC_COLUMNS))
    if unknown:
        raise ValueError(
            f"load_fashion_products: unknown `tabular_columns` {unknown}; expected some of "
            f"{NUMERIC_COLUMNS + CATEGORICAL_COLUMNS}"
        )
    if target in tabular_columns:
        raise ValueError(f"load_fashion_products: the target {target!r} cannot also be a tabular input column")


def _build(root: Path, csv_path: Path, settings: dict) -> DatasetDict:
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing_columns = sorted({"id", "productDisplayName", *CATEGORICAL_COLUMNS, *NUMERIC_COLUMNS} - set(reader.fieldnames or []))
        if missing_columns:
            raise ValueError(f"{csv_path} lacks the columns {missing_columns}; get the complete data from {FASHION_SOURCE}")
        rows = list(reader)
    missing = [row["id"] for row in rows if not (root / "images" / f"{row['id']}.jpg").exists()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} product images are missing under {root / 'images'} (e.g. {missing[:3]}); "
            f"get the complete data from {FASHION_SOURCE}"
        )
    target = settings["target"]
    counts = Counter(row[target] for row in rows)
    rare = {name for name, count in counts.items() if count < settings["min_count"]}
    if settings["rare_classes"] == "drop":
        rows = [row for row in rows if row[target] not in rare]
        class_of = {row["id"]: row[target] for row in rows}
    else:
        class_of = {row["id"]: RARE_CLASS_NAME if row[target] in rare else row[target] for row in rows}
    # Sorted names, "other" last: label ids do not depend on CSV order.
    names = sorted({name for name in class_of.values() if name != RARE_CLASS_NAME})
    if RARE_CLASS_NAME in class_of.values():
        names.append(RARE_CLASS_NAME)
    if len(names) < 2:
        raise ValueError(
            f"load_fashion_products: `min_count`={settings['min_count']} leaves {len(names)} class(es) of {target!r} "
            f"(its largest class has {max(counts.values())} products); lower `min_count`"
        )
    split_of = _stratified_split(rows, class_of, settings)
    splits = {name: [row for row in rows if split_of[row["id"]] == name] for name in ("train", "validation", "test")}
    encoder = _TabularEncoder(settings["tabular_columns"], splits["train"])
    features = Features({"id": Value("int64"), "image": Image(), "text": Value("string"),
                         "labels": ClassLabel(names=names)})
    if encoder.columns:
        features["tabular"] = Sequence(Value("float32"))
    info = DatasetInfo(
        features=features,
        description=json.dumps({"target": target, "rare_classes": sorted(rare), "settings": settings,
                                "tabular_feature_names": encoder.feature_names}),
        homepage="https://www.kaggle.com/datasets/paramaggarwal/fashion-product-images-small",
        license="MIT (as listed by its Kaggle publisher)",
    )
    label_ids = {name: index for index, name in enumerate(names)}
    result = {}
    for split_name, split_rows in splits.items():
        columns = {
            "id": [int(row["id"]) for row in split_rows],
            "image": [str(root / "images" / f"{row['id']}.jpg") for row in split_rows],
            "text": [row["productDisplayName"] for row in split_rows],
            "labels": [label_ids[class_of[row["id"]]] for row in split_rows],
        }
        if encoder.columns:
            columns["tabular"] = [encoder.encode(row) for row in split_rows]
        result[split_name] = Dataset.from_dict(columns, features=features, info=info.copy(), split=split_name)
    return DatasetDict(result)


def _stratified_split(rows: list[dict], class_of: dict, settings: dict) -> dict[str, str]:
    """Per class, a seeded shuffle, then the first products to test, the next to validation."""
    by_class = defaultdict(list)
    for row in sorted(rows, key=lambda row: int(row["id"])):  # independent of CSV order
        by_class[class_of[row["id"]]].append(row["id"])
    rng = np.random.default_rng(settings["seed"])
    split_of = {}
    for name in sorted(by_class):
        ids = [by_class[name][i] for i in rng.permutation(len(by_class[name]))]
        # At least one validation and one test product per class when the class has 3 or more.
        minimum = 1 if len(ids) >= 3 else 0
        num_test = max(minimum, round(len(ids) * settings["test_fraction"]))
        num_val = max(minimum, round(len(ids) * settings["val_fraction"]))
        for position, product_id in enumerate(ids):
            split_of[product_id] = "test" if position < num_test else "validation" if position < num_test + num_val else "train"
    return split_of


class _TabularEncoder:
    """`year` as a number; categorical columns one-hot over the categories seen in train."""

    def __init__(self, columns, train_rows: list[dict]):
        self.columns = list(columns)
        self.categories = {
            column: sorted({row[column] for row in train_rows if row[column]})
            for column in self.columns if column in CATEGORICAL_COLUMNS
        }
        self.feature_names = []
        for column in self.columns:
            if column in NUMERIC_COLUMNS:
                self.feature_names.append(column)
            else:
                self.feature_names += [f"{column}={category}" for category in self.categories[column]]

    def encode(self, row: dict) -> list[float]:
        values = []
        for column in self.columns:
            if column in NUMERIC_COLUMNS:
                values.append(float(row[column]))
            else:
                values += [float(row[column] == category) for category in self.categories[column]]
        return values


__all__ = ["CATEGORICAL_COLUMNS", "FASHION_SOURCE", "fashion_tabular_feature_names", "load_fashion_products"]
