"""Train a convergent spiking network with EP on MNIST.

    python recipes/mnist.py                                  # the CPU demo config
    python recipes/mnist.py --config recipes/configs/mnist_paper.yaml
"""

from pathlib import Path

from lightning_ep.cli import run_recipe
from lightning_ep.data import MNISTDataModule

if __name__ == "__main__":
    run_recipe(MNISTDataModule, Path(__file__).parent / "configs" / "mnist_demo.yaml", "lightning_ep-mnist")
