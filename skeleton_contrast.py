"""Skeleton-Contrastive 3D Action Representation Learning (thesis Chapter 3, Appendix A).

A 3D skeleton sequence is augmented twice with skeleton augmentations (temporal crop-resize, then
a pose shear or a joint jitter; Sec 3.3.1, Eq. 3.1-3.4) into a query and a key view. Each view is
read as one or more skeleton representations -- a sequence (BiGRU), a pseudo-image (HCN), a graph
(AGCN) -- and MoCo learns to match query and key: within one representation (intra-skeleton,
Eq. 3.5) or, the thesis's method, across representations (inter-skeleton, Eq. 3.6-3.8), where the
query of each representation must find the key of the other one among that one's negatives.

    # a CPU smoke run on the built-in synthetic skeletons (a few minutes), then its linear probe
    python skeleton_contrast.py
    python skeleton_contrast.py --eval linear --checkpoint runs/skeleton_contrast/checkpoint.pt
    # NTU RGB+D 60 cross-view on one GPU (Sec 3.4.2: SEQ + STG, queue 16,384, 450 epochs)
    python skeleton_contrast.py --data-root data/ntu60/xview --reprs seq,stg --workers 8 \
        --out-dir runs/ntu60_xview
    # the same on 4 GPUs (--batch-size is the global batch: 64 = 4 x 16)
    torchrun --nproc_per_node=4 skeleton_contrast.py --data-root data/ntu60/xview --reprs seq,stg \
        --workers 8 --out-dir runs/ntu60_xview
    # downstream (Appendix A.1): linear, knn, semi, transfer, finetune
    python skeleton_contrast.py --eval semi --label-fraction 0.01 --repeats 5 \
        --data-root data/ntu60/xview --checkpoint runs/ntu60_xview/checkpoint.pt

--data-root is a protocol folder of the ST-GCN / 2s-AGCN format ({train,val}_data_joint.npy,
{train,val}_label.pkl, optionally {train,val}_num_frame.npy). --prepare writes it from the raw
downloads (common/skeleton.py):

    python skeleton_contrast.py --prepare ntu60 --protocol xview --raw-dir nturgb+d_skeletons \
        --data-root data/ntu60/xview

Output in --out-dir: checkpoint.pt (resume with --resume auto), backbone_<repr>.pt (each pretrained query
encoder without its head), log.jsonl (one line per epoch), eval_<name>.json for each --eval, examples.png
with --save-examples.
"""
import argparse
import copy
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import draw_keypoints, save_image

from common.backbones import AGCN, NTU_EDGES
from common.engine import (Dist, HelpFormatter, Progress, add_common_args, autocast, grad_scaler, float_in,
                           int_at_least, load_checkpoint, optimizer_step, parse_with_presets, resume_training,
                           reuse_freed_cpu_memory, save_atomic, save_epoch, seconds_per_call, seed_everything,
                           unwrap)
from common.moco import (batch_logits, batch_top1, check_queue_size, contrast_logits, encode_keys, encode_queries,
                         enqueue, global_keys, momentum_update)
from common.skeleton import SkeletonDataset, prepare_ntu, prepare_pku_mmd, protocol_paths
from common.synthetic import synthetic_skeleton_dataset


# ============ skeleton augmentations (Sec 3.3.1, Eq. 3.1-3.4) ============
#
# Everything below works on whole batches on the device the skeletons live on. Shapes:
#   B batch, C = 3 (x, y, z), T = 300 raw frames (zero-padded after the valid ones), V = 25 joints,
#   M = 2 persons (the second all zeros for one-person actions, Sec 3.4.2), L = --frames (64).
# num_frames (B,) long: valid frames of each sample; frames at or after it are padding and never read.
#
# Where the thesis gives a value it is the default; where it is silent the authors' code
# (github.com/fmthoker/skeleton-contrast, feeder/augmentations.py and options/*.py) decides, and the
# help says so.

SPATIAL = ("random", "pose", "jitter", "none")
JITTER_MODES = ("matrix", "zero", "authors")


def add_augmentation_args(parser):
    g = parser.add_argument_group("skeleton augmentations (Sec 3.3.1)")
    g.add_argument("--frames", type=int_at_least(2), default=64,
                   help="temporal length L of the augmented views X_q, X_k and of the downstream crops "
                        "(Sec 3.4.2 and App. A.1: 64)")
    g.add_argument("--l-min", type=float_in(0, 1), default=0.1,
                   help="temporal crop-resize: crop ratio L_ratio ~ U[l_min, 1] of the valid frames "
                        "(Eq. 3.3; App. A.3, Table A.3: 0.1 is best of 0.1/0.3/0.5)")
    g.add_argument("--min-crop-frames", type=int_at_least(0), default=64,
                   help="a pretraining crop has at least this many frames (all of them when the sequence is "
                        "shorter), as the authors' code (min_crop_length = 64), which produced the tables; the "
                        "thesis states no minimum: 0 gives Eq. 3.3 alone. On a 100-frame sequence at --l-min 0.1 "
                        "the floor decides 60%% of the crops, so it also decides most of Table A.3's differences")
    g.add_argument("--spatial", choices=SPATIAL, default="random",
                   help="spatial augmentation D_Spatial_i after the temporal crop (Eq. 3.4): random = pose or "
                        "jitter with probability 1/2 per view (best row of Table 3.5), pose = shear only (Eq. 3.1), "
                        "jitter = joint jittering only (Eq. 3.2), none = no spatial augmentation (Table 3.5 ablation)")
    g.add_argument("--no-temporal", action="store_true",
                   help="switch off temporal crop-resize (Table 3.5 ablation): each view is then all valid frames "
                        "resized to --frames")
    g.add_argument("--shear", type=float_in(0), default=1.0, metavar="A",
                   help="pose augmentation: off-diagonal shear entries ~ U[-A, A] (Eq. 3.1: [-1, 1], as the "
                        "authors' code)")
    g.add_argument("--jitter-joints", type=int_at_least(0), default=15, metavar="J",
                   help="joint jittering: number |j| of joints moved per view (Sec 3.4.2; Table A.2: 15 of 25 is "
                        "best of 2/5/10/15/20)")
    g.add_argument("--jitter-mode", choices=JITTER_MODES, default="authors",
                   help="what joint jittering does to the |j| joints. authors: what produced the thesis's tables "
                        "(the authors' joint_courruption): with probability 1/2 set them to 0, otherwise multiply by a "
                        "3x3 matrix with entries ~ U[-1, 1]. matrix: a matrix with entries ~ U[0, 1] (Eq. 3.2 as the "
                        "text states it). zero: always set them to 0")
    g.add_argument("--downstream-l-min", type=float_in(0, 1), default=0.5,
                   help="downstream training (linear, semi-supervised, transfer): random crop with ratio "
                        "~ U[this, 1] resized to --frames (App. A.1 says random; 0.5 is the authors' "
                        "options_classification.py, which also keeps --min-crop-frames)")
    g.add_argument("--center-crop", type=float_in(0, 1, open_low=True), default=0.95,
                   help="downstream evaluation (and both sides of kNN retrieval): central crop of this ratio of the "
                        "valid frames resized to --frames (App. A.1 says centre crop; 0.95 is the authors' "
                        "options_classification.py / options_retrieval.py)")
    return g


# ----- temporal (Eq. 3.3) -----

def _resize_crops(x, start, crop, length):
    """Linear resize of the crops x[b, :, start_b : start_b + crop_b] to `length` frames.

    x: (B, C, T, V, M); start, crop: (B,) long with 0 <= start, 1 <= crop, start + crop <= T. Returns
    (B, C, length, V, M). The sampling positions are those of F.interpolate(mode="linear",
    align_corners=False), the resize of the authors' code: frame i reads the crop at
    (i + 0.5) * crop / length - 0.5, clamped to [0, crop - 1]. Only the frames that are needed are
    gathered, so padding never leaks in.
    """
    B, C, T, V, M = x.shape
    i = torch.arange(length, device=x.device, dtype=torch.float32)
    pos = ((i + 0.5) * (crop.unsqueeze(1).float() / length) - 0.5).clamp(min=0)  # (B, L), within the crop
    lo = pos.floor().long().clamp(max=crop.unsqueeze(1) - 1)
    hi = (lo + 1).clamp(max=crop.unsqueeze(1) - 1)
    w = (pos - lo).clamp(max=1).to(x.dtype).view(B, 1, length, 1, 1)  # 0 where lo == hi at the last frame
    frames = (start.unsqueeze(1) + torch.cat([lo, hi], dim=1)).view(B, 1, 2 * length, 1, 1)
    picked = x.gather(2, frames.expand(B, C, 2 * length, V, M))  # the frames lo, then the frames hi
    return torch.lerp(picked[:, :, :length], picked[:, :, length:], w)


