"""Tubelet-Contrastive Self-Supervision for Video-Efficient Generalization (thesis Chapter 5).

Two clips v1, v2 from *different* videos receive the same synthetic tubelets: image patches cut
from v1 that move along a linear or non-linear path and scale, rotate or shear over time
(Sec 5.3.2-5.3.4). Since the clips share nothing but the tubelets, a MoCo encoder that must tell
this positive pair apart from clips with other tubelets learns motion rather than appearance
(Eq. 5.1). `--mode temporal` is the temporal-contrast baseline of Table 5.2.

    # a CPU smoke run on the built-in synthetic videos (a few minutes)
    python tubelet_contrast.py
    # one GPU, Mini-Kinetics (Sec 5.4.1: batch 32, queue 16,384)
    python tubelet_contrast.py --data-root data/kinetics --train-list minikinetics_train.txt \
        --batch-size 32 --queue-size 16384 --workers 8 --amp --out-dir runs/tubelets_minik
    # 8 GPUs on one node, Kinetics-400 (--batch-size is the global batch: 128 = 8 x 16, queue 65,536)
    torchrun --nproc_per_node=8 tubelet_contrast.py --data-root data/kinetics \
        --train-list kinetics400/train.csv --workers 8 --amp --out-dir runs/tubelets_k400
    # two nodes: the same on each, plus --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500

Output in --out-dir: checkpoint.pt (resume with --resume auto), log.jsonl (one line per epoch),
backbone.pt (the query backbone in torchvision keys: finetune it with severe_eval.py) and, with
--save-examples, examples.png.
"""
import argparse
import json
import math
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.backbones import KINETICS_MEAN, KINETICS_STD, encoder_state_dict, video_encoder
from common.engine import (Dist, HelpFormatter, Progress, add_common_args, autocast, check_finite, grad_scaler,
                           float_in, int_at_least, parse_with_presets, resume_training, reuse_freed_cpu_memory,
                           save_atomic, save_epoch, seconds_per_call, seed_everything, sync, unwrap)
from common.moco import MoCo, batch_logits, batch_top1, check_queue_size, global_keys
from common.synthetic import BACKGROUNDS, synthetic_video_dataset
from common.video import VideoClipDataset, read_samples

# ============ tubelets and augmentation (Sec 5.3) ============
#
# Everything below works on whole batches on the device the clips live on. Shapes:
#   B batch, T frames, H x W frame (after cropping H = W = crop_size), M tubelets per clip.
# Pixel coordinates are continuous: pixel (row i, col j) covers [j, j+1) x [i, i+1), centre (j+.5, i+.5).

TRANSFORMS = ("scale", "shear", "rotation")  # applied to the patch in this order when combined
SHAPES = ("rectangle", "ellipse", "rhombus")
SHAPE_PROBS = (0.5, 0.35, 0.15)  # as in the authors' code
NONLINEAR_EXTENT = (20 / 112, 90 / 112)  # extent of a non-linear path, as a fraction of the frame (authors' code)
OPACITY = (0.8, 1.0)  # tubelet opacity at its keyframes (authors' code)
SCALES = (1.0, 8 / 7, 9 / 7)  # multi-scale crop: short side resized to crop * s, as 112/128/144 in the authors' code


def _transform_list(text):
    names = tuple(t for t in text.replace("+", ",").split(",") if t and t != "none")
    bad = [t for t in names if t not in TRANSFORMS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown transformation(s) {bad}; choose from none,{','.join(TRANSFORMS)}")
    return names


def add_augmentation_args(parser):
    g = parser.add_argument_group("tubelets and augmentation")
    g.add_argument("--mode", choices=["tubelet", "temporal"], default="tubelet",
                   help="tubelet: v1, v2 from two different videos share M tubelets (Sec 5.3.2, Eq. 5.3-5.4). "
                        "temporal: the Table 5.2 baseline, two temporal crops of one video, each augmented on its own")
    g.add_argument("--num-tubelets", type=int_at_least(1), default=2, metavar="M",
                   help="tubelets per clip, M in Eq. 5.4 (Sec 5.4.1: 2; Table 5.5 ablates 1-3)")
    g.add_argument("--patch-size", type=int_at_least(1), nargs=2, default=[16, 64], metavar=("MIN", "MAX"),
                   help="patch sides H', W' uniform in [MIN, MAX] px (Sec 5.4.1, 112x112 clips); "
                        "App. C.2 uses 32 128 for 224x224 clips (I3D)")
    g.add_argument("--motion", choices=["none", "linear", "nonlinear"], default="nonlinear",
                   help="tubelet motion (Sec 5.3.3, Table 5.3): none = static patch (Eq. 5.2), linear (Eq. 5.5), "
                        "nonlinear = Gaussian-smoothed random path (Eq. 5.6)")
    g.add_argument("--transform", type=_transform_list, default="rotation",
                   help="tubelet transformation (Sec 5.3.4, Eq. 5.7; Table 5.4): none, scale, shear, rotation, "
                        "or a comma list such as rotation,scale (Table C.5: combinations do not help)")
    g.add_argument("--recipe", choices=["code", "thesis"], default="code",
                   help="how rotation, shear and opacity change over time. code: as the authors' code that "
                        "produced Tables 5.2-5.8, 2-4 evenly spaced keyframes, rotation a random walk of at most "
                        "6 deg/frame, shear one of 0.066/frame on x, y or both; thesis: Eq. 5.7 as written, "
                        "--keyframes random keyframes, theta uniform in --rotation-range / --shear-range")
    g.add_argument("--keyframes", type=int, default=3, metavar="K",
                   help="keyframes K, first and last frame included (Sec 5.4.1: 3), of linear motion and scale "
                        "(which the code lacks: always the text's) and, with --recipe thesis, of every transformation")
    g.add_argument("--delta", type=float_in(0), nargs=2, default=[40.0, 80.0], metavar=("MIN", "MAX"),
                   help="linear motion: max px between the centres of neighbouring keyframes, Delta drawn per "
                        "tubelet from [MIN, MAX] (Sec 5.3.3, Sec 5.4.1: 40-80 for 112 px); scale it with the crop")
    g.add_argument("--nonlinear-points", type=int, default=48, metavar="N",
                   help="non-linear motion: N >> T random points that are smoothed into a path (Eq. 5.6; 48)")
    g.add_argument("--sigma", type=float_in(0), default=8.0,
                   help="non-linear motion: std (in points) of the Gaussian smoothing filter g in Eq. 5.6 (8)")
    g.add_argument("--scale-range", type=float_in(0, open_low=True), nargs=2, default=[0.5, 1.5],
                   metavar=("MIN", "MAX"),
                   help="scale transformation: horizontal and vertical factors (Sec 5.3.4; Table C.6 tries "
                        "0.5-1.25 and 0.5-2)")
    g.add_argument("--rotation-range", type=float, nargs=2, default=[-90.0, 90.0], metavar=("MIN", "MAX"),
                   help="--recipe thesis: rotation angle in degrees (Sec 5.3.4; Table C.6 tries 45, 180)")
    g.add_argument("--shear-range", type=float, nargs=2, default=[-1.0, 1.0], metavar=("MIN", "MAX"),
                   help="--recipe thesis: the shear factors (r, s). App. C.5 says the chapter used [-1, 1] (the "
                        "code's walk stays within it), Sec 5.3.4 says [-1.5, 1.5]; Table C.6 ablates both")
    g.add_argument("--jitter-prob", type=float_in(0, 1), default=0.2,
                   help="probability of each colour jitter (brightness, contrast, hue+saturation); 0.2 as in the "
                        "authors' code. In tubelet mode the pair shares the jitter (Sec 5.4.1)")
    return g


# ----- a positive pair (Sec 5.3.2) -----

@torch.no_grad()
def make_views(v1, v2, args, normalize=True):
    """Builds a batch of positive pairs (query v^1, key v^2).

    v1, v2: uint8 (B, T, H, W, 3) clips as decoded (H, W >= crop size), on the training device.
    tubelet mode: v1, v2 come from two different videos; each gets its own crop and flip, M tubelets cut from
    the augmented v1 are pasted into both (Eq. 5.3-5.4), then both get the same colour jitter (Sec 5.3.2).
    temporal mode: v1, v2 are two temporal crops of one video, each cropped, flipped and jittered on its own.
    Returns float (B, 3, T, crop, crop) each, normalised with KINETICS_MEAN / STD, or in [0, 1] when
    normalize=False (for pictures). On the CPU, call `reuse_freed_cpu_memory` once first (main does).
    """
    crop = getattr(args, "crop_size", 112)
    B, T, dev = v1.shape[0], v1.shape[1], v1.device
    prob = getattr(args, "jitter_prob", 0.2)
    if v1.shape == v2.shape:  # (2B, 3, T, crop, crop): v1 then v2, each cropped on its own
        x = random_crop_flip([v1, v2], crop)
    else:
        x = torch.cat([random_crop_flip(v1, crop), random_crop_flip(v2, crop)])
    if args.mode == "temporal":
        jitter = sample_color_jitter(2 * B, prob, dev)
    else:
        x1, x2 = x[:B], x[B:]
        tub = sample_tubelets(B, T, crop, crop, args, dev)
        source = x1[torch.arange(B, device=dev), :, tub.source_frame]  # (B, 3, H, W), a copy
        paste_tubelets([x1, x2], source, tub)
        jitter = [j.repeat(2, *[1] * (j.dim() - 1)) for j in sample_color_jitter(B, prob, dev)]  # shared
    out = apply_color(x, *jitter, normalize)
    return out[:B], out[B:]


# ----- keyframes (Eq. 5.5, 5.7): per-frame parameters from their values at a few frames -----
#
# Two recipes (--recipe). thesis: K = --keyframes keyframes, frames 0 and T-1 plus K-2 random frames, theta
# uniform in its range at each keyframe, linear interpolation (Sec 5.3.3-5.3.4, 5.4.1). code: as the authors'
# code that produced Tables 5.2-5.8, K in {2, 3, 4} evenly spaced keyframes, rotation and shear as bounded
# random walks over them, each segment eased at random. Linear motion and scale, which the code lacks, always
# follow the text.

KEYFRAME_PROBS = (0.5, 0.3, 0.2)  # code: 0, 1 or 2 keyframes between the first and the last frame
EASING_PROBS = (0.7, 0.15, 0.15)  # code: a segment is linear, accelerating (w^2) or decelerating (1 - (1 - w)^2)
ROTATION_VELOCITY = 6.0  # code: degrees per frame, at most, on average over a segment
SHEAR_VELOCITY = 0.066  # code: shear factor per frame, at most, on average over a segment


def random_keyframes(n, T, K, device):
    """The text's keyframes (n, K), sorted: frame 0, K-2 distinct random frames in between, frame T-1."""
    K = max(2, min(K, T))
    inner = torch.rand(n, T - 2, device=device).argsort(dim=1)[:, :K - 2] + 1
    first = torch.zeros(n, 1, dtype=torch.long, device=device)
    return torch.cat([first, inner.sort(dim=1).values, first + T - 1], dim=1)


def spaced_keyframes(n, T, inner, device):
    """The code's keyframes (n, inner + 2): frames 0 and T-1, and `inner` frames at T i / (inner + 1),
    i = 1..inner (rounded down), each shifted by an integer drawn from [-j, j), j = floor(T / (3 (inner + 1)))."""
    inner = min(inner, T - 2)
    avg = T / (inner + 1)
    ticks = torch.tensor([int(avg * i) for i in range(1, inner + 1)], dtype=torch.long, device=device)
    j = int(avg / 3)
    shift = torch.randint(-j, j, (n, inner), device=device) if j > 0 else 0
    first = torch.zeros(n, 1, dtype=torch.long, device=device)
    return torch.cat([first, ticks.expand(n, inner) + shift, first + T - 1], dim=1)


def interpolate_keyframes(keyframes, values, T, eased=False):
    """Interp of Eq. 5.5 / 5.7: keyframes (n, K) sorted, values (n, K, D) -> (n, T, D), piecewise linear;
    eased=True: each segment linear, accelerating or decelerating with EASING_PROBS (the code)."""
    n, K = keyframes.shape
    t = torch.arange(T, device=values.device).expand(n, T).contiguous()
    seg = (torch.searchsorted(keyframes, t, right=True) - 1).clamp(0, K - 2)  # keyframe k with k <= t < k+1
    t0, t1 = keyframes.gather(1, seg), keyframes.gather(1, seg + 1)
    w = (t - t0) / (t1 - t0)
    if eased:
        ease = torch.multinomial(torch.tensor(EASING_PROBS, device=w.device), n * (K - 1), replacement=True)
        ease = ease.view(n, K - 1).gather(1, seg)
        w = torch.where(ease == 1, w * w, torch.where(ease == 2, 1 - (1 - w) ** 2, w))
    idx = seg.unsqueeze(-1).expand(-1, -1, values.shape[-1])
    v0, v1 = values.gather(1, idx), values.gather(1, idx + 1)
    return v0 + w.unsqueeze(-1).to(values.dtype) * (v1 - v0)


def keyframe_curve(n, T, values_at, recipe, K, device, eased=True):
    """(n, T, D) per-frame parameters of n tubelets; values_at(keyframes (m, k)) gives their values (m, k, D).
    recipe 'thesis': K keyframes at random frames, linear; 'code': 2-4 spaced keyframes, eased if `eased`."""
    if recipe == "thesis":
        keyframes = random_keyframes(n, T, K, device)
        return interpolate_keyframes(keyframes, values_at(keyframes), T)
    inner = torch.multinomial(torch.tensor(KEYFRAME_PROBS, device=device), n, replacement=True)
    out = None
    for k in range(len(KEYFRAME_PROBS)):
        members = (inner == k).nonzero().squeeze(1)
        if len(members):
            keyframes = spaced_keyframes(len(members), T, k, device)
            curve = interpolate_keyframes(keyframes, values_at(keyframes), T, eased)
            out = curve.new_empty(n, T, curve.shape[-1]) if out is None else out
            out[members] = curve
    return out


def uniform_values(lo, hi, D, first=None):
    """values_at for `keyframe_curve`, Eq. 5.7 as written: uniform in [lo, hi] at every keyframe, `first` at
    the first one (the untransformed patch p)."""
    def values_at(keyframes):
        theta = lo + (hi - lo) * torch.rand(*keyframes.shape, D, device=keyframes.device)
        if first is not None:
            theta[:, 0] = first
        return theta
    return values_at


def random_walk(velocity):
    """values_at for `keyframe_curve`, the code's rotation and shear: 0 at the first keyframe, then each
    keyframe adds U(-v g, v g) for a gap of g frames, so a segment moves at most v per frame on average."""
    def values_at(keyframes):
        gap = keyframes.diff(dim=1).float()
        steps = velocity * gap * (2 * torch.rand_like(gap) - 1)
        return F.pad(steps.cumsum(1), (1, 0)).unsqueeze(-1)
    return values_at


# ----- tubelet motion: the path of patch centres [(x^1, y^1), ..., (x^T, y^T)] of Eq. 5.2 (Sec 5.3.3) -----

def static_path(n, T, H, W, device):
    """Eq. 5.2 without motion: (n, T, 2) centres (x, y), one random position repeated over time."""
    frame = torch.tensor([W, H], dtype=torch.float32, device=device)
    return (torch.rand(n, 1, 2, device=device) * frame).expand(n, T, 2).contiguous()


def linear_path(n, T, H, W, K, delta, device):
    """Eq. 5.5: K keyframe centres joined by straight lines; (n, T, 2).

    The first centre is uniform in the frame; each next keyframe centre is uniform over the points of the
    frame within Delta px of the previous one (Delta ~ U(delta) per tubelet), drawn by rejection from the
    square around it, which accepts at least pi/4 of the draws (after 8 misses, about 1 in 200,000, the
    centre stays where it was).
    """
    frame = torch.tensor([W, H], dtype=torch.float32, device=device)
    keyframes = random_keyframes(n, T, K, device)
    dmax = delta[0] + (delta[1] - delta[0]) * torch.rand(n, 1, device=device)
    centres = [torch.rand(n, 2, device=device) * frame]
    for _ in range(keyframes.shape[1] - 1):
        prev = centres[-1]
        lo, hi = (prev - dmax).clamp(min=0), torch.minimum(prev + dmax, frame)
        nxt, found = prev.clone(), torch.zeros(n, dtype=torch.bool, device=device)
        for _ in range(8):
            candidate = lo + (hi - lo) * torch.rand(n, 2, device=device)
            take = ~found & ((candidate - prev).norm(dim=1) <= dmax[:, 0])
            nxt[take], found = candidate[take], found | take
        centres.append(nxt)
    return interpolate_keyframes(keyframes, torch.stack(centres, 1), T)


def gaussian_smooth(x, sigma):
    """g of Eq. 5.6: 1-D Gaussian filter along the last dim of x (n, C, N), reflect padding, radius 4 sigma."""
    if sigma <= 0:
        return x
    n, C, N = x.shape
    radius = int(4 * sigma + 0.5)
    k = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (k / sigma) ** 2)
    x = F.pad(x.reshape(n * C, 1, N), (radius, radius), mode="reflect" if radius < N else "replicate")
    return F.conv1d(x, (k / k.sum()).view(1, 1, -1)).view(n, C, N)


def nonlinear_path(n, T, H, W, N, sigma, device):
    """Eq. 5.6: N >> T uniform random points, Gaussian-smoothed along time, resampled to T; (n, T, 2).

    Smoothing shrinks the path towards the frame centre, so (as the authors' code does) each axis is min-max
    rescaled to an extent drawn from NONLINEAR_EXTENT of the frame and placed at a random position in it.
    """
    frame = torch.tensor([W, H], dtype=torch.float32, device=device).view(1, 2, 1)
    points = torch.rand(n, 2, N, device=device) * frame
    smooth = gaussian_smooth(points, sigma)
    lo, hi = smooth.amin(dim=2, keepdim=True), smooth.amax(dim=2, keepdim=True)
    unit = (smooth - lo) / (hi - lo).clamp_min(1e-6)
    extent = NONLINEAR_EXTENT[0] + (NONLINEAR_EXTENT[1] - NONLINEAR_EXTENT[0]) * torch.rand(n, 1, 1, device=device)
    extent = extent * frame
    path = unit * extent + torch.rand(n, 2, 1, device=device) * (frame - extent)
    return F.interpolate(path, size=T, mode="linear", align_corners=True).transpose(1, 2).contiguous()


# ----- tubelet transformations F(p, theta^i) of Eq. 5.7 (Sec 5.3.4) -----

def transform_matrices(n, T, args, device):
    """(n, T, 2, 2) matrices A^i mapping patch coordinates (about the patch centre) to frame offsets (Eq. 5.7),
    the identity at frame 0, for the transformations in args.transform, composed as rotation @ shear @ scale.

    scale: theta = (w, h), A = diag(w, h), uniform in --scale-range at each keyframe (the text; the code has
    no scale). shear: theta = (r, s), an x-shear by r followed by a y-shear by s (determinant 1, never
    singular); code: x only, y only or both (1/3 each, drawn per tubelet; the code draws it per clip), each
    factor its own SHEAR_VELOCITY walk; thesis: both, uniform in --shear-range. rotation: theta = angle in
    degrees; code: a ROTATION_VELOCITY walk; thesis: uniform in --rotation-range.
    """
    A = torch.eye(2, device=device).expand(n, T, 2, 2)

    def curve(values_at, recipe=args.recipe):
        return keyframe_curve(n, T, values_at, recipe, args.keyframes, device)

    code = args.recipe == "code"
    for name in TRANSFORMS:
        if name not in args.transform:
            continue
        if name == "scale":
            w, h = curve(uniform_values(*args.scale_range, 2, first=1.0), recipe="thesis").unbind(-1)
            rows = [w, torch.zeros_like(w), torch.zeros_like(w), h]
        elif name == "shear":
            if code:
                kind = torch.randint(3, (n, 1), device=device)  # 0: x only, 1: y only, 2: both
                r = curve(random_walk(SHEAR_VELOCITY))[..., 0] * (kind != 1)
                s = curve(random_walk(SHEAR_VELOCITY))[..., 0] * (kind != 0)
            else:
                r, s = curve(uniform_values(*args.shear_range, 2, first=0.0)).unbind(-1)
            rows = [torch.ones_like(r), r, s, 1 + r * s]  # [[1, 0], [s, 1]] @ [[1, r], [0, 1]]
        else:
            walk = random_walk(ROTATION_VELOCITY) if code else uniform_values(*args.rotation_range, 1, first=0.0)
            a = torch.deg2rad(curve(walk)[..., 0])
            rows = [a.cos(), -a.sin(), a.sin(), a.cos()]
        A = torch.stack(rows, -1).view(n, T, 2, 2) @ A
    return A


