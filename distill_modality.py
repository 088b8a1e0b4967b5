"""Feature-Supervised Action Modality Transfer (thesis Chapter 2).

A teacher network trained to recognise *other* actions from RGB or optical flow supervises a depth
or 3D-skeleton student through its features, using unlabeled modality pairs of the target dataset
(Sec 2.3, Eq. 2.1-2.5); the student is then finetuned with a few labeled target examples per class
and evaluated video-level (Sec 2.4.3, Tables 2.1-2.5, Fig. 2.3). One script, four stages:

    teacher   supervised 3D-ResNet-18 (Hara et al.'s) on the source dataset's RGB or flow, evaluated on its
              held-out videos (or --teacher-checkpoint)
    transfer  the frozen teacher's penultimate feature supervises the student's (--granularity)
    finetune  --per-class K labeled target examples per class, drawn by --seed (each of --seeds)
    eval      video-level top-1 on the validation split; mean +- std over --seeds

    # CPU run of every stage on the built-in synthetic paired dataset (about 12 min on 2 CPU cores)
    python distill_modality.py
    # Table 2.3 "Combined" row, flow teacher from NTU-120 minus NTU-60, one GPU
    python distill_modality.py --data-root data/ntu --teacher-modality flow --granularity combined \
        --per-class 20 --seeds 0,1,2,3,4 --workers 8 --amp --out-dir runs/distill/flow_combined
    # the same on 8 GPUs: --batch-size is the global batch (128, 16 per GPU), the same flags as above
    torchrun --nproc_per_node=8 distill_modality.py --data-root data/ntu ...
    # two-stream row of Table 2.1: fuse the predictions of an RGB- and a flow-taught student
    python distill_modality.py --fuse runs/distill/rgb/results_transfer_k20.json \
        runs/distill/flow/results_transfer_k20.json --out-dir runs/distill/two_stream

Output in --out-dir: teacher/ (teacher.pt, checkpoint.pt, log.jsonl), transfer/ (student.pt,
checkpoint.pt, teacher_features.pt, log.jsonl), finetune_<init>_k<K>/seed<S>/ (model.pt,
checkpoint.pt, log.jsonl, predictions.pt) and results_<init>_k<K>.json (per-seed and mean +- std
video-level top-1). Every stage resumes with --resume auto.
"""
import argparse
import functools
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.io import ImageReadMode, decode_jpeg, decode_png, read_file

from common.backbones import (KINETICS_MEAN, KINETICS_STD, STGCN, convert_hara_state_dict, encoder_state_dict,
                              is_hara_state_dict, load_encoder_weights, video_encoder)
from common.engine import (Dist, HelpFormatter, Progress, add_common_args, append_jsonl, autocast, check_out_dir,
                           check_resume_args, checkpoint_args, grad_scaler, float_in, int_at_least,
                           load_checkpoint, optimizer_step, parse_with_presets, resume_training, save_atomic,
                           save_epoch, seed_everything, unwrap)
from common.skeleton import SkeletonDataset, ntu_split, parse_ntu_name, protocol_paths
from common.video import (READ_ERRORS, BadVideoCounter, clip_indices, count_frames, drop_missing, read_clip,
                          read_or_replace, read_samples, uniform_starts)

# ============ NTU RGB+D on disk: names, modalities, pairs (Sec 2.4.1, 2.4.2) ============
#
# NTU RGB+D as distributed, under --data-root (each folder can be given on its own):
#   nturgb+d_rgb/<name>_rgb.avi                        RGB, 1920 x 1080, 30 fps
#   nturgb+d_depth_masked/<name>/MDepth-%08d.png       masked depth, 16-bit PNG in millimetres, 0 = background
#   nturgb+d_flow/<name>/flow_x_%05d.jpg, flow_y_...   optical flow (denseflow / TV-L1 layout; x_, y_ also read)
#   nturgb+d_skeleton_npy/<protocol>/{train,val}_data_joint.npy, _label.pkl, _num_frame.npy
# <name> is SsssCcccPpppRrrrAaaa (setup, camera, performer, replication, action). The target dataset
# is NTU-60 (actions 1-60); the source dataset "NTU-120 minus NTU-60" is every NTU-120 video of actions
# 61-120 (Sec 2.4.2), found in the same kind of folders by the action number of the file name.

NTU60_ACTIONS = 60
# Depth is scaled to [0, 1] by a fixed metric range: min(depth, 4.5 m) / 4.5 m. 4.5 m is the far end
# of the Kinect v2's specified range (0.5-4.5 m); masked background (0) stays 0. A fixed range (not a
# per-video min-max) keeps absolute distance, so a person farther away looks different from a near one.
DEPTH_MAX_MM = 4500.0
FLOW_PREFIXES = (("flow_x_", "flow_y_"), ("x_", "y_"))  # denseflow / mmaction layouts
MODALITY_CHANNELS = dict(rgb=3, flow=2, depth=1)


def ntu_key(name):
    """'SsssCcccPpppRrrrAaaa' from a file or folder name ('..._rgb.avi', '.skeleton', 'MDepth' folder)."""
    ids = parse_ntu_name(name)
    return "S{setup:03d}C{camera:03d}P{subject:03d}R{replication:03d}A{action:03d}".format(**ids)


def ntu_action(key):
    return parse_ntu_name(key)["action"]


def _require_dir(path, flag):
    if path is None or not os.path.isdir(path):
        raise FileNotFoundError(f"{flag}: folder not found: {path}")


def index_ntu(folder, flag, videos):
    """{NTU name: path} of a folder's videos ('<name>_rgb.avi', any .avi/.mp4/.mkv; videos=True) or of its
    per-video frame folders (depth, flow); entries without an NTU name (e.g. a README) are skipped."""
    _require_dir(folder, flag)
    found = {}
    for entry in os.scandir(folder):
        is_video = entry.is_file() and entry.name.lower().endswith((".avi", ".mp4", ".mkv"))
        if is_video if videos else entry.is_dir():
            try:
                found[ntu_key(entry.name)] = entry.path
            except ValueError:
                continue
    return found


@functools.lru_cache(maxsize=None)
def depth_files(folder):
    """Sorted MDepth-%08d.png paths of one masked-depth folder (cached per process)."""
    return tuple(sorted(os.path.join(folder, f) for f in os.listdir(folder)
                        if f.startswith("MDepth-") and f.endswith(".png")))


@functools.lru_cache(maxsize=None)
def flow_files(folder):
    """(x paths, y paths) of one flow folder, matched by frame number: flow_x_%05d.jpg or x_%05d.jpg."""
    names = set(os.listdir(folder))
    for px, py in FLOW_PREFIXES:
        xs = sorted(n for n in names if n.startswith(px) and n.endswith(".jpg"))
        if xs:
            missing = [n for n in xs if py + n[len(px):] not in names]
            if missing:
                raise FileNotFoundError(f"{folder}: {py + missing[0][len(px):]} missing (flow y for {missing[0]})")
            return (tuple(os.path.join(folder, n) for n in xs),
                    tuple(os.path.join(folder, py + n[len(px):]) for n in xs))
    return (), ()


def non_empty(folders, files_of, what):
    """Drops (and reports on stderr) the folders without frames."""
    empty = sorted(k for k, f in folders.items() if not files_of(f))
    if empty:
        print(f"{len(empty)} empty {what} folder(s) skipped, e.g. {folders[empty[0]]}", file=sys.stderr, flush=True)
    return {k: f for k, f in folders.items() if k not in set(empty)}


def match_pairs(teacher_items, target_items, teacher_what, target_what):
    """Sorted NTU names present in both {name: path} dicts (Sec 2.3.1: unlabeled modality pairs).

    Target items without their teacher-modality counterpart (e.g. a depth folder without its RGB
    video) are reported on stderr and skipped.
    """
    names = sorted(set(teacher_items) & set(target_items))
    unmatched = sorted(set(target_items) - set(teacher_items))
    if unmatched:
        print(f"{len(unmatched)} {target_what} without a {teacher_what} skipped (unmatched pairs), e.g. "
              + ", ".join(unmatched[:5]), file=sys.stderr, flush=True)
    if not names:
        raise SystemExit(f"no {target_what} has a matching {teacher_what}: check the folders")
    return names


# ============ readers: uint8 / int16 clips on CPU workers ============

def read_depth_frames(paths, indices):
    """int32 (T, H, W) millimetres of the 16-bit PNGs at `indices`, read without losing range."""
    frames = []
    for i in indices:
        image = decode_png(read_file(paths[i]), mode=ImageReadMode.UNCHANGED)
        if image.dtype != torch.uint16:
            raise ValueError(f"{paths[i]}: an 8-bit PNG; masked depth maps are 16-bit PNGs in millimetres "
                             f"(NTU's nturgb+d_depth_masked)")
        frames.append(image[0].to(torch.int32))
    return torch.stack(frames)


def read_flow_frames(xs, ys, indices):
    """uint8 (T, H, W, 2) flow (x, y) at `indices`; 128 means no motion."""
    def gray(path):
        return decode_jpeg(read_file(path), mode=ImageReadMode.GRAY)[0]
    return torch.stack([torch.stack([gray(xs[i]), gray(ys[i])], -1) for i in indices])


def square_crop(frames, short_side, position):
    """(T, H, W[, C]) -> (T, S, S[, C]) with S = short_side: the square of side min(H, W) at `position`
    in [0, 1] along the long side (0.5 = centre), resized (depth: nearest, so no depth is invented
    between person and background; flow: bilinear)."""
    h, w = frames.shape[1:3]
    s = min(h, w)
    y, x = round(position * (h - s)), round(position * (w - s))
    frames = frames[:, y:y + s, x:x + s]
    if s == short_side:
        return frames
    planar = frames.unsqueeze(-1) if frames.dim() == 3 else frames
    planar = planar.permute(0, 3, 1, 2).float()
    depth = frames.dim() == 3
    planar = F.interpolate(planar, size=(short_side, short_side), mode="nearest" if depth else "bilinear",
                           align_corners=None if depth else False)
    planar = planar.permute(0, 2, 3, 1)
    return planar[..., 0].to(frames.dtype) if depth else planar.round().clamp(0, 255).to(torch.uint8)