def _valid(num_frames, x):
    """num_frames as long on x's device, clamped to [1, T] (a bad count must not read another sample)."""
    return num_frames.to(x.device).long().clamp(1, x.shape[2])


def temporal_crop_resize(x, num_frames, length, l_min, min_crop=0):
    """Temporal crop-resize, Eq. 3.3: per sample L_ratio ~ U[l_min, 1], a crop of floor(n * L_ratio)
    of its n valid frames (at least min(min_crop, n)) at a random start, linearly resized to `length`.

    x: (B, C, T, V, M), num_frames: (B,) -> (B, C, length, V, M)
    """
    if not 0 <= l_min <= 1:
        raise ValueError(f"l_min must be in [0, 1], got {l_min}")
    n = _valid(num_frames, x)
    B = x.shape[0]
    ratio = l_min + (1 - l_min) * torch.rand(B, device=x.device)
    crop = (n * ratio).floor().long()
    crop = torch.minimum(torch.maximum(crop, n.clamp(max=min_crop)), n).clamp(min=1)
    # start ~ U{0, ..., n - crop} ("between (0, T - T L_ratio)", Eq. 3.3)
    start = (torch.rand(B, device=x.device) * (n - crop + 1)).floor().long().clamp(max=n - crop)
    return _resize_crops(x, start, crop, length)


def center_crop_resize(x, num_frames, length, ratio):
    """Deterministic central crop of `ratio` of the valid frames, resized to `length` (evaluation, App. A.1).
    As the authors' code: start = int((1 - ratio) * n / 2), the crop ends `start` frames before n;
    ratio=1 resizes all valid frames. x: (B, C, T, V, M) -> (B, C, length, V, M)"""
    if not 0 < ratio <= 1:
        raise ValueError(f"the centre crop ratio must be in (0, 1], got {ratio}")
    n = _valid(num_frames, x)
    start = ((1 - ratio) * n.double() / 2).floor().long()
    return _resize_crops(x, start, n - 2 * start, length)


# ----- spatial (Eq. 3.1, 3.2), one 3x3 matrix per sample and joint -----
#
# A skeleton is a set of row vectors (x, y, z) (Eq. 3.1 writes X . R). Pose augmentation gives every joint
# of a sample the same shear, joint jittering gives |j| joints a jitter matrix and the others the identity;
# both become A (B, V, 3, 3), applied to every frame and both persons by _apply_joint_matrices in one pass.
# The identity is exact (x * 1 + y * 0 + z * 0 == x for finite coordinates; at most a -0.0 becomes +0.0),
# and zero-padded persons stay zero, since every transformation is linear.

def _shear_matrices(B, amplitude, device):
    """(B, 3, 3): unit diagonal, off-diagonal entries ~ U[-amplitude, amplitude] (Eq. 3.1).
    The thesis multiplies X . S, the authors' code X . S^T: the same distribution, as the entries are i.i.d."""
    r = (torch.rand(B, 3, 3, device=device) * 2 - 1) * amplitude
    eye = torch.eye(3, device=device)
    return r * (1 - eye) + eye


def _jitter_matrices(B, mode, device):
    """(B, 3, 3) jitter matrices (Eq. 3.2), see --jitter-mode."""
    if mode == "matrix":  # thesis: entries ~ U[0, 1]
        return torch.rand(B, 3, 3, device=device)
    if mode == "zero":
        return torch.zeros(B, 3, 3, device=device)
    if mode == "authors":  # joint_courruption: zero the joints, or entries ~ U[-1, 1], each with probability 1/2
        keep = (torch.rand(B, 1, 1, device=device) < 0.5).float()
        return (torch.rand(B, 3, 3, device=device) * 2 - 1) * keep
    raise ValueError(f"unknown jitter mode {mode!r}; choose from {JITTER_MODES}")


def _jitter_joint_matrices(B, V, num_joints, mode, device):
    """(B, V, 3, 3): the sample's jitter matrix at its |j| = num_joints distinct random joints (the subset
    j of Eq. 3.2), the identity elsewhere; the same joints and matrix for both persons and all frames
    (Eq. 3.2; as the authors' code)."""
    if not 0 <= num_joints <= V:
        raise ValueError(f"--jitter-joints must be in [0, {V}], got {num_joints}")
    picked = torch.rand(B, V, device=device).topk(num_joints, dim=1).indices
    chosen = torch.zeros(B, V, dtype=torch.bool, device=device).scatter_(1, picked, True).view(B, V, 1, 1)
    return torch.where(chosen, _jitter_matrices(B, mode, device).unsqueeze(1), torch.eye(3, device=device))


def _apply_joint_matrices(x, A):
    """out[b, :, t, v, m] = x[b, :, t, v, m] @ A[b, v]. x: (B, 3, L, V, M), A: (B, V, 3, 3) -> (B, 3, L, V, M)."""
    return torch.einsum("bctvm,bvcd->bdtvm", x, A.to(x.dtype))


@torch.no_grad()
def pose_augment(x, amplitude):
    """Pose augmentation, Eq. 3.1: X . S with a random shear S per sample, the same for all joints, frames
    and persons. x: (B, 3, L, V, M) -> same shape."""
    B, V = x.shape[0], x.shape[3]
    S = _shear_matrices(B, amplitude, x.device)
    return _apply_joint_matrices(x, S.unsqueeze(1).expand(B, V, 3, 3))


@torch.no_grad()
def joint_jitter(x, num_joints, mode):
    """Joint jittering, Eq. 3.2: num_joints random joints of each sample times a random 3x3 matrix, the others
    unchanged. x: (B, 3, L, V, M) -> same shape."""
    B, V = x.shape[0], x.shape[3]
    return _apply_joint_matrices(x, _jitter_joint_matrices(B, V, num_joints, mode, x.device))


@torch.no_grad()
def spatio_temporal_augment(x, num_frames, args):
    """One augmented view per sample, Eq. 3.4: D_Spatial_i(D_Temporal(X)).

    x: (B, 3, T, V, M) raw sequences, num_frames: (B,) -> (B, 3, args.frames, V, M).
    Call it twice for the query and key views X_q, X_k: crops, shears and jitters are drawn independently.
    """
    if args.no_temporal:
        y = center_crop_resize(x, num_frames, args.frames, 1.0)
    else:
        y = temporal_crop_resize(x, num_frames, args.frames, args.l_min, args.min_crop_frames)
    if args.spatial == "none":
        return y
    B, V, dev = y.shape[0], y.shape[3], y.device
    if args.spatial == "pose":
        return pose_augment(y, args.shear)
    if args.spatial == "jitter":
        return joint_jitter(y, args.jitter_joints, args.jitter_mode)
    # random: each view independently gets pose or jitter with probability 1/2 (the authors' feeders), both
    # kinds in one pass: a per-sample choice between the two (B, V, 3, 3) matrix sets
    pose = (torch.rand(B, device=dev) < 0.5).view(B, 1, 1, 1)
    A = torch.where(pose, _shear_matrices(B, args.shear, dev).unsqueeze(1),
                    _jitter_joint_matrices(B, V, args.jitter_joints, args.jitter_mode, dev))
    return _apply_joint_matrices(y, A)


@torch.no_grad()
def downstream_crop(x, num_frames, args, train):
    """The input of the downstream tasks (App. A.1): a temporal crop resized to args.frames, random in training
    (ratio ~ U[args.downstream_l_min, 1]) and central at evaluation (ratio args.center_crop); no spatial
    augmentation. kNN retrieval uses train=False for both its training and test features (authors' options).
    x: (B, 3, T, V, M) -> (B, 3, args.frames, V, M)"""
    if train:
        return temporal_crop_resize(x, num_frames, args.frames, args.downstream_l_min, args.min_crop_frames)
    return center_crop_resize(x, num_frames, args.frames, args.center_crop)


# ----- speed and pictures -----

