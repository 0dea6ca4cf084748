"""I2MoEProcessor on every form of input: each is either converted to exactly what its cleaned form
gives or refused with an error naming the field. The oracles are independent of the processor: the
sub-processors called directly on the cleaned value, PIL's own conversions and compositing, the
EXIF orientation table, PCM full-scale arithmetic done by hand.

The property tests (hypothesis, derandomised so CI never flakes) draw random batches: modalities
present or absent, every accepted and some refused representation of each value, sizes, value
ranges, texts with invisible characters, audio lengths.
"""

from __future__ import annotations

import io
import re

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from transformers import BertTokenizer, ViTImageProcessor, Wav2Vec2FeatureExtractor

from i2moe import I2MoEProcessor
from i2moe.processing_i2moe import I2MoEFeatureNormalizer


WORDS = ["red", "blue", "shirt", "shoes", "men", "women", "watch", "bag"]
SIZE = 16
STD = 0.5  # the image processor's normalisation: one 8-bit level is 1 / 255 / STD in pixel_values
ONE_LEVEL = 1 / 255 / STD + 1e-6
RATE = 8000
PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.large_base_example])


def make_tokenizer() -> BertTokenizer:
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizer(vocab=vocab)


def make_image_processor() -> ViTImageProcessor:
    return ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[STD] * 3)


def make_extractor(do_normalize: bool = False) -> Wav2Vec2FeatureExtractor:
    return Wav2Vec2FeatureExtractor(sampling_rate=RATE, do_normalize=do_normalize, return_attention_mask=True)


def make_processor(do_normalize: bool = False, **kwargs) -> I2MoEProcessor:
    return I2MoEProcessor({"image": make_image_processor(), "text": make_tokenizer(), "audio": make_extractor(do_normalize),
                           "tab": I2MoEFeatureNormalizer(feature_shape=[2])}, **kwargs)


PROCESSOR = make_processor()
IMAGE_PROCESSOR = make_image_processor()


def reference_pixels(image: PIL.Image.Image) -> torch.Tensor:
    """The image processor alone on a clean RGB image: what the processor must give."""
    return IMAGE_PROCESSOR(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


def pixels(value) -> torch.Tensor:
    return PROCESSOR(image=[value])["image_pixel_values"][0]


def rgb8(seed: int, height: int = 9, width: int = 13) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_bytes(image: PIL.Image.Image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Images: every layout and value range of the same 8-bit image gives the same pixel_values.

IMAGE_FORMS = {
    # name: 8-bit RGB array (H, W, 3) -> the same image in another form
    "PIL RGB": PIL.Image.fromarray,
    "uint8 HWC array": lambda u: u,
    "uint8 CHW tensor": lambda u: torch.from_numpy(u).permute(2, 0, 1),
    "float [0, 1] HWC array": lambda u: u / 255.0,
    "float [0, 1] CHW tensor (torchvision ToTensor)": lambda u: torch.from_numpy(u).permute(2, 0, 1).float() / 255,
    "float16 [0, 1] CHW tensor": lambda u: (torch.from_numpy(u).permute(2, 0, 1).double() / 255).half(),
    "bfloat16 [0, 1] CHW tensor": lambda u: (torch.from_numpy(u).permute(2, 0, 1).double() / 255).bfloat16(),
    "float [0, 255] HWC array": lambda u: u.astype(np.float32),
    "uint16 HWC array (16-bit)": lambda u: u.astype(np.uint16) * 257,
    "int64 HWC array": lambda u: u.astype(np.int64),
    "PNG bytes": lambda u: png_bytes(PIL.Image.fromarray(u)),
    "datasets.Image dict": lambda u: {"bytes": png_bytes(PIL.Image.fromarray(u)), "path": None},
}


@pytest.mark.parametrize("form", sorted(IMAGE_FORMS))
def test_every_image_form_gives_the_pixels_of_the_8_bit_image(form):
    image = rgb8(0)
    expected = reference_pixels(PIL.Image.fromarray(image))
    if "float16" in form:  # half precision holds k / 255 only to 8 or 11 bits: within one 8-bit level
        torch.testing.assert_close(pixels(IMAGE_FORMS[form](image)), expected, rtol=0, atol=ONE_LEVEL)
    else:
        torch.testing.assert_close(pixels(IMAGE_FORMS[form](image)), expected, rtol=0, atol=0)


GREY_FORMS = {
    "(H, W)": lambda g: g,
    "(1, H, W)": lambda g: g[None],
    "(H, W, 1)": lambda g: g[..., None],
    "(1, H, W) float tensor": lambda g: torch.from_numpy(g)[None].float() / 255,
    "PIL L": lambda g: PIL.Image.fromarray(g, mode="L"),
    "PIL I;16 (16-bit)": lambda g: PIL.Image.fromarray(g.astype(np.uint16) * 257),
    "PIL I (32-bit int)": lambda g: PIL.Image.fromarray(g.astype(np.int32) * 257),
    "PIL F [0, 1]": lambda g: PIL.Image.fromarray(g.astype(np.float32) / 255),
    "PIL F [0, 255]": lambda g: PIL.Image.fromarray(g.astype(np.float32)),
    "16-bit PNG bytes": lambda g: png_bytes(PIL.Image.fromarray(g.astype(np.uint16) * 257)),
}


@pytest.mark.parametrize("form", sorted(GREY_FORMS))
def test_grey_images_of_every_depth_give_the_pixels_of_the_8_bit_grey_image(form):
    grey = rgb8(1)[..., 0]
    expected = reference_pixels(PIL.Image.fromarray(grey, mode="L"))  # PIL's own L -> RGB
    torch.testing.assert_close(pixels(GREY_FORMS[form](grey)), expected, rtol=0, atol=0)


@PROPERTY_SETTINGS
@given(st.integers(0, 2**32 - 1), st.integers(5, 24), st.integers(5, 24), st.integers(0, 256))
def test_16_bit_png_agrees_with_its_8_bit_version_within_one_level(seed, height, width, noise):
    """A 16-bit PNG (any low byte) against the 8-bit image it rounds to: never clipped to white."""
    grey = rgb8(seed, height, width)[..., 0]
    low_byte = np.random.default_rng(seed).integers(0, noise + 1, grey.shape)
    deep = np.minimum(grey.astype(np.int64) * 257 + low_byte, 65535).astype(np.uint16)
    expected = reference_pixels(PIL.Image.fromarray(grey, mode="L"))
    torch.testing.assert_close(pixels(png_bytes(PIL.Image.fromarray(deep))), expected, rtol=0, atol=ONE_LEVEL)


def over_white(image: PIL.Image.Image) -> PIL.Image.Image:
    """PIL's own compositing of an image with alpha over a white page."""
    rgba = image.convert("RGBA")
    return PIL.Image.alpha_composite(PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def rgba8(seed: int) -> np.ndarray:
    rgba = np.random.default_rng(seed).integers(0, 256, (9, 13, 4), dtype=np.uint8)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255  # fully transparent and fully opaque rows too
    return rgba


ALPHA_FORMS = {
    # name: RGBA array -> (value given to the processor, the same image as PIL RGBA for the oracle)
    "PIL RGBA": lambda a: (PIL.Image.fromarray(a, "RGBA"),) * 2,
    "(H, W, 4) array": lambda a: (a, PIL.Image.fromarray(a, "RGBA")),
    "(4, H, W) tensor": lambda a: (torch.from_numpy(a).permute(2, 0, 1), PIL.Image.fromarray(a, "RGBA")),
    "PIL LA": lambda a: (PIL.Image.fromarray(a, "RGBA").convert("LA"),) * 2,
    "PIL P with transparency": lambda a: (_palette_with_transparency(a),) * 2,
    "PIL RGBa (premultiplied)": lambda a: (PIL.Image.fromarray(a, "RGBA").convert("RGBa"),) * 2,
    "RGBA PNG bytes": lambda a: (png_bytes(PIL.Image.fromarray(a, "RGBA")), PIL.Image.fromarray(a, "RGBA")),
}


def _palette_with_transparency(rgba: np.ndarray) -> PIL.Image.Image:
    image = PIL.Image.fromarray(rgba[..., :3]).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    image.info["transparency"] = 0  # palette entry 0 is transparent
    return image


@pytest.mark.parametrize("form", sorted(ALPHA_FORMS))
def test_alpha_is_composited_over_white(form):
    given_value, oracle = ALPHA_FORMS[form](rgba8(2))
    # PIL composites with integer arithmetic: within one level of ours.
    torch.testing.assert_close(pixels(given_value), reference_pixels(over_white(oracle)), rtol=0, atol=ONE_LEVEL)


def test_transparent_pixels_are_white_and_opaque_ones_keep_their_colour():
    stored = rgb8(3)
    transparent = np.concatenate([stored, np.zeros_like(stored[..., :1])], axis=-1)
    opaque = np.concatenate([stored, np.full_like(stored[..., :1], 255)], axis=-1)
    torch.testing.assert_close(pixels(transparent), reference_pixels(PIL.Image.new("RGB", (13, 9), "white")), rtol=0, atol=0)
    torch.testing.assert_close(pixels(opaque), reference_pixels(PIL.Image.fromarray(stored)), rtol=0, atol=0)


# The EXIF orientation tag -> the transpose that shows the image upright (EXIF 2.32, tag 0x0112).
EXIF_ORIENTATION = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT, 3: PIL.Image.Transpose.ROTATE_180, 4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE, 6: PIL.Image.Transpose.ROTATE_270, 7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}


def with_orientation(image: PIL.Image.Image, orientation: int) -> bytes:
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    return png_bytes(image, exif=exif.tobytes())


@PROPERTY_SETTINGS
@given(orientation=st.sampled_from(sorted(EXIF_ORIENTATION)), seed=st.integers(0, 2**32 - 1),
       form=st.sampled_from(["bytes", "PIL", "path"]))
def test_exif_rotated_image_equals_the_pre_rotated_one(orientation, seed, form, tmp_path_factory):
    stored = PIL.Image.fromarray(rgb8(seed, 7, 12))
    encoded = with_orientation(stored, orientation)
    if form == "PIL":
        value = PIL.Image.open(io.BytesIO(encoded))
    elif form == "path":
        value = tmp_path_factory.mktemp("exif") / "photo.png"
        value.write_bytes(encoded)
    else:
        value = encoded
    upright = stored.transpose(EXIF_ORIENTATION[orientation])
    torch.testing.assert_close(pixels(value), reference_pixels(upright), rtol=0, atol=0)
    if orientation in (3, 6, 8):  # the test could fail: these change the pixels
        assert not torch.equal(pixels(stored), reference_pixels(upright))


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros((3, 3, 3), dtype=np.uint8), r"shape \(3, 3, 3\) is ambiguous"),
        (np.zeros((16, 16, 5), dtype=np.uint8), r"expected an image array of shape .*; got shape \(16, 16, 5\)"),
        (np.zeros((2, 16, 16), dtype=np.uint8), r"got shape \(2, 16, 16\)"),
        (torch.zeros(1, 3, 16, 16), r"got shape \(1, 3, 16, 16\) \(a batch of one image\? pass one image per sample\)"),
        (np.zeros((0, 16, 3), dtype=np.uint8), r"shape \(0, 16, 3\) has no pixels"),
        (np.full((16, 16, 3), -0.5, dtype=np.float32), r"values range from -0.5 to -0.5 .*normalised already"),
        (np.full((16, 16, 3), 300.0), r"values range from 300 to 300 \(dtype float64\); expected \[0, 1\] or \[0, 255\]"),
        (np.full((16, 16, 3), 300, dtype=np.int64), r"values range from 300 to 300 \(dtype int64\).*cast a 16-bit image to uint16"),
        (np.full((16, 16, 3), np.inf, dtype=np.float32), "the image array contains NaN or inf"),
        (np.zeros((16, 16, 3), dtype=np.complex64), "expected an image array of numbers, got dtype complex64"),
        ({"bytes": None, "path": None}, "the image dict has neither `bytes` nor `path`"),
        ("https://example.com/photo.jpg", "does not download images"),
    ],
    ids=["ambiguous", "5 channels", "2 channels first", "4-d", "no pixels", "negative", "float above 255",
         "int above 255", "inf", "complex", "empty dict", "url"],
)
def test_image_values_that_cannot_be_converted_provably_right_are_refused(value, match):
    with pytest.raises((ValueError, TypeError), match=r"modality 'image': sample 1: .*" + match) as caught:
        PROCESSOR(image=[rgb8(0), value])
    assert len(str(caught.value)) < 400  # never an error that dumps the array