class Modality:
    """One modality of a set of videos: num_frames(path) and read(path, indices, short_side, position)
    -> (T, S, S, C) clip (uint8 for rgb / flow, int32 millimetres for depth)."""

    def __init__(self, name):
        if name not in MODALITY_CHANNELS:
            raise ValueError(f"unknown modality {name!r}")
        self.name, self.channels = name, MODALITY_CHANNELS[name]
        self._frames = {}

    def num_frames(self, path):
        if path not in self._frames:
            if self.name == "rgb":
                n = count_frames(path)
            elif self.name == "depth":
                n = len(depth_files(path))
            else:
                n = len(flow_files(path)[0])
            if n < 1:
                raise ValueError(f"{path}: no {self.name} frames")
            self._frames[path] = n
        return self._frames[path]

    def read(self, path, indices, short_side, position):
        indices = np.asarray(indices) % self.num_frames(path)
        if self.name == "rgb":  # resized to the short side while decoding (swscale)
            frames = torch.from_numpy(read_clip(path, indices, short_side))
        elif self.name == "depth":
            frames = read_depth_frames(depth_files(path), indices)
        else:
            frames = read_flow_frames(*flow_files(path), indices)
        clip = square_crop(frames, short_side, position)
        return clip.unsqueeze(-1) if clip.dim() == 3 else clip