def random_skeletons(batch_size, device, T=300, V=25, M=2, min_frames=30):
    """Random raw batches in the input convention: (B, 3, T, V, M) float32 zero-padded after num_frames ~
    U{min_frames..T}, the second person all zeros in half of the samples; num_frames (B,) long."""
    x = torch.randn(batch_size, 3, T, V, M, device=device)
    num_frames = torch.randint(min_frames, T + 1, (batch_size,), device=device)
    valid = torch.arange(T, device=device).view(1, 1, T, 1, 1) < num_frames.view(-1, 1, 1, 1, 1)
    x = x * valid
    x[torch.rand(batch_size, device=device) < 0.5, ..., 1] = 0
    return x, num_frames


@torch.no_grad()
def augment_benchmark(device, batch_size, args, iters=20):
    """Query/key pairs per second: two spatio_temporal_augment calls per batch of random raw sequences
    (B, 3, 300, 25, 2) with num_frames in [30, 300], made on `device`; loading the data is not timed."""
    x, num_frames = random_skeletons(batch_size, torch.device(device))
    seconds = seconds_per_call(lambda: [spatio_temporal_augment(x, num_frames, args) for _ in "qk"], device, iters)
    return batch_size / seconds


PERSON_COLOURS = ((255, 255, 255), (255, 160, 40))  # first and second person


@torch.no_grad()
def save_examples(x, num_frames, args, path, count=4, frames=4, size=96, axes=(0, 2)):
    """PNG of `count` samples, one row each: `frames` evenly spaced frames of the original (its valid frames),
    then of a query and of a key view (spatio_temporal_augment), as stick figures of both persons.

    Orthographic projection on the coordinates `axes` (horizontal, up): (0, 2) = x-z, the upright plane of
    normalised data (2s-AGCN's normalisation, --prepare and the synthetic skeletons: spine along z,
    shoulders along x); (0, 1) for raw camera coordinates (Kinect: y up). Each panel (original, query, key)
    is scaled to fit its tiles, one scale for its frames, so the shape changes of the shear show, not its
    translation. Returns path."""
    x, n = x[:count].float(), _valid(num_frames, x)[:count]
    views = [center_crop_resize(x, n, frames, 1.0)]  # the original, frames evenly spaced over the valid ones
    for _ in range(2):
        v = spatio_temporal_augment(x, n, args)
        views.append(v[:, :, torch.linspace(0, v.shape[2] - 1, frames).round().long().to(v.device)])
    tiles = []
    for panel in torch.stack(views, 1).cpu()[:, :, list(axes)].flatten(0, 1):  # (2, F, V, M) per panel
        present = [m for m in range(panel.shape[-1]) if panel[..., m].any()]  # absent persons are all zeros
        points = panel.permute(1, 3, 2, 0)[:, present]  # (F, persons, V, 2)
        lo, hi = points.flatten(0, 2).amin(0), points.flatten(0, 2).amax(0)
        pixels = ((points - (lo + hi) / 2) / (hi - lo).max().clamp(min=1e-6) * 0.9 + 0.5) * (size - 1)
        pixels[..., 1] = size - 1 - pixels[..., 1]  # image rows run down
        for f in range(frames):
            tile = torch.zeros(3, size, size, dtype=torch.uint8)
            for person, m in enumerate(present):
                tile = draw_keypoints(tile, pixels[f, person:person + 1], connectivity=NTU_EDGES,
                                      colors=PERSON_COLOURS[m], radius=1, width=1)
            tiles.append(tile)
    save_image(torch.stack(tiles).float() / 255, path, nrow=3 * frames, padding=4, pad_value=40 / 255)
    return path


# ============ skeleton representations and encoders (Sec 3.3.3, Sec 3.4.2, Table A.4) ============
#
# Every encoder takes the same raw augmented view x: (B, C=3, L=64, V=25, M=2) (L frames, V joints,
# M person slots, the second slot all zeros for one actor, Sec 3.4.2) and builds its own
# representation of it inside, so inter-skeleton contrast (Eq. 3.6) feeds one view to the encoders of
# both representations. The projection head is removed for the downstream tasks (Appendix A.1).

REPRESENTATIONS = (
    "seq",  # X^SEQ: an L x 150 multi-dimensional time series -> 3-layer BiGRU f^SEQ, 2048-d
    "img",  # X^IMG: an L x V pseudo-image with the 3 coordinates as channels -> HCN f^IMG, 4096-d
    "stg",  # X^STG: a spatio-temporal graph over the 25 NTU joints -> A-GCN f^STG, 256-d
)


def to_sequence(x):
    """X^SEQ: (B, C, L, V, M) -> (B, L, V * C * M), per frame joint-major, then coordinate, then person.

    Feature v * C * M + c * M + m holds coordinate c of joint v of person m, as the authors' feeder
    builds it (feeder/feeder_pretraining_inter.py: data.transpose(1, 2, 0, 3).reshape(-1, 150)).
    """
    B, C, L, V, M = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, L, V * C * M)


class BiGRU(nn.Module):
    """f^SEQ: 3-layer bidirectional GRU with H units per direction (Sec 3.4.2, after Su et al. [211]).

    (B, C, L, V, M) -> (B, 2 H): the top layer's outputs of both directions at the last frame, the
    feature the authors' moco/GRU.py returns (`encoder_hidden[count, seq_len - 1, :]`, 2048-d at
    H = 1024). Their EncoderRNN feeds a bidirectional nn.GRU one frame per call and carries the hidden
    state between calls; on a one-frame sequence the reverse direction cannot look ahead, so in their
    network *both* directions read the frames first to last and layer l + 1 reads the concatenated
    outputs of both directions of layer l. reverse_backward=False (default) computes exactly that
    function, with one full-sequence nn.GRU per layer and direction instead of a Python loop over
    frames (tests check it against their frame-by-frame loop). reverse_backward=True is the textbook
    BiGRU: the second direction reads the frames last to first and the feature is the final state of
    each direction (its output at frame 0, which has seen the whole sequence; its output at the last
    frame would have seen one frame).
    """

    def __init__(self, in_dim=150, hidden=1024, layers=3, reverse_backward=False):
        super().__init__()
        self.reverse_backward = reverse_backward
        dims = [in_dim] + [2 * hidden] * (layers - 1)
        self.fwd = nn.ModuleList(nn.GRU(d, hidden, batch_first=True) for d in dims)
        self.bwd = nn.ModuleList(nn.GRU(d, hidden, batch_first=True) for d in dims)
        self.feature_dim = 2 * hidden
        # The authors' weights_init_gru (moco/builder_inter.py): Xavier-uniform for every weight matrix,
        # PyTorch's default uniform for the biases.
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)

    def forward(self, x):
        """x: (B, C, L, V, M) -> (B, 2 H)."""
        h = to_sequence(x)
        for fwd, bwd in zip(self.fwd, self.bwd):
            fwd.flatten_parameters()  # weights leave cuDNN's single chunk after deepcopy (MoCo key encoder)
            bwd.flatten_parameters()
            h_f = fwd(h)[0]
            h_b = bwd(h.flip(1))[0].flip(1) if self.reverse_backward else bwd(h)[0]
            h = torch.cat([h_f, h_b], dim=2)  # (B, L, 2 H)
        if self.reverse_backward:
            return torch.cat([h_f[:, -1], h_b[:, 0]], dim=1)
        return h[:, -1]


def hcn_motion(x):
    """HCN's motion input: frame differences, resized back to L frames. (B, C, L, V, M) -> same shape.

    As the authors' moco/HCN.py: x[t + 1] - x[t] gives L - 1 frames, stretched to L by bilinear
    interpolation (align_corners=False) over the (frame, joint) plane, i.e. linear in time.
    """
    B, C, L, V, M = x.shape
    d = (x[:, :, 1:] - x[:, :, :-1]).permute(0, 1, 4, 2, 3).reshape(B, C * M, L - 1, V)
    d = F.interpolate(d, size=(L, V), mode="bilinear", align_corners=False)
    return d.view(B, C, M, L, V).permute(0, 1, 3, 4, 2)


def _fold_persons(x):
    """(B, C, L, V, M) -> (B M, C, L, V): the person slots go through shared weights as a batch."""
    B, C, L, V, M = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(B * M, C, L, V)