# ----- tubelets: patch p, shape, path and transformation (Eq. 5.2-5.4, 5.7) -----

@dataclass
class Tubelets:
    """M tubelets per clip. Patch p_m is cut from frame `source_frame` of v1 around `source_centre` with
    half sides `half_size`; in frame t its centre is at `path[..., t, :]` and it is transformed by
    `matrix[..., t, :, :]`; `shape`, `edge` and `opacity` define its alpha (see `shape_alpha`)."""
    path: torch.Tensor           # (B, M, T, 2) centre (x, y) in frame pixels, Eq. 5.2
    matrix: torch.Tensor         # (B, M, T, 2, 2) patch -> frame, identity at t=0 (Eq. 5.7)
    half_size: torch.Tensor      # (B, M, 2) (W'/2, H'/2)
    source_centre: torch.Tensor  # (B, M, 2) centre of the patch in the source frame
    source_frame: torch.Tensor   # (B,) long, frame of v1 all patches of a clip are cut from
    shape: torch.Tensor          # (B, M) long, index into SHAPES
    edge: torch.Tensor           # (B, M) width of the alpha ramp at the border, in normalised patch units
    opacity: torch.Tensor        # (B, M, T)


def sample_tubelets(B, T, H, W, args, device):
    """Draws M tubelets for each of B clips of T frames of H x W pixels (Sec 5.3.2-5.3.4)."""
    M, n = args.num_tubelets, B * args.num_tubelets
    frame = torch.tensor([W, H], dtype=torch.float32, device=device)
    lo, hi = args.patch_size
    size = torch.minimum(lo + (hi - lo) * torch.rand(B, M, 2, device=device), frame)  # (W', H'), independent
    # paste the largest patch first so that a small one is never hidden under it (as the authors' code does)
    order = size.prod(-1).argsort(dim=1, descending=True)
    half = size.gather(1, order.unsqueeze(-1).expand(-1, -1, 2)) / 2
    source_centre = half + torch.rand(B, M, 2, device=device) * (frame - 2 * half)

    if args.motion == "none":
        path = static_path(n, T, H, W, device)
    elif args.motion == "linear":
        path = linear_path(n, T, H, W, args.keyframes, args.delta, device)
    else:
        path = nonlinear_path(n, T, H, W, args.nonlinear_points, args.sigma, device)
    matrix = transform_matrices(n, T, args, device)

    shape = torch.multinomial(torch.tensor(SHAPE_PROBS, device=device), n, replacement=True).view(B, M)
    # as in the authors' code half of the patches get a soft edge, alpha falling from 1 at 60-90% of the
    # way to the border down to 0; the others get a hard edge, anti-aliased over about one pixel
    soft = torch.rand(B, M, device=device) < 0.5
    edge = torch.where(soft, 0.1 + 0.3 * torch.rand(B, M, device=device), 1 / half.amin(-1))
    opacity = keyframe_curve(n, T, uniform_values(*OPACITY, 1), args.recipe, args.keyframes, device, eased=False)
    # the patches are cut from one random frame of v1 (the thesis leaves the frame open; the authors' code
    # draws it at random) and replicated in time (Sec 5.3.2)
    source_frame = torch.randint(0, T, (B,), device=device)
    return Tubelets(path=path.view(B, M, T, 2), matrix=matrix.view(B, M, T, 2, 2), half_size=half,
                    source_centre=source_centre, source_frame=source_frame, shape=shape, edge=edge,
                    opacity=opacity.view(B, M, T))


def shape_alpha(nx, ny, shape, edge):
    """Alpha of a patch from coordinates (nx, ny), normalised so that the patch box is [-1, 1]^2.

    Distance to the centre: rectangle max(|a|, |b|), ellipse sqrt(a^2 + b^2), rhombus |a| + |b| (shape 0, 1,
    2, an int or a tensor broadcasting against nx); alpha = clamp((1 - distance) / edge, 0, 1)."""
    a, b = nx.abs(), ny.abs()
    shape = torch.as_tensor(shape, device=nx.device)
    dist = torch.where(shape == 0, torch.maximum(a, b), torch.where(shape == 1, torch.hypot(a, b), a + b))
    return dist.neg_().add_(1).div_(edge).clamp_(0, 1)


def paste_tubelets(clips, source, tub):
    """Eq. 5.3-5.4: overlays the tubelets onto every clip in `clips`, in place.

    clips: list of float (B, 3, T, H, W) tensors (v1 and v2); source: float (B, 3, H, W), the frame of v1 the
    patches are cut from (taken before pasting). Every clip gets the same patch at the same place with the
    same transformation and alpha, so the positive pair shares exactly the tubelets.

    Per tubelet and frame, every pixel centre X maps back to normalised patch coordinates
    n = A^-1 (X - centre) / half (Eq. 5.7), which give its alpha (`shape_alpha`, 0 outside the patch), and
    to the source frame at source_centre + n * half, where grid_sample reads its colour (bilinear). n is
    affine in the pixel's column x and row y, so each coordinate is one sum of a row and a column term.
    """
    B, _, T, H, W = clips[0].shape
    dev = source.device
    x = (torch.arange(W, device=dev) + 0.5).view(1, 1, 1, W)
    y = (torch.arange(H, device=dev) + 0.5).view(1, 1, H, 1)
    to_grid = torch.tensor([2 / W, 2 / H], device=dev)  # pixels -> [-1, 1], align_corners=False
    for m in range(tub.path.shape[1]):  # larger patches first
        half = tub.half_size[:, m].view(B, 1, 2)
        lin = torch.linalg.inv(tub.matrix[:, m]) / half.unsqueeze(-1)  # (B, T, 2, 2): frame offset -> n
        off = -(lin @ tub.path[:, m].unsqueeze(-1)).squeeze(-1)  # (B, T, 2)
        nx, ny = (lin[..., i, 0, None, None] * x + (lin[..., i, 1, None, None] * y + off[..., i, None, None])
                  for i in range(2))  # (B, T, H, W) each
        alpha = shape_alpha(nx, ny, tub.shape[:, m].view(B, 1, 1, 1), tub.edge[:, m].view(B, 1, 1, 1))
        alpha = alpha.mul_(tub.opacity[:, m].view(B, T, 1, 1)).unsqueeze(1)  # (B, 1, T, H, W)
        scale, shift = half * to_grid, tub.source_centre[:, m].view(B, 1, 2) * to_grid - 1
        grid = torch.stack([nx * scale[..., 0, None, None] + shift[..., 0, None, None],
                            ny * scale[..., 1, None, None] + shift[..., 1, None, None]], -1)
        colour = F.grid_sample(source, grid.view(B, T * H, W, 2), mode="bilinear", padding_mode="border",
                               align_corners=False).view(B, 3, T, H, W)
        for clip in clips:
            clip.lerp_(colour, alpha)
    return clips


