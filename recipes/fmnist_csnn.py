"""Train snnTorch's convolutional SNN (the baseline: BPTT through time) on FashionMNIST.

    python recipes/fmnist_csnn.py                            # the CPU demo config (same widths as fmnist_demo.yaml)
    python recipes/fmnist_csnn.py --model.num_steps 50 --model.pooling max --print_config
    python recipes/fmnist_csnn.py --trainer.devices 2        # DDP
"""

from pathlib import Path

from lightning_ep.baselines import SnnTorchCSNN
from lightning_ep.cli import run_recipe
from lightning_ep.data import FashionMNISTDataModule

if __name__ == "__main__":
    run_recipe(FashionMNISTDataModule, Path(__file__).parent / "configs" / "fmnist_csnn_demo.yaml",
               "lightning_ep-fmnist-csnn", model_class=SnnTorchCSNN)