class HCN(nn.Module):
    """f^IMG: Hierarchical Co-occurrence Network (Li et al. 2018 [128]) as in the authors' moco/HCN.py.

    (B, C, L, V, M) -> (B, 4 c (L / 16) (window / 16)), 4096-d at full width (c = 64, L = window = 64).
    X^IMG is each person's L x V pseudo-image with the coordinates as channels. A position and a motion
    stream (`hcn_motion`) each learn point-level features with a 1x1 and a (3, 1) conv, then the
    joints become the channels (the co-occurrence step: the next convs see all joints at once); the
    streams are concatenated and two more convs follow. Both persons go through the same weights and
    the element-wise max over persons is the feature (the authors' `torch.max(logits[0], logits[1])`),
    flattened without HCN's fc7 layer. width scales c (tests use tiny networks); `window` is the
    authors' window_size: the conv2 width, which they tie to the 64 input frames.
    """

    def __init__(self, in_channels=3, num_joints=25, width=1.0, window=64, dropout=0.5):
        super().__init__()
        c = max(2, round(64 * width))
        self.window = window

        def stream():
            return nn.ModuleDict(dict(
                point=nn.Sequential(nn.Conv2d(in_channels, c, 1), nn.ReLU(),
                                    nn.Conv2d(c, window, (3, 1), padding=(1, 0))),
                joints=nn.Sequential(nn.Conv2d(num_joints, c // 2, 3, padding=1), nn.MaxPool2d(2),
                                     nn.Conv2d(c // 2, c, 3, padding=1), nn.Dropout2d(dropout),
                                     nn.MaxPool2d(2))))

        self.position, self.motion = stream(), stream()
        self.fuse = nn.Sequential(
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout), nn.MaxPool2d(2),
            nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.ReLU(), nn.Dropout2d(dropout), nn.MaxPool2d(2))
        self.feature_dim = 4 * c * (window // 16) * (window // 16)
        # The authors' weights_init: Xavier-uniform conv weights, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _stream(s, x):
        x = s["point"](x)                           # (B M, window, L, V)
        return s["joints"](x.permute(0, 3, 2, 1))   # joints as channels: (B M, V, L, window) -> (B M, c, L/4, window/4)

    def forward(self, x):
        """x: (B, C, L, V, M) with L == window -> (B, feature_dim)."""
        B, C, L, V, M = x.shape
        if L != self.window:
            raise ValueError(f"HCN expects {self.window} frames (its window size), got {L}")
        out = torch.cat([self._stream(self.position, _fold_persons(x)),
                         self._stream(self.motion, _fold_persons(hcn_motion(x)))], dim=1)
        out = self.fuse(out)                        # (B M, 4 c, L / 16, window / 16)
        return out.view(B, M, -1).amax(dim=1)


def build_encoder(name, width=1.0, frames=64, bigru="authors"):
    """The query/key encoder of one representation: (B, 3, L, 25, 2) -> (B, encoder.feature_dim).

    width 1.0 is the thesis's network (Sec 3.4.2); smaller widths give cheap test/CPU models: for
    "seq" it scales H (H = round(1024 width), at least 8), for "img" and "stg" the channels.
    """
    if name == "seq":
        return BiGRU(in_dim=3 * 25 * 2, hidden=max(8, round(1024 * width)), layers=3,
                     reverse_backward=bigru == "textbook")
    if name == "img":
        return HCN(in_channels=3, num_joints=25, width=width, window=frames)
    if name == "stg":
        return AGCN(in_channels=3, num_persons=2, width=width)
    raise ValueError(f"unknown skeleton representation {name!r}; choose from {REPRESENTATIONS}")


class ProjectionHead(nn.Module):
    """MLP d -> d -> dim (Sec 3.4.2: "embeddings of a fixed size of 128"), (B, d) -> (B, dim).

    As the authors' --mlp head (moco/builder_inter.py): Linear, ReLU, Linear, no batch norm. Its first
    layer is new (PyTorch's default initialisation); its last layer is the encoder's original `fc`, so it
    keeps that encoder's initialisation: BiGRU Xavier-uniform weights (their weights_init_gru), HCN
    Xavier-uniform weights and zero biases (their weights_init), AGCN weights ~ N(0, 2 / dim) (their
    Model.__init__). The output is not normalised here; the contrastive loss L2-normalises it.
    """

    def __init__(self, in_dim, dim=128, representation="seq"):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, dim))
        last = self.net[2]
        if representation == "stg":
            nn.init.normal_(last.weight, 0.0, (2.0 / dim) ** 0.5)
        else:
            nn.init.xavier_uniform_(last.weight)
        if representation == "img":
            nn.init.zeros_(last.bias)

    def forward(self, z):
        return self.net(z)


class EncoderWithHead(nn.Module):
    """f_q or f_k of MoCo: backbone then projection head, (B, 3, L, 25, 2) -> (B, dim).

    Downstream tasks keep `.backbone` only (the head is removed, Appendix A.1).
    """

    def __init__(self, backbone, dim=128, representation="seq"):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionHead(backbone.feature_dim, dim, representation)

    def forward(self, x):
        return self.head(self.backbone(x))


def count_parameters(module):
    """Number of parameters (trainable or not) of a module: the '# Inference Params.' of Table A.4."""
    return sum(p.numel() for p in module.parameters())


def encoder_benchmark(names, device, batch_size=64, length=64, width=1.0, repeats=2, amp=False):
    """Seconds for one forward + backward of each encoder with its projection head, {name: seconds}:
    a random batch (batch_size, 3, length, 25, 2), loss = sum of the 128-d outputs, one untimed warm-up,
    the mean of `repeats` timed passes; amp: bf16 autocast (on the CPU too)."""
    device, times = torch.device(device), {}
    for name in names:
        model = EncoderWithHead(build_encoder(name, width, length), representation=name).to(device).train()
        x = torch.randn(batch_size, 3, length, 25, 2, device=device)

        def step():
            model.zero_grad(set_to_none=True)
            with autocast(device, amp, cpu=True):
                loss = model(x).float().sum()
            loss.backward()

        times[name] = seconds_per_call(step, device, repeats, warmup=1)
    return times


# ============ intra- and inter-skeleton contrast (Sec 3.3.2-3.3.3, Eq. 3.5-3.8) ============

def contrast_pairs(reprs):
    """(query representation, key representation) of every InfoNCE term.

    One representation: intra-skeleton contrast, its query against its own key and queue (Eq. 3.5).
    Two or three: inter-skeleton contrast, every query against the key and the queue of each *other*
    representation (Eq. 3.6-3.8); with three that is six terms.
    """
    if len(reprs) == 1:
        return [(reprs[0], reprs[0])]
    return [(a, b) for a in reprs for b in reprs if a != b]