# ----- spatial and colour augmentation (Sec 5.4.1: random crops, horizontal flip, colour jitter) -----

def random_crop_flip(clips, crop_size):
    """uint8 (B, T, H, W, 3) clips (one tensor or a list of same-sized ones, stacked along the batch) -> float
    (sum B, 3, T, crop, crop) in [0, 255]; each clip gets its own crop and flip.

    Multi-scale crop as in the authors' code (frames resized so that the short side is crop * s, s drawn per
    clip from SCALES, then a random crop x crop window, flipped with p = 0.5), done as one bilinear
    grid_sample per batch: a random square window of side short / s (whole pixels, at a whole-pixel position),
    flipped, is sampled at crop x crop points, as resizing it would (bilinear, no antialiasing).
    """
    x = clips if torch.is_tensor(clips) else torch.cat(list(clips))
    B, T, H, W, _ = x.shape
    dev, c = x.device, crop_size
    s = torch.tensor(SCALES, device=dev)[torch.randint(len(SCALES), (B,), device=dev)]
    side = (min(H, W) / s).round().clamp(max=min(H, W))
    x0 = (torch.rand(B, device=dev) * (W - side + 1)).floor()
    y0 = (torch.rand(B, device=dev) * (H - side + 1)).floor()
    flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)
    zero = torch.zeros(B, device=dev)
    theta = torch.stack([flip * side / W, zero, (x0 + side / 2) * 2 / W - 1,
                         zero, side / H, (y0 + side / 2) * 2 / H - 1], 1).view(B, 2, 3)
    grid = F.affine_grid(theta, (B, 1, c, c), align_corners=False)
    frames = torch.empty(B, 3, T, H, W, device=dev)
    frames.copy_(x.permute(0, 4, 1, 2, 3))
    out = F.grid_sample(frames.view(B, 3 * T, H, W), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.view(B, 3, T, c, c)


# YIQ: Y is luma, (I, Q) chroma; rotating (I, Q) shifts hue, scaling it changes saturation.
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def sample_color_jitter(B, prob, device):
    """Per clip a 3x3 matrix and offset (B, 3, 3), (B, 3) acting on RGB in [0, 1].

    The authors' jitter (each applied with probability `prob`): brightness + U(-32, 32)/255, contrast
    x exp(U(-0.2, 0.2)), hue shift U(-24, 24) degrees with saturation x exp(U(-0.1, 0.1)) (their OpenCV
    HSV hue delta 12 = 24 degrees). All are linear in RGB (hue as a rotation in YIQ), so they compose into one
    affine map: x -> HS (c (x + b)). We keep their mild strength and probability 0.2 rather than MoCo-v2's
    strong p = 0.8 jitter: in tubelet mode the pair already differs in content, and the baseline gets the
    same augmentation so that Table 5.2 compares tubelets only.
    """
    def on():
        return torch.rand(B, device=device) < prob

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(B, device=device)

    b = torch.where(on(), uniform(-32 / 255, 32 / 255), torch.zeros(B, device=device))
    c = torch.where(on(), torch.exp(uniform(-0.2, 0.2)), torch.ones(B, device=device))
    hs = on()
    angle = torch.where(hs, torch.deg2rad(uniform(-24.0, 24.0)), torch.zeros(B, device=device))
    sat = torch.where(hs, torch.exp(uniform(-0.1, 0.1)), torch.ones(B, device=device))
    zero, one = torch.zeros(B, device=device), torch.ones(B, device=device)
    chroma = torch.stack([one, zero, zero,
                          zero, sat * angle.cos(), -sat * angle.sin(),
                          zero, sat * angle.sin(), sat * angle.cos()], 1).view(B, 3, 3)
    matrix = c.view(B, 1, 1) * (_YIQ2RGB.to(device) @ chroma @ _RGB2YIQ.to(device))
    offset = (matrix @ b.view(B, 1, 1).expand(B, 3, 1)).squeeze(-1)
    return matrix, offset


def apply_color(x, matrix, offset, normalize=True):
    """x float (B, 3, T, H, W) in [0, 255] -> new tensor, colour-jittered (matrix, offset from
    `sample_color_jitter`), clamped to [0, 1] and, if `normalize`, standardised with KINETICS_MEAN / STD.
    /255, jitter and normalisation are one per-clip affine map (one batched matmul) and one clamp; the
    authors clamp after each jitter, which differs only at saturated pixels."""
    B = x.shape[0]
    mean, std = (KINETICS_MEAN, KINETICS_STD) if normalize else ((0.0,) * 3, (1.0,) * 3)
    m_t, s_t = torch.tensor(mean, device=x.device), torch.tensor(std, device=x.device)
    out = torch.baddbmm(((offset - m_t) / s_t).unsqueeze(-1), matrix / (255 * s_t.view(1, 3, 1)), x.reshape(B, 3, -1))
    for c in range(3):  # [0, 1] before normalisation
        out[:, c].clamp_(-mean[c] / std[c], (1 - mean[c]) / std[c])
    return out.view_as(x)


# ----- pictures -----

def save_examples(query, key, path, max_pairs=4, frames=4, denormalize=False):
    """PNG grid: one row per pair, `frames` evenly spaced frames of v^1 then of v^2.
    query, key: (B, 3, T, H, W) in [0, 1] (make_views(..., normalize=False)); denormalize=True undoes
    the KINETICS normalisation of make_views(..., normalize=True) outputs instead."""
    from torchvision.utils import save_image
    q, k = query[:max_pairs].detach().float().cpu(), key[:max_pairs].detach().float().cpu()
    if denormalize:
        mean, std = torch.tensor(KINETICS_MEAN).view(1, 3, 1, 1, 1), torch.tensor(KINETICS_STD).view(1, 3, 1, 1, 1)
        q, k = q * std + mean, k * std + mean
    t = torch.linspace(0, q.shape[2] - 1, frames).round().long()
    rows = torch.cat([q[:, :, t], k[:, :, t]], dim=2)  # (P, 3, 2 * frames, H, W)
    tiles = rows.permute(0, 2, 1, 3, 4).flatten(0, 1).clamp(0, 1)
    save_image(tiles, path, nrow=2 * frames, padding=2, pad_value=1.0)


# ============ data: pairs of clips (Sec 5.3.1, 5.3.2) ============

class PairDataset(torch.utils.data.Dataset):
    """Yields the two uint8 clips (T, H, W, 3) that become one positive pair.

    tubelet:  v1 from video i and v2 from a random *other* video (Sec 5.3.2), each at its own random
              stride (as the code): the pair shares nothing but the tubelets pasted into both later.
    temporal: two random temporal crops of video i (the baseline of Sec 5.3.1 / Table 5.2) at one
              random stride: the thesis describes no change of speed between them.
    jitter: temporal jitter of the frame indices (`common.video.clip_indices`), as the code samples frames.
    """

    def __init__(self, videos, mode, jitter=True):
        self.videos, self.mode, self.jitter = videos, mode, jitter

    def __len__(self):
        return len(self.videos)

    def __getitem__(self, i):
        if self.mode == "temporal":
            stride = int(self.videos.rng().choice(self.videos.strides))
            v1, _, i = self.videos.load(i, stride=stride, jitter=self.jitter)
            v2, _, _ = self.videos.load(i, stride=stride, jitter=self.jitter)
        else:
            v1, _, i = self.videos.load(i, jitter=self.jitter)
            j = (i + random.randrange(1, len(self.videos))) % len(self.videos)
            v2, _, _ = self.videos.load(j, jitter=self.jitter)
        return square_crop(v1), square_crop(v2)


def square_crop(clip):
    """A random square of side min(H, W) from (T, H, W, 3): videos of any aspect ratio batch
    together; the multi-scale crop to --crop-size happens later on the device (make_views)."""
    t, h, w, _ = clip.shape
    s = min(h, w)
    y, x = random.randint(0, h - s), random.randint(0, w - s)
    return clip[:, y:y + s, x:x + s]


def pretraining_videos(args, d):
    """The video list (Kinetics-400 CSV or 'path label' list), optionally a random fraction of it."""
    if args.data_root is None:
        synthetic = d.main_first(synthetic_video_dataset, videos_per_class=args.synthetic_videos,
                                 background=args.synthetic_background)
        samples = read_samples(synthetic["train_list"], synthetic["root"])
    else:
        try:
            samples = read_samples(args.train_list, args.data_root)
        except (OSError, ValueError) as err:
            raise SystemExit(f"--train-list / --data-root: {err}") from None
    if args.data_fraction < 1.0:  # Fig. 5.6: a random subset of the pretraining videos, drawn by --seed
        rng = np.random.RandomState(args.seed)
        keep = int(round(args.data_fraction * len(samples)))
        if keep < 2:
            raise SystemExit(f"--data-fraction {args.data_fraction}: {keep} of the {len(samples)} videos; "
                             f"pretraining needs at least two")
        samples = [samples[k] for k in sorted(rng.choice(len(samples), keep, replace=False))]
    return samples


# ============ model: R(2+1)D-18 and a projection MLP (Sec 5.4.1) ============

class EncoderWithHead(nn.Module):
    """Video backbone followed by the 2-layer projection MLP d -> d -> 128 of Sec 5.4.1.

    (B, 3, T, H, W) -> (B, 128); the L2 normalisation happens inside MoCo.
    """

    def __init__(self, backbone_name, dim=128):
        super().__init__()
        self.backbone, width = video_encoder(backbone_name)
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, dim))

    def forward(self, x):
        return self.head(self.backbone(x))


