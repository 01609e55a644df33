"""The CUDA paths: EP and BPTT on a GPU give the CPU's gradients, dithered Sigma-Delta draws from a generator on the
GPU (seeded, checkpointed, resumed there), the Lightning module trains on the GPU, and the snnTorch baseline's cost
counts work on GPU tensors. Skipped without a GPU (CI has none; run them where one is)."""

from __future__ import annotations

import pytest
import torch
from conftest import PatternDataModule, settings, tiny_csnn
from lightning.pytorch import Callback, Trainer, seed_everything

from lightning_ep import Conv, ConvergentNetwork, Dense, bptt_loss, equilibrium_propagation
from lightning_ep.module import EPLightningModule

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")


def _net(threshold: float) -> ConvergentNetwork:
    torch.manual_seed(0)
    layers = [Conv(4, 3, pooling="avg"), Conv(6, 3, padding=1, pooling="max"), Dense(16)]
    return ConvergentNetwork((1, 12, 12), layers, 5, "mse", threshold).double()


@pytest.mark.parametrize("threshold", [0.0, 0.01])
def test_ep_and_bptt_gradients_on_gpu_match_cpu(threshold):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 12, 12, generator=g, dtype=torch.float64), torch.randint(0, 5, (8,), generator=g)
    grads = {}
    for device in ("cpu", "cuda"):
        net = _net(threshold).to(device)
        params = list(net.parameters())
        ep = torch.autograd.grad(equilibrium_propagation(net, x.to(device), y.to(device), 0.1, 40, 15).surrogate,
                                 params)
        bp = torch.autograd.grad(bptt_loss(net, x.to(device), y.to(device), 40).loss, params)
        grads[device] = [t.cpu() for t in (*ep, *bp)]
    for a, b in zip(grads["cpu"], grads["cuda"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-7, atol=1e-9)


def test_dithered_ep_on_gpu_is_seeded():
    net = _net(0.01).cuda()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(8, 1, 12, 12, generator=g, dtype=torch.float64).cuda(), torch.randint(0, 5, (8,)).cuda()
    runs = [equilibrium_propagation(net, x, y, 0.05, 40, 20, dither=torch.Generator("cuda").manual_seed(s),
                                    average_last=10).surrogate for s in (3, 3, 4)]
    assert torch.isfinite(runs[0]) and runs[0].device.type == "cuda"
    # the GPU's reductions are not bit-reproducible; the stream is: the same seed agrees far below what another
    # seed changes
    assert abs(float(runs[0] - runs[1])) < 1e-9 < abs(float(runs[0] - runs[2]))


class KeepDitherState(Callback):
    """The module's dither generator state (and device type) after every training batch."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: EPLightningModule, *args: object) -> None:
        self.state, self.device = pl_module.dither_generator.get_state(), pl_module.dither_generator.device.type


def test_module_trains_on_gpu_with_dither_and_restores_its_stream(tmp_path):
    seed_everything(0)
    dm = PatternDataModule()
    model = EPLightningModule(**settings(network={"input_shape": dm.input_shape, "num_classes": dm.num_classes,
                                                  "threshold": 0.05}, ep={"dither": True, "average_last": 4}))
    last = KeepDitherState()
    trainer = Trainer(accelerator="gpu", devices=1, max_steps=3, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                      callbacks=[last])
    trainer.fit(model, dm)
    assert last.device == "cuda"
    seeded = torch.Generator("cuda").manual_seed(model.seed).get_state()
    assert not torch.equal(last.state, seeded), "training drew no dither noise: the stream is still at its seed"
    # Lightning has moved the module back to the CPU; the checkpoint still holds the CUDA stream where it stopped
    trainer.save_checkpoint(tmp_path / "gpu.ckpt")
    restored = EPLightningModule.load_from_checkpoint(tmp_path / "gpu.ckpt", map_location="cuda")
    assert torch.equal(restored.dither_generator.get_state(), last.state)
    model.cuda()  # and the module itself continues its CUDA stream when it comes back
    assert torch.equal(model.dither_generator.get_state(), last.state)
    metrics = trainer.test(model, dm, verbose=False)[0]
    model.cuda()  # Lightning has moved it back to the CPU: the same evaluation, on the GPU, batch by batch
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.test_dataloader():
            correct += int((model(x.cuda()).argmax(1).cpu() == y).sum())
            total += len(y)
    assert total == len(dm.eval_data) and metrics["test/acc"] == pytest.approx(correct / total)


def test_csnn_cost_on_gpu():
    from lightning_ep.baselines.csnn_cost import csnn_cost

    module = tiny_csnn(num_steps=4)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        on_cpu = csnn_cost(module, module.simulate(x))
        module = module.cuda()
        on_gpu = csnn_cost(module, module.simulate(x.cuda()))
    assert on_gpu.synops == pytest.approx(on_cpu.synops) and on_gpu.spikes == on_cpu.spikes
    assert torch.equal(on_gpu.latency.cpu(), on_cpu.latency)