# ---------------------------------------------------------------------------------------------
# Audio: PCM of every sample format and float waveforms reach the model as floats in [-1, 1].

def int16_wave(seed: int, length: int = 400) -> np.ndarray:
    return np.random.default_rng(seed).integers(-32768, 32768, length).astype(np.int16)


PCM_FORMS = {
    # name: int16 wave -> (the wave in that format, the float waveform by hand)
    "int16": lambda w: (w, w / 32768),
    "int32": lambda w: (w.astype(np.int32) * 65536, w / 32768),
    "int8": lambda w: ((w // 256).astype(np.int8), (w // 256) / 128),
    "uint8 (WAV 8-bit)": lambda w: ((w // 256 + 128).astype(np.uint8), (w // 256) / 128),
    "int16 tensor": lambda w: (torch.from_numpy(w), w / 32768),
    "(1, N) int16 (torchaudio's mono)": lambda w: (w[None], w / 32768),
    "(N, 1) float": lambda w: ((w / 32768)[:, None], w / 32768),
    "float64 list": lambda w: ((w / 32768).tolist(), w / 32768),
    "datasets.Audio dict": lambda w: ({"array": w / 32768, "sampling_rate": RATE}, w / 32768),
    "torchcodec AudioDecoder": lambda w: (FakeAudioDecoder(torch.from_numpy(w / 32768).float()[None], RATE), w / 32768),
}


class FakeAudioDecoder:
    """What `datasets` 4+ decodes audio to (torchcodec's AudioDecoder): `get_all_samples()` gives
    `data` (channels, samples) and `sample_rate`. torchcodec is not installed here."""

    def __init__(self, data: torch.Tensor, sample_rate: int):
        self.data, self.sample_rate = data, sample_rate

    def get_all_samples(self):
        return self


@pytest.mark.parametrize("do_normalize", [False, True])
@pytest.mark.parametrize("form", sorted(PCM_FORMS))
def test_every_audio_form_gives_the_float_waveform(form, do_normalize):
    given_value, floats = PCM_FORMS[form](int16_wave(0))
    processor = I2MoEProcessor({"audio": make_extractor(do_normalize)})
    expected = make_extractor(do_normalize)(floats.astype(np.float32), sampling_rate=RATE, return_tensors="pt")["input_values"][0]
    got = processor(audio=[given_value])["audio_input_values"][0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 if do_normalize else 0)
    if not do_normalize:
        assert got.abs().max() <= 1.0  # int16 no longer reaches the model 32768x too large


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (np.zeros((2, 400), dtype=np.float32), ValueError, r"expected a mono 1-D waveform, got shape \(2, 400\).*average the channel axis"),
        (np.zeros((400, 2), dtype=np.int16), ValueError, r"got shape \(400, 2\)"),
        (np.full(400, 9999.0, dtype=np.float32), ValueError, r"float audio must lie in \[-1, 1\], but its peak is 9999.*int16"),
        (np.array([0.0, np.nan]), ValueError, "the waveform contains NaN or inf"),
        ([1, 2, 3], TypeError, r"integer audio of dtype int64 has no known sample format \(a list of Python ints"),
        (np.zeros(400, dtype=np.uint16), TypeError, "integer audio of dtype uint16"),
        (np.zeros(400, dtype=bool), TypeError, "real number type, got dtype bool"),
        (np.zeros(400, dtype=np.complex64), TypeError, "real number type, got dtype complex64"),
        (np.zeros(0, dtype=np.float32), ValueError, "the waveform is empty"),
        ({"array": np.zeros(10), "sampling_rate": 16000}, ValueError, r"audio at 16000 Hz, but the feature extractor expects 8000 Hz"),
        (FakeAudioDecoder(torch.zeros(1, 10), 44100), ValueError, r"audio at 44100 Hz"),
        ("clip.wav", TypeError, "expected a 1-D waveform"),
    ],
    ids=["stereo (2, N)", "stereo (N, 2)", "int PCM cast to float", "NaN", "list of ints", "uint16", "bool",
         "complex", "empty", "dict at another rate", "decoder at another rate", "file name"],
)
def test_audio_that_cannot_be_converted_provably_right_is_refused(value, error, match):
    with pytest.raises(error, match=r"modality 'audio': sample 1: .*" + match):
        PROCESSOR(audio=[int16_wave(0), value])


def test_sampling_rate_argument_is_checked_against_the_feature_extractor():
    with pytest.raises(ValueError, match=r"modality 'audio': sample 0: audio at 16000 Hz, but the feature extractor expects 8000"):
        PROCESSOR(audio=[int16_wave(0)], sampling_rate=16000)
    assert PROCESSOR(audio=[int16_wave(0)], sampling_rate=RATE)["audio_input_values"].shape == (1, 400)
    with pytest.raises(ValueError, match="`sampling_rate` given, but none of the modalities"):
        I2MoEProcessor({"text": make_tokenizer()})(text=["red"], sampling_rate=RATE)


# ---------------------------------------------------------------------------------------------
# Texts with no visible content are empty texts.

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u200e", "\x00", "\x07", "\x1f",
             "\x7f", " ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2029"]


@PROPERTY_SETTINGS
@given(st.lists(st.sampled_from(INVISIBLE), max_size=8).map("".join), st.integers(0, 3))
def test_text_of_invisible_characters_is_refused_exactly_like_an_empty_text(text, row):
    texts = ["red shirt"] * 4
    with pytest.raises(ValueError) as empty:
        PROCESSOR(text=texts[:row] + [""] + texts[row + 1:])
    with pytest.raises(ValueError) as invisible:
        PROCESSOR(text=texts[:row] + [text] + texts[row + 1:])
    assert str(invisible.value) == str(empty.value)
    assert str(invisible.value).startswith(f"modality 'text': sample {row}: the text is empty; pass None")


def test_text_the_tokenizer_reduces_to_special_tokens_is_empty():
    """BERT strips accents: a lone combining accent (visible, category Mn) leaves [CLS] [SEP]."""
    with pytest.raises(ValueError, match=r"modality 'text': sample 0: the text is empty; pass None .*only special tokens"):
        PROCESSOR(text=["\u0301"])
    visible = PROCESSOR(text=["\u200bred\u200b"])["text_input_ids"][0].tolist()
    assert visible == PROCESSOR(text=["red"])["text_input_ids"][0].tolist()  # invisible padding around a word is fine


def test_text_max_length_must_leave_room_for_the_text():
    with pytest.raises(ValueError, match=r"`text_max_length` is 2, but the 'text' tokenizer adds 2 special tokens.*at least 3"):
        make_processor(text_max_length=2)
    with pytest.raises(ValueError, match="must be a positive int, got True"):
        make_processor(text_max_length=True)
    tokenizer = make_tokenizer()
    tokenizer.model_max_length = 1
    with pytest.raises(ValueError, match=r"the 'text' tokenizer's `model_max_length` is 1"):
        I2MoEProcessor({"text": tokenizer})
    processor = make_processor(text_max_length=np.int64(3))  # numpy ints are ints
    assert processor.text_max_length == 3 and type(processor.text_max_length) is int
    assert processor(text=["red blue shirt"])["text_input_ids"].tolist() == [[2, 5, 3]]  # [CLS] red [SEP]


# ---------------------------------------------------------------------------------------------
# Batches, labels, missing markers, the Trainer, the modality order.

def test_every_batch_names_the_processors_modality_order():
    batch = PROCESSOR(text=["red", None], tab=[None, [1.0, 2.0]])
    assert batch["modality_names"] == ["image", "text", "audio", "tab"]
    reordered = I2MoEProcessor({"tab": I2MoEFeatureNormalizer(feature_shape=[2]), "text": make_tokenizer()})
    batch = reordered(text=["red", None], tab=[None, [1.0, 2.0]])
    assert batch["modality_names"] == ["tab", "text"]
    assert batch["modality_mask"].tolist() == [[0, 1], [1, 0]]  # the mask's columns follow that order
    assert batch.to("cpu")["modality_names"] == ["tab", "text"]  # survives BatchFeature.to


def test_labels_as_lists_arrays_and_tensors_give_one_tensor():
    texts = ["red", "blue", "bag"]
    expected = torch.tensor([2, 0, 1])
    for labels in ([2, 0, 1], np.array([2, 0, 1]), torch.tensor([2, 0, 1]), (2, 0, 1)):
        assert torch.equal(PROCESSOR(text=texts, labels=labels)["labels"], expected)
    multi_hot = PROCESSOR(text=texts[:2], labels=np.array([[0.0, 1.0], [1.0, 1.0]]))["labels"]
    assert multi_hot.dtype == torch.float64 and multi_hot.tolist() == [[0.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda p: p(text=["red", "blue"], labels=[0, None]), ValueError, r"`labels` of sample\(s\) \[1\] are missing"),
        (lambda p: p(text=["red", "blue"], labels=[0, float("nan")]), ValueError, r"`labels` of sample\(s\) \[1\] are missing"),
        (lambda p: p(text=["red", "blue"], labels=[[0, 1], [1]]), ValueError, r"`labels` rows have different lengths \[1, 2\]"),
        (lambda p: p(text=["red"], labels=3), TypeError, "`labels` must be a list with one entry per sample, got int"),
        (lambda p: p(text=["red"], labels=torch.tensor(3)), TypeError, "`labels` must be a list with one entry per sample"),
        (lambda p: p([{"text": "red"}, {"text": "blue"}], labels=[1]), ValueError, "2 samples, 1 labels"),
        (lambda p: p([{"text": "red", "label": 1}]), ValueError, r"unknown modality name\(s\) \['label'\].*name the label column `labels`"),
        (lambda p: p(text=["red", float("nan")]), ValueError,
         r"modality 'text': sample\(s\) \[1\] are NaN; mark a missing modality with None"),
        (lambda p: p([{"labels": 0}, {"labels": 1}]), ValueError, r"remove_unused_columns=False"),
        (lambda p: p(tab=[np.array([1j, 2.0])]), TypeError, r"modality 'tab': sample 0: expected numbers .*complex dtype complex128"),
    ],
    ids=["None label", "NaN label", "ragged multi-hot", "scalar labels", "0-d tensor labels", "labels of another length",
         "label column", "pandas NaN as missing", "only labels (Trainer column filter)", "complex features"],
)
def test_batch_level_errors_name_the_field(call, error, match):
    with pytest.raises(error, match=match):
        call(PROCESSOR)


