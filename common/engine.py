"""Plumbing shared by the training scripts: flags, torchrun/DDP, seeding, checkpoints, logs.

One code path serves one CPU process, one GPU and N GPUs or nodes:

    python script.py ...                                  # CPU, or the first GPU
    torchrun --nproc_per_node=8 script.py ...             # DDP, one process per GPU
"""
import contextlib
import ctypes
import datetime
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist


# ============ flags every script shares ============

def add_common_args(parser, video=True, data_help=None):
    """The flags of every script; each script sets its own defaults with `parser.set_defaults`.
    video=False leaves out the list-file and clip flags (skeleton scripts); data_help replaces the
    help of --data-root."""
    g = parser.add_argument_group("data and run")
    g.add_argument("--data-root", default=None,
                   help=data_help or "folder the list files' paths are relative to; without it the built-in "
                                     "synthetic dataset is written (once) and used")
    if video:
        g.add_argument("--train-list", default=None,
                       help="training list: 'path label' lines, or the Kinetics CSV")
        g.add_argument("--val-list", default=None, help="validation list, same format")
    g.add_argument("--out-dir", default="runs/default",
                   help="checkpoint.pt, log.jsonl (and backbone.pt for pretraining) are written here")
    g.add_argument("--epochs", type=int, default=100, help="passes over the training list")
    g.add_argument("--batch-size", type=int, default=32, help="per process; the global batch is this x processes")
    g.add_argument("--lr", type=float, default=0.01, help="base learning rate")
    g.add_argument("--workers", type=int, default=4, help="DataLoader worker processes per training process")
    if video:
        g.add_argument("--clip-len", type=int, default=16, help="frames per clip")
        g.add_argument("--crop-size", type=int, default=112, help="spatial size of the network input")
    g.add_argument("--seed", type=int, default=0, help="offset by the process rank")
    g.add_argument("--resume", default="",
                   help="'auto' continues from OUT_DIR/checkpoint.pt when it exists; or a checkpoint path")
    g.add_argument("--amp", action="store_true",
                   help="bf16 (or fp16) autocast on CUDA; ignored on CPU, except by skeleton_contrast.py "
                        "(bf16 autocast there)")
    g.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    g.add_argument("--print-freq", type=int, default=10, help="iterations between progress lines")
    return g


# ============ distributed setup ============

class Dist:
    """Who this process is: rank, world_size, device, main."""

    def __init__(self, device_flag="auto"):
        self.distributed = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        if device_flag == "auto":
            device_flag = "cuda" if torch.cuda.is_available() else "cpu"
        if device_flag.startswith("cuda"):
            if not torch.cuda.is_available():
                raise RuntimeError(f"--device {device_flag}: CUDA is not available on this machine")
            if self.distributed or device_flag == "cuda":
                device_flag = f"cuda:{self.local_rank}" if self.distributed else "cuda:0"
            torch.cuda.set_device(device_flag)
        self.device = torch.device(device_flag)
        if self.distributed:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        self.main = self.rank == 0

    def print(self, *args, **kwargs):
        if self.main:
            print(*args, **kwargs, flush=True)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def all_reduce_mean(self, value):
        """Mean of a float over processes (for logging)."""
        if not self.distributed:
            return float(value)
        t = torch.tensor(float(value), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world_size

    def close(self):
        if self.distributed:
            dist.destroy_process_group()


def seed_everything(seed, rank=0):
    """Different seeds per rank so processes do not draw identical augmentations."""
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def unwrap(model):
    """The module inside DistributedDataParallel, if any."""
    return model.module if hasattr(model, "module") else model


# ============ CPU memory ============

_CPU_MEMORY_KEPT = []


def reuse_freed_cpu_memory():
    """Asks glibc to keep freed memory for reuse instead of returning every large block to the OS.

    glibc maps each allocation above 32 MiB afresh and unmaps it when freed, so a CPU batch pays for
    its page faults again on every call; on virtual machines a fault costs microseconds, and
    tubelet_contrast.py's make_views with batch 32 ran 2x slower for it. Process-wide and
    idempotent; the training scripts call it when they run on the CPU. Returns whether it took
    effect (False without glibc).
    """
    if _CPU_MEMORY_KEPT:
        return _CPU_MEMORY_KEPT[0]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocate up to 1 GiB from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
        _CPU_MEMORY_KEPT.append(True)
    except (OSError, AttributeError):
        _CPU_MEMORY_KEPT.append(False)
    return _CPU_MEMORY_KEPT[0]


# ============ mixed precision ============

def autocast(device, enabled):
    """bf16 autocast on CUDA when supported (else fp16); a no-op on CPU or when disabled."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device, enabled):
    """Loss scaling is only needed for fp16; bf16 and fp32 run with a disabled scaler."""
    fp16 = enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=fp16)


def check_finite(loss, epoch, it):
    """Stop the run with a message instead of training on NaNs for hours."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at epoch {epoch}, iteration {it}; stopping. Lower --lr, "
            f"try without --amp, or check the input data.")