class SkeletonContrast(nn.Module):
    """MoCo with one query encoder f_q, key encoder f_k and negative queue N per representation.

    The key encoders follow their query encoders by momentum (theta_k <- m theta_k + (1-m) theta_q)
    on the real parameters, and the queues are filled with the keys of all processes, so the model
    behaves the same on one GPU and under torchrun. (The authors' code updated the key encoders
    inside the forward of DataParallel replicas, which may not have moved them at all (README); here
    there is one copy, updated every step.)
    """

    def __init__(self, reprs, width=1.0, dim=128, queue_size=16384, momentum=0.999, temperature=0.07,
                 shuffle_bn=False, frames=64, bigru="authors", bn_splits=1, negatives="queue"):
        super().__init__()
        self.reprs, self.negatives = list(reprs), negatives
        self.momentum, self.temperature, self.shuffle_bn = momentum, temperature, shuffle_bn
        self.bn_splits = bn_splits
        self.encoder_q = nn.ModuleDict({r: EncoderWithHead(build_encoder(r, width, frames, bigru), dim, r)
                                        for r in self.reprs})
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        for r in self.reprs:
            self.register_buffer(f"queue_{r}", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def queue(self, r):
        return getattr(self, f"queue_{r}")

    def forward(self, x_q, x_k):
        """x_q, x_k: the query and key views (B, 3, L, 25, 2) of the same sequences.

        Returns (loss, terms): the sum of the InfoNCE terms (Eq. 3.6) and a dict
        'query->key' -> (loss of the term, top-1 of the positive among the queue's negatives, batch_top1).
        """
        if self.negatives == "batch":
            return self.in_batch(x_q, x_k)
        splits = self.bn_splits if self.shuffle_bn else 1  # AGCN has BatchNorm (shuffle-BN)
        q = {r: F.normalize(encode_queries(self.encoder_q[r], x_q, splits).float(), dim=1) for r in self.reprs}
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            keys = encode_keys([self.encoder_k[r] for r in self.reprs], x_k, self.shuffle_bn, splits)
            k = {r: F.normalize(z.float(), dim=1) for r, z in zip(self.reprs, keys)}
        loss, terms = 0.0, {}
        for a, b in contrast_pairs(self.reprs):
            # [Z_q^a . Z_k^b, Z_q^a . Z_n^b for Z_n in N^b] / tau, fp32
            logits = contrast_logits(q[a], k[b], self.queue(b), self.temperature)
            labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            term = F.cross_entropy(logits, labels)                     # Eq. 3.5 / 3.7 / 3.8
            loss = loss + term
            terms[f"{a}->{b}"] = (term.detach(), (logits.argmax(dim=1) == 0).float().mean(), batch_top1(q[a], k[b]))
        ptr = int(self.queue_ptr)  # all queues advance together
        for r in self.reprs:
            self.queue_ptr[0] = enqueue(self.queue(r), ptr, k[r])
        return loss, terms

    def in_batch(self, x_q, x_k):
        """`--negatives batch`: the same terms with the other sequences of the (global) batch as N and the keys
        from the query encoders, trained through both views (no key encoders, no queue; README). Each
        encoder sees both views in one batch, so BatchNorm statistics are shared by every query and key."""
        q, keys = {}, {}
        for r in self.reprs:
            q[r], k = F.normalize(self.encoder_q[r](torch.cat([x_q, x_k])).float(), dim=1).chunk(2)
            keys[r], labels = global_keys(k)  # N: the keys of every process; the positive at `labels`
        loss, terms = 0.0, {}
        for a, b in contrast_pairs(self.reprs):
            logits = batch_logits(q[a], keys[b], self.temperature)
            term = F.cross_entropy(logits, labels)
            loss = loss + term
            top1 = (logits.argmax(dim=1) == labels).float().mean()
            terms[f"{a}->{b}"] = (term.detach(), top1, top1)
        return loss, terms


# ============ data ============

def dataset_splits(root, say=print, flag="--data-root", **synthetic_world):
    """(train, val) SkeletonDatasets of a protocol folder; without one, the synthetic skeletons
    (synthetic_skeleton_dataset(**synthetic_world)). A missing or unreadable file stops the run with
    one line naming `flag` and the file."""
    if root is None:
        synthetic = synthetic_skeleton_dataset(**synthetic_world)
        return SkeletonDataset(**synthetic["train"]), SkeletonDataset(**synthetic["val"])
    try:
        splits = [SkeletonDataset(**protocol_paths(root, split)) for split in ("train", "val")]
    except (OSError, ValueError) as err:
        raise SystemExit(f"{flag} {root}: {err}") from None
    for split, dataset in zip(("train", "val"), splits):
        if dataset.num_frames is None:
            say(f"{root}: no {split}_num_frame.npy; valid frames are counted per sample (zero padding and "
                f"2s-AGCN's padding by repetition are recognised, common.skeleton.count_valid_frames)")
    return tuple(splits)


def make_loader(dataset, args, d, train, drop_last=False):
    """Training: shuffled and sharded over processes. Evaluation: sample i goes to rank i mod
    world_size (no padding, so counts summed over processes are exact)."""
    if train:
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed,
                                                      drop_last=drop_last) \
            if d.distributed else torch.utils.data.RandomSampler(dataset)
    else:
        sampler = range(d.rank, len(dataset), d.world_size)
    return torch.utils.data.DataLoader(dataset, batch_size=d.local_batch(args.batch_size), sampler=sampler,
                                       num_workers=args.workers, drop_last=drop_last,
                                       pin_memory=d.device.type == "cuda",
                                       persistent_workers=train and args.workers > 0)