def video_clip_starts(num_frames, clip_len, num_clips=0):
    """Starts of the clips covering a whole video: N = num_frames / clip_len non-overlapping clips
    (Sec 2.3.2.2; at least 1), or `num_clips` evenly spaced ones when > 0."""
    if num_clips > 0:
        return uniform_starts(num_frames, clip_len, 1, num_clips)
    return [k * clip_len for k in range(max(1, num_frames // clip_len))]


class Clips(torch.utils.data.Dataset):
    """[(path, label)] of one modality.

    train=True: one clip of clip_len consecutive frames at a random start (looped when short) from a
    random square -> dict(clip=(T, S, S, C), label, index). train=False: all clips of the video
    (video_clip_starts) from the centre square -> clip (N, T, S, S, C); batch these one video at a time.
    Unreadable files (common/video.py's policy): in training reported, counted in `counter` and replaced
    by a random other item; in evaluation reported and returned as an empty clip (0,), left out.
    """

    def __init__(self, items, modality, clip_len, short_side, train, num_clips=0, counter=None):
        self.items, self.modality = list(items), Modality(modality)
        self.clip_len, self.short_side, self.train, self.num_clips = clip_len, short_side, train, num_clips
        self.counter = counter or BadVideoCounter(1.0)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        rng = np.random.default_rng(torch.randint(2 ** 62, ()).item())
        if self.train:
            clip, i = read_or_replace(self.read, i, len(self), lambda j: self.items[j][0], self.counter, rng)
        else:
            try:
                clip = self.read(i)
            except READ_ERRORS as err:
                self.counter.record_failure(self.items[i][0], err)
                clip = torch.zeros(0)
        return dict(clip=clip, label=self.items[i][1], index=i)

    def read(self, i):
        path = self.items[i][0]
        n = self.modality.num_frames(path)
        if self.train:
            indices = clip_indices(n, self.clip_len, 1, rng=np.random.default_rng(torch.randint(2 ** 62, ()).item()))
            clip = self.modality.read(path, indices, self.short_side, float(torch.rand(())))
        else:
            starts = video_clip_starts(n, self.clip_len, self.num_clips)
            indices = np.concatenate([np.arange(s, s + self.clip_len) for s in starts])
            clip = self.modality.read(path, indices, self.short_side, 0.5)
            clip = clip.view(len(starts), self.clip_len, *clip.shape[1:])
        return clip


class PairClips(torch.utils.data.Dataset):
    """Unlabeled modality pairs for the transfer (Sec 2.3.1): [(name, target path, teacher path)].

    item: dict(student=(T, S, S, C_target) clip at a random start from a random square,
               teacher=(T, S, S, C_teacher) the paired clip at the same relative time (the two modalities
               may differ by a frame or two in length) from the centre square, index).
    The frozen teacher sees its evaluation view, so its features are a fixed target for each clip; the
    student's augmentation (corner crop, flip, on the device) teaches it to match them from any view.
    """

    def __init__(self, pairs, target, teacher, clip_len, short_side, with_teacher_clip=True, counter=None):
        self.pairs, self.target, self.teacher = list(pairs), Modality(target), Modality(teacher)
        self.clip_len, self.short_side, self.with_teacher_clip = clip_len, short_side, with_teacher_clip
        self.counter = counter or BadVideoCounter()

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        """An unreadable pair is reported, counted and replaced by a random other one."""
        rng = np.random.default_rng(torch.randint(2 ** 62, ()).item())
        return read_or_replace(self.read, i, len(self), lambda j: self.pairs[j][1:], self.counter, rng)[0]

    def read(self, i):
        _, target_path, teacher_path = self.pairs[i]
        n = self.target.num_frames(target_path)
        start = int(torch.randint(max(n - self.clip_len, 0) + 1, ()))
        student = self.target.read(target_path, np.arange(start, start + self.clip_len), self.short_side,
                                   float(torch.rand(())))
        item = dict(student=student, index=i)
        if self.with_teacher_clip:  # Eq. 2.1: the paired teacher clip
            m = self.teacher.num_frames(teacher_path)
            t0 = min(round(start * m / n), max(m - self.clip_len, 0))
            item["teacher"] = self.teacher.read(teacher_path, np.arange(t0, t0 + self.clip_len),
                                                self.short_side, 0.5)
        return item


class IndexedSkeletons(torch.utils.data.Dataset):
    """Rows `rows` of a SkeletonDataset: dict(skeleton=(3, frames, 25, 2) float, label, index into rows).

    Sequences are stored zero-padded to 300 frames (Yan et al.'s input length); frames < 300
    (--skeleton-frames) keeps the first `frames` of them, for data whose sequences are all shorter."""

    def __init__(self, dataset, rows, frames=None):
        self.dataset, self.rows, self.frames = dataset, list(rows), frames

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        sample, label, _ = self.dataset[self.rows[i]]
        return dict(skeleton=torch.from_numpy(np.ascontiguousarray(sample[:, :self.frames])), label=label, index=i)


# ============ input pipeline on the device (Sec 2.4.3) ============
# Multi-scale corner cropping of Hara et al. [83]: a square of side scale x (short side), scale from
# {1, 2^-1/4, 2^-1/2, 2^-3/4, 1/2}, at one of the 4 corners or the centre, resized to crop_size,
# then a horizontal flip with p = 0.5. Batched: one affine sampling grid per clip.

CORNER_SCALES = (1.0, 2 ** -0.25, 2 ** -0.5, 2 ** -0.75, 0.5)


def normalise(clips, modality):
    """(B, T, S, S, C) uint8 / int32 -> float (B, C, T, S, S): RGB with torchvision's Kinetics
    statistics, flow as (v - 128) / 128 (so 0 = no motion, +-1 = +-bound px), depth as
    min(d, DEPTH_MAX_MM) / DEPTH_MAX_MM."""
    x = clips.permute(0, 4, 1, 2, 3).float()
    if modality == "rgb":
        mean = torch.tensor(KINETICS_MEAN, device=x.device).view(1, 3, 1, 1, 1)
        std = torch.tensor(KINETICS_STD, device=x.device).view(1, 3, 1, 1, 1)
        return (x / 255 - mean) / std
    if modality == "flow":
        return (x - 128) / 128
    return x.clamp(0, DEPTH_MAX_MM) / DEPTH_MAX_MM


def multiscale_corner_crop(x, size, modality):
    """x (B, C, T, S, S) -> (B, C, T, size, size): random corner crop, resize and horizontal flip.
    A flipped flow clip also negates its x component (motion to the right becomes motion to the left)."""
    B, C, T, S, _ = x.shape
    dev = x.device
    scales = torch.tensor(CORNER_SCALES, device=dev)
    scale = scales[torch.randint(len(scales), (B,), device=dev)]
    corner = torch.randint(5, (B,), device=dev)  # 0 centre, 1 top-left, 2 top-right, 3 bottom-left, 4 bottom-right
    off = 1 - scale  # crop centre offset, in [-1, 1] grid coordinates, that puts the crop into a corner
    cx = torch.where((corner == 1) | (corner == 3), -off, torch.where(corner == 0, 0 * off, off))
    cy = torch.where((corner == 1) | (corner == 2), -off, torch.where(corner == 0, 0 * off, off))
    flip = torch.rand(B, device=dev) < 0.5
    sign = 1 - 2 * flip.float()
    zero = torch.zeros_like(scale)
    theta = torch.stack([torch.stack([scale * sign, zero, cx], -1), torch.stack([zero, scale, cy], -1)], 1)
    grid = F.affine_grid(theta, (B, C * T, size, size), align_corners=False)
    out = F.grid_sample(x.reshape(B, C * T, S, S), grid, mode="nearest" if modality == "depth" else "bilinear",
                        align_corners=False).view(B, C, T, size, size)
    if modality == "flow":
        out = torch.cat([out[:, :1] * sign.view(B, 1, 1, 1, 1), out[:, 1:]], 1)
    return out


def centre_view(x, size, modality):
    """Evaluation view (B, C, T, S, S) -> (B, C, T, size, size): the whole centre square, resized."""
    B, C, T, S, _ = x.shape
    if S == size:
        return x
    mode = "nearest" if modality == "depth" else "bilinear"
    return F.interpolate(x.reshape(B, C * T, S, S), size=(size, size), mode=mode,
                         align_corners=None if mode == "nearest" else False).view(B, C, T, size, size)


def to_input(clips, modality, size, train, device):
    """uint8 / int32 clips (B, T, S, S, C) on the CPU -> normalised float (B, C, T, size, size) on `device`:
    the corner crop and flip in training, else the centre view."""
    x = normalise(clips.to(device, non_blocking=True), modality)
    return multiscale_corner_crop(x, size, modality) if train else centre_view(x, size, modality)


# ============ networks (Sec 2.3.1, 2.4.3) ============

def resnet_blocks(net, x):
    """Globally pooled outputs of the four ResNet blocks of a torchvision VideoResNet, [(B, C_l)].

    The last one is the network's penultimate feature (the input of fc): F_RGB / F_Target of Sec 2.3.1.
    """
    x = net.stem(x)
    pooled = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
        pooled.append(x.mean(dim=(2, 3, 4)))
    return pooled


RESNET_WIDTHS = (64, 128, 256, 512)
# --arch: Hara et al.'s 3D-ResNet-18, the thesis's (Sec 2.4.3, [83]), or torchvision's r3d_18 (3x7x7 stem
# without max-pool, 4.9x the multiply-accumulates at 16 x 112 x 112; for torchvision's Kinetics-400
# weights). Hara's stem ends in its max-pool.
ARCHS = ("hara_r3d_18", "r3d_18")


def matched_layers(match_layers):
    """Indices into resnet_blocks(...) that the transfer matches: the last layer only, or (Sec 2.5.1.4)
    every ResNet block's pooled output along with the last layer."""
    return [3] if match_layers == "last" else [0, 1, 2, 3]


class Classifier(nn.Module):
    """Encoder + fc: (B, C, T, H, W) or (N, 3, T, 25, 2) -> (B, num_classes) logits."""

    def __init__(self, encoder, feature_dim, num_classes):
        super().__init__()
        self.encoder, self.fc = encoder, nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        return self.fc(self.encoder(x))


class Student(nn.Module):
    """The student during the transfer: its features at the matched layers, each projected linearly to
    the teacher's width when the widths differ (Sec 2.3.1: "the dimension of its output features should
    be matched with F_RGB, if different"); identity otherwise.

    depth: R3D-18 taking 1 channel, features = pooled ResNet blocks; skeleton: ST-GCN, feature = (N, 256).
    """

    def __init__(self, target, encoder, layers, teacher_widths, student_widths):
        super().__init__()
        self.target, self.encoder, self.layers = target, encoder, layers
        self.proj = nn.ModuleList(nn.Identity() if student_widths[l] == teacher_widths[l]
                                  else nn.Linear(student_widths[l], teacher_widths[l]) for l in layers)

    def forward(self, x):
        feats = resnet_blocks(self.encoder, x) if self.target == "depth" else [None, None, None, self.encoder(x)]
        return [p(feats[l]) for p, l in zip(self.proj, self.layers)]


def new_student_encoder(args):
    """(encoder, widths per layer): the --arch 3D-ResNet-18 with a 1-channel first convolution, or ST-GCN."""
    if args.target == "depth":
        encoder, _ = video_encoder(args.arch, in_channels=1)
        return encoder, RESNET_WIDTHS
    encoder = STGCN(width=args.stgcn_width)
    return encoder, (None, None, None, encoder.feature_dim)


# ============ checkpoints: teacher and student weights ============

def _encoder_state(raw, path):
    """The encoder's state dict (torchvision keys) from one of: our teacher.pt / student.pt
    ({'encoder': ...}), a stage checkpoint.pt ({'model': {'encoder.*': ...}}), Hara et al.'s released
    ResNet-18 files (resnet-18-kinetics.pth, --arch hara_r3d_18), or a plain torchvision state dict such
    as the Kinetics-400 r3d_18 weights (--arch r3d_18); fc.* entries are dropped."""
    if is_hara_state_dict(raw):
        return convert_hara_state_dict(raw)  # its fc.* is ignored by load_encoder_weights
    if isinstance(raw, dict) and isinstance(raw.get("encoder"), dict):
        return raw["encoder"]
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict):
        return {k[len("encoder."):]: v for k, v in raw["model"].items() if k.startswith("encoder.")}
    if isinstance(raw, dict) and raw and all(torch.is_tensor(v) for v in raw.values()):
        return {k: v for k, v in raw.items() if not k.startswith("fc.")}
    raise SystemExit(f"{path}: not a teacher/student file, stage checkpoint or torchvision state dict")


def load_encoder(encoder, state, path, flag, channels, what):
    """common.backbones' strict load; a first convolution with the wrong number of input channels gets
    a message that names the flag, the file and the modality instead of a shape mismatch."""
    stem = state.get("stem.0.weight")
    if stem is not None and stem.shape[1] != channels:
        raise SystemExit(f"{flag} {path}: its first convolution takes {stem.shape[1]} input channel(s) "
                         f"but the {what} needs {channels}")
    try:
        load_encoder_weights(encoder, state, source=f"{flag} {path} ({what})")
    except RuntimeError as err:
        hint = ""
        if hasattr(encoder, "stem"):  # a 3D-ResNet: the file may be one of the other --arch
            other = "r3d_18" if isinstance(encoder.stem[-1], nn.MaxPool3d) else "hara_r3d_18"
            hint = f"\n  (is it a {other} file? then pass --arch {other})"
        raise SystemExit(f"{err}{hint}") from None


def build_teacher(args, path):
    """The frozen teacher encoder (the --arch 3D-ResNet-18 on rgb or flow) from `path`, in eval mode
    without gradients."""
    channels = MODALITY_CHANNELS[args.teacher_modality]
    encoder, _ = video_encoder(args.arch, in_channels=channels)
    raw = load_checkpoint(path, name=f"--teacher-checkpoint {path}")
    if isinstance(raw, dict) and raw.get("modality") not in (None, args.teacher_modality):
        raise SystemExit(f"--teacher-checkpoint {path}: a {raw['modality']} teacher, but "
                         f"--teacher-modality {args.teacher_modality}")
    load_encoder(encoder, _encoder_state(raw, path), path, "--teacher-checkpoint", channels,
                 f"{args.teacher_modality} teacher (--teacher-modality {args.teacher_modality})")
    encoder.eval().requires_grad_(False)
    return encoder


# ============ few labels (Sec 2.4.3, Sec 2.5) ============

def per_class_subset(labels, k, seed, fraction=1.0):
    """Sorted row indices with exactly k examples of every class (all of a class that has fewer, with a
    warning), drawn without replacement by `seed`; k = 0 keeps every row. fraction < 1 then keeps that
    random fraction (Fig. 2.3: half of the training set)."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    rows = np.arange(len(labels))
    if k > 0:
        chosen = []
        for c in np.unique(labels):
            of_class = rows[labels == c]
            if len(of_class) < k:
                print(f"class {c}: only {len(of_class)} labeled examples, fewer than --per-class {k}; using all",
                      file=sys.stderr)
            chosen.append(rng.choice(of_class, min(k, len(of_class)), replace=False))
        rows = np.concatenate(chosen)
    if fraction < 1.0:
        rows = rng.choice(rows, max(1, int(round(fraction * len(rows)))), replace=False)
    return np.sort(rows)


LAST_BLOCK = ("encoder.layer4.", "fc.")


def freeze_for_finetuning(model, layers):
    """--finetune-layers last (Sec 2.4.3, the depth student): only the last ResNet block and fc train;
    all (the skeleton student, and --init scratch, Table 2.4's "training directly on the target
    modality"): every layer. Returns the trainable parameters."""
    for name, p in model.named_parameters():
        p.requires_grad_(layers == "all" or name.startswith(LAST_BLOCK))
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model, layers):
    """model.train(), but with --finetune-layers last the BatchNorm layers of the frozen part stay in eval
    mode: their running statistics are part of the transferred representation and must not drift with
    few labels."""
    model.train()
    if layers == "last":
        for name, m in unwrap(model).named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (name + ".").startswith(LAST_BLOCK):
                m.eval()


# ============ data of each stage ============

NTU_FOLDERS = dict(rgb_dir="nturgb+d_rgb", depth_dir="nturgb+d_depth_masked", flow_dir="nturgb+d_flow",
                   skeleton_dir="nturgb+d_skeleton_npy")  # under --data-root; skeletons then /PROTOCOL


def synthetic_folders(args, d):
    """Without --data-root and the folder flags: the folders of the built-in synthetic paired dataset
    (written once), in args.rgb_dir, depth_dir, flow_dir, skeleton_dir."""
    if all(getattr(args, key) is None for key in ("data_root", *NTU_FOLDERS)):
        from common.synthetic import synthetic_paired_dataset
        syn = d.main_first(synthetic_paired_dataset)
        for key in NTU_FOLDERS:
            setattr(args, key, syn[key])


def check_inputs(args, stages):
    """Every folder and file the run's stages will read, checked before the first one trains: one line
    naming the flag and the path."""
    def folder(path, flag, why):
        if path is None:
            raise SystemExit(f"{flag} is needed {why} (or --data-root with the NTU folder names)")
        if not os.path.isdir(path):
            raise SystemExit(f"{flag} {path}: no such folder ({why})")

    def file(path, flag):
        if path is not None and not os.path.isfile(path):
            raise SystemExit(f"{flag} {path}: no such file")

    file(args.teacher_checkpoint, "--teacher-checkpoint")
    file(args.student_checkpoint, "--student-checkpoint")
    if "teacher" in stages:
        if args.source == "kinetics":
            if args.train_list is None or args.source_root is None:
                raise SystemExit("--source kinetics needs --source-root (videos) and --train-list (CSV or list)")
            file(args.train_list, "--train-list")
            file(args.val_list, "--val-list")
            folder(args.source_root, "--source-root", "for the Kinetics teacher")
            if args.teacher_modality == "flow":
                folder(args.source_flow_dir, "--source-flow-dir", "for the Kinetics flow teacher")
        else:
            folder(*teacher_folder(args, source=True), f"for the teacher's NTU-120 {args.teacher_modality}")
    if "transfer" in stages:
        folder(*teacher_folder(args), "for the transfer's modality pairs")
    if any(s in stages for s in ("transfer", "finetune", "eval")):
        depth = args.target == "depth"
        folder(args.depth_dir if depth else args.skeleton_dir, "--depth-dir" if depth else "--skeleton-dir",
               f"for the {args.target} student")
        if depth:
            check_depth_pngs(args.depth_dir)
        else:  # the protocol's .npy / .pkl files, opened only when the student's stage starts
            for split in ("train", "val"):
                try:
                    protocol_paths(args.skeleton_dir, split)
                except FileNotFoundError as err:
                    raise SystemExit(f"--skeleton-dir: {err}") from None


def teacher_folder(args, source=False):
    """(folder, flag) of the teacher modality: --rgb-dir / --flow-dir (the transfer's pairs), or with
    source=True the teacher's NTU-120 videos, --source-rgb-dir / --source-flow-dir when given."""
    m = args.teacher_modality
    own = getattr(args, f"source_{m}_dir") if source else None
    return (own, f"--source-{m}-dir") if own else (getattr(args, f"{m}_dir"), f"--{m}-dir")


def teacher_modality_items(args, source=False):
    """{NTU name: path} of the teacher modality (teacher_folder): RGB videos or flow folders."""
    folder, flag = teacher_folder(args, source)
    if args.teacher_modality == "rgb":
        return index_ntu(folder, flag, videos=True)
    return non_empty(index_ntu(folder, flag, videos=False), lambda f: flow_files(f)[0], "flow")


def source_items(args, split):
    """Labeled source videos of the teacher (Sec 2.4.2) in `split`: [(path, label)], number of classes.

    ntu120_minus_60: NTU-120 videos of actions 61-120 (label = action - 61), found by file name, split by
    --protocol (train: the teacher trains on them; val: its held-out videos).
    kinetics: --train-list / --val-list (official CSV or 'path label' list) under --source-root; no
    --val-list: no held-out videos. For a flow teacher the flow folder of each video is
    --source-flow-dir/<video file name without extension>.
    """
    if args.source == "ntu120_minus_60":
        items = {k: p for k, p in teacher_modality_items(args, source=True).items()
                 if ntu_action(k) > NTU60_ACTIONS}
        if not items:
            raise SystemExit("no NTU-120 videos of actions 61-120 (A061-A120) found for the teacher; "
                             "pass --source-rgb-dir / --source-flow-dir")
        samples = [(items[k], ntu_action(k) - NTU60_ACTIONS - 1) for k in sorted(items)]
        num_classes = max(y for _, y in samples) + 1
        return [x for k, x in zip(sorted(items), samples) if ntu_split(k, args.protocol) == split], num_classes
    listed = args.train_list if split == "train" else args.val_list
    if listed is None:
        return [], 0
    samples = read_samples(listed, args.source_root)
    num_classes = max(y for _, y in samples) + 1
    if args.teacher_modality == "flow":  # the listed videos found on disk, then their flow folders found
        _require_dir(args.source_flow_dir, "--source-flow-dir")
        samples = drop_missing([(os.path.join(args.source_flow_dir, os.path.splitext(os.path.basename(p))[0]), y)
                                for p, y in samples], f"--source-flow-dir {args.source_flow_dir}")
    return samples, num_classes


def check_depth_pngs(depth_dir):
    """The first frame of every masked-depth folder, checked before training by its PNG header (bit depth,
    byte 24): an 8-bit export is refused here with one line, not met inside a DataLoader worker
    mid-transfer, where it would count as an unreadable video and be replaced."""
    for entry in sorted(os.scandir(depth_dir), key=lambda e: e.name):
        files = depth_files(entry.path) if entry.is_dir() else ()
        if files:
            with open(files[0], "rb") as f:
                header = f.read(25)
            if header[:8] == b"\x89PNG\r\n\x1a\n" and header[24:25] == b"\x10":
                continue
            try:
                read_depth_frames(files, [0])  # not a 16-bit PNG: the reader's own message
            except (ValueError, RuntimeError) as err:
                raise SystemExit(f"--depth-dir {depth_dir}: {err}") from None


def depth_items(args, split):
    """[(depth folder, label)] of NTU-60 (actions 1-60, label = action - 1) in `split` of --protocol."""
    folders = non_empty(index_ntu(args.depth_dir, "--depth-dir", videos=False), depth_files, "depth")
    names = sorted(k for k in folders if ntu_action(k) <= NTU60_ACTIONS and ntu_split(k, args.protocol) == split)
    if not names:
        raise SystemExit(f"no depth folders of the {split} split ({args.protocol}) under {args.depth_dir}")
    return [(folders[k], ntu_action(k) - 1) for k in names], names


def skeleton_split(args, split):
    """The SkeletonDataset of `split`; refuses a --skeleton-frames that would cut its longest sequence."""
    try:
        dataset = SkeletonDataset(**protocol_paths(args.skeleton_dir, split))
    except FileNotFoundError as err:
        raise SystemExit(f"--skeleton-dir: {err}") from None
    if args.skeleton_frames < dataset.data.shape[2]:
        longest = max(dataset.num_valid_frames(i) for i in range(len(dataset)))
        if longest > args.skeleton_frames:
            raise SystemExit(f"--skeleton-frames {args.skeleton_frames}: the {split} split of {args.skeleton_dir} "
                             f"has sequences of up to {longest} frames; give at least that")
    return dataset


# ============ stages ============

def stage_dir(args, stage, seed=None):
    if stage in ("teacher", "transfer"):
        return os.path.join(args.out_dir, stage)
    path = os.path.join(args.out_dir, f"finetune_{run_tag(args)}")
    return path if seed is None else os.path.join(path, f"seed{seed}")


def run_tag(args):
    labels = f"k{args.per_class}" if args.per_class > 0 else "all"
    if args.label_fraction < 1:
        labels += f"_frac{args.label_fraction:g}"
    return f"{args.init}_{labels}"


def make_loader(dataset, args, d, train, batch_size=None):
    """DataLoader with a DistributedSampler under torchrun. Training: shuffled, whole batches only (the
    per-process batch shrinks, with a message, when the set is smaller than one global batch)."""
    if train:
        batch_size = d.local_batch(args.batch_size)
        fit_batch = max(1, len(dataset) // d.world_size)
        if batch_size > fit_batch:
            d.print(f"{len(dataset)} training items: batch size per process lowered from {batch_size} to {fit_batch}")
            batch_size = fit_batch
        sampler = (torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True)
                   if d.distributed else torch.utils.data.RandomSampler(dataset))
    else:  # evaluation: every world_size-th item on each process, in order; results are summed later
        batch_size = batch_size or 1
        dataset = torch.utils.data.Subset(dataset, list(range(d.rank, len(dataset), d.world_size)))
        sampler = None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                                         num_workers=args.workers, drop_last=train,
                                         pin_memory=d.device.type == "cuda",
                                         persistent_workers=train and args.workers > 0)
    return loader


# The flags each stage's checkpoint does not depend on (--resume and --out-dir checks): the later stages'.
_EVAL_FLAGS = {"stage", "seeds", "eval_batch_size", "fuse", "epochs"}
_FINETUNE_FLAGS = _EVAL_FLAGS | {"init", "per_class", "label_fraction", "finetune_epochs", "finetune_layers"}
_TRANSFER_FLAGS = _FINETUNE_FLAGS | {"granularity", "loss", "match_layers", "teacher_clips", "student_checkpoint",
                                     "transfer_epochs", "weight_decay", "target", "depth_dir", "skeleton_dir",
                                     "stgcn_width", "skeleton_frames"}
# A resumed stage may train on to a later end (its own --*-epochs), as --epochs may elsewhere.
STAGE_INDEPENDENT = dict(teacher=_TRANSFER_FLAGS | {"teacher_epochs", "lr"},
                         transfer=_FINETUNE_FLAGS | {"transfer_epochs"},
                         finetune=_EVAL_FLAGS | {"finetune_epochs"})


class StageRun:
    """The bookkeeping of one stage's training, so that each stage's own loop shows only its step:
    SGD, the learning-rate schedule, AMP loss scaling, --resume, progress lines, one JSON line and one
    atomic checkpoint per epoch.

    The optimiser is "all other hyperparameters from [83]" (Sec 2.4.3): SGD with momentum 0.9 and
    dampening 0.9, lr x 0.1 when the loss has not fallen for 10 epochs (ReduceLROnPlateau). That is the
    recipe of Hara et al.'s code of early 2018, the version with the multi-scale corner crops the thesis
    describes, and of MARS's opts.py (which also has the thesis's 400 transfer epochs and finetuning
    from block 4). Both step the schedule on the validation loss; here it steps on the epoch's training
    loss, since the finetuning's validation videos are the test set of Tables 2.1-2.5. --lr-schedule
    steps --dampening 0 is Hara et al.'s later recipe (lr x 0.1 at --lr-steps of the epochs).

        run = StageRun(...)
        for epoch in run.epochs():
            for it, batch in enumerate(loader):
                run.step(loss_of(batch), it, top1=...)
            run.end_epoch()
    """

    def __init__(self, args, d, out_dir, model, params, loader, epochs, lr, weight_decay, stage):
        os.makedirs(out_dir, exist_ok=True)
        self.args, self.d, self.out_dir, self.model, self.loader = args, d, out_dir, model, loader
        self.stage, self.num_epochs = stage, epochs
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, dampening=args.dampening,
                                         weight_decay=weight_decay, fused=True)
        if args.lr_schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, "min", factor=0.1,
                                                                        patience=args.lr_patience)
        else:
            milestones = sorted({max(1, int(round(f * epochs))) for f in args.lr_steps})
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones, gamma=0.1)
        self.scaler = grad_scaler(d.device, args.amp)
        ckpt = resume_training(args, out_dir, d, model, self.optimizer, self.scheduler, self.scaler, epochs,
                               ignore=STAGE_INDEPENDENT[stage])
        self.start = ckpt["epoch"] + 1 if ckpt else 0
        self.progress = Progress(d, epochs, len(loader), loader.batch_size * d.world_size, args.print_freq)

    def epochs(self):
        for self.epoch in range(self.start, self.num_epochs):
            if isinstance(self.loader.sampler, torch.utils.data.DistributedSampler):
                self.loader.sampler.set_epoch(self.epoch)
            self.t0, self.sums = time.time(), {}
            yield self.epoch

    def step(self, loss, it, **averaged):
        """Backward pass and update; `averaged` numbers (e.g. top1) are averaged over the epoch's batches."""
        loss = optimizer_step(loss, self.optimizer, self.scaler, self.epoch, it,
                              "--teacher-lr" if self.stage == "teacher" else "--lr")
        for k, v in dict(loss=loss, **averaged).items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.progress.step(self.epoch, it, loss, self.optimizer.param_groups[0]["lr"])

    def end_epoch(self):
        means = {k: self.d.all_reduce_mean(v / len(self.loader)) for k, v in self.sums.items()}
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(means["loss"])
        else:
            self.scheduler.step()
        record = dict(stage=self.stage, epoch=self.epoch, **means, lr=self.optimizer.param_groups[0]["lr"],
                      seconds=round(time.time() - self.t0, 1))
        save_epoch(self.d, self.out_dir, record, self.model, self.optimizer, self.scheduler, self.scaler,
                   self.epoch, self.args)
        self.d.barrier()


def stage_epochs(args, stage):
    return dict(teacher=args.teacher_epochs, transfer=args.transfer_epochs, finetune=args.finetune_epochs)[stage]


def top1(logits, labels):
    return (logits.argmax(1) == labels).float().mean()


# ----- stage 1: teacher (Sec 2.4.3, "Teacher Network") -----

def run_teacher(args, d):
    """Supervised 3D-ResNet-18 on the source dataset's RGB or flow with Hara et al.'s recipe: 16-frame clips,
    multi-scale corner crop to 112, flip, SGD lr 0.1, momentum 0.9, weight decay 1e-3, batch 128. It trains
    on the source's training split and reports video-level top-1 on its held-out videos (the --protocol
    split of NTU-120 minus NTU-60, or --val-list), so that a user knows whether it is worth transferring."""
    out = stage_dir(args, "teacher")
    samples, num_classes = source_items(args, "train")
    held_out, _ = source_items(args, "val")
    d.print(f"teacher: {len(samples)} source videos ({args.source}, {args.teacher_modality}), {num_classes} classes, "
            f"{len(held_out)} held out")
    dataset = Clips(samples, args.teacher_modality, args.clip_len, args.short_side, train=True,
                    counter=BadVideoCounter(args.max_bad_fraction))
    loader = make_loader(dataset, args, d, train=True)
    encoder, width = video_encoder(args.arch, in_channels=MODALITY_CHANNELS[args.teacher_modality])
    model = d.wrap(Classifier(encoder, width, num_classes))
    run = StageRun(args, d, out, model, model.parameters(), loader, stage_epochs(args, "teacher"), args.teacher_lr,
                   1e-3, "teacher")
    for _ in run.epochs():
        model.train()
        for it, batch in enumerate(loader):
            x = to_input(batch["clip"], args.teacher_modality, args.crop_size, True, d.device)
            labels = batch["label"].to(d.device)
            with autocast(d.device, args.amp):
                logits = model(x)
                loss = F.cross_entropy(logits, labels)
            run.step(loss, it, top1=top1(logits, labels))
        run.end_epoch()

    held_out_top1 = None
    if held_out:
        clips = Clips(held_out, args.teacher_modality, args.clip_len, args.short_side, train=False,
                      num_clips=args.teacher_clips)
        held_out_top1, readable = video_top1(predict(args, d, model, clips, num_classes, args.teacher_modality),
                                             [y for _, y in held_out])
        d.print(f"teacher: video-level top-1 {held_out_top1:.2f}% on {readable} held-out source videos")
        if d.main:
            append_jsonl(os.path.join(out, "log.jsonl"), dict(stage="teacher", held_out_top1=held_out_top1,
                                                              held_out_videos=readable))
    else:
        d.print("teacher: no held-out source videos (--source kinetics without --val-list): not evaluated")
    if d.main:
        net = unwrap(model)
        save_atomic(dict(encoder=encoder_state_dict(net.encoder), fc=net.fc.state_dict(), arch=args.arch,
                         modality=args.teacher_modality, num_classes=num_classes, source=args.source,
                         held_out_top1=held_out_top1), os.path.join(out, "teacher.pt"))
        d.print(f"teacher written to {os.path.join(out, 'teacher.pt')}")
    d.barrier()


