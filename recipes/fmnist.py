"""Train a convergent spiking network with EP on FashionMNIST.

    python recipes/fmnist.py                                 # the CPU demo config
    python recipes/fmnist.py --config recipes/configs/fmnist_paper.yaml
    python recipes/fmnist.py --trainer.devices 2 --model.ep.beta=0.2 --print_config
    python recipes/fmnist.py --checkpoint_every_n_steps 200     # last.ckpt every 200 steps; after a kill:
    python recipes/fmnist.py --checkpoint_every_n_steps 200 --ckpt_path runs/.../checkpoints/last.ckpt
"""

from pathlib import Path

from lightning_ep.cli import run_recipe
from lightning_ep.data import FashionMNISTDataModule

if __name__ == "__main__":
    run_recipe(FashionMNISTDataModule, Path(__file__).parent / "configs" / "fmnist_demo.yaml", "lightning_ep-fmnist")
