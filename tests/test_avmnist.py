"""The offline AV-MNIST builder: shapes, determinism, disjoint clip pools, errors, the mel filters."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from i2moe.datasets_avmnist import LogMelSpectrogram, build_avmnist_arrays, load_avmnist, mel_filterbank, AVMNISTRecipe

from conftest import SHARED_DATA


needs_data = pytest.mark.skipif(
    not (SHARED_DATA / "mnist" / "mnist.npz").exists() or not (SHARED_DATA / "fsdd" / "recordings").is_dir(),
    reason="MNIST / FSDD not available (set I2MOE_DATA_DIR)",
)


@pytest.fixture(scope="module")
def small_avmnist(tmp_path_factory):
    return load_avmnist(SHARED_DATA, seed=0, cache_dir=tmp_path_factory.mktemp("avmnist"),
                        max_train_samples=300, max_eval_samples=200)


@needs_data
def test_splits_columns_and_shapes(small_avmnist):
    assert set(small_avmnist) == {"train", "validation", "test"}
    assert [len(small_avmnist[split]) for split in ("train", "validation", "test")] == [300, 200, 200]
    batch = small_avmnist["train"][:8]
    assert set(batch) == {"image_pixel_values", "audio_pixel_values", "labels"}
    assert batch["image_pixel_values"].shape == (8, 1, 28, 28) and batch["image_pixel_values"].dtype == torch.float32
    assert batch["audio_pixel_values"].shape == (8, 1, 112, 112) and batch["audio_pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.int64
    assert torch.isfinite(batch["audio_pixel_values"]).all()
    # The labels are shuffled (MNIST's rows are sorted by label) and cover every digit.
    assert set(small_avmnist["train"][:]["labels"].tolist()) == set(range(10))


@needs_data
def test_each_image_is_paired_with_a_clip_of_its_digit_from_its_split(small_avmnist):
    pools = {"train": range(10, 50), "validation": range(5, 10), "test": range(0, 5)}
    clips = {}
    for split, indices in pools.items():
        rows = small_avmnist[split].with_format(None)[:]
        clips[split] = set(rows["audio_clip"])
        for clip, label in zip(rows["audio_clip"], rows["labels"]):
            digit, _, index = clip.split("_")
            assert int(digit) == label and int(index) in indices
    # No validation or test clip is ever heard in training.
    assert not clips["train"] & clips["validation"] and not clips["train"] & clips["test"]


@needs_data
def test_build_is_deterministic_and_a_subset_is_a_prefix_of_a_larger_build():
    recipe = AVMNISTRecipe(seed=3)
    small = build_avmnist_arrays(SHARED_DATA, recipe, max_train_samples=40, max_eval_samples=10)
    # Another size crosses the 1000-row chunk of the noise generator: rows must not depend on it.
    larger = build_avmnist_arrays(SHARED_DATA, recipe, max_train_samples=1010, max_eval_samples=12)
    other_seed = build_avmnist_arrays(SHARED_DATA, AVMNISTRecipe(seed=4), max_train_samples=40, max_eval_samples=10)
    for split in small:
        for column, values in small[split].items():
            np.testing.assert_array_equal(values, larger[split][column][: len(values)])
    assert not np.array_equal(small["train"]["labels"], other_seed["train"]["labels"])
    assert not np.allclose(small["test"]["audio_pixel_values"], other_seed["test"]["audio_pixel_values"])


@needs_data
def test_cache_is_reused(tmp_path):
    first = load_avmnist(SHARED_DATA, cache_dir=tmp_path, max_train_samples=20, max_eval_samples=10)
    entries = sorted(tmp_path.iterdir())
    second = load_avmnist(SHARED_DATA, cache_dir=tmp_path, max_train_samples=20, max_eval_samples=10)
    assert sorted(tmp_path.iterdir()) == entries and len(entries) == 1
    torch.testing.assert_close(first["test"][:]["audio_pixel_values"], second["test"][:]["audio_pixel_values"])


@needs_data
def test_image_energy_removal_keeps_a_low_rank_image(small_avmnist):
    images = small_avmnist["train"][:]["image_pixel_values"].reshape(300, -1).double().numpy()
    singular_values = np.linalg.svd(images - images.mean(0), compute_uv=False)
    # About 25% of the variance is kept by a handful of leading components (rank <= 10 around the mean).
    assert (singular_values[10:] < 1e-3 * singular_values[0]).all()


def test_missing_data_names_the_public_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"yann\.lecun\.com/exdb/mnist.*Jakobovski/free-spoken-digit-dataset"):
        load_avmnist(tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=np.zeros((1, 28, 28)))
    with pytest.raises(FileNotFoundError, match="Jakobovski/free-spoken-digit-dataset"):
        load_avmnist(tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"noise": "brown"}, "`noise` must be 'white' or 'pink', got 'brown'"),
        ({"max_train_samples": 0}, "`max_train_samples` must be an int >= 1 or None, got 0"),
        ({"max_eval_samples": 2.5}, "`max_eval_samples` must be an int >= 1 or None, got 2.5"),
        ({"seed": "0"}, "`seed` must be an int >= 0, got '0'"),
        ({"seed": -1}, "`seed` must be an int >= 0, got -1"),
        ({"num_validation": True}, "`num_validation` must be an int >= 1, got True"),
        ({"num_validation": 60000}, "`num_validation` must be below MNIST's 60000 training images"),
        ({"snr_db": float("nan")}, "`snr_db` must be a finite number, got nan"),
        ({"snr_db": "-10"}, "`snr_db` must be a finite number, got '-10'"),
        ({"image_energy_removed": 1.0}, r"`image_energy_removed` must be a finite number in \[0, 1\), got 1.0"),
    ],
    ids=lambda value: str(value) if isinstance(value, dict) else "",
)
def test_bad_arguments_are_rejected_naming_the_argument(tmp_path, arguments, match):
    with pytest.raises(ValueError, match=r"load_avmnist: " + match):
        load_avmnist(tmp_path, **arguments)


def test_unusable_folders_and_files_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"`cache_dir` '.*not-a-folder' is a file"):
        (tmp_path / "not-a-folder").write_text("")
        load_avmnist(tmp_path, cache_dir=tmp_path / "not-a-folder")
    with pytest.raises(NotADirectoryError, match=r"the data folder .*not-a-folder is a file"):
        load_avmnist(tmp_path / "not-a-folder", cache_dir=tmp_path / "cache")
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", x_train=np.zeros((1, 28, 28), dtype=np.uint8))
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    (tmp_path / "fsdd" / "recordings" / "0_george_0.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"mnist.npz lacks the arrays \['x_test', 'y_test', 'y_train'\].*yann\.lecun\.com"):
        load_avmnist(tmp_path, cache_dir=tmp_path / "cache")


def test_mel_filterbank_and_spectrogram_shape():
    filters = mel_filterbank(512, 8000, 112)
    assert filters.shape == (112, 257)
    assert (filters.max(1) > 0).all()  # no empty filter at the low end
    # Triangles: each filter peaks once, and the peaks rise with frequency.
    assert (np.diff(filters.argmax(1)) >= 0).all()
    tone = np.sin(2 * np.pi * 1000 * np.arange(8000) / 8000).astype(np.float32)[None]
    spectrogram = LogMelSpectrogram()(tone)
    assert spectrogram.shape == (1, 112, 112)
    # A 1 kHz tone lights up the mel bin whose centre is nearest 1 kHz.
    centres = 700.0 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 4000 / 700), 114)[1:-1] / 2595) - 1)
    assert abs(spectrogram[0, :, 56].argmax() - np.abs(centres - 1000).argmin()) <= 1
