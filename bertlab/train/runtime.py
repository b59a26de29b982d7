"""Where training runs: processes (torchrun data parallel), the device, the precision.

``Dist`` says which process this is; ``setup_distributed`` joins torchrun's process group;
``pick_device`` and ``resolve_precision`` / ``autocast_for`` turn the ``[train]`` section's
``device`` and ``precision`` into a device and an autocast context; ``share_gradients`` makes
summing gradients across processes one ``all_reduce``. ``bertlab.predict`` reads its device,
precision and progress bars from here too.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bertlab.config import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (``WORLD_SIZE > 1``): NCCL on CUDA, gloo
    on CPU. A single process needs nothing."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    import torch.distributed as dist
    here = False
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        here = True
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), here)


def pick_device(name: str, d: Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"[train] device = {name!r} but CUDA is not available")
        if name == "cuda":  # set_device needs an index: a torchrun rank's own GPU, else the current one
            name = f"cuda:{d.local_rank if d.world_size > 1 else torch.cuda.current_device()}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses: "auto" is bf16 autocast on CUDA and on a CPU with bf16 arithmetic
    (``cpu_has_bf16``: AVX512-BF16 or AMX-BF16), fp32 on other CPUs. On CPUs this follows the
    committed comparison docs/results/precision_cpu (same runs in fp32 and bf16, 3 seeds)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16()) else "fp32"
    return precision


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU does bf16 arithmetic in hardware: the ``avx512_bf16`` or ``amx_bf16`` flag
    of /proc/cpuinfo (Linux; elsewhere False, so "auto" stays fp32). ``cpuinfo``: the file's text,
    for tests. Without these instructions bf16 is emulated in float32 (by oneDNN on AVX-512 CPUs,
    by ``bertlab.models.ops`` on AVX2-only ones) and is no faster than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def autocast_for(precision: str, device: torch.device):
    """A factory of the forward pass's autocast context: bf16 or fp16 autocast, or nothing (fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def show_progress(option: str) -> bool:
    """tqdm bars: on a terminal unless ``$CI`` is set; "on"/"off" force it."""
    if option != "auto":
        return option == "on"
    return sys.stderr.isatty() and not os.environ.get("CI")


def barrier(d: Dist) -> None:
    if d.world_size > 1:
        torch.distributed.barrier()


def broadcast_value(value, d: Dist):
    """Rank 0's ``value`` on every process (any picklable object)."""
    if d.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def share_gradients(params: list, device: torch.device) -> torch.Tensor:
    """Make every parameter's ``.grad`` a view of one flat buffer, so summing gradients over
    processes is a single ``all_reduce`` per step (backward accumulates into the views in place)."""
    flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=device)
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return flat