def teacher_path(args):
    path = args.teacher_checkpoint or os.path.join(stage_dir(args, "teacher"), "teacher.pt")
    if not os.path.isfile(path):
        raise SystemExit(f"no teacher at {path}: run --stage teacher first or pass --teacher-checkpoint")
    return path


# ----- stage 2: cross-modal transfer (Sec 2.3): the granularities' losses (Eq. 2.1-2.5, Table 2.2),
# the teacher's video features (Eq. 2.3) and the transfer step -----

def feature_distance(student, teacher, loss="cosine"):
    """Mean over the batch of Cosine_Distance(F_Target, F_RGB) = 1 - cos (Eq. 2.1), or the mean squared
    error (Table 2.2). (B, D), (B, D) -> scalar."""
    if loss == "cosine":
        return (1 - F.cosine_similarity(student.float(), teacher.float(), dim=1)).mean()
    return F.mse_loss(student.float(), teacher.float())


def video_feature(clip_features, num_clips):
    """Eq. 2.3: F_video = 1/N sum_i F_i over the N clips of each video.

    clip_features (B, N_max, D) padded, num_clips (B,) -> (B, D)."""
    mask = (torch.arange(clip_features.shape[1], device=clip_features.device).view(1, -1)
            < num_clips.view(-1, 1)).to(clip_features.dtype)
    return (clip_features * mask.unsqueeze(-1)).sum(1) / num_clips.view(-1, 1).to(clip_features.dtype)


def granularity_loss(student, teacher_clip, teacher_video, granularity, loss="cosine"):
    """Sum over matched layers of the granularity's loss. Lists (one (B, D_l) per layer):
    student  F_Target (a clip feature for depth, a whole-sequence feature for skeletons),
    teacher_clip  F_RGB^clip of the paired clip (clip2clip, combined), teacher_video  F_RGB^video (Eq. 2.3).

    clip2clip (Eq. 2.1): L(F_Target^clip, F_RGB^clip)
    video2clip (Eq. 2.2): L(F_Target^clip, F_RGB^video)
    combined (Eq. 2.4): the sum of the two
    video2video (Eq. 2.5): L(F_Target^video, F_RGB^video)
    """
    total = 0.0
    for l, s in enumerate(student):
        if granularity in ("clip2clip", "combined"):
            total = total + feature_distance(s, teacher_clip[l], loss)
        if granularity in ("video2clip", "combined", "video2video"):
            total = total + feature_distance(s, teacher_video[l], loss)
    return total


@torch.no_grad()
def teacher_video_features(args, d, teacher, paths, layers, cache):
    """F_RGB^video (Eq. 2.3) of every pair's teacher-modality video, one (P, D_l) tensor per matched layer.

    The frozen teacher sees the centre view of the N = frames / clip_len clips of each video (or
    --teacher-clips evenly spaced ones), so the video feature is fixed and computed once per run: each
    process does every world_size-th video, the results are summed over processes, and the table is
    cached in `cache` (reused when the teacher, videos and clip settings are the same).
    """
    key = dict(teacher=os.path.abspath(teacher_path(args)), mtime=os.path.getmtime(teacher_path(args)),
               paths=list(paths), layers=list(layers), clip_len=args.clip_len, crop_size=args.crop_size,
               short_side=args.short_side, teacher_clips=args.teacher_clips)
    if os.path.isfile(cache):
        stored = load_checkpoint(cache)
        if stored.get("key") == key:
            d.print(f"teacher video features from {cache}")
            return [f.to(d.device) for f in stored["features"]]
    t0 = time.time()
    dataset = Clips([(p, -1) for p in paths], args.teacher_modality, args.clip_len, args.short_side, train=False,
                    num_clips=args.teacher_clips)
    loader = make_loader(dataset, args, d, train=False)
    feats = [torch.zeros(len(paths), RESNET_WIDTHS[l], device=d.device) for l in layers]
    for batch in loader:  # one video: (1, N, T, S, S, C)
        clips = batch["clip"][0]
        if clips.numel() == 0:  # unreadable (reported by Clips): its row stays zero, its pairs are dropped
            continue
        per_clip = [[] for _ in layers]
        for chunk in clips.split(args.eval_batch_size):
            with autocast(d.device, args.amp):
                blocks = resnet_blocks(teacher, to_input(chunk, args.teacher_modality, args.crop_size, False, d.device))
            for j, l in enumerate(layers):
                per_clip[j].append(blocks[l].float())
        for j in range(len(layers)):
            f = torch.cat(per_clip[j]).unsqueeze(0)  # (1, N, D)
            feats[j][batch["index"][0]] = video_feature(f, torch.tensor([f.shape[1]], device=d.device))[0]
    if d.distributed:
        for f in feats:
            torch.distributed.all_reduce(f)
    if d.main:
        save_atomic(dict(key=key, features=[f.cpu() for f in feats]), cache)
    d.print(f"teacher video features of {len(paths)} videos in {time.time() - t0:.0f} s")
    d.barrier()
    return feats


