"""Machinery of a training run: the device, the autocast precision, DDP under ``torchrun`` (one
broadcast helper for every decision rank 0 takes), the dihedral views."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from dala.errors import RunError


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise RunError("device 'cuda' was asked for but no CUDA GPU is visible; use --device auto or cpu.")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """bf16 autocast only pays on CPUs with native bf16 (AVX512-BF16 or AMX); elsewhere it is
    emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def select_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32."""
    if name == "fp32":
        return None
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or device.type == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if (torch.cuda.is_available() and device_name in ("auto", "cuda")) else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        torch.cuda.set_device(local)
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def dihedral(x: torch.Tensor, view: int) -> torch.Tensor:
    """View 0..7 of the dihedral group D4: ``view // 4`` horizontal flip, ``view % 4`` quarter turns."""
    if view >= 4:
        x = torch.flip(x, dims=(-1,))
    k = view % 4
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def broadcast_int(value: int, dist: Dist) -> int:
    """Rank 0's ``value`` on every rank (a no-op without DDP): every rank pauses, stops and
    stops early at the same step."""
    if not dist.enabled:
        return int(value)
    import torch.distributed as tdist

    t = torch.tensor([int(value)], dtype=torch.int64)
    tdist.broadcast(t, 0)
    return int(t.item())


def teardown(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
