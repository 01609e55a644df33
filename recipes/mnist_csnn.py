"""Train snnTorch's convolutional SNN (the baseline: BPTT through time) on MNIST.

    python recipes/mnist_csnn.py                             # the CPU demo config (same widths as mnist_demo.yaml)
    python recipes/mnist_csnn.py --config recipes/configs/mnist_csnn_best.yaml
    python recipes/mnist_csnn.py --trainer.devices 2         # DDP
"""

from pathlib import Path

from lightning_ep.baselines import SnnTorchCSNN
from lightning_ep.cli import run_recipe
from lightning_ep.data import MNISTDataModule

if __name__ == "__main__":
    run_recipe(MNISTDataModule, Path(__file__).parent / "configs" / "mnist_csnn_demo.yaml",
               "lightning_ep-mnist-csnn", model_class=SnnTorchCSNN)