def test_tensors_numpy_cannot_hold_are_accepted():
    """bfloat16 tensors and tensors that require grad (numpy holds neither) as features or labels."""
    odd = torch.tensor([1.5, -2.0], dtype=torch.bfloat16, requires_grad=True)
    batch = PROCESSOR(tab=[odd], labels=odd[:1])
    assert batch["tab_features"].tolist() == [[1.5, -2.0]] and batch["labels"].tolist() == [1.5]


def test_processor_construction_refuses_a_modality_named_labels_and_a_tokenizer_without_pad_token():
    with pytest.raises(ValueError, match="modality names must be Python identifiers other than 'labels', got 'labels'"):
        I2MoEProcessor({"labels": I2MoEFeatureNormalizer(feature_shape=[2])})
    tokenizer = make_tokenizer()
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match=r"modality 'text': the tokenizer has no pad token.*tokenizer.pad_token = tokenizer.eos_token"):
        I2MoEProcessor({"text": tokenizer})


def test_trainer_with_remove_unused_columns_gets_told_to_turn_it_off(tmp_path):
    """The Trainer drops the raw modality columns (not `forward` arguments) before the collator."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from test_processor import make_model, make_processor as make_three_modality_processor

    processor = make_three_modality_processor()
    model = make_model(processor)
    data = Dataset.from_dict({"text": ["red shirt", "blue bag"], "tabular": [[2010.0, 1.0], [2012.0, 0.0]], "labels": [0, 1]})

    def trainer(remove_unused_columns: bool) -> Trainer:
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, report_to=[],
                                 remove_unused_columns=remove_unused_columns, use_cpu=True, save_strategy="no")
        return Trainer(model=model, args=args, train_dataset=data, data_collator=processor)

    with pytest.raises(ValueError, match=r"Trainer `data_collator`\? Set `TrainingArguments\(remove_unused_columns=False\)`"):
        trainer(remove_unused_columns=True).train()
    assert trainer(remove_unused_columns=False).train().global_step == 1


# ---------------------------------------------------------------------------------------------
# The property over whole batches: a named error, or the result of the cleaned batch.

def drawn_image(draw, seed: int) -> tuple:
    """(an image in one of the accepted forms, the same image as a clean PIL image)."""
    image = rgb8(seed, draw(st.integers(5, 20)), draw(st.integers(5, 20)))
    kind = draw(st.sampled_from(["rgb", "grey", "exif"]))
    if kind == "grey":
        form = draw(st.sampled_from(sorted(GREY_FORMS)))
        return GREY_FORMS[form](image[..., 0]), PIL.Image.fromarray(image[..., 0], "L")
    if kind == "exif":
        orientation = draw(st.sampled_from(sorted(EXIF_ORIENTATION)))
        stored = PIL.Image.fromarray(image)
        return with_orientation(stored, orientation), stored.transpose(EXIF_ORIENTATION[orientation])
    return IMAGE_FORMS[draw(st.sampled_from(sorted(IMAGE_FORMS)))](image), PIL.Image.fromarray(image)


def drawn_value(draw, name: str, seed: int) -> tuple:
    """(a value of modality `name` in one of its accepted forms, the same value cleaned)."""
    if name == "image":
        return drawn_image(draw, seed)
    if name == "audio":
        given_value, floats = PCM_FORMS[draw(st.sampled_from(sorted(PCM_FORMS)))](int16_wave(seed, draw(st.integers(1, 600))))
        return given_value, np.asarray(floats, dtype=np.float32)
    if name == "text":
        text = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=12)))
        return draw(st.sampled_from(["", "\u200b", "\ufeff"])) + text, text  # invisible prefix: same tokens
    row = [float(seed), seed / 7.0]
    return draw(st.sampled_from([row, np.array(row), torch.tensor(row, dtype=torch.float64)])), row


@st.composite
def drawn_batch(draw) -> tuple[list[dict], list[dict]]:
    """(samples as given, the same samples cleaned): each modality of each sample present in an
    accepted form, None or absent; every sample has some modality."""
    given, cleaned = [], []
    for _ in range(draw(st.integers(1, 4))):
        present = draw(st.lists(st.sampled_from(PROCESSOR.modality_names), min_size=1, unique=True))
        given_sample, cleaned_sample = {}, {}
        for name in PROCESSOR.modality_names:
            if name in present:
                given_sample[name], cleaned_sample[name] = drawn_value(draw, name, draw(st.integers(0, 2**16)))
            elif draw(st.booleans()):
                given_sample[name] = cleaned_sample[name] = None  # missing as None rather than as no key
        given.append(given_sample)
        cleaned.append(cleaned_sample)
    return given, cleaned


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(drawn_batch(), st.booleans())
def test_a_batch_of_accepted_forms_gives_the_result_of_its_cleaned_form(drawn, with_labels):
    samples, cleaned = drawn
    labels = list(range(len(samples))) if with_labels else None
    batch = PROCESSOR(samples, labels=labels)
    expected = PROCESSOR(cleaned, labels=labels)
    assert set(batch) == set(expected) and batch["modality_names"] == PROCESSOR.modality_names
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            tolerance = ONE_LEVEL if key == "image_pixel_values" else 0  # half-precision images: within one level
            torch.testing.assert_close(batch[key], value, rtol=0, atol=tolerance)


REFUSED_VALUES = {
    # (modality, make a refused value from a seed, the message fragment after "sample {row}: ")
    ("image", lambda seed: rgb8(seed) / 127.5 - 1.0, "image values range from"),
    ("image", lambda seed: np.zeros((3, 4, 3), dtype=np.uint8), "is ambiguous"),
    ("image", lambda seed: np.full((9, 9), np.nan), "NaN or inf"),
    ("image", lambda seed: np.zeros((9, 9, 2), dtype=np.uint8), "expected an image array of shape"),
    ("text", lambda seed: INVISIBLE[seed % len(INVISIBLE)] * (1 + seed % 3), "the text is empty"),
    ("text", lambda seed: b"red", "expected a str"),
    ("audio", lambda seed: np.stack([int16_wave(seed)] * 2), "expected a mono 1-D waveform"),
    ("audio", lambda seed: int16_wave(seed).astype(np.float32), "float audio must lie in [-1, 1]"),
    ("audio", lambda seed: int16_wave(seed).astype(np.int64), "has no known sample format"),
    ("tab", lambda seed: [1.0, float("inf")], "is not finite"),
    ("tab", lambda seed: [1.0], "expected shape [2]"),
}


@settings(PROPERTY_SETTINGS, max_examples=100)
@given(drawn_batch(), st.lists(st.tuples(st.integers(0, 3), st.sampled_from(sorted(REFUSED_VALUES, key=str))),
                               min_size=1, max_size=3), st.integers(0, 2**16))
def test_a_batch_with_refused_values_names_the_first_one(drawn, placed, seed):
    """Modalities are encoded in the processor's order: the error names the first modality with a
    refused value, and one of its refused samples with what was wrong with it."""
    samples = [dict(sample) for sample in drawn[0]]
    refused = {}
    for row, (name, make, message) in placed:
        row = row % len(samples)
        samples[row][name] = make(seed)
        refused[(PROCESSOR.modality_names.index(name), row)] = (name, message)
    first = min(column for column, _ in refused)
    with pytest.raises((ValueError, TypeError)) as caught:
        PROCESSOR(samples)
    named = re.match(r"modality '(\w+)': sample (\d+)[:,] ", str(caught.value))
    assert named, str(caught.value)
    name, message = refused.get((first, int(named[2])), (None, None))
    assert named[1] == name and message in str(caught.value), (str(caught.value), refused)


ARRAY_DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64", "bool", "complex64"]


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(hnp.arrays(st.sampled_from(ARRAY_DTYPES), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)),
       st.sampled_from(["image", "audio", "tab"]), st.booleans())
def test_any_array_gives_a_named_error_or_a_result(array, name, as_tensor):
    """Whatever the dtype, shape and values (NaN, inf, huge, negative), an array is converted or
    refused with a short error naming the modality and the sample: never an error from inside
    numpy, PIL, torch or the sub-processor."""
    value = torch.from_numpy(array) if as_tensor and array.dtype.name not in ("uint16",) else array
    try:
        batch = PROCESSOR(**{name: [value]})
    except (ValueError, TypeError) as error:
        assert str(error).startswith(f"modality {name!r}: sample 0") and len(str(error)) < 400, str(error)
        return
    assert batch["modality_mask"].tolist() == [[int(column == name) for column in PROCESSOR.modality_names]]