class InBatchContrast(nn.Module):
    """Eq. 5.1 with the other clips of the (global) batch as the negatives N (`--negatives batch`): one encoder
    for both views, trained through both, no momentum key encoder and no queue. The thesis uses MoCo
    only to enlarge N (Sec 5.4.1); in a CPU miniature MoCo's outputs collapse onto one drifting direction
    before tubelet pairs are told apart, this form learns them (README, Chapter 5). Same outputs as MoCo."""

    def __init__(self, encoder, temperature):
        super().__init__()
        self.encoder_q, self.temperature = encoder, temperature

    def forward(self, x_q, x_k):
        q, k = F.normalize(self.encoder_q(torch.cat([x_q, x_k])).float(), dim=1).chunk(2)
        keys, labels = global_keys(k)  # N: the keys of every process; the positive at `labels`
        return batch_logits(q, keys, self.temperature), labels, batch_top1(q.detach(), k.detach())


# ============ arguments ============

# Without --data-root the script pretrains on the small built-in synthetic dataset; these
# CPU-sized values replace the paper's defaults there unless the flag is given explicitly (README, "The
# CPU preset"): 32 x 32 crops of 8 frames; patches of 8-20 px (28-70 px of 112; the thesis's 16-64
# ratio, --patch-size 4 16, learns only after 150-400 epochs); the grey-noise world (one colour statistic
# for every background, so no shared colour jitter: it would be a shortcut there); the quarter-width
# R(2+1)D-18; in-batch negatives, because MoCo's outputs collapse at this size; lr 0.05 with the cosine
# of 500 epochs stopped after 200 (about 5 minutes on 2 cores). Pairs are learned from epoch 50-150
# depending on the seed (README).
SYNTHETIC_PRESET = dict(epochs=500, stop_epoch=200, batch_size=16, lr=0.05, clip_len=8, crop_size=32, short_side=40,
                        patch_size=[8, 20], delta=[10, 20], synthetic_background="grey-noise", jitter_prob=0.0,
                        backbone="r2plus1d_18_small", negatives="batch", queue_size=64, workers=2, print_freq=4,
                        bn="shuffle", bn_splits=2)
