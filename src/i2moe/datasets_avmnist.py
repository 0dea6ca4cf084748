"""AV-MNIST, rebuilt offline from MNIST and the Free Spoken Digit Dataset (FSDD).

Each MNIST image is paired with a spoken recording of the same digit. The recipe follows
CentralNet / MultiBench's AV-MNIST (see `docs/avmnist.md` for every difference):

* MNIST's official train/test split is kept; 5,000 seeded-random training images become the
  validation split, so 55,000 train / 5,000 validation / 10,000 test.
* Each image gets a random FSDD clip of the same digit from the matching clip pool. FSDD's own
  test clips (index 0-4) serve the test split; index 5-9 are held out for validation and 10-49
  serve training, so validation never hears a training clip and checkpoint selection means
  something (with shared clips validation accuracy saturates).
* Image: about 75% of its energy removed by projecting onto the leading principal components
  (fitted on the 55,000 training images only) that hold the remaining 25%.
* Audio: cut or zero-padded to 1 s, mixed with seeded noise at a fixed signal-to-noise ratio
  (a stand-in for the ESC-50 background sounds of the original, which are not available
  offline), then a 112x112 log-mel spectrogram (STFT and mel filterbank written here with torch;
  no torchaudio or librosa).

The default noise level is calibrated so that image-only and audio-only LeNets land near
MultiBench's unimodal accuracies (about 65% and 42%); `docs/avmnist.md` has the measurements.

Builds are deterministic for a given `seed` and cached with `save_to_disk` under a folder keyed
by every build parameter (default `~/.cache/i2moe/avmnist`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from .data_utils import check_cache_dir, check_int, check_number, resolve_data_dir


MNIST_FILE = "mnist/mnist.npz"
FSDD_FOLDER = "fsdd/recordings"
SOURCES = (
    "MNIST: http://yann.lecun.com/exdb/mnist/ (an npz with x_train, y_train, x_test, y_test, e.g. "
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz) and FSDD: "
    "https://github.com/Jakobovski/free-spoken-digit-dataset (the `recordings/` folder of .wav files)"
)
# Bump when the recipe changes, so that stale caches are not reused.
BUILD_VERSION = 1
SAMPLE_RATE = 8000
SPECTROGRAM_SIZE = 112
COLUMNS = ["image_pixel_values", "audio_pixel_values", "labels"]
# FSDD recording index -> split. FSDD's own test split is index 0-4.
CLIP_INDEX_RANGES = {"test": range(0, 5), "validation": range(5, 10), "train": range(10, 50)}
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
# Noise is drawn per chunk of rows from a generator seeded by (seed, split, chunk): a subset built
# with `max_train_samples` is then exactly the first rows of the full build.
CHUNK_SIZE = 1000


@dataclass(frozen=True)
class AVMNISTRecipe:
    """Every parameter that changes the built data (the cache key hashes all of them)."""

    seed: int = 0
    num_validation: int = 5000
    image_energy_removed: float = 0.75
    noise: str = "white"
    snr_db: float = -10.0
    n_fft: int = 512
    win_length: int = 256
    version: int = BUILD_VERSION


def load_avmnist(
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    *,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    noise: str = AVMNISTRecipe.noise,
    snr_db: float = AVMNISTRecipe.snr_db,
    image_energy_removed: float = AVMNISTRecipe.image_energy_removed,
    num_validation: int = AVMNISTRecipe.num_validation,
    rebuild: bool = False,
):
    r"""
    The AV-MNIST `datasets.DatasetDict` (splits `train`, `validation`, `test`), built offline.

    Columns, formatted as torch tensors: `image_pixel_values` float32 `(1, 28, 28)`,
    `audio_pixel_values` float32 `(1, 112, 112)` (log-mel spectrogram, mel bins x frames),
    `labels` int64. A hidden column `audio_clip` (the FSDD file stem) is kept for auditing;
    `ds.with_format(None)` shows it.

    Args:
        data_dir: folder holding `mnist/mnist.npz` and `fsdd/recordings/*.wav`; default
            `$I2MOE_DATA_DIR`, else `../shared/data` beside the project root.
        seed: seeds the validation split, the image-clip pairing and the audio noise.
        cache_dir: where built datasets are saved (default `~/.cache/i2moe/avmnist`).
        max_train_samples, max_eval_samples: build only the first rows of the train split and of
            the validation and test splits (fast builds for tests and quick runs). The rows are
            identical to the first rows of the full build.
        noise: `"white"` or `"pink"` Gaussian noise mixed into the audio.
        snr_db: signal-to-noise ratio of the mix, in dB (lower is harder).
        image_energy_removed: fraction of the image energy (variance around the training mean)
            removed by the PCA projection.
        num_validation: training images moved to the validation split.
        rebuild: ignore an existing cache entry.

    Example:

    ```python
    >>> from i2moe.datasets_avmnist import load_avmnist
    >>> avmnist = load_avmnist(max_train_samples=64, max_eval_samples=32)  # doctest: +SKIP
    >>> avmnist["train"][0]["audio_pixel_values"].shape  # doctest: +SKIP
    torch.Size([1, 112, 112])
    ```
    """
    import datasets

    _validate(seed, num_validation, image_energy_removed, noise, snr_db, max_train_samples, max_eval_samples, cache_dir)
    recipe = AVMNISTRecipe(seed=int(seed), num_validation=int(num_validation), image_energy_removed=float(image_energy_removed),
                           noise=noise, snr_db=float(snr_db))
    root = resolve_data_dir(data_dir, MNIST_FILE, SOURCES)
    if not (root / FSDD_FOLDER).is_dir() or not any((root / FSDD_FOLDER).glob("*.wav")):
        raise FileNotFoundError(
            f"{root / FSDD_FOLDER} holds no .wav files. Download FSDD from "
            "https://github.com/Jakobovski/free-spoken-digit-dataset and place its `recordings/` folder there."
        )
    key = {**asdict(recipe), "max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_root = Path(cache_dir or Path.home() / ".cache" / "i2moe" / "avmnist").expanduser()
    target = cache_root / digest
    if rebuild and target.exists():
        shutil.rmtree(target)
    if not (target / "dataset_dict.json").exists():
        splits = build_avmnist_arrays(root, recipe, max_train_samples, max_eval_samples)
        _save(splits, target, key)
    dataset = datasets.load_from_disk(str(target))
    dataset.set_format("torch", columns=COLUMNS)
    return dataset


def build_avmnist_arrays(
    root: Path, recipe: AVMNISTRecipe, max_train_samples: int | None = None, max_eval_samples: int | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """The three splits as numpy arrays (before saving): `{split: {column: array}}`."""
    with np.load(root / MNIST_FILE) as mnist:
        missing = sorted({"x_train", "y_train", "x_test", "y_test"} - set(mnist.files))
        if missing:
            raise ValueError(f"{root / MNIST_FILE} lacks the arrays {missing} (it has {sorted(mnist.files)}); get the MNIST npz from {SOURCES}")
        x_train, y_train, x_test, y_test = (mnist[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    # MNIST rows are sorted by label: a seeded shuffle before splitting off validation.
    order = np.random.default_rng(np.random.SeedSequence([recipe.seed, 101])).permutation(len(x_train))
    validation_rows, train_rows = order[: recipe.num_validation], order[recipe.num_validation:]
    test_rows = np.random.default_rng(np.random.SeedSequence([recipe.seed, 102])).permutation(len(x_test))
    images = {"train": (x_train, y_train, train_rows), "validation": (x_train, y_train, validation_rows),
              "test": (x_test, y_test, test_rows)}

    # The PCA is fitted on all training images, also when only a subset is built.
    train_images = _as_float(x_train[train_rows])
    mean, components = _fit_energy_projection(train_images, recipe.image_energy_removed)
    clips = _load_fsdd(root / FSDD_FOLDER)
    spectrogram = LogMelSpectrogram(recipe.n_fft, recipe.win_length)
    audio_stats = _audio_normalisation(clips["train"], recipe, spectrogram)
    image_stats = _image_normalisation(train_images[:5000], mean, components)
    del train_images  # 55k x 784 float64: not held while the splits are built

    splits = {}
    for split, (pixels, targets, rows) in images.items():
        limit = max_train_samples if split == "train" else max_eval_samples
        rows = rows[:limit] if limit is not None else rows
        labels = targets[rows].astype(np.int64)
        projected = _project(_as_float(pixels[rows]), mean, components)
        pool_waves, pool_labels, pool_names = clips[split]
        audio = np.empty((len(rows), 1, SPECTROGRAM_SIZE, SPECTROGRAM_SIZE), dtype=np.float32)
        names = np.empty(len(rows), dtype=object)
        for start in range(0, len(rows), CHUNK_SIZE):
            rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, SPLIT_IDS[split], start // CHUNK_SIZE]))
            chunk_labels = labels[start:start + CHUNK_SIZE]
            # Full-chunk draws, sliced: row i gets the same clip and noise whatever the build size.
            uniforms = rng.random(CHUNK_SIZE)[: len(chunk_labels)]
            picks = _pick_clips(uniforms, chunk_labels, pool_labels)
            noise = _noise(rng, CHUNK_SIZE, recipe.noise)[: len(chunk_labels)]
            noisy = _mix_noise(pool_waves[picks], noise, recipe.snr_db)
            audio[start:start + CHUNK_SIZE, 0] = (spectrogram(noisy) - audio_stats[0]) / audio_stats[1]
            names[start:start + CHUNK_SIZE] = pool_names[picks]
        splits[split] = {
            "image_pixel_values": ((projected - image_stats[0]) / image_stats[1]).reshape(-1, 1, 28, 28),
            "audio_pixel_values": audio,
            "labels": labels,
            "audio_clip": names.astype(str),
        }
    return splits


class LogMelSpectrogram:
    """`(N, 8000)` waveforms -> `(N, 112, 112)` log-mel spectrograms (mel bins x frames).

    Hann window of `win_length` samples zero-padded to `n_fft`, hop 72 with centred frames
    (1 + 8000 // 72 = 112 frames), power spectrum, 112 HTK-mel triangular filters from 0 Hz to
    Nyquist, natural log with a floor of 1e-6.
    """

    hop_length = 72

    def __init__(self, n_fft: int = 512, win_length: int = 256):
        self.n_fft, self.win_length = n_fft, win_length
        self.window = torch.hann_window(win_length)
        self.filterbank = torch.from_numpy(mel_filterbank(n_fft, SAMPLE_RATE, SPECTROGRAM_SIZE)).float()

    def __call__(self, waves: np.ndarray) -> np.ndarray:
        stft = torch.stft(torch.from_numpy(waves).float(), self.n_fft, self.hop_length, self.win_length,
                          self.window, center=True, pad_mode="constant", return_complex=True)
        power = stft.abs().square()  # (N, n_fft // 2 + 1, frames)
        mel = torch.matmul(self.filterbank, power)
        return torch.log(mel.clamp(min=1e-6)).numpy()


def mel_filterbank(n_fft: int, sample_rate: int, num_mels: int) -> np.ndarray:
    """HTK-mel triangular filters `(num_mels, n_fft // 2 + 1)`, unnormalised, 0 Hz to Nyquist
    (transformers' `mel_filter_bank`, laid out as `(mels, frequencies)` for `filters @ power`)."""
    return mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=num_mels, min_frequency=0.0,
                           max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm=None, mel_scale="htk").T


def _load_fsdd(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Clips per split: waveforms `(n, 8000)` float32 in [-1, 1] (cut or zero-padded to 1 s),
    digits and file stems, in a fixed (sorted) order."""
    pools = {split: ([], [], []) for split in CLIP_INDEX_RANGES}
    for path in sorted(folder.glob("*.wav")):
        match = re.fullmatch(r"(\d)_([A-Za-z]+)_(\d+)", path.stem)
        if match is None:
            raise ValueError(f"unexpected FSDD file name {path.name!r}; expected '{{digit}}_{{speaker}}_{{index}}.wav'")
        digit, index = int(match[1]), int(match[3])
        split = next(name for name, indices in CLIP_INDEX_RANGES.items() if index in indices)
        waves, digits, names = pools[split]
        waves.append(_read_wave(path))
        digits.append(digit)
        names.append(path.stem)
    result = {}
    for split, (waves, digits, names) in pools.items():
        missing = sorted(set(range(10)) - set(digits))
        if missing:
            raise ValueError(f"FSDD {split} clips (index {CLIP_INDEX_RANGES[split]}) lack digits {missing} in {folder}")
        result[split] = (np.stack(waves), np.asarray(digits), np.asarray(names, dtype=object))
    return result


def _read_wave(path: Path) -> np.ndarray:
    with wave.open(str(path)) as stream:
        if stream.getframerate() != SAMPLE_RATE or stream.getnchannels() != 1 or stream.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 8 kHz mono 16-bit PCM (FSDD's format)")
        samples = np.frombuffer(stream.readframes(stream.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    clip = np.zeros(SAMPLE_RATE, dtype=np.float32)
    clip[: min(len(samples), SAMPLE_RATE)] = samples[:SAMPLE_RATE]
    return clip


def _pick_clips(uniforms: np.ndarray, labels: np.ndarray, pool_labels: np.ndarray) -> np.ndarray:
    """For each label, an index into the clip pool, uniform among the clips of that digit
    (`uniforms` in [0, 1), one per label)."""
    picks = np.empty(len(labels), dtype=np.int64)
    for digit in np.unique(labels):
        rows = np.flatnonzero(labels == digit)
        candidates = np.flatnonzero(pool_labels == digit)
        picks[rows] = candidates[(uniforms[rows] * len(candidates)).astype(np.int64)]
    return picks


def _noise(rng: np.random.Generator, count: int, kind: str) -> np.ndarray:
    """`(count, 8000)` unit-variance Gaussian noise, white or pink (1/f power)."""
    noise = rng.standard_normal((count, SAMPLE_RATE), dtype=np.float32)
    if kind == "pink":  # scale the amplitude spectrum by 1/sqrt(f)
        spectrum = np.fft.rfft(noise, axis=-1)
        spectrum[:, 1:] /= np.sqrt(np.arange(1, spectrum.shape[-1]))
        spectrum[:, 0] = 0.0
        noise = np.fft.irfft(spectrum, n=SAMPLE_RATE, axis=-1).astype(np.float32)
    return noise


def _mix_noise(waves: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add `noise` scaled to `snr_db` below the clip's power (measured over the recording, not
    its zero padding)."""
    recorded = np.abs(waves) > 0
    speech_power = (waves**2).sum(-1) / np.maximum(recorded.sum(-1), 1)
    noise_power = (noise**2).mean(-1)
    scale = np.sqrt(speech_power / noise_power / 10 ** (snr_db / 10)).astype(np.float32)
    return waves + scale[:, None] * noise


def _audio_normalisation(train_pool, recipe: AVMNISTRecipe, spectrogram: LogMelSpectrogram) -> tuple[float, float]:
    """Scalar mean and std of noisy training spectrograms (a fixed seeded sample of 256), used to
    standardise every split; independent of how many rows are built."""
    waves, _, _ = train_pool
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 103]))
    picks = rng.integers(len(waves), size=256)
    sample = spectrogram(_mix_noise(waves[picks], _noise(rng, len(picks), recipe.noise), recipe.snr_db))
    return float(sample.mean()), float(sample.std())