def class_balanced_subset(labels, fraction, seed):
    """Indices of `fraction` of the samples of every class (at least one each), drawn by `seed`
    (Sec 3.4.3.3: 1 / 5 / 10 / 20 % of the labels)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * len(members))))
        chosen.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


# ============ arguments ============

# Without --data-root: the synthetic skeletons (8 actions, 320 training sequences), encoders at 1/8
# width on 32-frame views, a 256-key queue, 200 steps (about 3 minutes on 2 CPU cores); flags given on
# the command line win. The key momentum stays the thesis's 0.999 and the lr 0.01: with 0.99 and 0.03 the
# key encoders drifted so fast over the 8 batches in the queue that the queries found their keys by
# freshness (top1 97%, batch_top1 at chance) and the features fell below a random encoder's (README).
# Shuffle-BN in 2 groups of 16: the whole run took 126 s without groups, 146 s with 2, 192 s with 4
# (AGCN at batch 8 is slow on the CPU).
SYNTHETIC_PRESET = dict(epochs=20, batch_size=32, queue_size=256, width=0.125, frames=32, lr=0.01,
                        moco_momentum=0.999, workers=2, print_freq=5, schedule=[], bn_splits=2)
# Each downstream protocol's own defaults (Appendix A.1); flags given on the command line win.
EVAL_DEFAULTS = {
    "linear": dict(epochs=80, lr=0.1, schedule=[50, 70], batch_size=64),     # SGD, frozen encoder
    "knn": dict(batch_size=64),
    "semi": dict(epochs=50, lr=1e-4, schedule=[30, 40], batch_size=64),      # Adam, all layers
    "transfer": dict(epochs=50, lr=1e-4, schedule=[30, 40], batch_size=64),
    "finetune": dict(epochs=50, lr=1e-4, schedule=[30, 40], batch_size=64),
}
SYNTHETIC_EVAL_PRESET = {
    "linear": dict(epochs=30, lr=0.1, schedule=[20, 26], batch_size=32, workers=2, print_freq=5),
    "knn": dict(batch_size=32, workers=2),
    "semi": dict(epochs=20, lr=1e-3, schedule=[14, 18], batch_size=16, workers=2, print_freq=5),
    "transfer": dict(epochs=20, lr=1e-3, schedule=[14, 18], batch_size=16, workers=2, print_freq=5),
    "finetune": dict(epochs=20, lr=1e-3, schedule=[14, 18], batch_size=16, workers=2, print_freq=5),
}
# Presets in the order they apply (later ones win; flags given on the command line always win).
PRESETS = [("synthetic pretraining (no --data-root, no --eval)", lambda a: a.data_root is None and not a.eval,
            SYNTHETIC_PRESET)]
PRESETS += [(f"--eval {e} (App. A.1)", lambda a, e=e: a.eval == e, v) for e, v in EVAL_DEFAULTS.items()]
PRESETS += [(f"synthetic --eval {e} (no --data-root)", lambda a, e=e: a.eval == e and a.data_root is None,
             dict(v, width=SYNTHETIC_PRESET["width"], frames=SYNTHETIC_PRESET["frames"]))
            for e, v in SYNTHETIC_EVAL_PRESET.items()]


def _reprs(text):
    if text == "auto":
        return text
    names = [r for r in text.split(",") if r]
    bad = [r for r in names if r not in REPRESENTATIONS]
    if bad or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one to three distinct names of {','.join(REPRESENTATIONS)}")
    return names


def _milestones(text):
    try:
        return [int(m) for m in text.split(",") if m]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected epochs separated by commas, e.g. 50,70")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Skeleton-contrastive self-supervised pretraining and its downstream protocols "
                    "(thesis Ch. 3, App. A). Defaults are the thesis's (Sec 3.4.2, App. A.1); each --eval "
                    "protocol has its own, and without --data-root the built-in synthetic skeletons are "
                    "used with CPU-sized values (the presets below).",
        formatter_class=HelpFormatter)
    add_common_args(parser, video=False,
                    data_root="protocol folder with {train,val}_data_joint.npy (N, 3, 300, 25, 2), "
                              "{train,val}_label.pkl and optionally {train,val}_num_frame.npy; without "
                              "it the built-in synthetic skeletons are written (once) and used",
                    amp="mixed precision: bf16 autocast on CUDA and on the CPU (the BiGRU runs 2x faster "
                        "on CPUs with native bf16)")
    add_augmentation_args(parser)
    g = parser.add_argument_group("representations and contrast (Sec 3.3.2-3.3.3, 3.4.2)")
    g.add_argument("--reprs", type=_reprs, default="seq,stg",
                   help="skeleton representations: one name = intra-skeleton contrast (Eq. 3.5); two or "
                        "three = inter-skeleton contrast (Eq. 3.6-3.8). seq = BiGRU, img = HCN, "
                        "stg = AGCN; seq,stg is the thesis's best pair (Table 3.6)")
    g.add_argument("--width", type=float_in(0, open_low=True), default=1.0,
                   help="channel / hidden-unit multiplier of every encoder; 1.0 is the thesis's "
                        "(BiGRU H=1024, HCN 4096-d, AGCN 256-d)")
    g.add_argument("--bigru", choices=["authors", "textbook"], default="authors",
                   help="seq encoder: 'authors' computes the network of the authors' code, which feeds "
                        "their bidirectional GRU one frame at a time, so both directions read the frames "
                        "first to last (BiGRU docstring); 'textbook' lets the second direction read them "
                        "last to first")
    g.add_argument("--queue-size", type=int, default=16384,
                   help="negatives |N| per representation: 16,384 for NTU-60/120, 8,192 for PKU-MMD I, "
                        "2,048 for PKU-MMD II (Sec 3.4.2)")
    g.add_argument("--temperature", type=float_in(0, open_low=True), default=0.07, help="tau in Eq. 3.5-3.8")
    g.add_argument("--negatives", choices=["queue", "batch"], default="queue",
                   help="N of Eq. 3.5-3.8: queue = MoCo's queue and momentum key encoders (Sec 3.4.2); batch = "
                        "the other sequences of the batch (of all processes under torchrun), keys from the query "
                        "encoders (a CPU diagnostic, README)")
    g.add_argument("--bn-splits", type=int_at_least(1), default=4,
                   help="one process (CPU, one GPU): BatchNorm groups for shuffle-BN (MoCo Sec 3.3): the key batch is "
                        "shuffled and encoded in this many groups, the queries in as many groups in order, as MoCo's "
                        "single-GPU demo; under torchrun the keys are shuffled across processes instead. 1 = off")
    g.add_argument("--moco-momentum", type=float_in(0, 1), default=0.999, help="key encoder momentum m")
    g.add_argument("--momentum", type=float_in(0, 1), default=0.9, help="SGD momentum")
    g.add_argument("--weight-decay", type=float_in(0), default=1e-4,
                   help="1e-4 for pretraining (Sec 3.4.2); the linear probe uses 0 as the authors' code")
    g.add_argument("--schedule", type=_milestones, default="351",
                   help="epochs after which the learning rate drops 10x. Pretraining: 351 of 450 "
                        "epochs (authors' NTU-60 script; their NTU-120 script uses 251,351 of 350); "
                        "each --eval has its own (App. A.1): linear 50,70; semi/transfer/finetune 30,40")
    g = parser.add_argument_group("downstream (App. A.1)")
    g.add_argument("--eval", choices=sorted(EVAL_DEFAULTS), default=None,
                   help="run a downstream protocol on --checkpoint instead of pretraining: linear "
                        "(Table 3.1), knn (Table 3.2), semi (Table 3.3), transfer (Table 3.4), "
                        "finetune (Table A.1)")
    g.add_argument("--checkpoint", nargs="+", default=None,
                   help="the checkpoint.pt that pretraining wrote; its query encoders are evaluated "
                        "(projection heads removed). Several: one per --downstream-reprs, in that order (Table "
                        "A.4's combined intra rows: two representations pretrained in separate runs)")
    g.add_argument("--downstream-reprs", type=_reprs, default="auto",
                   help="query encoders whose features are concatenated downstream (Table A.4: e.g. "
                        "seq,stg); auto: seq if the checkpoint pretrained it, else its first representation "
                        "(--init scratch: seq)")
    g.add_argument("--select-on-test", action="store_true",
                   help="linear/semi/transfer/finetune: evaluate after every epoch and report the best test "
                        "epoch, as the authors' action_classification.py (optimistic); off = the last epoch")
    g.add_argument("--init", choices=["pretrained", "scratch"], default="pretrained",
                   help="scratch: random encoder weights (the dagger rows of Table 3.3, the "
                        "'supervised-only' row of Table A.1)")
    g.add_argument("--label-fraction", type=float_in(0, 1, open_low=True), default=0.01,
                   help="semi: fraction of the training labels, class-balanced (Table 3.3: 0.01 0.05 0.1 0.2)")
    g.add_argument("--repeats", type=int_at_least(1), default=1,
                   help="semi/transfer/finetune: runs with different label subsets and seeds; mean +- std "
                        "is reported (Table 3.3 uses 5)")
    g.add_argument("--transfer-data-root", default=None,
                   help="transfer: the target protocol folder (Table 3.4: PKU-MMD II x-sub); default "
                        "synthetic skeletons with other actors and classes")
    g = parser.add_argument_group("data preparation (common/skeleton.py)")
    g.add_argument("--prepare", choices=["ntu60", "ntu120", "pku1", "pku2"], default=None,
                   help="convert the raw download into --data-root and exit: NTU '.skeleton' files (with "
                        "--raw-dir, --protocol) or PKU-MMD skeleton + label files (--raw-dir, --pku-labels, "
                        "--pku-split)")
    g.add_argument("--raw-dir", nargs="+", default=None,
                   help="NTU: the folder(s) of .skeleton files (both NTU-120 downloads for ntu120); "
                        "PKU-MMD: the skeleton folder")
    g.add_argument("--protocol", default="xview",
                   help="NTU benchmark: xview or xsub (NTU-60), xset or xsub (NTU-120)")
    g.add_argument("--pku-labels", default=None, help="PKU-MMD label folder")
    g.add_argument("--pku-split", default=None, help="PKU-MMD official cross-subject split file")
    g = parser.add_argument_group("tools")
    g.add_argument("--save-examples", action="store_true",
                   help="write OUT_DIR/examples.png: a few sequences and their query/key views")
    g.add_argument("--benchmark", action="store_true",
                   help="print augment pairs/s, each encoder's forward+backward time at batch 64 and "
                        "the augmentation share of a contrast step on --device, then exit")
    parser.set_defaults(epochs=450, batch_size=64, lr=0.01, out_dir="runs/skeleton_contrast")
    args = parse_with_presets(parser, argv, PRESETS)
    if not args.eval and not args.prepare:
        try:
            check_queue_size(args.queue_size, args.batch_size)  # --batch-size is the global batch
        except ValueError as err:
            parser.error(str(err))
    if args.prepare and (not args.raw_dir or not args.data_root):
        parser.error(f"--prepare {args.prepare} needs --raw-dir (the raw download) and --data-root "
                     f"(the output folder)")
    if args.prepare in ("pku1", "pku2") and not (args.pku_labels and args.pku_split):
        parser.error(f"--prepare {args.prepare} needs --pku-labels and --pku-split")
    downstream_only = [d for d in ("checkpoint", "downstream_reprs", "select_on_test", "init", "label_fraction",
                                   "repeats", "transfer_data_root", "downstream_l_min", "center_crop")
                       if d in args.given_flags]
    if downstream_only and not args.eval:
        parser.error(f"--{downstream_only[0].replace('_', '-')} is a flag of the downstream protocols: give --eval "
                     f"linear, knn, semi, transfer or finetune (pretraining does not use it)")
    if args.eval and args.init == "pretrained" and not args.checkpoint:
        parser.error(f"--eval {args.eval} needs --checkpoint (the pretraining checkpoint.pt), or "
                     f"--init scratch")
    encoder_flags = [d for d in ("width", "bigru") if d in args.given_flags]
    if args.eval and args.init == "pretrained" and encoder_flags:
        parser.error(f"--{encoder_flags[0]}: the encoders of --eval {args.eval} are built as --checkpoint "
                     f"holds them; the flag only shapes pretraining and --init scratch")
    if args.eval == "knn" and args.init == "scratch":
        parser.error("--eval knn needs pretrained features: drop --init scratch")
    if args.jitter_joints > 25:
        parser.error(f"--jitter-joints {args.jitter_joints}: the skeletons have 25 joints (NTU, PKU-MMD)")
    if args.epochs < 1 and args.eval != "knn" and not args.prepare:  # knn trains nothing
        parser.error(f"--epochs {args.epochs}: {'--eval ' + args.eval if args.eval else 'pretraining'} trains "
                     f"at least one epoch")
    return args


# ============ pretraining ============

def train_step(model, optimizer, scaler, x, num_frames, args, d, epoch=0, it=0):
    """Augment a batch into query/key views on the device (Eq. 3.4) and take one contrast step;
    returns (the loss as a float, the terms), and stops on a non-finite loss."""
    x_q = spatio_temporal_augment(x, num_frames, args)
    x_k = spatio_temporal_augment(x, num_frames, args)
    with autocast(d.device, args.amp, cpu=True):
        loss, terms = model(x_q, x_k)
    return optimizer_step(loss, optimizer, scaler, epoch, it), terms


def benchmark(args, d, model, optimizer):
    """The speed figures of the issue: augmentation alone, each encoder alone, a whole step."""
    pairs_per_s = augment_benchmark(d.device, args.batch_size, args)
    print(f"augment pairs/s: {pairs_per_s:.0f}  (query+key views of (3, 300, 25, 2) sequences, "
          f"batch {args.batch_size}, {d.device})", flush=True)
    times = encoder_benchmark(list(REPRESENTATIONS), d.device, batch_size=64, length=args.frames,
                              width=args.width, amp=args.amp)
    precision = "bf16 autocast" if args.amp else "fp32"
    for r, seconds in times.items():
        print(f"{r} encoder forward+backward: {seconds:.3f} s  (batch 64, {args.frames} frames, "
              f"width {args.width}, {precision}, {d.device})", flush=True)
    x, num_frames = random_skeletons(args.batch_size, d.device)
    scaler = grad_scaler(d.device, args.amp)
    step_s = seconds_per_call(lambda: train_step(model, optimizer, scaler, x, num_frames, args, d), d.device, 2,
                              warmup=1)  # the first step pays for allocations
    print(f"contrast step: {step_s:.3f} s  ({'+'.join(args.reprs)}, batch {args.batch_size}); "
          f"augmentation share: {100 * args.batch_size / pairs_per_s / step_s:.1f}%", flush=True)


def pretrain(args, d):
    train_set, _ = dataset_splits(args.data_root, d.print)
    loader = make_loader(train_set, args, d, train=True, drop_last=True)
    if len(loader) == 0:
        raise SystemExit(f"{len(train_set)} sequences are too few for a global batch of "
                         f"{args.batch_size}; lower --batch-size")
    d.print(f"{len(train_set)} pretraining sequences, {len(loader)} iterations per epoch, "
            f"representations {'+'.join(args.reprs)}: "
            f"{'intra' if len(args.reprs) == 1 else 'inter'}-skeleton contrast")

    model = SkeletonContrast(args.reprs, args.width, queue_size=args.queue_size,
                             momentum=args.moco_momentum, temperature=args.temperature,
                             shuffle_bn=True, bn_splits=args.bn_splits, frames=args.frames,
                             bigru=args.bigru, negatives=args.negatives)
    for r in args.reprs:
        d.print(f"  f_q^{r.upper()}: {count_parameters(model.encoder_q[r].backbone) / 1e6:.2f}M parameters "
                f"+ {count_parameters(model.encoder_q[r].head) / 1e6:.2f}M projection head")
    model = d.wrap(model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.schedule, gamma=0.1)
    scaler = grad_scaler(d.device, args.amp)

    if args.benchmark:
        if d.distributed:
            raise SystemExit("--benchmark measures one process; run it without torchrun")
        benchmark(args, d, model, optimizer)
        return

    ckpt = resume_training(args, args.out_dir, d, model, optimizer, scheduler, scaler, args.epochs,
                           ignore=("save_examples",))
    start_epoch = ckpt["epoch"] + 1 if ckpt else 0
    progress = Progress(d, args.epochs, len(loader), args.batch_size, args.print_freq)
    for epoch in range(start_epoch, args.epochs):
        if d.distributed:
            loader.sampler.set_epoch(epoch)
        model.train()
        t_epoch, sums = time.time(), {}
        for it, (x, _, num_frames) in enumerate(loader):
            x = x.to(d.device, non_blocking=True)
            num_frames = num_frames.to(d.device, non_blocking=True)
            if args.save_examples and epoch == start_epoch and it == 0 and d.main:
                save_examples(x, num_frames, args, os.path.join(args.out_dir, "examples.png"))
            loss, terms = train_step(model, optimizer, scaler, x, num_frames, args, d, epoch, it)
            sums["loss"] = sums.get("loss", 0.0) + loss
            for name, values in terms.items():
                for key, value in zip(("loss", "top1", "batch_top1"), values):
                    sums[f"{key} {name}"] = sums.get(f"{key} {name}", 0.0) + value.item()
            progress.step(epoch, it, loss, optimizer.param_groups[0]["lr"])
        record = dict(epoch=epoch, **{k: d.all_reduce_mean(v / len(loader)) for k, v in sums.items()},
                      lr=optimizer.param_groups[0]["lr"], seconds=round(time.time() - t_epoch, 1))
        scheduler.step()
        save_epoch(d, args.out_dir, record, model, optimizer, scheduler, scaler, epoch, args)
        if d.main:  # each query encoder alone, without its projection head: for use outside this script
            for r, encoder in unwrap(model).encoder_q.items():
                save_atomic(encoder.backbone.state_dict(), os.path.join(args.out_dir, f"backbone_{r}.pt"))
        d.barrier()


# ============ downstream (App. A.1) ============

class Downstream(nn.Module):
    """Query encoders without projection heads, features concatenated (Table A.4), then a linear
    classifier: (B, 3, L, 25, 2) -> (B, num_classes)."""

    def __init__(self, backbones, num_classes):
        super().__init__()
        self.backbones = nn.ModuleDict(backbones)
        self.feature_dim = sum(b.feature_dim for b in backbones.values())
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self.fc.weight.data.normal_(0.0, 0.01)  # as MoCo's linear classifier
        self.fc.bias.data.zero_()

    def features(self, x):
        return torch.cat([b(x) for b in self.backbones.values()], dim=1)

    def forward(self, x):
        return self.fc(self.features(x))


def pretrained_backbones(args):
    """The query encoders named by --downstream-reprs: loaded strictly from --checkpoint (one checkpoint for
    all, or one per representation in the order of --downstream-reprs: Table A.4's combined intra rows join
    the encoders of separate runs), or random with --init scratch. Returns (name -> encoder, width)."""
    if args.init == "scratch":
        reprs = ["seq"] if args.downstream_reprs == "auto" else args.downstream_reprs
        return {r: build_encoder(r, args.width, args.frames, args.bigru) for r in reprs}, args.width
    ckpts = {path: load_checkpoint(path, name=f"--checkpoint {path}") for path in args.checkpoint}
    for path, ckpt in ckpts.items():
        if "model" not in ckpt or "args" not in ckpt:
            raise SystemExit(f"--checkpoint {path}: not a checkpoint written by skeleton_contrast.py "
                             f"(keys {sorted(ckpt)[:8]})")
    first = ckpts[args.checkpoint[0]]["args"]["reprs"]
    reprs = args.downstream_reprs
    if reprs == "auto":
        reprs = ["seq"] if "seq" in first else first[:1]
    if len(args.checkpoint) not in (1, len(reprs)):
        raise SystemExit(f"--checkpoint: {len(args.checkpoint)} files for --downstream-reprs {','.join(reprs)}; "
                         f"give one checkpoint, or one per representation in that order")
    sources = dict(zip(reprs, args.checkpoint * len(reprs) if len(args.checkpoint) == 1 else args.checkpoint))
    backbones, widths = {}, set()
    for r, path in sources.items():
        pre_args = ckpts[path]["args"]
        if r not in pre_args["reprs"]:
            raise SystemExit(f"--downstream-reprs {','.join(reprs)}: {r} was not pretrained in {path} (it has "
                             f"{','.join(pre_args['reprs'])}); a representation can only be used downstream "
                             f"when it was present in pretraining (Table 3.6)")
        if r == "img" and args.frames != pre_args["frames"]:
            raise SystemExit(f"--frames {args.frames}: the HCN (img) encoder of {path} was pretrained on "
                             f"{pre_args['frames']}-frame views and only takes that length")
        backbone = build_encoder(r, pre_args["width"], pre_args["frames"], pre_args.get("bigru", "authors"))
        prefix = f"encoder_q.{r}.backbone."
        state = {k[len(prefix):]: v for k, v in ckpts[path]["model"].items() if k.startswith(prefix)}
        result = backbone.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise SystemExit(f"--checkpoint {path}: the {r} encoder does not match (width {pre_args['width']}): "
                             f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")
        backbones[r] = backbone
        widths.add(pre_args["width"])
    return backbones, widths.pop() if len(widths) == 1 else sorted(widths)


@torch.no_grad()
def evaluate(model, loader, args, d):
    """Top-1 on the central crop (App. A.1), counted over all processes."""
    model.eval()
    correct = total = 0
    for x, y, num_frames in loader:
        x = downstream_crop(x.to(d.device), num_frames.to(d.device), args, train=False)
        with autocast(d.device, args.amp, cpu=True):
            correct += int((model(x).argmax(dim=1).cpu() == y).sum())
        total += len(y)
    counts = torch.tensor([correct, total], dtype=torch.float64, device=d.device)
    if d.distributed:
        torch.distributed.all_reduce(counts)
    return float(counts[0] / counts[1])


def train_classifier(backbones, train_set, val_set, args, d, frozen):
    """Linear evaluation (frozen=True: SGD on the classifier, encoders frozen in eval mode) or
    finetuning (frozen=False: Adam on everything), step schedule --schedule.

    Returns (top-1, epoch it was read at). The thesis does not say which epoch it reports; the default is
    the last one (no choice made on the test set). --select-on-test evaluates after every epoch and
    returns the best, as the authors' action_classification.py does (best_acc1)."""
    model = Downstream(backbones, int(max(train_set.labels)) + 1)
    if frozen:
        for p in model.backbones.parameters():
            p.requires_grad = False
    ddp = d.wrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if frozen:
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=0.0, fused=True)
    else:
        optimizer = torch.optim.Adam(params, lr=args.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.schedule, gamma=0.1)
    scaler = grad_scaler(d.device, args.amp)
    loader = make_loader(train_set, args, d, train=True)
    val_loader = make_loader(val_set, args, d, train=False)
    progress = Progress(d, args.epochs, len(loader), args.batch_size, args.print_freq)
    best = (-1.0, -1)  # (top-1, epoch)
    for epoch in range(args.epochs):
        if d.distributed:
            loader.sampler.set_epoch(epoch)
        model.train()
        if frozen:
            model.backbones.eval()  # BatchNorm statistics stay the pretrained ones
        for it, (x, y, num_frames) in enumerate(loader):
            x = downstream_crop(x.to(d.device, non_blocking=True), num_frames.to(d.device), args, train=True)
            with autocast(d.device, args.amp, cpu=True):
                loss = F.cross_entropy(ddp(x), y.to(d.device))
            loss = optimizer_step(loss, optimizer, scaler, epoch, it)
            progress.step(epoch, it, loss, optimizer.param_groups[0]["lr"])
        scheduler.step()
        if args.select_on_test or epoch == args.epochs - 1:
            top1 = evaluate(model, val_loader, args, d)
            d.print(f"epoch {epoch}: test top-1 {100 * top1:.2f}")
            if top1 > best[0]:  # without --select-on-test only the last epoch is evaluated
                best = (top1, epoch)
    return best