PRESETS = [("synthetic (no --data-root)", lambda a: a.data_root is None, SYNTHETIC_PRESET)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Tubelet-contrastive self-supervised pretraining (thesis Ch. 5). Defaults are the "
                    "thesis's (Sec 5.4.1). Without --data-root the built-in synthetic videos are used with "
                    "the CPU-sized preset below.",
        formatter_class=HelpFormatter)
    add_common_args(parser, lists=("train",))  # pretraining has no validation list
    add_augmentation_args(parser)
    g = parser.add_argument_group("model and contrast (Sec 5.4.1)")
    g.add_argument("--backbone", default="r2plus1d_18", choices=["r2plus1d_18", "r3d_18", "r2plus1d_18_small"],
                   help="R(2+1)D-18 as in Ch. 5; R3D-18 for Table C.2; R(2+1)D-18 at 1/4 width for CPU miniatures")
    g.add_argument("--negatives", choices=["queue", "batch"], default="queue",
                   help="N of Eq. 5.1: queue = MoCo's queue of earlier keys and momentum key encoder (Sec 5.4.1); "
                        "batch = the other clips of the global batch, one encoder (the CPU miniature, README)")
    g.add_argument("--queue-size", type=int, default=65536,
                   help="MoCo negatives |N| in Eq. 5.1: 65,536 for Kinetics-400, 16,384 for Mini-Kinetics")
    g.add_argument("--temperature", type=float_in(0, open_low=True), default=0.2, help="tau in Eq. 5.1")
    g.add_argument("--moco-momentum", type=float_in(0, 1), default=0.999, help="key encoder momentum")
    g.add_argument("--weight-decay", type=float_in(0), default=1e-4)
    g.add_argument("--bn", choices=["sync", "shuffle"], default="sync",
                   help="sync: BatchNorm statistics over the global batch (SyncBatchNorm under torchrun), as the "
                        "authors' config (the thesis is silent); shuffle: MoCo's shuffle-BN (MoCo Sec 3.3)")
    g.add_argument("--bn-splits", type=int_at_least(1), default=4,
                   help="--bn shuffle in one process (CPU, one GPU): the key batch is shuffled and encoded in this "
                        "many BatchNorm groups, the queries in as many groups in order, as MoCo's single-GPU demo; "
                        "under torchrun the keys are shuffled across processes instead. 1 = off")
    g.add_argument("--grad-clip", type=float, default=40.0,
                   help="clip the gradient to this L2 norm, as the authors' config (the thesis is silent); 0 = off")
    g.add_argument("--strides", type=int_at_least(1), nargs="+", default=[1, 2, 3, 4],
                   help="temporal strides a clip is sampled with, one drawn per clip (as the authors' code)")
    g.add_argument("--temporal-jitter", action=argparse.BooleanOptionalAction, default=True,
                   help="move each sampled frame on by a random 0..stride-1 frames, as the authors' frame sampler")
    g.add_argument("--short-side", type=int, default=128,
                   help="frames are resized to this short side while decoding; crops are taken from them")
    g.add_argument("--stop-epoch", type=int_at_least(0), default=0,
                   help="end the run after this many epochs while the cosine schedule still spans --epochs "
                        "(the authors stopped their 200-epoch schedule after 100: --epochs 200 --stop-epoch 100); "
                        "0 = run all --epochs")
    g.add_argument("--synthetic-background", choices=BACKGROUNDS, default="gratings",
                   help="without --data-root: the synthetic world's backgrounds (common/synthetic.py); grey-noise "
                        "is the world of the Table 5.2 miniature (README)")
    g.add_argument("--synthetic-videos", type=int, default=12, metavar="N",
                   help="without --data-root: videos per class of the built-in synthetic dataset (the last "
                        "quarter of each class is its validation split)")
    g.add_argument("--data-fraction", type=float, default=1.0,
                   help="pretrain on this random fraction of the videos, drawn by --seed (Fig. 5.6: 0.05 ... 0.5)")
    g = parser.add_argument_group("tools")
    g.add_argument("--save-examples", action="store_true",
                   help="write OUT_DIR/examples.png with a few v1/v2 pairs of the first batch")
    g.add_argument("--benchmark", action="store_true",
                   help="print tubelet, loader and training-step throughput on --device and exit")
    g.add_argument("--benchmark-iters", type=int, default=5)
    parser.set_defaults(epochs=100, batch_size=128, lr=0.01, clip_len=16, crop_size=112,
                        out_dir="runs/tubelet_contrast")
    args = parse_with_presets(parser, argv, PRESETS)
    try:
        check_queue_size(args.queue_size, args.batch_size)  # --batch-size is the global batch
    except ValueError as err:
        parser.error(str(err))
    if args.data_root is not None and args.train_list is None:
        parser.error("--train-list is required with --data-root (a 'path label' list or the Kinetics-400 CSV)")
    if args.data_root is None and args.train_list is not None:
        parser.error("--train-list needs --data-root, the folder its paths are relative to")
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: the cosine schedule needs at least one epoch")
    if args.clip_len < 2:
        parser.error(f"--clip-len {args.clip_len}: a tubelet moves over at least two frames")
    if args.crop_size > args.short_side:
        parser.error(f"--crop-size {args.crop_size} is larger than the frames it is cut from (--short-side "
                     f"{args.short_side})")
    for flag in ("patch_size", "delta", "scale_range", "rotation_range", "shear_range"):
        low, high = getattr(args, flag)
        if low > high:
            parser.error(f"--{flag.replace('_', '-')} {low} {high}: MIN is larger than MAX")
    if not 0.0 < args.data_fraction <= 1.0:
        parser.error(f"--data-fraction {args.data_fraction} must be in (0, 1]")
    return args


# ============ benchmark ============