def _image_normalisation(train_images: np.ndarray, mean: np.ndarray, components: np.ndarray) -> tuple[float, float]:
    projected = _project(train_images, mean, components)
    return float(projected.mean()), float(projected.std())


def _fit_energy_projection(images: np.ndarray, energy_removed: float) -> tuple[np.ndarray, np.ndarray]:
    """The training mean and the fewest leading principal components `(k, 784)` that keep at least
    `1 - energy_removed` of the variance."""
    mean = images.mean(0)
    centred = images - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    kept = np.cumsum(eigenvalues) / eigenvalues.sum()
    k = int(np.searchsorted(kept, 1.0 - energy_removed) + 1)
    return mean, eigenvectors[:, :k].T.copy()


def _project(images: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    return ((images - mean) @ components.T @ components + mean).astype(np.float32)


def _as_float(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0


def _save(splits: dict[str, dict[str, np.ndarray]], target: Path, key: dict) -> None:
    import datasets

    features = datasets.Features({
        "image_pixel_values": datasets.Array3D((1, 28, 28), "float32"),
        "audio_pixel_values": datasets.Array3D((1, SPECTROGRAM_SIZE, SPECTROGRAM_SIZE), "float32"),
        "labels": datasets.Value("int64"),
        "audio_clip": datasets.Value("string"),
    })
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: an interrupted build never looks like a finished cache.
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        dataset = datasets.DatasetDict({
            split: datasets.Dataset.from_generator(
                _rows, features=features, gen_kwargs={"columns": columns},
                cache_dir=str(Path(scratch) / "generator" / split),
            )
            for split, columns in splits.items()
        })
        staged = Path(scratch) / "dataset"
        dataset.save_to_disk(str(staged))
        (staged / "avmnist_build.json").write_text(json.dumps(key, indent=2, sort_keys=True))
        del dataset
        if target.exists():
            shutil.rmtree(target)
        staged.rename(target)


def _rows(columns: dict[str, np.ndarray]):
    for index in range(len(columns["labels"])):
        yield {name: values[index] for name, values in columns.items()}


def _validate(seed, num_validation, image_energy_removed, noise, snr_db, max_train_samples, max_eval_samples,
              cache_dir) -> None:
    where = "load_avmnist"
    check_int(where, "seed", seed, 0)
    check_int(where, "num_validation", num_validation, 1)
    if num_validation >= 60000:
        raise ValueError(f"{where}: `num_validation` must be below MNIST's 60000 training images, got {num_validation!r}")
    check_number(where, "image_energy_removed", image_energy_removed, 0.0, 1.0, "[0, 1)")
    check_number(where, "snr_db", snr_db)
    if noise not in ("white", "pink"):
        raise ValueError(f"{where}: `noise` must be 'white' or 'pink', got {noise!r}")
    check_int(where, "max_train_samples", max_train_samples, 1, optional=True)
    check_int(where, "max_eval_samples", max_eval_samples, 1, optional=True)
    check_cache_dir(where, cache_dir)


__all__ = ["AVMNISTRecipe", "LogMelSpectrogram", "build_avmnist_arrays", "load_avmnist", "mel_filterbank"]
