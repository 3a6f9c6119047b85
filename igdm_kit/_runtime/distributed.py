"""Multi-process training with ``torchrun``: PyTorch's own distributed engine.

``igdm-kit run`` detects the torchrun environment (``WORLD_SIZE`` > 1) and then:

* joins the process group (``nccl`` on CUDA, ``gloo`` on CPU) and wraps the student in
  ``DistributedDataParallel`` for the outer loss; the inner attack runs on the bare module (it needs input
  gradients only, and must not trigger gradient synchronization);
* gives each rank a disjoint shard of every epoch's permutation (``order[rank::world]``, the
  ``DistributedSampler`` rule, reshuffled per epoch) and its own attack randomness (seed + rank);
* reduces metrics across ranks; only rank 0 writes files;
* splits evaluation across ranks and sums the correct counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of an epoch's permutation: disjoint across ranks, together the whole set
        (padded by wrapping around so every rank runs the same number of steps, as DistributedSampler)."""
        if not self.enabled:
            return order
        n = order.shape[0]
        per = -(-n // self.world)
        padded = torch.cat([order, order[: per * self.world - n]]) if per * self.world > n else order
        return padded[self.rank::self.world]

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the ranks, on their device (no host sync; a collective: every rank calls
        it at the same point); ``values`` themselves in one process."""
        if not self.enabled:
            return values
        import torch.distributed as dist

        out = values.detach().clone()
        dist.all_reduce(out)
        return out / self.world

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on any rank (a collective: every rank must call it at the same point)."""
        if not self.enabled:
            return flag
        return self.sum([float(flag)], device)[0] > 0

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (a small picklable value between our own processes)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank: DDP broadcasts them before each forward,
        so after the last step each rank holds its own batch's update — evaluations must agree with rank 0's
        saved model."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for b in module.buffers():
            dist.broadcast(b, src=0)

    def mean_buffers(self, module: torch.nn.Module) -> None:
        """Every floating-point buffer (BatchNorm statistics) averaged over the ranks, in place: statistics each
        rank computed on its own shard become one set, the same on every rank."""
        if not self.enabled:
            return
        import torch.distributed as dist

        for b in module.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.world)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(rank=int(os.environ.get("RANK", "0")), world=world,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(d: Dist, device: torch.device) -> None:
    import torch.distributed as dist

    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def device_for(d: Dist, requested: torch.device) -> torch.device:
    if d.enabled and requested.type == "cuda":
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return requested


def wrap(d: Dist, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shutdown(d: Dist) -> None:
    import torch.distributed as dist

    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