def optimizer_step(loss, optimizer, scaler, epoch, it):
    """Backward pass and parameter update (loss scaling for fp16 AMP); stops on a non-finite loss.
    Returns the loss as a float for logging."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    loss = loss.item()
    check_finite(loss, epoch, it)
    return loss


# ============ checkpoints ============

def save_atomic(obj, path):
    """torch.save into a temporary file in the same folder, then rename: a crash mid-write never
    leaves a truncated checkpoint behind."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def resume_path(resume, out_dir):
    """'' -> None; 'auto' -> OUT_DIR/checkpoint.pt if it exists; else the given path, which must exist."""
    if not resume:
        return None
    if resume == "auto":
        path = os.path.join(out_dir, "checkpoint.pt")
        return path if os.path.exists(path) else None
    if not os.path.isfile(resume):
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint")
    return resume


def load_checkpoint(path, map_location="cpu"):
    """Our checkpoints hold only tensors and built-in types, so they open with weights_only=True."""
    return torch.load(path, map_location=map_location, weights_only=True)


def resume_training(resume, out_dir, d, model, optimizer, scheduler, scaler):
    """--resume: restores model (inside DDP or not), optimizer, scheduler and scaler from the
    checkpoint that `resume_path` names. Returns the checkpoint dict (its 'epoch' is the last one
    finished), or None when the run starts fresh."""
    path = resume_path(resume, out_dir)
    if path is None:
        return None
    ckpt = load_checkpoint(path)
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    d.print(f"resumed from {path} at epoch {ckpt['epoch'] + 1}")
    return ckpt


def save_epoch(d, out_dir, record, model, optimizer, scheduler, scaler, epoch, args, **extra):
    """End of an epoch, on the main process only: appends `record` to OUT_DIR/log.jsonl, prints it,
    and atomically writes OUT_DIR/checkpoint.pt, the file `resume_training` reads (extra entries,
    e.g. best=..., go into the checkpoint too). The caller synchronises processes afterwards."""
    if not d.main:
        return
    append_jsonl(os.path.join(out_dir, "log.jsonl"), record)
    print(json.dumps(record), flush=True)
    save_atomic(dict(model=unwrap(model).state_dict(), optimizer=optimizer.state_dict(),
                     scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), epoch=epoch,
                     args=vars(args), **extra), os.path.join(out_dir, "checkpoint.pt"))


# ============ logs ============

def append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class Progress:
    """Prints 'epoch e [it/n] loss ... lr ... clips/s ... eta ...' every `every` iterations."""

    def __init__(self, d, epochs, iters_per_epoch, global_batch, every=10):
        self.d, self.epochs, self.n, self.every = d, epochs, iters_per_epoch, every
        self.global_batch = global_batch
        self.t_last, self.it_last = time.time(), 0

    def step(self, epoch, it, loss, lr):
        if not self.d.main or (it + 1) % self.every and it + 1 != self.n:
            return
        now = time.time()
        done_iters = (it + 1) - self.it_last
        sec_per_it = (now - self.t_last) / max(done_iters, 1)
        remaining = (self.epochs - epoch - 1) * self.n + (self.n - it - 1)
        eta = datetime.timedelta(seconds=int(sec_per_it * remaining))
        print(f"epoch {epoch} [{it + 1}/{self.n}] loss {loss:.4f} lr {lr:.3g} "
              f"clips/s {self.global_batch / sec_per_it:.1f} eta {eta}", flush=True)
        self.t_last, self.it_last = now, (it + 1) % self.n