@torch.no_grad()
def extract_features(backbones, dataset, args, d):
    """(N, D) concatenated features of the central crops and (N,) labels, in dataset order."""
    model = Downstream(backbones, 1).to(d.device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    features, labels = [], []
    for x, y, num_frames in loader:
        x = downstream_crop(x.to(d.device), num_frames.to(d.device), args, train=False)
        features.append(model.features(x).float())
        labels.append(y.to(d.device))
    return torch.cat(features), torch.cat(labels)


def knn_top1(train_features, train_labels, test_features, test_labels, chunk=1024):
    """k = 1 nearest neighbour by cosine similarity (Sec 3.4.3.2, Table 3.2)."""
    train_features = F.normalize(train_features, dim=1)
    correct = 0
    for i in range(0, len(test_features), chunk):
        sim = F.normalize(test_features[i:i + chunk], dim=1) @ train_features.T
        correct += int((train_labels[sim.argmax(dim=1)] == test_labels[i:i + chunk]).sum())
    return correct / len(test_features)


def eval_result_path(args, reprs):
    """OUT_DIR/eval_<protocol>[_<label fraction>]_<reprs>[_scratch][_best].json; refuses (before training)
    to overwrite the result of another checkpoint there."""
    name = f"eval_{args.eval}" + (f"_{args.label_fraction:g}" if args.eval == "semi" else "") + \
        f"_{'+'.join(reprs)}" + ("_scratch" if args.init == "scratch" else "") + \
        ("_best" if args.select_on_test else "") + ".json"
    path = os.path.join(args.out_dir, name)
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f).get("checkpoint")
        if before != args.checkpoint:
            raise SystemExit(f"{path} holds the result of --checkpoint {before}; this run's is "
                             f"{args.checkpoint}: give another --out-dir")
    return path


