"""Run in a fresh interpreter by the tests: load a saved folder with `trust_remote_code=True` while
the i2moe package is NOT importable, and print the logits for the saved inputs as JSON.

Usage: python remote_code_check.py MODEL_DIR INPUTS.safetensors
"""

import importlib.abc
import json
import sys


class _BlockI2MoE(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "i2moe" or name.startswith("i2moe."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the remote-code test runs without the package)")
        return None


sys.meta_path.insert(0, _BlockI2MoE())

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModel  # noqa: E402


model_dir, inputs_file = sys.argv[1], sys.argv[2]
try:
    import i2moe  # noqa: F401

    raise SystemExit("i2moe is importable: the check would prove nothing")
except ModuleNotFoundError:
    pass
model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
assert not type(model).__module__.startswith("i2moe"), type(model).__module__
with torch.no_grad():
    logits = model(**load_file(inputs_file)).logits
print(json.dumps({"class": type(model).__module__ + "." + type(model).__name__, "logits": logits.tolist()}))
