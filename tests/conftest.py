"""Shared fixtures: tiny random configs that build and run in milliseconds, and the data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import BertConfig

from i2moe import I2MoEConfig, I2MoEFeaturesConfig


# Under pytest-xdist every worker would otherwise start one BLAS thread per core: on a 2-core CI
# machine with 2 workers that oversubscribes the cores and slows the small-tensor tests many-fold.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# No test reaches the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SHARED_DATA = Path(os.environ.get("I2MOE_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def make_config(fusion: str = "concat", feature_sizes=(8, 4), num_tokens=None, **overrides) -> I2MoEConfig:
    """A config whose modalities are float-feature towers named m0, m1, ... (tiny and fast)."""
    num_tokens = num_tokens or [1] * len(feature_sizes)
    modalities = [
        {"name": f"m{i}", "tower": I2MoEFeaturesConfig(input_size=size, hidden_size=16, num_hidden_layers=1),
         "num_tokens": tokens}
        for i, (size, tokens) in enumerate(zip(feature_sizes, num_tokens))
    ]
    settings = dict(hidden_size=16, fusion=fusion, fusion_num_heads=2, fusion_hidden_size=16, lrtf_rank=4,
                    lrtf_output_size=8, num_labels=3, dropout=0.0)
    settings.update(overrides)
    return I2MoEConfig(modalities=modalities, **settings)


def make_inputs(config: I2MoEConfig, batch_size: int = 4, generator: torch.Generator | None = None) -> dict:
    """Random inputs for a `make_config` model, every modality present."""
    inputs = {
        f"{modality.name}_features": torch.randn(batch_size, modality.tower.input_size, generator=generator)
        for modality in config.modalities
    }
    inputs["modality_mask"] = torch.ones(batch_size, config.num_modalities, dtype=torch.long)
    return inputs


def tiny_bert_config() -> BertConfig:
    return BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