def run_eval(args, d):
    backbones, width = pretrained_backbones(args)
    reprs = list(backbones)
    path = eval_result_path(args, reprs)
    params = {r: count_parameters(b) for r, b in backbones.items()}
    d.print(f"--eval {args.eval}: downstream representations {'+'.join(reprs)} "
            f"({', '.join(f'{r} {n / 1e6:.2f}M' for r, n in params.items())} parameters, Table A.4)")
    if args.eval == "transfer":  # the target dataset (Table 3.4: PKU-MMD II); without one, synthetic
        # skeletons with other classes and actors (all 10 actions, another seed)
        train_set, val_set = dataset_splits(args.transfer_data_root, d.print, "--transfer-data-root",
                                            num_classes=10, per_class_train=16, per_class_val=8, seed=1)
    else:
        train_set, val_set = dataset_splits(args.data_root, d.print)

    runs, epochs = [], []
    if args.eval == "knn":
        if d.main:  # one process computes it: the features of the whole training set are needed
            train_f, train_y = extract_features(backbones, train_set, args, d)
            val_f, val_y = extract_features(backbones, val_set, args, d)
            runs.append(knn_top1(train_f, train_y, val_f, val_y))
        d.barrier()
    elif args.eval == "linear":
        top1, epoch = train_classifier(backbones, train_set, val_set, args, d, frozen=True)
        runs.append(top1)
        epochs.append(epoch)
    else:
        for repeat in range(args.repeats):
            seed_everything(args.seed + 1000 * repeat, d.rank)
            fresh = copy.deepcopy(backbones)  # every repeat starts from the pretrained weights
            subset = train_set
            if args.eval == "semi":
                subset = torch.utils.data.Subset(
                    train_set, class_balanced_subset(train_set.labels, args.label_fraction, args.seed + repeat))
                subset.labels = [train_set.labels[i] for i in subset.indices]
                d.print(f"repeat {repeat}: {len(subset)} labelled sequences "
                        f"({args.label_fraction:.0%} of each class)")
            top1, epoch = train_classifier(fresh, subset, val_set, args, d, frozen=False)
            runs.append(top1)
            epochs.append(epoch)
            d.print(f"repeat {repeat}: top-1 {100 * top1:.2f} (epoch {epoch})")

    if d.main:
        top1 = np.array(runs) * 100
        result = dict(eval=args.eval, top1=float(top1.mean()), top1_std=float(top1.std()), runs=top1.tolist(),
                      selected_on_test=args.select_on_test if epochs else None, epochs_read=epochs,
                      downstream_reprs=reprs, init=args.init, checkpoint=args.checkpoint, width=width,
                      parameters=params, label_fraction=args.label_fraction if args.eval == "semi" else None,
                      train_samples=len(train_set), val_samples=len(val_set), args=vars(args))
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        spread = f" +- {top1.std():.2f} over {len(runs)} runs" if len(runs) > 1 else ""
        selection = ("; best test epoch, --select-on-test" if args.select_on_test else "; last epoch") \
            if epochs else ""
        print(f"{args.eval} top-1: {top1.mean():.2f}{spread}  ({'+'.join(reprs)}{selection}; written to "
              f"{path})", flush=True)


def prepare(args):
    """Raw download -> the shared .npy/.pkl format (normalised as 2s-AGCN does)."""
    if args.prepare.startswith("ntu"):
        counts = prepare_ntu(args.raw_dir if len(args.raw_dir) > 1 else args.raw_dir[0], args.data_root,
                             args.protocol, dataset=args.prepare, max_bad_fraction=args.max_bad_fraction)
    else:
        counts = prepare_pku_mmd(args.raw_dir[0], args.pku_labels, args.pku_split, args.data_root,
                                 phase=int(args.prepare[-1]), max_bad_fraction=args.max_bad_fraction)
    print(f"wrote {args.data_root}: " + ", ".join(f"{k} {v} samples" for k, v in counts.items()), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.prepare:
        return prepare(args)
    d = Dist(args.device)
    seed_everything(args.seed, d.rank)
    if d.device.type == "cpu":
        reuse_freed_cpu_memory()
    os.makedirs(args.out_dir, exist_ok=True)
    d.print(json.dumps(vars(args)))
    for line in args.presets:
        d.print(line)
    if args.eval:
        for flag, path in [("--checkpoint", c) for c in args.checkpoint or []] + \
                [("--transfer-data-root", args.transfer_data_root)]:
            if path is not None and not os.path.exists(path):
                raise SystemExit(f"{flag} {path}: not found")
        run_eval(args, d)
    else:
        pretrain(args, d)
    d.close()


if __name__ == "__main__":
    main()
