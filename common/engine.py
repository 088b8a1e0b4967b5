"""Plumbing shared by the training scripts: flags, torchrun/DDP, seeding, checkpoints, logs.

One code path serves one CPU process, one GPU and N GPUs or nodes:

    python script.py ...                                  # CPU, or the first GPU
    torchrun --nproc_per_node=8 script.py ...             # DDP, one process per GPU
"""
import argparse
import contextlib
import copy
import ctypes
import datetime
import functools
import json
import math
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist


# ============ flags every script shares ============

def int_at_least(low):
    """argparse type: an int >= low; argparse refuses anything else with one line naming the flag
    ("argument --batch-size: 0 is below 1")."""
    def parse(text):
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    parse.__name__ = f"int >= {low}"  # how argparse names the type of a non-integer value
    return parse


def float_in(low, high=math.inf, open_low=False):
    """argparse type: a float in [low, high], or in (low, high] with open_low; argparse refuses anything
    else, NaN included, with one line naming the flag ("argument --temperature: 0 is not in (0, inf)")."""
    def parse(text):
        value = float(text)
        if not ((value > low if open_low else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"{value:g} is not in {'(' if open_low else '['}{low:g}, {high:g}"
                                             f"{']' if high < math.inf else ')'}")
        return value
    parse.__name__ = "float"  # argparse: "invalid float value: 'x'"
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every flag's default, the value the run uses, except where it is None: such a flag
    names an input or a mode that is off unless given, and its help says what happens without it."""
    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def add_common_args(parser, video=True, lists=("train", "val"), **help):
    """The flags of every script. A script changes a default with `parser.set_defaults` before
    parsing (so --help shows it), sets defaults that depend on other flags with the presets of
    `parse_with_presets`, and words a flag's help its own way with help={dest: text} keywords.
    video=False leaves out the list-file and clip flags (skeleton data); lists names the list-file
    flags the script reads (none for a script that reads each setup's official annotation files)."""
    g = parser.add_argument_group("data and run")

    def add(flag, **kwargs):
        dest = flag[2:].replace("-", "_")
        g.add_argument(flag, **dict(kwargs, help=help.pop(dest, kwargs["help"])))

    add("--data-root", default=None, help="folder the list files' paths are relative to; without it the built-in "
                                          "synthetic dataset is written (once) and used")
    if video and "train" in lists:
        add("--train-list", default=None, help="training list: 'path label' lines, or the Kinetics CSV")
    if video and "val" in lists:
        add("--val-list", default=None, help="validation list, same format")
    add("--out-dir", default="runs/default", help="checkpoint.pt, log.jsonl and the result files are written here")
    add("--epochs", type=int_at_least(0), default=100, help="passes over the training list")
    add("--batch-size", type=int_at_least(1), default=32,
        help="the GLOBAL batch (the thesis's): under torchrun each of N processes takes batch-size / N, so the "
             "same command and --lr reproduce the thesis on any number of GPUs")
    add("--lr", type=float_in(0), default=0.01, help="base learning rate, for the global --batch-size")
    add("--workers", type=int_at_least(0), default=4, help="DataLoader worker processes per training process")
    if video:
        add("--clip-len", type=int_at_least(1), default=16, help="frames per clip")
        add("--crop-size", type=int_at_least(1), default=112, help="spatial size of the network input")
    add("--max-bad-fraction", type=float_in(0, 1), default=0.05,
        help="stop the run when more than this fraction of the file reads failed (corrupt or truncated files "
             "are reported once each, replaced in training, left out of metrics)")
    add("--seed", type=int, default=0, help="offset by the process rank")
    add("--resume", default="",
        help="'auto' continues from OUT_DIR/checkpoint.pt when it exists (refused when it was written with "
             "other method or data flags); or a checkpoint path")
    add("--amp", action="store_true", help="mixed precision: bf16 (or fp16) autocast on CUDA")
    add("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1 ...")
    add("--print-freq", type=int_at_least(1), default=10, help="iterations between progress lines")
    assert not help, f"add_common_args has no flags {sorted(help)}"
    return g


# ============ presets: defaults that depend on other flags ============

_UNSET = object()  # the value of a flag not given on the command line


def parse_with_presets(parser, argv, presets):
    """Parses the command line, then applies presets: the one place where a default depends on
    other flags (the CPU-sized synthetic run, per-protocol schedules).

    presets: [(name, when, values)]: when(args) -> bool is asked with the flags as given plus the
    add_argument defaults; values {dest: value} replace the defaults of flags NOT given on the
    command line (a flag the user gives always wins). Later presets override earlier ones. The
    presets are listed in --help. Returns args with two extra entries: args.given_flags (sorted
    dests given on the command line) and args.presets (one line per preset applied, to print at
    the start of the run).
    """
    parser.epilog = ("presets (flags given on the command line win): "
                     + "; ".join(f"{name}: {_describe(values)}" for name, _, values in presets))
    defaults = vars(parser.parse_args([]))
    unknown = sorted({k for _, _, values in presets for k in values} - set(defaults))
    assert not unknown, f"presets name flags the parser does not have: {unknown}"
    given_ns = parser.parse_args(argv, namespace=argparse.Namespace(**{k: _UNSET for k in defaults}))
    given = {k for k, v in vars(given_ns).items() if v is not _UNSET}
    args = argparse.Namespace(**{k: getattr(given_ns, k) if k in given else v for k, v in defaults.items()})
    args.given_flags = sorted(given)
    return apply_presets(args, presets)


def apply_presets(args, presets):
    """A copy of args with the presets whose condition holds applied to the flags not in
    args.given_flags (see `parse_with_presets`; also used to run one configuration of several)."""
    args = argparse.Namespace(**copy.deepcopy(vars(args)))
    args.presets = []
    for name, when, values in presets:
        if when(args):
            applied = {k: v for k, v in values.items() if k not in args.given_flags}
            for k, v in applied.items():
                setattr(args, k, copy.deepcopy(v))
            kept = [_flag(k) for k in values if k in args.given_flags]
            args.presets.append(f"preset {name}: {_describe(applied) or '(nothing)'}"
                                + (f" (given, kept: {' '.join(kept)})" if kept else ""))
    return args


def _flag(dest):
    return "--" + dest.replace("_", "-")


def _describe(values):
    """The values as command-line flags; a boolean as its BooleanOptionalAction form, --x / --no-x."""
    def one(k, v):
        if isinstance(v, bool):
            return _flag(k) if v else "--no-" + k.replace("_", "-")
        return f"{_flag(k)} {' '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
    return " ".join(one(k, v) for k, v in values.items())


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
                raise SystemExit(f"--device {device_flag}: CUDA is not available on this machine")
            if self.distributed or device_flag == "cuda":
                device_flag = f"cuda:{self.local_rank}" if self.distributed else "cuda:0"
            torch.cuda.set_device(device_flag)
        self.device = torch.device(device_flag)
        if self.distributed:
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        self.main = self.rank == 0

    def local_batch(self, global_batch, flag="--batch-size"):
        """This process's share of a global batch (the convention of every script: --batch-size is
        the thesis's global batch, split evenly over the torchrun processes)."""
        if global_batch < self.world_size or global_batch % self.world_size:
            raise SystemExit(f"{flag} {global_batch} is the global batch: it must be a multiple of the "
                             f"{self.world_size} processes")
        return global_batch // self.world_size

    def wrap(self, model):
        """model on this process's device, inside DistributedDataParallel under torchrun."""
        model.to(self.device)
        if not self.distributed:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def print(self, *args, **kwargs):
        if self.main:
            print(*args, **kwargs, flush=True)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def main_first(self, make, **kwargs):
        """make(**kwargs) on rank 0 first, then on the other processes once it returned: for the cached
        synthetic datasets, which rank 0 writes and the others then read."""
        if self.main:
            make(**kwargs)
        self.barrier()
        return make(**kwargs)

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

@functools.cache
def reuse_freed_cpu_memory():
    """Asks glibc to keep freed memory for reuse instead of returning every large block to the OS.

    glibc maps each allocation above 32 MiB afresh and unmaps it when freed, so a CPU batch pays for
    its page faults again on every call; on virtual machines a fault costs microseconds, and a
    batched CPU augmentation of 32 clips ran 2x slower for it. Process-wide and
    idempotent; the training scripts call it when they run on the CPU. Returns whether it took
    effect (False without glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: allocate up to 1 GiB from the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of free heap
        return True
    except (OSError, AttributeError):
        return False


# ============ mixed precision ============

def autocast(device, enabled, cpu=False):
    """bf16 autocast on CUDA when supported (else fp16); on a CPU bf16 autocast only with cpu=True (for
    GEMM-bound models such as a BiGRU: 4.2 s instead of 10 s per step at batch 64 on a 2-core AVX512-BF16
    CPU; 3D convolutions gain nothing), else a no-op; a no-op when disabled."""
    if enabled and cpu and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def grad_scaler(device, enabled):
    """Loss scaling is only needed for fp16; bf16 and fp32 run with a disabled scaler."""
    fp16 = enabled and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=fp16)


def check_finite(loss, epoch, it, lr_flag="--lr"):
    """Stop the run with a message instead of training on NaNs for hours (lr_flag: the flag that sets
    this stage's learning rate)."""
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"loss is {loss} at epoch {epoch}, iteration {it}; stopping. Lower {lr_flag}, "
            f"try without --amp, or check the input data.")


def optimizer_step(loss, optimizer, scaler, epoch, it, lr_flag="--lr"):
    """Backward pass and parameter update (loss scaling for fp16 AMP); stops on a non-finite loss
    (`check_finite`). Returns the loss as a float for logging."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    loss = loss.item()
    check_finite(loss, epoch, it, lr_flag)
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
        raise SystemExit(f"--resume {resume}: no such checkpoint")
    return resume


def load_checkpoint(path, map_location="cpu", name=None, mmap=False, hint=""):
    """Our checkpoints hold only tensors and built-in types, so they open with weights_only=True.
    A file that is not there or is not one (corrupt, truncated, another format) stops the run with
    one line naming it: `name` (e.g. "--teacher-checkpoint FILE"), the path if not given, then `hint`."""
    name = name or path
    if not os.path.isfile(path):
        raise SystemExit(f"{name}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 -- corrupt files raise many kinds (UnpicklingError, struct.error, ...)
        raise SystemExit(f"{name}: not a checkpoint torch.load(weights_only=True) can read "
                         f"({str(err).splitlines()[0]}){hint}") from None


def checkpoint_args(path):
    """The flags a checkpoint was written with (its 'args'), memory-mapped: its tensors are not read."""
    return load_checkpoint(path, mmap=True, hint="; move it away or give another --out-dir").get("args", {})


# Flags that say how a run is executed, not what it computes: --resume accepts a change of these.
# --epochs too: a resumed run may continue to a later end (the milestones stay; a cosine schedule
# stretches to the new end).
RUN_FLAGS = frozenset({"workers", "print_freq", "device", "resume", "out_dir", "amp", "max_bad_fraction",
                       "given_flags", "presets", "epochs"})


def check_resume_args(saved, args, path, ignore=(), action="--resume: cannot continue"):
    """Refuses (SystemExit, one line naming the flags) to continue, overwrite or use a checkpoint
    written with other method or data flags than `args`; RUN_FLAGS and `ignore` (dests) may differ."""
    skip = RUN_FLAGS | set(ignore)
    current = vars(args)
    missing = "<not recorded>"
    differ = [k for k in sorted(set(saved) | set(current))
              if k not in skip and saved.get(k, missing) != current.get(k, missing)]
    if differ:
        changes = ", ".join(f"{_flag(k)} {saved.get(k, missing)!r} there, {current.get(k, missing)!r} now"
                            for k in differ)
        raise SystemExit(f"{action} {path}, written with other flags ({changes}); give the same flags or "
                         f"another --out-dir")


def check_out_dir(args, out_dir, ignore=()):
    """The checks of `resume_training` without loading anything, so that a run of several stages can
    make them for every stage before the first one trains: refuses to continue (--resume) or overwrite
    (a fresh run) OUT_DIR/checkpoint.pt of another configuration. Returns the checkpoint to resume from,
    or None."""
    path = resume_path(args.resume, out_dir)
    if path is None:
        existing = os.path.join(out_dir, "checkpoint.pt")
        if os.path.exists(existing):
            check_resume_args(checkpoint_args(existing), args, existing, ignore, action="--out-dir: would overwrite")
        return None
    saved = load_checkpoint(path, name=f"--resume {path}", mmap=True).get("args", {})
    check_resume_args(saved, args, path, ignore)
    return path


def resume_training(args, out_dir, d, model, optimizer, scheduler, scaler, epochs, ignore=()):
    """--resume: restores model (inside DDP or not), optimizer, scheduler and scaler from the
    checkpoint that `resume_path` names, after `check_resume_args` (ignore: dests this checkpoint
    does not depend on), and says which of the `epochs` comes next (or that none is left). A fresh
    run refuses to overwrite OUT_DIR/checkpoint.pt of another configuration. Returns the checkpoint
    dict (its 'epoch' is the last one finished), or None when the run starts fresh."""
    path = check_out_dir(args, out_dir, ignore)
    if path is None:
        return None
    ckpt = load_checkpoint(path, name=f"--resume {path}")
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    done = ckpt["epoch"] + 1
    d.print(f"resumed from {path}: " + (f"epoch {done + 1} of {epochs} next" if done < epochs else
                                        f"epoch {done} of {epochs} was the last, nothing is left to train"))
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

    def due(self, it):
        """True at the iterations that print: every `every`-th and the last of an epoch."""
        return (it + 1) % self.every == 0 or it + 1 == self.n

    def step(self, epoch, it, loss, lr):
        if not self.d.main or not self.due(it):
            return
        now = time.time()
        done_iters = (it + 1) - self.it_last
        sec_per_it = (now - self.t_last) / max(done_iters, 1)
        remaining = (self.epochs - epoch - 1) * self.n + (self.n - it - 1)
        eta = datetime.timedelta(seconds=int(sec_per_it * remaining))
        print(f"epoch {epoch} [{it + 1}/{self.n}] loss {loss:.4f} lr {lr:.3g} "
              f"clips/s {self.global_batch / sec_per_it:.1f} eta {eta}", flush=True)
        self.t_last, self.it_last = now, (it + 1) % self.n


def sync(device):
    """Waits for the device's queued work (CUDA runs asynchronously); nothing to wait for on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, device, iters, warmup=2):
    """Mean wall time of fn() over `iters` calls after `warmup` untimed calls (--benchmark figures)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters
