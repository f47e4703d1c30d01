"""Retraining a pruned + shared model under DistributedDataParallel (2 CPU processes, gloo): masks and centroids
stay identical on both ranks, and the file each rank writes is the one a single process writes from that state."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from deepzip.apps.mnist.data import synthetic_mnist
    from deepzip.io.checkpoint import save_checkpoint
    from deepzip.io.serialize import save
    from deepzip.models import get_model
    from deepzip.techniques.prune import get_mask, prune_
    from deepzip.techniques.share import get_codebook, share_weights_
    from deepzip.train import TrainConfig, fit

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial model on every rank
    model = get_model("lenet300")
    data = synthetic_mnist(256, seed=0)
    prune_(model, sparsity={"fc1": 0.9, "fc2": 0.8, "fc3": 0.5})
    ddp = DDP(model)
    fit(ddp, data, TrainConfig(epochs=1, lr=0.05, progress=False))  # each rank trains on its half
    share_weights_(model, 4, progress=False)
    ddp = DDP(model)  # re-wrap: sharing replaced the parameters
    fit(ddp, data, TrainConfig(epochs=1, lr=0.01, progress=False))
    state = torch.cat([torch.from_numpy(a.astype("float64")).flatten() for n in ("fc1", "fc2", "fc3")
                       for a in get_codebook(getattr(model, n))] + [get_mask(model.fc1).double().flatten()])
    states = [torch.zeros_like(state) for _ in range(world)]
    dist.all_gather(states, state)
    if rank == 0:
        assert all(torch.equal(states[0], s) for s in states[1:]), "ranks diverged"
        save_checkpoint(model, os.path.join(out_dir, "state.safetensors"))
    save(ddp, os.path.join(out_dir, f"rank{rank}.dz"))  # a DDP-wrapped model saves as its module
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_two_cpu_processes(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    a, b = (tmp_path / "rank0.dz").read_bytes(), (tmp_path / "rank1.dz").read_bytes()
    assert a == b
    from deepzip.io.checkpoint import load_checkpoint
    from deepzip.io.serialize import save

    model, _ = load_checkpoint(tmp_path / "state.safetensors")
    save(model, tmp_path / "single.dz")
    assert (tmp_path / "single.dz").read_bytes() == a
