"""Two CPU processes (gloo) behave like one process on the concatenated batch.

- the gathered USDRL loss equals the single-process loss, and its input gradients are W x the
  single-process ones (so DDP's average over W gives the single-process parameter gradient);
- GlobalBatchNorm (the CPU stand-in for SyncBatchNorm) matches BatchNorm on the whole batch;
- a few training steps through engine.train with DDP match one process with the same global
  batch. This needs both the gathered loss and synced BatchNorm: with per-process statistics
  the projector outputs (and therefore the loss) differ.
"""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import engine
from models.base import EncoderOutput
from models.usdrl import USDRL, usdrl_loss

WORLD = 2


def _init(rank: int, init_file: str) -> engine.DistInfo:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    return engine.init_distributed()


def _embeddings(seed=0, b=8):
    g = torch.Generator().manual_seed(seed)
    return {"t": torch.randn(4, b, 6, generator=g), "s": torch.randn(4, b, 5, generator=g) * 2,
            "i": torch.randn(4, b, 12, generator=g) + 1}


def _loss_worker(rank: int, init_file: str, out_dir: str) -> None:
    info = _init(rank, init_file)
    z = _embeddings()
    local = {d: v.chunk(WORLD, dim=1)[rank].clone().requires_grad_() for d, v in z.items()}
    loss, _ = usdrl_loss({d: engine.gather_with_grad(v, dim=1) for d, v in local.items()})
    loss.backward()

    x = torch.randn(10, 3, 4, generator=torch.Generator().manual_seed(1)) * 3 + 1
    bn = engine.convert_batchnorm(nn.BatchNorm1d(3), info.device)
    bn.weight.data = torch.tensor([1.0, 2.0, 0.5])
    xl = x.chunk(WORLD)[rank].clone().requires_grad_()
    y = bn(xl)
    (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
    torch.save({"loss": loss.detach(), "grads": {d: v.grad for d, v in local.items()},
                "bn_out": y.detach(), "bn_in_grad": xl.grad, "bn_weight_grad": bn.weight.grad,
                "running": (bn.running_mean, bn.running_var)}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _spawn(worker, tmp_path, *extra):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path), *extra), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_gathered_loss_and_global_batchnorm(tmp_path):
    results = _spawn(_loss_worker, tmp_path)

    z = {d: v.clone().requires_grad_() for d, v in _embeddings().items()}
    want, _ = usdrl_loss(z)
    want.backward()
    for rank, res in enumerate(results):
        torch.testing.assert_close(res["loss"], want.detach(), rtol=1e-6, atol=1e-6)
        for d in z:
            torch.testing.assert_close(res["grads"][d] / WORLD, z[d].grad.chunk(WORLD, dim=1)[rank],
                                       rtol=1e-5, atol=1e-7)

    x = (torch.randn(10, 3, 4, generator=torch.Generator().manual_seed(1)) * 3 + 1).requires_grad_()
    bn = nn.BatchNorm1d(3)
    bn.weight.data = torch.tensor([1.0, 2.0, 0.5])
    y = bn(x)
    weights = torch.arange(y.numel() // WORLD).view_as(y.chunk(WORLD)[0]).float()
    sum((part * weights).sum() for part in y.chunk(WORLD)).backward()
    torch.testing.assert_close(torch.cat([r["bn_out"] for r in results]), y.detach(), rtol=1e-5, atol=1e-5)
    # each process's loss is its local one, so the input gradients are the single-process ones
    torch.testing.assert_close(torch.cat([r["bn_in_grad"] for r in results]), x.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sum(r["bn_weight_grad"] for r in results), bn.weight.grad, rtol=1e-5, atol=1e-5)
    for r in results:
        torch.testing.assert_close(r["running"][0], bn.running_mean)
        torch.testing.assert_close(r["running"][1], bn.running_var)


# ---------------------------------------------------------------- training steps
class ToyEncoder(nn.Module):
    """A tiny encoder with the EncoderOutput contract and a BatchNorm (statistics matter)."""

    def __init__(self, c, t, v, m, width=6):
        super().__init__()
        self.temporal_dim = self.spatial_dim = width
        self.feature_dim = 2 * width
        self.frame = nn.Sequential(nn.Linear(c * v * m, width), nn.BatchNorm1d(t), nn.ReLU())
        self.joint = nn.Linear(c * t, width)

    def forward(self, x):
        n, c, t, v, m = x.shape
        frames = self.frame(x.permute(0, 2, 1, 3, 4).reshape(n, t, c * v * m))
        joints = self.joint(x.permute(0, 3, 4, 1, 2).reshape(n, v * m, c * t))
        temporal, spatial = frames.amax(1), joints.amax(1)
        return EncoderOutput(torch.cat([temporal, spatial], 1), temporal, spatial, frames, joints)


def _toy_run(info: engine.DistInfo, out_dir, global_batch=8, steps_epochs=2):
    torch.manual_seed(0)
    data = torch.randn(32, 4, 3, 5, 4, 2, generator=torch.Generator().manual_seed(3))
    dataset = TensorDataset(data, torch.arange(len(data)))
    sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=7, drop_last=True)
    loader = DataLoader(dataset, batch_size=global_batch // info.world_size, sampler=sampler,
                        drop_last=True)
    model = USDRL(ToyEncoder(3, 5, 4, 2), proj_mult=2)
    if info.distributed:
        model = engine.convert_batchnorm(model, info.device)
    # SGD, not Adam: Adam's first steps are ~lr * sign(grad), which turns rounding noise in
    # near-zero gradients into full-size differences.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = engine.TrainState(optimizer, engine.make_scheduler(optimizer, len(loader), schedule="cosine",
                                                               epochs=steps_epochs),
                              engine.make_scaler(None, info.device))
    ddp = engine.wrap_ddp(model, info)

    def step_fn(batch, epoch, step):
        views = batch[0]
        b, k = views.shape[:2]
        z = ddp(views.transpose(0, 1).reshape(k * b, *views.shape[2:]), num_views=k)
        loss, terms = usdrl_loss({d: engine.gather_with_grad(v, 1) for d, v in z.items()})
        return loss, terms

    engine.train(ddp, step_fn, loader, state, epochs=steps_epochs, info=info, seed=0,
                 output=None, progress=False)
    return model.state_dict()


def _train_worker(rank: int, init_file: str, out_dir: str) -> None:
    info = _init(rank, init_file)
    torch.save(_toy_run(info, out_dir), f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_ddp_steps_match_single_process(tmp_path):
    results = _spawn(_train_worker, tmp_path)
    single = _toy_run(engine.DistInfo(0, 1, 0, torch.device("cpu")), tmp_path)
    assert set(results[0]) == set(single)
    for key, want in single.items():
        if key.endswith("num_batches_tracked"):
            assert int(results[0][key]) == int(want)
            continue
        for res in results:
            torch.testing.assert_close(res[key], want, rtol=1e-4, atol=1e-5, msg=key)
    # the run really trained: weights moved away from their initial values
    torch.manual_seed(0)
    init = USDRL(ToyEncoder(3, 5, 4, 2), proj_mult=2).state_dict()
    assert not torch.allclose(init["i_proj.6.weight"], single["i_proj.6.weight"])
