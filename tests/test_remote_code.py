"""Saved models load through `AutoModel` with `trust_remote_code=True` where i2moe is not installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from i2moe import I2MoEConfig, I2MoEForClassification, I2MoELeNetConfig

from conftest import tiny_bert_config


def load_in_fresh_process_without_package(
    models: list[str | Path], tmp_path: Path, *, inputs: dict | None = None, samples: list[dict] | None = None,
    env: dict | None = None, snippet: str | None = None,
) -> list[dict]:
    """Load each model (a folder or a Hub repo id) with `trust_remote_code=True` in a fresh interpreter where
    i2moe cannot be imported, and return per model its class and the logits for `inputs` (model inputs) or
    for `samples` (raw samples, run through the processor loaded with `AutoProcessor`); then run `snippet`
    (Python code defining `labels`) there, reported as a last entry `{"snippet_labels": labels}`."""
    if inputs is not None:
        save_file({k: v.contiguous() for k, v in inputs.items()}, tmp_path / "inputs.safetensors")
        given = ["--inputs", str(tmp_path / "inputs.safetensors")]
    else:
        (tmp_path / "samples.json").write_text(json.dumps(samples))
        given = ["--samples", str(tmp_path / "samples.json")]
    if snippet is not None:
        (tmp_path / "snippet.py").write_text(snippet)
        given += ["--snippet", str(tmp_path / "snippet.py")]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", **(env or {}))
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("remote_code_check.py")), *given, *map(str, models)],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_saved_model_loads_as_remote_code_without_the_package(tmp_path):
    config = I2MoEConfig(
        modalities=[
            {"name": "image", "tower": I2MoELeNetConfig(base_channels=3, num_additional_layers=2), "num_tokens": 2},
            {"name": "text", "tower": tiny_bert_config()},
        ],
        hidden_size=16, fusion="transformer", fusion_num_heads=2, num_labels=4,
    )
    model = I2MoEForClassification(config).eval()
    inputs = {
        "image_pixel_values": torch.randn(3, 1, 28, 28),
        "text_input_ids": torch.randint(0, 100, (3, 5)),
        "text_attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
        "modality_mask": torch.tensor([[1, 1], [0, 1], [1, 0]]),
    }
    model.save_pretrained(tmp_path / "model")
    config_json = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config_json["auto_map"] == {
        "AutoConfig": "configuration_i2moe.I2MoEConfig", "AutoModel": "modeling_i2moe.I2MoEForClassification",
    }
    [result] = load_in_fresh_process_without_package([tmp_path / "model"], tmp_path, inputs=inputs)
    assert result["class"].startswith("transformers_modules.")
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(torch.tensor(result["logits"]), expected, rtol=0, atol=1e-6)
