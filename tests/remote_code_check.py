"""Run in a fresh interpreter by the tests: load saved models with `trust_remote_code=True` while the
i2moe package is NOT importable, and print, as JSON, the logits for the given inputs.

Usage: python remote_code_check.py --inputs INPUTS.safetensors MODEL [MODEL ...] [--snippet CODE.py]
       python remote_code_check.py --samples SAMPLES.json MODEL [MODEL ...] [--snippet CODE.py]

MODEL is a folder or a Hub repo id (resolved from the local cache when HF_HUB_OFFLINE=1).
`--inputs`: model inputs saved with safetensors. `--samples`: raw samples (a JSON list of dicts
{modality: value}, images as file paths) that the model's processor, loaded with `AutoProcessor`,
turns into inputs. `--snippet`: Python code (e.g. a model card's usage example) run afterwards in the
same package-less interpreter; the value of its variable `labels` is reported as `{"snippet_labels": ...}`.
"""

import argparse
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
from transformers import AutoModel, AutoProcessor  # noqa: E402


def _class_name(obj) -> str:
    name = type(obj).__module__ + "." + type(obj).__name__
    assert not name.startswith("i2moe"), name
    return name


parser = argparse.ArgumentParser()
parser.add_argument("models", nargs="+")
given = parser.add_mutually_exclusive_group(required=True)
given.add_argument("--inputs")
given.add_argument("--samples")
parser.add_argument("--snippet")
arguments = parser.parse_args()
try:
    import i2moe  # noqa: F401

    raise SystemExit("i2moe is importable: the check would prove nothing")
except ModuleNotFoundError:
    pass
results = []
for location in arguments.models:
    model = AutoModel.from_pretrained(location, trust_remote_code=True).eval()
    result = {"location": location, "class": _class_name(model)}
    if arguments.samples:
        processor = AutoProcessor.from_pretrained(location, trust_remote_code=True)
        result["processor_class"] = _class_name(processor)
        with open(arguments.samples, encoding="utf-8") as file:
            inputs = dict(processor(json.load(file)))
    else:
        inputs = load_file(arguments.inputs)
    with torch.no_grad():
        result["logits"] = model(**inputs).logits.tolist()
    results.append(result)
if arguments.snippet:
    namespace = {}
    with open(arguments.snippet, encoding="utf-8") as file:
        exec(compile(file.read(), arguments.snippet, "exec"), namespace)
    results.append({"snippet_labels": namespace["labels"]})
print(json.dumps(results))