def run_transfer(args, d):
    """Feature-supervised transfer from the frozen teacher to a new student on unlabeled training pairs."""
    out = stage_dir(args, "transfer")
    os.makedirs(out, exist_ok=True)
    teacher = build_teacher(args, teacher_path(args)).to(d.device)
    layers = matched_layers(args.match_layers)
    teacher_items = teacher_modality_items(args)
    what = "RGB video" if args.teacher_modality == "rgb" else "flow folder"
    if args.target == "depth":  # pairs (teacher modality, depth) of the training split, actions 1-60
        items, names = depth_items(args, "train")
        targets, what_target = {k: path for k, (path, _) in zip(names, items)}, "depth folder(s)"
    else:  # pairs (teacher modality, whole skeleton sequence) of the training split
        skeletons = skeleton_split(args, "train")
        targets = {ntu_key(n): r for r, n in enumerate(skeletons.sample_names)}
        what_target = "skeleton sequence(s)"
    names = match_pairs(teacher_items, targets, what, what_target)
    pairs = [(k, targets[k], teacher_items[k]) for k in names]
    d.print(f"transfer: {len(pairs)} unlabeled ({args.teacher_modality}, {args.target}) pairs, "
            f"granularity {args.granularity}, {args.loss} loss, layers {args.match_layers}")

    video = None
    if args.granularity in ("video2clip", "combined", "video2video"):
        video = teacher_video_features(args, d, teacher, [p for _, _, p in pairs], layers,
                                       os.path.join(out, "teacher_features.pt"))
        read = torch.nonzero(video[0].abs().sum(1) > 0).flatten().cpu()
        if len(read) < len(pairs):  # teacher videos that could not be read: their pairs have no target
            d.print(f"transfer: {len(pairs) - len(read)} of {len(pairs)} pairs left out, their teacher video "
                    f"could not be read")
            if len(read) == 0:
                raise SystemExit("no teacher video of the transfer pairs could be read")
            pairs, video = [pairs[k] for k in read.tolist()], [f[read.to(f.device)] for f in video]
    if args.target == "depth":
        dataset = PairClips(pairs, "depth", args.teacher_modality, args.clip_len, args.short_side,
                            with_teacher_clip=args.granularity in ("clip2clip", "combined"),
                            counter=BadVideoCounter(args.max_bad_fraction))
    else:
        dataset = IndexedSkeletons(skeletons, [r for _, r, _ in pairs], args.skeleton_frames)
    encoder, widths = new_student_encoder(args)
    model = d.wrap(Student(args.target, encoder, layers, RESNET_WIDTHS, widths))
    loader = make_loader(dataset, args, d, train=True)
    run = StageRun(args, d, out, model, model.parameters(), loader, stage_epochs(args, "transfer"), args.lr,
                   args.weight_decay, "transfer")
    for _ in run.epochs():
        model.train()
        for it, batch in enumerate(loader):
            if args.target == "depth":  # a clip of the depth video, augmented (Sec 2.4.3)
                x = to_input(batch["student"], "depth", args.crop_size, True, d.device)
            else:  # the whole skeleton sequence, not augmented
                x = batch["skeleton"].to(d.device, non_blocking=True)
            with autocast(d.device, args.amp):
                student = model(x)  # F_Target at each matched layer
                teacher_clip = teacher_video = None
                if "teacher" in batch:  # F_RGB^clip of the paired clip, the teacher's centre view
                    with torch.no_grad():
                        t = resnet_blocks(teacher, to_input(batch["teacher"], args.teacher_modality,
                                                            args.crop_size, False, d.device))
                    teacher_clip = [t[l] for l in layers]
                if video is not None:  # F_RGB^video of the pair's video (Eq. 2.3), computed once
                    teacher_video = [f[batch["index"].to(d.device)] for f in video]
                # clip2clip Eq. 2.1, video2clip Eq. 2.2, combined Eq. 2.4, video2video Eq. 2.5
                loss = granularity_loss(student, teacher_clip, teacher_video, args.granularity, args.loss)
            run.step(loss, it)
        run.end_epoch()
    if d.main:
        save_atomic(dict(encoder=encoder_state_dict(unwrap(model).encoder), target=args.target, arch=args.arch,
                         teacher_modality=args.teacher_modality, granularity=args.granularity),
                    os.path.join(out, "student.pt"))
        d.print(f"student written to {os.path.join(out, 'student.pt')}")
    d.barrier()


# ----- stage 3: finetuning with few labels (Sec 2.4.3) -----

def labeled_data(args, split):
    """(dataset, labels, names) of the target modality's `split`."""
    if args.target == "depth":
        items, names = depth_items(args, split)
        train = split == "train"
        dataset = Clips(items, "depth", args.clip_len, args.short_side, train=train,
                        counter=BadVideoCounter(args.max_bad_fraction if train else 1.0))
        return dataset, [y for _, y in items], names
    skeletons = skeleton_split(args, split)
    return (IndexedSkeletons(skeletons, range(len(skeletons)), args.skeleton_frames), list(skeletons.labels),
            [ntu_key(n) if _is_ntu(n) else n for n in skeletons.sample_names])


def _is_ntu(name):
    try:
        parse_ntu_name(name)
        return True
    except ValueError:
        return False


def initial_student(args, num_classes):
    """The student before finetuning (Table 2.4 rows): --init transfer (our transfer stage's student, or
    --student-checkpoint), scratch (random), or teacher (simple pretraining: the teacher's weights, its
    first convolution summed over the input channels to take the 1 depth channel)."""
    encoder, widths = new_student_encoder(args)
    what = f"depth student ({args.arch}, 1 input channel)" if args.target == "depth" else "skeleton student (ST-GCN)"
    if args.init == "transfer":
        path = args.student_checkpoint or os.path.join(stage_dir(args, "transfer"), "student.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"no transferred student at {path}: run --stage transfer first, pass "
                             f"--student-checkpoint, or use --init scratch")
        raw = load_checkpoint(path, name=f"--student-checkpoint {path}")
        load_encoder(encoder, _encoder_state(raw, path), path, "--student-checkpoint",
                     1 if args.target == "depth" else 3, what)
    elif args.init == "teacher":
        if args.target != "depth":
            raise SystemExit("--init teacher needs --target depth: the teacher is a 3D-CNN, the skeleton student a GCN")
        path = teacher_path(args)
        teacher = build_teacher(args, path)
        state = encoder_state_dict(teacher)
        # the first convolution summed over its input channels: a depth map fed to every channel of the
        # teacher would give the same response
        state["stem.0.weight"] = state["stem.0.weight"].sum(dim=1, keepdim=True)
        load_encoder(encoder, state, path, "--teacher-checkpoint", 1, what)
    return Classifier(encoder, widths[3], num_classes)


def run_finetune(args, d, seed):
    out = stage_dir(args, "finetune", seed)
    dataset, labels, _ = labeled_data(args, "train")
    rows = per_class_subset(labels, args.per_class, seed, args.label_fraction)
    num_classes = int(max(labels)) + 1
    subset = torch.utils.data.Subset(dataset, rows.tolist())
    d.print(f"finetune seed {seed}: {len(rows)} labeled {args.target} examples "
            f"({args.per_class or 'all'} per class, {num_classes} classes), init {args.init}, "
            f"training {'every layer' if args.finetune_layers == 'all' else 'the last block and fc'}")
    seed_everything(seed, d.rank)
    model = initial_student(args, num_classes)
    params = freeze_for_finetuning(model, args.finetune_layers)
    model = d.wrap(model)
    loader = make_loader(subset, args, d, train=True)
    run = StageRun(args, d, out, model, params, loader, stage_epochs(args, "finetune"), args.lr, args.weight_decay,
                   "finetune")
    for _ in run.epochs():
        train_mode(model, args.finetune_layers)
        for it, batch in enumerate(loader):
            if args.target == "depth":
                x = to_input(batch["clip"], "depth", args.crop_size, True, d.device)
            else:
                x = batch["skeleton"].to(d.device, non_blocking=True)
            labels = batch["label"].to(d.device)
            with autocast(d.device, args.amp):
                logits = model(x)
                loss = F.cross_entropy(logits, labels)
            run.step(loss, it, top1=top1(logits, labels))
        run.end_epoch()
    if d.main:
        save_atomic(dict(model=unwrap(model).state_dict(), num_classes=num_classes, seed=seed,
                         rows=rows.tolist()), os.path.join(out, "model.pt"))
    d.barrier()


# ----- stage 4: video-level evaluation (Sec 2.4.3, Tables 2.1-2.5) -----

@torch.no_grad()
def predict(args, d, model, dataset, num_classes, modality):
    """(V, num_classes) class probabilities of every video of `dataset`, the same on every process.

    A video modality (Clips): softmax averaged over all clip_len-frame clips of the video (centre view);
    skeleton: the softmax of the one prediction for the whole sequence."""
    model.eval()
    scores = torch.zeros(len(dataset), num_classes, device=d.device)
    if modality != "skeleton":
        for batch in make_loader(dataset, args, d, train=False):
            clips = batch["clip"][0]
            if clips.numel() == 0:  # unreadable (reported by Clips): all-zero scores, left out of the metric
                continue
            probs = []
            for chunk in clips.split(args.eval_batch_size):
                with autocast(d.device, args.amp):
                    probs.append(model(to_input(chunk, modality, args.crop_size, False, d.device)).float().softmax(1))
            scores[batch["index"][0]] = torch.cat(probs).mean(0)
    else:
        for batch in make_loader(dataset, args, d, train=False, batch_size=args.eval_batch_size):
            with autocast(d.device, args.amp):
                logits = model(batch["skeleton"].to(d.device))
            scores[batch["index"].to(d.device)] = logits.float().softmax(1)
    if d.distributed:
        torch.distributed.all_reduce(scores)
    return scores.cpu()