@torch.no_grad()
def tubelet_benchmark(args, device, batch_size, iters):
    """(pairs/s of make_views in tubelet mode, pairs/s of the tubelets alone) on random uint8 clips of
    clip_len frames, short_side x short_side (decoding excluded); prints both and make_views without tubelets."""
    crop, T = args.crop_size, args.clip_len
    side = getattr(args, "short_side", crop * 8 // 7)
    v1, v2 = (torch.randint(0, 256, (batch_size, T, side, side, 3), dtype=torch.uint8, device=device) for _ in "12")
    x = [torch.rand(batch_size, 3, T, crop, crop, device=device) * 255 for _ in range(2)]
    tubelet_args = argparse.Namespace(**{**vars(args), "mode": "tubelet"})
    full = seconds_per_call(lambda: make_views(v1, v2, tubelet_args), device, iters)
    plain = seconds_per_call(lambda: make_views(v1, v2, argparse.Namespace(**{**vars(args), "mode": "temporal"})),
                             device, iters)
    tubes = seconds_per_call(lambda: paste_tubelets(x, x[0][:, :, 0].clone(), sample_tubelets(
        batch_size, T, crop, crop, tubelet_args, device)), device, iters)
    print(f"tubelet pairs/s: {batch_size / full:.1f}  (make_views: crop, flip, tubelets, colour jitter; "
          f"{args.motion} motion, {'+'.join(args.transform) or 'no'} transformation, M={args.num_tubelets}; batch "
          f"{batch_size} of {T}x{side}x{side} -> {T}x{crop}x{crop}, {device}; {1000 * full:.0f} ms, without "
          f"tubelets {1000 * plain:.0f} ms)", flush=True)
    print(f"tubelets alone pairs/s: {batch_size / tubes:.1f}  (sample_tubelets + paste into both clips, "
          f"{1000 * tubes:.0f} ms)", flush=True)
    return batch_size / full, batch_size / tubes


def benchmark(args, d, loader, model, optimizer):
    """Throughput of the parts of a step on this device; prints one line per figure."""
    bs, iters = args.batch_size, args.benchmark_iters
    pairs_per_s, tubelets_per_s = tubelet_benchmark(args, d.device, bs, iters)
    batches = iter(loader)
    first = next(batches)  # worker start-up is not throughput; the step below trains on this batch
    t0, n = time.time(), 0
    for _ in range(min(iters, len(loader) - 1)):
        v1, v2 = next(batches)
        make_views(v1.to(d.device), v2.to(d.device), args)
        n += v1.shape[0]
    sync(d.device)
    print(f"loader pairs/s: {n / (time.time() - t0):.1f}  (decode with {args.workers} workers + make_views)",
          flush=True)
    q, k = make_views(*(v.to(d.device) for v in first), args)
    scaler = grad_scaler(d.device, False)
    step_s = seconds_per_call(lambda: train_step(model, optimizer, None, scaler, q, k, args, d), d.device,
                              max(2, iters // 2))
    step = ("MoCo step: query fwd+bwd, key fwd, queue update" if args.negatives == "queue" else
            "in-batch step: both views fwd+bwd")
    print(f"step pairs/s: {bs / step_s:.1f}  ({step}; {step_s:.2f} s per batch of {bs})", flush=True)
    print(f"tubelets / step time: {100 * bs / tubelets_per_s / step_s:.2f}%  (all of make_views: "
          f"{100 * bs / pairs_per_s / step_s:.1f}%)", flush=True)


# ============ training ============

def train_step(model, optimizer, scheduler, scaler, q, k, args, d):
    """One contrastive step on a batch of positive pairs; returns (loss, positive-pair top-1 among the
    negatives (MoCo: the queue), in-batch top-1: common.moco.batch_top1)."""
    with autocast(d.device, args.amp):
        logits, labels, in_batch = model(q, k)
        loss = F.cross_entropy(logits, labels)  # InfoNCE, Eq. 5.1
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if args.grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    return loss.detach(), (logits.argmax(dim=1) == labels).float().mean(), in_batch


def main(argv=None):
    args = parse_args(argv)
    d = Dist(args.device)
    seed_everything(args.seed, d.rank)
    if d.device.type == "cpu":
        reuse_freed_cpu_memory()
    torch.backends.cudnn.benchmark = True  # fixed input sizes
    if args.bn == "sync" and d.distributed and d.device.type != "cuda":
        raise SystemExit("--bn sync: SyncBatchNorm runs on GPUs only; use --bn shuffle for torchrun on CPUs")
    os.makedirs(args.out_dir, exist_ok=True)
    d.print(json.dumps(vars(args)))
    for line in args.presets:
        d.print(line)
    batch_size = d.local_batch(args.batch_size)

    # ---- data: uint8 clips decoded on CPU workers, augmented on the device ----
    samples = pretraining_videos(args, d)
    videos = VideoClipDataset(samples, clip_len=args.clip_len, strides=args.strides,
                              short_side=args.short_side, train=True, max_fail_fraction=args.max_bad_fraction)
    dataset = PairDataset(videos, args.mode, args.temporal_jitter)
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True) \
        if d.distributed else torch.utils.data.RandomSampler(dataset)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
        pin_memory=d.device.type == "cuda", drop_last=True, persistent_workers=args.workers > 0)
    if len(loader) == 0 or len(dataset) < 2:
        raise SystemExit(f"{len(dataset)} videos are too few for a global batch of {args.batch_size}; "
                         f"lower --batch-size")
    d.print(f"{len(dataset)} pretraining videos, {len(loader)} iterations per epoch")

    # ---- model: MoCo (or in-batch negatives) around backbone + projection head ----
    if args.negatives == "queue":
        model = MoCo(EncoderWithHead(args.backbone), dim=128, queue_size=args.queue_size,
                     momentum=args.moco_momentum, temperature=args.temperature,
                     shuffle_bn=args.bn == "shuffle", bn_splits=args.bn_splits)
    else:
        model = InBatchContrast(EncoderWithHead(args.backbone), args.temperature)
    if args.bn == "sync" and d.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = d.wrap(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=0.9, weight_decay=args.weight_decay, fused=True)
    total_iters = args.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(  # cosine decay to zero, per iteration
        optimizer, lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total_iters) / total_iters)))
    scaler = grad_scaler(d.device, args.amp)

    if args.benchmark:
        if d.distributed:
            raise SystemExit("--benchmark measures one process; run it without torchrun")
        benchmark(args, d, loader, model, optimizer)
        return

    ckpt = resume_training(args, args.out_dir, d, model, optimizer, scheduler, scaler, args.epochs,
                           ignore=("save_examples", "stop_epoch"))  # a resumed run may stop later
    start_epoch = ckpt["epoch"] + 1 if ckpt else 0

    # ---- pretraining loop ----
    last_epoch = min(args.epochs, args.stop_epoch or args.epochs)
    progress = Progress(d, last_epoch, len(loader), args.batch_size, args.print_freq)  # eta to --stop-epoch
    for epoch in range(start_epoch, last_epoch):
        if d.distributed:
            sampler.set_epoch(epoch)
        model.train()
        t_epoch, sums = time.time(), torch.zeros(3, device=d.device)
        for it, (v1, v2) in enumerate(loader):
            v1 = v1.to(d.device, non_blocking=True)
            v2 = v2.to(d.device, non_blocking=True)
            q, k = make_views(v1, v2, args)  # Eq. 5.3-5.7, batched on the device
            if args.save_examples and epoch == start_epoch and it == 0 and d.main:  # the pairs trained on
                save_examples(q, k, os.path.join(args.out_dir, "examples.png"), denormalize=True)
            loss, acc, in_batch = train_step(model, optimizer, scheduler, scaler, q, k, args, d)
            sums += torch.stack([loss, acc, in_batch])
            if progress.due(it):  # the only host-device synchronisation of a step, every --print-freq
                check_finite(sums[0].item(), epoch, it)
                progress.step(epoch, it, loss.item(), scheduler.get_last_lr()[0])

        loss_sum, acc_sum, batch_sum = sums.tolist()
        check_finite(loss_sum, epoch, len(loader) - 1)
        record = dict(epoch=epoch, loss=d.all_reduce_mean(loss_sum / len(loader)),
                      pos_top1=d.all_reduce_mean(acc_sum / len(loader)),
                      batch_top1=d.all_reduce_mean(batch_sum / len(loader)),
                      lr=scheduler.get_last_lr()[0], seconds=round(time.time() - t_epoch, 1),
                      bad_videos=videos.counter.failures)
        save_epoch(d, args.out_dir, record, model, optimizer, scheduler, scaler, epoch, args)
        if d.main:
            # the query backbone alone, torchvision keys: what downstream finetuning loads
            save_atomic(encoder_state_dict(unwrap(model).encoder_q.backbone),
                        os.path.join(args.out_dir, "backbone.pt"))
        d.barrier()
    d.close()


if __name__ == "__main__":
    main()