def video_top1(scores, labels):
    """(top-1 in %, number of videos) over the readable videos (non-zero scores); unreadable ones are left out."""
    readable = scores.sum(1) > 0
    correct = (scores.argmax(1) == torch.as_tensor(labels))[readable]
    return 100.0 * correct.float().mean().item(), int(readable.sum())


def run_eval(args, d, seeds):
    dataset, labels, names = labeled_data(args, "val")
    per_seed = []
    for seed in seeds:
        path = os.path.join(stage_dir(args, "finetune", seed), "model.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"no finetuned model at {path}: run --stage finetune with --seeds {seed}")
        saved = load_checkpoint(path)
        trained = os.path.join(stage_dir(args, "finetune", seed), "checkpoint.pt")
        if os.path.isfile(trained):  # the model was finetuned with these flags, or the labels would lie
            check_resume_args(checkpoint_args(trained), args, trained, _EVAL_FLAGS,
                              action="--stage eval: cannot evaluate")
        encoder, widths = new_student_encoder(args)
        model = Classifier(encoder, widths[3], saved["num_classes"])
        model.load_state_dict(saved["model"])
        scores = predict(args, d, model.to(d.device), dataset, saved["num_classes"], args.target)
        top1_value, readable = video_top1(scores, labels)
        pred_file = os.path.join(stage_dir(args, "finetune", seed), "predictions.pt")
        if d.main:
            save_atomic(dict(names=list(names), labels=torch.tensor(labels), scores=scores), pred_file)
        d.print(f"eval seed {seed}: video-level top-1 {top1_value:.2f}% on {readable} {args.target} validation "
                f"videos ({len(labels) - readable} unreadable, left out)")
        per_seed.append(dict(seed=seed, top1=top1_value, predictions=os.path.relpath(pred_file, args.out_dir)))
    result = summary(per_seed)
    result.update(target=args.target, teacher_modality=args.teacher_modality, source=args.source,
                  granularity=args.granularity, loss=args.loss, match_layers=args.match_layers, init=args.init,
                  finetune_layers=args.finetune_layers, per_class=args.per_class,
                  label_fraction=args.label_fraction, val_videos=readable, unreadable_val_videos=len(labels) - readable,
                  protocol=args.protocol, args=vars(args))
    if d.main:
        path = os.path.join(args.out_dir, f"results_{run_tag(args)}.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"top-1 {result['top1_mean']:.2f} +- {result['top1_std']:.2f} over seeds {list(seeds)}  -> {path}",
              flush=True)
    return result


def summary(per_seed):
    """Mean and standard deviation (numpy's, ddof 0) of the per-seed top-1, as Tables 2.1-2.5 report."""
    values = np.array([r["top1"] for r in per_seed])
    return dict(seeds=per_seed, top1_mean=float(values.mean()), top1_std=float(values.std()))


# ----- two-stream fusion (Table 2.1) -----

def fuse(paths, out_dir):
    """Two-stream row of Table 2.1: average the class probabilities of two students (e.g. RGB- and
    flow-taught) video by video, seed by seed, and report top-1 mean +- std."""
    results = []
    for path in paths:
        if not os.path.isfile(path):
            raise SystemExit(f"--fuse {path}: no such results file")
        with open(path) as f:
            results.append((os.path.dirname(os.path.abspath(path)), json.load(f)))
    seeds = [s["seed"] for s in results[0][1]["seeds"]]
    common = [s for s in seeds if s in {r["seed"] for r in results[1][1]["seeds"]}]
    if not common:
        raise SystemExit(f"--fuse: {paths[0]} and {paths[1]} have no seed in common")
    per_seed = []
    for seed in common:
        preds = []
        for root, res in results:
            entry = next(r for r in res["seeds"] if r["seed"] == seed)
            preds.append(load_checkpoint(os.path.join(root, entry["predictions"])))
        index = {n: i for i, n in enumerate(preds[1]["names"])}
        rows = [index.get(n) for n in preds[0]["names"]]
        if any(r is None for r in rows):
            raise SystemExit("--fuse: the two results were evaluated on different validation videos")
        scores = (preds[0]["scores"] + preds[1]["scores"][rows]) / 2
        top1 = 100.0 * (scores.argmax(1) == preds[0]["labels"]).float().mean().item()
        print(f"fused seed {seed}: top-1 {top1:.2f}%")
        per_seed.append(dict(seed=seed, top1=top1))
    result = summary(per_seed)
    result.update(fused=[os.path.abspath(p) for p in paths])
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "results_fused.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"two-stream top-1 {result['top1_mean']:.2f} +- {result['top1_std']:.2f}  -> {out}", flush=True)
    return result


# ============ arguments ============

# Without data flags the script runs every stage on the small built-in synthetic paired dataset
# (common/synthetic.py: actors filling about 70% of the frame's height, every class as likely mirrored,
# so the thesis's corner crops and flips apply unchanged); these CPU-sized values replace the thesis's
# defaults there unless the flag is given explicitly.
# Teacher lr 0.01: about Hara et al.'s 0.1 x 8 / 128 (theirs is for batch 128). The students keep the
# thesis's lr 0.1 (with dampening 0.9 a step at 0.01 is a tenth of a plain-momentum one).
SYNTHETIC_PRESET = dict(clip_len=8, short_side=72, crop_size=64, batch_size=8, teacher_lr=0.01, teacher_epochs=30,
                        finetune_epochs=60, per_class=3, workers=2, print_freq=10,
                        stgcn_width=0.25, skeleton_frames=64)
# Transfer epochs of the preset per student (a depth epoch costs several skeleton ones).
SYNTHETIC_TRANSFER_EPOCHS = dict(depth=30, skeleton=50)
# The thesis's per-student values (Sec 2.4.3), then the synthetic preset; flags given always win.
TARGET_PRESETS = dict(
    depth=dict(batch_size=128, transfer_epochs=400, finetune_epochs=100, weight_decay=1e-3, granularity="combined"),
    skeleton=dict(batch_size=100, transfer_epochs=120, finetune_epochs=70, weight_decay=1e-5,
                  granularity="video2video", finetune_layers="all"))
DATA_FLAGS = ("data_root", "rgb_dir", "depth_dir", "flow_dir", "skeleton_dir")


def synthetic_run(a):
    return not a.fuse and all(getattr(a, k) is None for k in DATA_FLAGS)


PRESETS = [(f"--target {t} (Sec 2.4.3)", lambda a, t=t: a.target == t, v) for t, v in TARGET_PRESETS.items()]
PRESETS += [("--init scratch (Table 2.4: training directly on the target modality)", lambda a: a.init == "scratch",
             dict(finetune_layers="all"))]
PRESETS += [("synthetic (no data folder flags)", synthetic_run, SYNTHETIC_PRESET)]
PRESETS += [(f"synthetic --target {t}", lambda a, t=t: synthetic_run(a) and a.target == t, dict(transfer_epochs=e))
            for t, e in SYNTHETIC_TRANSFER_EPOCHS.items()]
STAGE_EPOCHS = ("teacher_epochs", "transfer_epochs", "finetune_epochs")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Feature-supervised action modality transfer (thesis Ch. 2). Defaults are the thesis's "
                    "(Sec 2.4.3) for the depth student; --target skeleton has its own, and without --data-root "
                    "(or the folder flags) the built-in synthetic paired dataset is used with CPU-sized values "
                    "(the presets below).",
        formatter_class=HelpFormatter)
    add_common_args(parser, data_root="NTU RGB+D root holding nturgb+d_rgb, nturgb+d_depth_masked, nturgb+d_flow "
                                      "and nturgb+d_skeleton_npy/PROTOCOL; without it (and the folder flags) the "
                                      "built-in synthetic paired dataset is written (once) and used",
                    train_list="--source kinetics: the Kinetics-400 CSV or a 'path label' list of the "
                                    "teacher's videos",
                    val_list="--source kinetics: the teacher's held-out videos, same format (without it the "
                                  "Kinetics teacher is not evaluated)",
                    epochs="shorthand: the epochs of every stage whose --teacher/transfer/finetune-epochs "
                                "is not given (0: each stage's own)",
                    out_dir="teacher/, transfer/, finetune_<init>_k<K>/seed<S>/ and results_<init>_k<K>.json are "
                            "written here")
    g = parser.add_argument_group("pipeline (Sec 2.3, 2.4.3)")
    g.add_argument("--stage", default="all", choices=["teacher", "transfer", "finetune", "eval", "all"],
                   help="all: every stage whose output the run needs: teacher (not with --teacher-checkpoint), "
                        "transfer (not with --student-checkpoint, --init scratch or teacher), finetune and eval")
    g.add_argument("--target", default="depth", choices=["depth", "skeleton"],
                   help="student modality: depth maps (--arch, Tables 2.1-2.4) or 3D skeletons (ST-GCN, Table 2.5)")
    g.add_argument("--teacher-modality", default="flow", choices=["rgb", "flow"],
                   help="teacher input (Table 2.1: flow transfers best and is the thesis's default)")
    g.add_argument("--teacher-checkpoint", default=None,
                   help="use this teacher instead of training one: our teacher.pt / checkpoint.pt, Hara et al.'s "
                        "resnet-18-kinetics.pth, or a torchvision r3d_18 state dict (e.g. the Kinetics-400 weights "
                        "r3d_18-b3b3357e.pth with --arch r3d_18; both --teacher-modality rgb)")
    g.add_argument("--source", default="ntu120_minus_60", choices=["ntu120_minus_60", "kinetics"],
                   help="teacher training data (Sec 2.4.2): NTU-120 videos of actions 61-120, or Kinetics-400 "
                        "(--source-root + --train-list)")
    g.add_argument("--granularity", default="combined",
                   choices=["clip2clip", "video2clip", "combined", "video2video"],
                   help="Sec 2.3.2: clip2clip Eq. 2.1, video2clip Eq. 2.2-2.3, combined Eq. 2.4 (best for depth, "
                        "Table 2.3), video2video Eq. 2.5 (skeletons, the --target skeleton preset)")
    g.add_argument("--loss", default="cosine", choices=["cosine", "mse"], help="Table 2.2: cosine distance works better")
    g.add_argument("--match-layers", default="last", choices=["last", "all"],
                   help="Sec 2.5.1.4: match the last layer only, or also every ResNet block's pooled output (depth)")
    g.add_argument("--teacher-clips", type=int_at_least(0), default=0,
                   help="clips per video for the teacher's video feature; 0 = frames / clip-len (Eq. 2.3)")
    g.add_argument("--init", default="transfer", choices=["transfer", "scratch", "teacher"],
                   help="student before finetuning (Table 2.4): our transfer, random (From-scratch: every layer "
                        "trains, see its preset), or the teacher's weights (Pretraining; first convolution summed "
                        "over the input channels)")
    g.add_argument("--finetune-layers", default="last", choices=["last", "all"],
                   help="layers the finetuning trains: the last ResNet block and fc (Sec 2.4.3, depth), or every "
                        "layer (the skeleton student; --init scratch)")
    g.add_argument("--student-checkpoint", default=None, help="--init transfer from this student.pt "
                   "(default OUT_DIR/transfer/student.pt)")
    g.add_argument("--per-class", type=int_at_least(0), default=20,
                   help="labeled target examples per class for finetuning (Tables 2.1-2.5: 20, 50, 100; 0 = all)")
    g.add_argument("--label-fraction", type=float_in(0, 1, open_low=True), default=1.0,
                   help="then keep this random fraction of them (Fig. 2.3: --per-class 0 --label-fraction 0.5)")
    g.add_argument("--seeds", default="0,1,2,3,4",
                   help="comma list of seeds, one labeled subset each: finetune + eval once per seed, mean +- std "
                        "(the thesis: 5 runs)")
    g.add_argument("--fuse", nargs=2, default=None, metavar=("A.json", "B.json"),
                   help="fuse two results files' predictions (two-stream row of Table 2.1) and exit")
    g = parser.add_argument_group("schedule and networks (Sec 2.4.3)")
    g.add_argument("--teacher-epochs", type=int, default=200, help="Hara et al.'s code")
    g.add_argument("--teacher-lr", type=float_in(0), default=0.1,
                   help="the teacher's learning rate (Hara et al.: 0.1); --lr is the students' (Sec 2.4.3: 0.1)")
    g.add_argument("--transfer-epochs", type=int, default=400, help="Sec 2.4.3 (skeleton preset: 120)")
    g.add_argument("--finetune-epochs", type=int, default=100, help="Sec 2.4.3 (skeleton preset: 70)")
    g.add_argument("--arch", default="hara_r3d_18", choices=list(ARCHS),
                   help="teacher and depth student: Hara et al.'s 3D-ResNet-18 (the thesis's [83]) or torchvision's "
                        "r3d_18 (for its Kinetics-400 weights)")
    g.add_argument("--dampening", type=float_in(0, 1), default=0.9, help="SGD dampening (Hara et al. 2018, MARS: 0.9)")
    g.add_argument("--lr-schedule", default="plateau", choices=["plateau", "steps"],
                   help="plateau: lr x0.1 when the epoch's training loss has not fallen for --lr-patience epochs "
                        "(Hara et al. 2018, MARS); steps: lr x0.1 at --lr-steps")
    g.add_argument("--lr-patience", type=int_at_least(0), default=10,
                   help="--lr-schedule plateau: epochs without improvement")
    g.add_argument("--lr-steps", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                   help="--lr-schedule steps: lr x0.1 at these fractions of each stage's epochs (Hara et al.'s later "
                        "code: epochs 50, 100, 150 of 200)")
    g.add_argument("--weight-decay", type=float_in(0), default=1e-3,
                   help="student stages (skeleton preset: 1e-5). The teacher always uses 1e-3")
    g.add_argument("--eval-batch-size", type=int_at_least(1), default=32,
                   help="clips (or sequences) per forward pass when evaluating")
    g.add_argument("--short-side", type=int, default=128,
                   help="frames are cropped to the centre (eval) or a random (train) square of the short side and "
                        "resized to this on the loader workers; the corner crop to --crop-size follows on the device")
    g.add_argument("--stgcn-width", type=float_in(0, open_low=True), default=1.0,
                   help="channel multiplier of ST-GCN (1 = Yan et al.)")
    g.add_argument("--skeleton-frames", type=int_at_least(1), default=300,
                   help="frames of each skeleton sequence the ST-GCN sees: Yan et al. zero-pad to 300; less skips "
                        "the padding of data whose sequences are all shorter (refused if one is longer)")
    g = parser.add_argument_group("data (NTU RGB+D layout; see the README)")
    g.add_argument("--rgb-dir", default=None, help="default DATA_ROOT/nturgb+d_rgb")
    g.add_argument("--depth-dir", default=None, help="default DATA_ROOT/nturgb+d_depth_masked")
    g.add_argument("--flow-dir", default=None, help="default DATA_ROOT/nturgb+d_flow")
    g.add_argument("--skeleton-dir", default=None, help="default DATA_ROOT/nturgb+d_skeleton_npy/PROTOCOL")
    g.add_argument("--source-rgb-dir", default=None, help="NTU-120 RGB videos for the teacher; default --rgb-dir")
    g.add_argument("--source-flow-dir", default=None,
                   help="NTU-120 flow folders for the teacher; default --flow-dir (Kinetics: <video stem>/ folders)")
    g.add_argument("--source-root", default=None, help="Kinetics-400 videos (--source kinetics)")
    g.add_argument("--protocol", default="xview", choices=["xview", "xsub"], help="NTU split (Sec 2.4.1: cross-view)")
    parser.set_defaults(epochs=0, batch_size=128, lr=0.1, out_dir="runs/distill_modality")
    args = parse_with_presets(parser, argv, PRESETS)
    if "epochs" in args.given_flags and args.epochs < 1:  # 0, the default, means "each stage's own flag"
        parser.error(f"--epochs {args.epochs}: every stage trains at least one epoch")
    if args.epochs:  # the shorthand: every stage whose own flag was not given, over any preset
        shorthand = [k for k in STAGE_EPOCHS if k not in args.given_flags]
        for k in shorthand:
            setattr(args, k, args.epochs)
        args.presets.append(f"--epochs {args.epochs}: " + " ".join(f"--{k.replace('_', '-')} {args.epochs}"
                                                                   for k in shorthand))
    if (args.target == "skeleton") != (args.granularity == "video2video"):
        parser.error(f"--granularity {args.granularity} does not fit --target {args.target}: skeleton students "
                     "take whole sequences (video2video, Sec 2.3.2.3); depth students take clips")
    if args.target == "skeleton" and args.finetune_layers == "last":
        parser.error("--finetune-layers last freezes ResNet blocks: the skeleton student (ST-GCN) trains every layer")
    if args.match_layers == "all" and args.target != "depth":
        parser.error("--match-layers all matches ResNet blocks: it needs --target depth")
    lists = [flag for flag in ("train_list", "val_list", "source_root") if flag in args.given_flags]
    if lists and args.source != "kinetics":
        parser.error(f"--{lists[0].replace('_', '-')} names the Kinetics teacher's data: it needs --source kinetics "
                     f"(the NTU teacher's videos come from --data-root or --source-rgb-dir / --source-flow-dir)")
    if args.stage == "all" and args.resume not in ("", "auto"):
        parser.error("--stage all resumes with --resume auto; give a checkpoint path only with a single stage")
    if args.data_root is not None:  # the NTU layout under --data-root, for each folder flag not given
        for key, folder in NTU_FOLDERS.items():
            if getattr(args, key) is None:
                sub = os.path.join(folder, args.protocol) if key == "skeleton_dir" else folder
                setattr(args, key, os.path.join(args.data_root, sub))
    try:
        args.seeds = [int(s) for s in str(args.seeds).split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds}: expected a comma list of integers")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.fuse:
        return fuse(args.fuse, args.out_dir)
    d = Dist(args.device)
    seed_everything(args.seed, d.rank)
    os.makedirs(args.out_dir, exist_ok=True)
    d.print(json.dumps(vars(args)))
    for line in args.presets:
        d.print(line)
    synthetic_folders(args, d)
    t0 = time.time()
    if args.stage == "all":  # a stage runs only when its output is needed
        stages = ["finetune", "eval"]
        if args.init == "transfer" and args.student_checkpoint is None:
            stages = ["transfer"] + stages
        if ("transfer" in stages or args.init == "teacher") and args.teacher_checkpoint is None:
            stages = ["teacher"] + stages
    else:
        stages = [args.stage]
    check_inputs(args, stages)
    for stage in stages:  # a README row of another configuration into this --out-dir stops here, not after the teacher
        for seed in (args.seeds if stage == "finetune" else [None] if stage != "eval" else []):
            check_out_dir(args, stage_dir(args, stage, seed), STAGE_INDEPENDENT[stage])
    result = None
    for stage in stages:
        seed_everything(args.seed, d.rank)
        if stage == "teacher":
            run_teacher(args, d)
        elif stage == "transfer":
            run_transfer(args, d)
        elif stage == "finetune":
            for seed in args.seeds:
                run_finetune(args, d, seed)
        else:
            result = run_eval(args, d, args.seeds)
    d.print(f"done: stages {', '.join(stages)} in {time.time() - t0:.0f} s")
    d.close()
    return result


if __name__ == "__main__":
    main()
