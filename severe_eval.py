"""How Severe is Benchmark-Sensitivity in Video Self-Supervised Learning? (thesis Chapter 4)

The SEVERE benchmark: finetune (App. C.4, Table B.2) or linear-probe (Table B.2) an R(2+1)D-18
checkpoint on downstream setups that shift the domain (SSv2, Gym99), the number of samples
(UCF101 / Gym99 with 1,000 videos), the action granularity (FX-S1, UB-S1) and the task
(UCFRep repetition counting, Charades multi-label), and summarise the results as Table 4.4 / 5.8.

    # tiny CPU run on the built-in synthetic videos
    python severe_eval.py --setup ucf101
    # finetune tubelet_contrast.py's backbone on Gym (10^3), one GPU
    python severe_eval.py --setup gym99_1000 --data-root data/finegym --ann-root annotations \
        --checkpoint runs/tc_k400/backbone.pt --format ours --amp --out-dir runs/severe/tc
    # all eight SEVERE setups on 4 GPUs, then the table
    torchrun --nproc_per_node=4 severe_eval.py --setup all ... --out-dir runs/severe/tc
    python severe_eval.py --summary runs/severe/*

Every setup runs end to end, also without data (on the built-in synthetic videos).
"""
import argparse
import csv
import dataclasses
import glob
import hashlib
import json
import math
import os
import pickle
import random
import re
import time
import zipfile
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import nn

from common.backbones import KINETICS_MEAN, KINETICS_STD, load_encoder_weights, video_encoder
from common.engine import (Dist, HelpFormatter, Progress, add_common_args, apply_presets, autocast, float_in,
                           grad_scaler, int_at_least, optimizer_step, parse_with_presets, resume_training,
                           save_epoch, seed_everything, unwrap)
from common.skeleton import ntu_split, parse_ntu_name
from common.synthetic import BACKGROUNDS, synthetic_repetition_videos, synthetic_video_dataset
from common.video import (BadVideoCounter, VideoClipDataset, VideoReadError, count_frames, drop_missing,
                          frame_rate, read_clip, read_kinetics_csv, read_or_replace, read_video_list)

# ============ downstream setups and their annotation files (Table 4.4, App. B) ============
#
# Readers of the official annotation files, exactly as the datasets distribute them. Every reader
# returns samples in file order as (relative video path, label) (EPIC-Kitchens: + the segment's first
# and last frame); paths are relative to the video root (--data-root) and follow the folder layout of
# the released videos. Malformed lines raise AnnotationError naming "file:lineno"; a missing file
# raises FileNotFoundError naming the path.
#
# Layout under --ann-root (the file names are the official ones):
#   ucf101/{classInd,trainlist01,testlist01}.txt       ucfTrainTestlist, split 1
#   hmdb51/<class>_test_split1.txt                      51 files, testTrainMulti_7030_splits
#   ssv2/something-something-v2-{labels,train,validation}.json
#   finegym/gym99_{train,val}.txt                       FineGym v1.0
#   ucfrep/ucf526_annotations.zip                       UCFRep (read inside the zip)
#   charades/Charades_v1_{train,test}.csv               Charades v1
#   epic_kitchens/EPIC_100_{train,validation}.csv       EPIC-Kitchens-100 (segments of P01/videos/P01_01.MP4)

class AnnotationError(ValueError):
    """A malformed or inconsistent line in an annotation file; the message starts with 'file:lineno'."""


def _annotation_lines(path):
    """[(lineno, text)] of the non-blank lines of a text file (1-based numbers; CRLF and trailing blanks removed)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [(n, ln.strip()) for n, ln in enumerate(f, 1) if ln.strip()]


def _split_fields(path, lineno, text, count):
    fields = text.split()
    if len(fields) != count:
        raise AnnotationError(f"{path}:{lineno}: expected {count} fields, got {len(fields)}: {text!r}")
    return fields


def _parse_int(path, lineno, text, what):
    try:
        return int(text)
    except ValueError:
        raise AnnotationError(f"{path}:{lineno}: {what} is not an integer: {text!r}") from None


# ---- UCF101 (ucfTrainTestlist) ----

def read_ucf101_classes(class_ind):
    """Class names in label order from classInd.txt ('1 ApplyEyeMakeup', 1-based, in order)."""
    classes = []
    for lineno, text in _annotation_lines(class_ind):
        idx, name = _split_fields(class_ind, lineno, text, 2)
        if _parse_int(class_ind, lineno, idx, "class index") != len(classes) + 1:
            raise AnnotationError(f"{class_ind}:{lineno}: class index {idx} out of order (expected {len(classes) + 1})")
        classes.append(name)
    return classes


def read_ucf101_split(ann_dir, split="train", fold=1):
    """UCF101 split `fold`: ([('Class/v_Class_gXX_cYY.avi', label)], classes), 0-based labels.

    The label comes from the folder name via classInd.txt, as SEVERE does for both lists; the train
    list's 1-based index must agree with it. Split 1: 9,537 train / 3,783 test, 101 classes.
    """
    classes = read_ucf101_classes(os.path.join(ann_dir, "classInd.txt"))
    index = {c: i for i, c in enumerate(classes)}
    path = os.path.join(ann_dir, f"{'trainlist' if split == 'train' else 'testlist'}{fold:02d}.txt")
    samples = []
    for lineno, text in _annotation_lines(path):
        fields = _split_fields(path, lineno, text, 2 if split == "train" else 1)
        video = fields[0]
        cls = video.split("/")[0] if "/" in video else None
        if cls is None or not video.endswith(".avi"):
            raise AnnotationError(f"{path}:{lineno}: expected 'Class/video.avi', got {video!r}")
        if cls not in index:
            raise AnnotationError(f"{path}:{lineno}: unknown class {cls!r} (not in classInd.txt)")
        if split == "train" and _parse_int(path, lineno, fields[1], "class index") != index[cls] + 1:
            raise AnnotationError(f"{path}:{lineno}: index {fields[1]} disagrees with class {cls!r} "
                                  f"(classInd.txt: {index[cls] + 1})")
        samples.append((video, index[cls]))
    return samples, classes


# ---- HMDB51 (testTrainMulti_7030_splits) ----

HMDB51_SPLIT_IDS = {"train": "1", "test": "2"}  # 0 = not used in this split


def read_hmdb51_split(ann_dir, split="train", fold=1):
    """HMDB51 split `fold`: ([('<class>/<video>.avi', label)], classes).

    One file '<class>_test_split<fold>.txt' per class, lines 'video.avi N'; classes are the file-name
    prefixes in sorted order; samples class by class, each in file order. Split 1: 3,570 / 1,530.
    """
    suffix = f"_test_split{fold}.txt"
    if not os.path.isdir(ann_dir):
        raise FileNotFoundError(f"HMDB51 split folder not found: {ann_dir}")
    classes = sorted(f[: -len(suffix)] for f in os.listdir(ann_dir) if f.endswith(suffix))
    if not classes:
        raise FileNotFoundError(f"no '*{suffix}' files in {ann_dir}")
    wanted = HMDB51_SPLIT_IDS[split]
    samples = []
    for label, cls in enumerate(classes):
        path = os.path.join(ann_dir, cls + suffix)
        for lineno, text in _annotation_lines(path):
            video, flag = _split_fields(path, lineno, text, 2)
            if flag not in ("0", "1", "2"):
                raise AnnotationError(f"{path}:{lineno}: split id must be 0, 1 or 2, got {flag!r}")
            if flag == wanted:
                samples.append((f"{cls}/{video}", label))
    return samples, classes


# ---- Something-Something v2 ----

def read_ssv2_split(labels_json, split_json):
    """SSv2: ([('<id>.webm', label)], classes) from the labels json and a train/validation json.

    labels json: template text (without brackets) -> class id string. Each entry of the split json
    is {id, label, template, placeholders}; its class is its template with '[' and ']' removed.
    Validation: 24,777 videos, 174 classes.
    """
    for p in (labels_json, split_json):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"annotation file not found: {p}")
    with open(labels_json, encoding="utf-8") as f:
        label_of = {k: int(v) for k, v in json.load(f).items()}
    classes = [None] * len(label_of)
    for name, i in label_of.items():
        classes[i] = name
    with open(split_json, encoding="utf-8") as f:
        entries = json.load(f)
    samples = []
    for n, entry in enumerate(entries):
        try:
            vid, template = entry["id"], entry["template"]
        except (KeyError, TypeError):
            raise AnnotationError(f"{split_json}: entry {n}: expected an object with 'id' and 'template', "
                                  f"got {entry!r}") from None
        cls = template.replace("[", "").replace("]", "")
        if cls not in label_of:
            raise AnnotationError(f"{split_json}: entry {n} (id {vid}): unknown class {cls!r} "
                                  f"(not in {os.path.basename(labels_json)})")
        samples.append((f"{vid}.webm", label_of[cls]))
    return samples, classes


# ---- FineGym v1.0: Gym99 and its within-set subsets (Sec 4.5, App. B.2.3) ----


def read_gym99_split(list_path, label_range=None, num_classes=99):
    """Gym99 list '<name>.avi <label>': [(name, label)] in file order (20,484 train / 8,521 val); the
    Gym288 lists have the same format with num_classes=288.

    With `label_range` (a range of Gym99 labels) keeps the classes in that range and shifts their
    labels to start at 0: FX-S1 -> 0..10 (1,882 / 777), UB-S1 -> 0..14 (3,511 / 1,471); the events as
    SEVERE's gym_event_*.py: Vault labels 0..5, Floor 6..40.
    """
    samples = []
    for lineno, text in _annotation_lines(list_path):
        video, label = _split_fields(list_path, lineno, text, 2)
        label = _parse_int(list_path, lineno, label, "label")
        if not 0 <= label < num_classes:
            raise AnnotationError(f"{list_path}:{lineno}: unknown class {label} (Gym{num_classes} has labels "
                                  f"0..{num_classes - 1})")
        if label_range is None:
            samples.append((video, label))
        elif label in label_range:
            samples.append((video, label - label_range[0]))
    return samples


# ---- NTU-60 RGB (Table 4.1): the cross-subject split from the video names ----

def read_ntu60_rgb(video_root, split="train"):
    """[('S...A..._rgb.avi', action - 1)] of the NTU-60 videos in `video_root` (one folder, the released
    nturgb+d_rgb layout) on the cross-subject split ('train' / 'test'), sorted by name. NTU-120's extra
    setups (18-32) and actions (61-120) are left out, so a folder of both serves."""
    if video_root is None or not os.path.isdir(video_root):
        raise FileNotFoundError(f"NTU-60: the split comes from the video names; no video folder {video_root}")
    samples = []
    for name in sorted(os.listdir(video_root)):
        if not name.endswith("_rgb.avi"):
            continue
        ids = parse_ntu_name(name)
        if ids["setup"] <= 17 and ids["action"] <= 60 and ntu_split(name, "xsub") == ("train" if split == "train"
                                                                                     else "val"):
            samples.append((name, ids["action"] - 1))
    return samples


# ---- EPIC-Kitchens-100 (Table 4.1, Table B.4): narrated segments of long recordings ----

EPIC_CLASSES = dict(verb=97, noun=300)
EK_HEADS = (EPIC_CLASSES["verb"], EPIC_CLASSES["noun"])  # the outputs of an action head: verbs, then nouns


def read_epic_kitchens_csv(csv_path, target="verb"):
    """EPIC_100_{train,validation}.csv -> [(P01/videos/P01_01.MP4, class, first, last)] in file order:
    each narration's frames in its recording (0-based, both included; the CSV's start_frame / stop_frame
    count from 1) and its `target` class: 'verb', 'noun', or 'action', the pair (verb, noun) as the one
    number verb x 300 + noun (`action_top1` splits it). 67,217 / 9,668 rows."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotation file not found: {csv_path}")
    parts = ("verb", "noun") if target == "action" else (target,)
    samples = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = {"participant_id", "video_id", "start_frame", "stop_frame"} | {f"{p}_class" for p in parts}
        missing = columns - set(reader.fieldnames or ())
        if missing:
            raise AnnotationError(f"{csv_path}:1: missing column(s) {sorted(missing)}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            first, last = (_parse_int(csv_path, reader.line_num, row[k] or "", k)
                           for k in ("start_frame", "stop_frame"))
            if not 1 <= first <= last:
                raise AnnotationError(f"{where}: start_frame {first} and stop_frame {last} are not a segment")
            classes = []
            for p in parts:
                c = _parse_int(csv_path, reader.line_num, row[f"{p}_class"] or "", f"{p}_class")
                if not 0 <= c < EPIC_CLASSES[p]:
                    raise AnnotationError(f"{where}: unknown {p} class {c} (EPIC-Kitchens-100 has "
                                          f"0..{EPIC_CLASSES[p] - 1})")
                classes.append(c)
            label = classes[0] * EPIC_CLASSES["noun"] + classes[1] if target == "action" else classes[0]
            path = f"{row['participant_id']}/videos/{row['video_id']}.MP4"
            samples.append((path, label, first - 1, last - 1))
    return samples


# ---- UCFRep repetition counting (Zhang et al. 2020; Sec 4.6.1) ----

class RepetitionVideo(NamedTuple):
    path: str                 # 'Class/v_Class_gXX_cYY.avi', as in the UCF101 release
    boundaries: Tuple[int]    # frame numbers (1-based) of the cycle boundaries, first = start, last = end
    count: int                # repetitions = len(boundaries) - 1


def read_ucfrep_split(zip_path, split="train"):
    """UCFRep videos of `split` ('train' | 'val') from ucf526_annotations.zip: [RepetitionVideo].

    annotations/repetition_label/<Class>.txt holds per video a name line and a line of boundary frames
    (a lone '0' marks a video without annotation); annotations/{train,val}/<name>.mat name the split.
    Only the .mat file names are used: their 'temporal_bound' equals the text boundaries. The class
    folder is the text file's name (UCF101 spelling: 'HandstandPushups/v_HandStandPushups_g01_c01.avi').
    Sorted by name, as the UCFRep loader lists the split folder. 421 train / 105 val.
    """
    if not os.path.isfile(zip_path):
        raise FileNotFoundError(f"annotation file not found: {zip_path}")
    if split not in ("train", "val"):
        raise ValueError(f"UCFRep split must be 'train' or 'val', got {split!r}")
    labels = {}
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
        for member in sorted(n for n in names if n.startswith("annotations/repetition_label/") and n.endswith(".txt")):
            cls = os.path.basename(member)[:-4]
            where = f"{zip_path}:{member}"
            text = zf.read(member).decode("utf-8")
            lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
            if len(lines) % 2:
                raise AnnotationError(f"{where}:{lines[-1][0]}: video name without a boundary line")
            for (n_name, name), (n_b, bound) in zip(lines[0::2], lines[1::2]):
                if not name.startswith("v_"):
                    raise AnnotationError(f"{where}:{n_name}: expected a video name 'v_...', got {name!r}")
                labels[name] = (cls, tuple(_parse_int(where, n_b, b, "boundary frame") for b in bound.split()), n_b)
        prefix = f"annotations/{split}/"
        split_names = sorted(os.path.basename(n)[:-4] for n in names if n.startswith(prefix) and n.endswith(".mat"))
    videos = []
    for name in split_names:
        if name not in labels:
            raise AnnotationError(f"{zip_path}:{prefix}{name}.mat: no repetition label for {name!r}")
        cls, bounds, n_b = labels[name]
        if len(bounds) < 2 or list(bounds) != sorted(bounds):
            raise AnnotationError(f"{zip_path}:annotations/repetition_label/{cls}.txt:{n_b}: "
                                  f"{name} needs at least two increasing boundaries, got {list(bounds)}")
        videos.append(RepetitionVideo(f"{cls}/{name}.avi", bounds, len(bounds) - 1))
    return videos


# ---- Charades v1 multi-label classification (Sec 4.6.2) ----

CHARADES_NUM_CLASSES = 157


class CharadesVideo(NamedTuple):
    path: str        # '<id>.mp4'
    actions: list    # [(class_index, start_s, end_s)]; empty for a video without actions
    length: float    # video length in seconds


def read_charades_csv(csv_path):
    """Charades_v1_{train,test}.csv -> [CharadesVideo] in file order.

    Columns id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length;
    actions 'c092 11.90 21.20;c147 0.00 12.60' (class, start and end in seconds) or empty.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"annotation file not found: {csv_path}")
    videos = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"id", "actions", "length"} - set(reader.fieldnames or ())
        if missing:
            raise AnnotationError(f"{csv_path}:1: missing column(s) {sorted(missing)}")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            actions = []
            for item in (row["actions"] or "").split(";"):
                if not item.strip():
                    continue
                fields = item.split()
                if len(fields) != 3 or len(fields[0]) != 4 or fields[0][0] != "c" or not fields[0][1:].isdigit():
                    raise AnnotationError(f"{where}: expected 'cXXX start end', got {item!r}")
                cls = int(fields[0][1:])
                if cls >= CHARADES_NUM_CLASSES:
                    raise AnnotationError(f"{where}: unknown class {fields[0]!r} (Charades has c000..c156)")
                try:
                    start, end = float(fields[1]), float(fields[2])
                except ValueError:
                    raise AnnotationError(f"{where}: bad times in {item!r}") from None
                actions.append((cls, start, end))
            try:
                length = float(row["length"])
            except (TypeError, ValueError):
                raise AnnotationError(f"{where}: bad length {row['length']!r}") from None
            videos.append(CharadesVideo(f"{row['id']}.mp4", actions, length))
    return videos


def frame_labels(actions, num_frames, fps):
    """Per-frame multi-hot targets: (num_frames, 157) bool.

    Frame i (0-based) shows time t = i / fps; class c is on when start < t < end for one of its
    intervals (the open-interval rule of the Charades reference loaders). A clip's target is the
    union over its frames: frame_labels(...)[indices].any(0).
    """
    t = np.arange(num_frames, dtype=np.float64) / fps
    out = np.zeros((num_frames, CHARADES_NUM_CLASSES), dtype=bool)
    for cls, start, end in actions:
        out[:, cls] |= (t > start) & (t < end)
    return out


# ---- low-shot subsets (Sec 4.4, App. B.2.2) ----

def low_shot_subset(samples, num_classes=None, total=1000, seed=99999, fraction=None):
    """The SEVERE 10^3 subset of `samples` [(path, label)]: ceil(total / num_classes) videos per class;
    with `fraction` instead round(fraction x n_c), at least one, of each class's n_c (SSv2-Sub).

    One np.random.RandomState(seed) walks the classes in ascending label order and draws
    choice(n_c, k, replace=False) positions among that class's videos in list order (a permutation of
    all n_c when n_c < k). The result is class by class, each class in the order drawn (positions are
    not sorted), as SEVERE's get_subset_data. `num_classes` defaults to the number of distinct labels,
    which is what SEVERE divides by. UCF101: k = 10 -> 1,010 videos; Gym99: k = 11 -> 1,089.
    """
    labels = np.array([sample[1] for sample in samples])
    present = sorted(set(labels.tolist()))
    k = math.ceil(total / (num_classes or len(present)))
    rng = np.random.RandomState(seed)
    subset = []
    for c in present:
        members = np.flatnonzero(labels == c)
        if fraction is not None:
            k = max(1, int(round(fraction * len(members))))
        picks = rng.choice(len(members), min(k, len(members)), replace=False)
        subset.extend(samples[i] for i in members[picks])
    return subset


# ---- the setups (Table 4.4 + standard UCF101/HMDB51 + arrow of time) ----

@dataclass(frozen=True)
class Schedule:
    """Optimisation schedule: multi-step lr decay by `gamma` at `milestones` (epochs)."""
    lr: float
    epochs: int
    milestones: Tuple[int, ...]
    batch_size: int
    gamma: float = 0.3             # SEVERE's configs (App. B.2's text: 0.1)
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_epochs: float = 0.0     # linear warm-up from warmup_lr (Charades, SlowFast recipe)
    warmup_lr: float = 0.0


@dataclass(frozen=True)
class Setup:
    name: str
    title: str                     # column name in Table 4.4 / C.4
    dataset: str                   # ucf101 | hmdb51 | ssv2 | gym99 | gym288 | ucfrep | charades
    task: str                      # recognition | counting | multilabel | aot
    num_classes: int               # outputs of the head (counting: 1, aot: 2)
    metric: str                    # top1 | mean_class_acc | mean_count_error | map | action_top1 (EK verb + noun)
    train_files: Tuple[str, ...]   # relative to --ann-root ('*' = one file per class)
    test_files: Tuple[str, ...]
    finetune: Optional[Schedule]   # SEVERE's configs (Tables B.2, C.4); None: linear evaluation only (K-400)
    linear: Optional[Schedule]     # Table B.2; None where the thesis gives no linear protocol
    subset_size: Optional[int] = None       # low-shot training subset (Sec 4.4): total videos asked for
    subset_fraction: Optional[float] = None  # or this fraction of every class (SSv2-Sub, App. C.4)
    label_range: Optional[Tuple[int, int]] = None  # Gym99 within-set subset: [first, last + 1)
    clip_stride: int = 1                    # native frames between sampled frames where video_fps is 0
    clip_len: int = 32                      # frames per clip (App. C.4; arrow of time: 8, Table 4.3)
    video_fps: float = 16.0                 # SEVERE's configs: 32 frames resampled to 16 fps = 2 s; 0 = native
    dropout: float = 0.0                    # before the head; SEVERE's heads are bare linear but Charades's
    train_crop: str = "resized"             # SEVERE's RandomResizedCrop; Charades: SlowFast's short-side jitter
    test_spatial_crops: int = 1             # Charades: SlowFast's 3
    short_side: int = 128                   # frames decoded at this short side (Charades: 340)
    colour_jitter: bool = True              # off for Charades (SlowFast has none) and the arrow of time


_UCF_FILES = ("ucf101/classInd.txt", "ucf101/trainlist01.txt"), ("ucf101/classInd.txt", "ucf101/testlist01.txt")
_HMDB_FILES = ("hmdb51/*_test_split1.txt",), ("hmdb51/*_test_split1.txt",)
_SSV2_FILES = (("ssv2/something-something-v2-labels.json", "ssv2/something-something-v2-train.json"),
               ("ssv2/something-something-v2-labels.json", "ssv2/something-something-v2-validation.json"))
_GYM_FILES = ("finegym/gym99_train.txt",), ("finegym/gym99_val.txt",)
_GYM288_FILES = ("finegym/gym288_train.txt",), ("finegym/gym288_val.txt",)
_UCFREP_FILES = ("ucfrep/ucf526_annotations.zip",), ("ucfrep/ucf526_annotations.zip",)
_CHARADES_FILES = ("charades/Charades_v1_train.csv",), ("charades/Charades_v1_test.csv",)
_EK_FILES = ("epic_kitchens/EPIC_100_train.csv",), ("epic_kitchens/EPIC_100_validation.csv",)

# SEVERE's configs (action_recognition/configs/benchmark) count an epoch as `clips_per_video` random clips
# per video (10; SSv2 2); here an epoch is one clip per video, so their epochs and milestones are x 10 (x 2).
_FT_STANDARD = Schedule(1e-4, 160, (60, 100, 140), 32)        # UCF101, HMDB51, Gym99, and the 10^3 subsets
_FT_SSV2 = Schedule(1e-4, 44, (24, 34, 40), 32)               # 22 epochs [12, 17, 20] x 2 clips
_FT_GYM_SETS = Schedule(1e-4, 180, (70, 120, 160), 32)        # FX-S1, UB-S1: 18 epochs [7, 12, 16]
_FT_UCF_RC = Schedule(5e-5, 100, (), 32, weight_decay=1e-3)  # Adam weight decay of SEVERE's opts.py
# Charades: SlowFast recipe of the SEVERE config (SGD momentum 0.9, wd 1e-4, 4 warm-up epochs from 1e-4)
_FT_CHARADES = Schedule(0.0375, 57, (41, 49), 16, gamma=0.1, optimizer="sgd", weight_decay=1e-4,
                        warmup_epochs=4.0, warmup_lr=1e-4)
_FT_AOT = Schedule(1e-5, 10, (), 12)                          # App. B.2.4: no scheduler, no augmentation
_FT_NTU = Schedule(1e-4, 180, (90, 140, 160), 64)             # SEVERE's ntu60 config: 18 epochs [9, 14, 16]
_LIN_UCF = Schedule(0.01, 100, (40, 80), 128)                 # SEVERE's linear config: 10 epochs [4, 8, 10]
_LIN_B2 = Schedule(0.01, 120, (40, 80, 100), 64, gamma=0.1)  # Table B.2: NTU-60, Gym99 (no SEVERE config)
_LIN_K400 = Schedule(0.01, 40, (10, 20, 30), 64)              # SEVERE's kinetics linear config (1 clip/video)
_LIN_SSV2 = Schedule(0.01, 40, (20, 30), 64, gamma=0.1)
_EK = Schedule(0.0025, 30, (20, 25), 32, gamma=0.1)           # Table B.2, finetuning and linear (no SEVERE config)
LINEAR_CLIP_LEN = 16  # SEVERE's linear configs: clip_duration 1.0 at 16 fps

SETUPS = {s.name: s for s in (
    Setup("ssv2", "SS-v2", "ssv2", "recognition", 174, "top1", *_SSV2_FILES, _FT_SSV2, _LIN_SSV2),
    Setup("gym99", "Gym-99", "gym99", "recognition", 99, "top1", *_GYM_FILES, _FT_STANDARD, _LIN_B2),
    # the Ch. 5 ablations' SSv2 (Tables 5.2-5.5, C.7): 25% of the training set spanning all classes
    Setup("ssv2_sub", "SSv2-Sub", "ssv2", "recognition", 174, "top1", *_SSV2_FILES, _FT_SSV2, _LIN_SSV2,
          subset_fraction=0.25),
    Setup("ucf_1000", "UCF (10^3)", "ucf101", "recognition", 101, "top1", *_UCF_FILES, _FT_STANDARD, _LIN_UCF,
          subset_size=1000),
    Setup("gym99_1000", "Gym-99 (10^3)", "gym99", "recognition", 99, "top1", *_GYM_FILES, _FT_STANDARD, _LIN_B2,
          subset_size=1000),
    Setup("fx_s1", "FX-S1", "gym99", "recognition", 11, "mean_class_acc", *_GYM_FILES, _FT_GYM_SETS, None,
          label_range=(6, 17)),  # Floor Exercise set 1: leaps, jumps and hops
    Setup("ub_s1", "UB-S1", "gym99", "recognition", 15, "mean_class_acc", *_GYM_FILES, _FT_GYM_SETS, None,
          label_range=(74, 89)),  # Uneven Bars set 1: circles
    # Table 4.2's other granularities: the events Vault and Floor within Gym99, the long-tailed Gym288
    Setup("gym_vault", "Vault", "gym99", "recognition", 6, "mean_class_acc", *_GYM_FILES, _FT_GYM_SETS, None,
          label_range=(0, 6)),
    Setup("gym_floor", "Floor", "gym99", "recognition", 35, "mean_class_acc", *_GYM_FILES, _FT_GYM_SETS, None,
          label_range=(6, 41)),
    Setup("gym288", "Gym-288", "gym288", "recognition", 288, "mean_class_acc", *_GYM288_FILES, _FT_STANDARD, None),
    Setup("ucf_rc", "UCF-RC", "ucfrep", "counting", 1, "mean_count_error", *_UCFREP_FILES, _FT_UCF_RC, None,
          colour_jitter=False),  # SEVERE's counting code: letterboxed frames, a flip, nothing else
    Setup("charades", "Charades", "charades", "multilabel", CHARADES_NUM_CLASSES, "map", *_CHARADES_FILES,
          _FT_CHARADES, None, clip_stride=8, video_fps=0.0, dropout=0.5,  # SlowFast's config: 32 x 8, DROPOUT_RATE,
          train_crop="jitter", test_spatial_crops=3, short_side=340, colour_jitter=False),  # TRAIN_JITTER_SCALES
    Setup("ek100", "EK-100", "epic_kitchens", "recognition", 97, "top1", *_EK_FILES, _EK, _EK),  # verbs, Table 4.1
    Setup("ek100_noun", "EK-100 nouns", "epic_kitchens", "recognition", 300, "top1", *_EK_FILES, _EK, _EK),  # B.4
    # Table B.4's actions: one layer of 97 verb + 300 noun outputs, right when both are (action_top1)
    Setup("ek100_action", "EK-100 actions", "epic_kitchens", "recognition", 397, "action_top1", *_EK_FILES, _EK, _EK),
    Setup("ucf101", "UCF101", "ucf101", "recognition", 101, "top1", *_UCF_FILES, _FT_STANDARD, _LIN_UCF),
    Setup("k400", "Kinetics-400", "kinetics", "recognition", 400, "top1", ("kinetics400/train.csv",),
          ("kinetics400/validate.csv",), None, _LIN_K400),  # Table 4.1's linear evaluation
    Setup("ntu60", "NTU-60", "ntu60", "recognition", 60, "top1", (), (), _FT_NTU, _LIN_B2,  # Table 4.1
          clip_len=16),  # SEVERE's config: clip_duration 1.0 at 16 fps
    Setup("hmdb51", "HMDB51", "hmdb51", "recognition", 51, "top1", *_HMDB_FILES, _FT_STANDARD, None),
    Setup("ucf_aot", "UCF arrow of time", "ucf101", "aot", 2, "top1", *_UCF_FILES, _FT_AOT, None, clip_len=8,
          video_fps=0.0, colour_jitter=False),  # no augmentation (App. B.2.4)
)}
SEVERE_SETUPS = ("ssv2", "gym99", "ucf_1000", "gym99_1000", "fx_s1", "ub_s1", "ucf_rc", "charades")  # Table 4.4
DATASETS = tuple(dict.fromkeys(s.dataset for s in SETUPS.values()))  # --dataset-root names


def setup_samples(setup_name, split, ann_root, subset_seed=99999, video_root=None, subset_size=None):
    """[(relative video path, target)] of a setup's 'train' or 'test' split, remaps and subsets applied.

    subset_size: training videos to draw as SEVERE draws its 10^3 subsets (`low_shot_subset`: the same
    number per class), for the sample-size sweep of Fig. 4.3 / B.13; None = the setup's own (1,000 for
    the 10^3 setups), 0 = the whole training split.

    video_root: leave out the videos that are not under it (`drop_missing`) before the subset is
    drawn, as SEVERE's loaders do, so an incomplete download still gets a full 1,000-video subset.

    Targets: class index (recognition); 0 = forward / 1 = reversed (ucf_aot: every UCF101 video twice,
    forward then reversed); RepetitionVideo boundaries tuple (ucf_rc; count = len - 1); the list of
    (class, start_s, end_s) actions (charades). EPIC-Kitchens samples are (path, class, first, last): a
    segment of the recording (`read_epic_kitchens_csv`). The low-shot subset is drawn from the train split only.
    """
    if setup_name not in SETUPS:
        raise KeyError(f"unknown setup {setup_name!r}; choose from {', '.join(SETUPS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    s = SETUPS[setup_name]
    files = [os.path.join(ann_root, f) for f in (s.train_files if split == "train" else s.test_files)]
    if s.dataset == "ucf101":
        samples = read_ucf101_split(os.path.dirname(files[1]), split)[0]
    elif s.dataset == "hmdb51":
        samples = read_hmdb51_split(os.path.dirname(files[0]), split)[0]
    elif s.dataset == "ssv2":
        samples = read_ssv2_split(files[0], files[1])[0]
    elif s.dataset in ("gym99", "gym288"):
        samples = read_gym99_split(files[0], range(*s.label_range) if s.label_range else None, s.num_classes
                                   if s.dataset == "gym288" else 99)
    elif s.dataset == "ucfrep":
        samples = [(v.path, v.boundaries) for v in read_ucfrep_split(files[0], "train" if split == "train" else "val")]
    elif s.dataset == "kinetics":  # the official CSVs; videos in DATA_ROOT[/train or /val]/[<label>/]
        root = video_root or ann_root
        split_dir = next((d for d in (("train",) if split == "train" else ("val", "validate"))
                          if os.path.isdir(os.path.join(root, d))), None)
        try:
            samples = read_kinetics_csv(files[0], root, split_dir)[0]
        except ValueError as err:  # a malformed row ('file:line: ...'): one line, as every other reader's
            raise AnnotationError(str(err)) from None
    elif s.dataset == "ntu60":
        samples = read_ntu60_rgb(video_root or ann_root, split)  # --print-split: the folder given
    elif s.dataset == "charades":
        samples = [(v.path, v.actions) for v in read_charades_csv(files[0])]
    elif s.dataset == "epic_kitchens":  # (path, class, first, last): segments of the recordings
        samples = read_epic_kitchens_csv(files[0], {"ek100_noun": "noun", "ek100_action": "action"}.get(
            setup_name, "verb"))
    else:
        raise ValueError(f"setup {setup_name!r} has an unknown dataset {s.dataset!r}")
    if video_root is not None:
        # SEVERE ran on SSv2 videos converted from the released .webm, and EK-100's .MP4 recordings are often
        # re-encoded smaller: for those two, take whatever extension is on disk
        on_disk = drop_missing([(os.path.join(video_root, p), k) for k, (p, *_) in enumerate(samples)],
                               f"{setup_name} {split} split (--data-root {video_root})",
                               any_extension=s.dataset in ("ssv2", "epic_kitchens"))
        samples = [(os.path.relpath(full, video_root), *samples[k][1:]) for full, k in on_disk]
    subset_size = s.subset_size if subset_size is None else subset_size
    if subset_size and split == "train":
        samples = low_shot_subset(samples, s.num_classes, subset_size, subset_seed)
    elif s.subset_fraction and split == "train":
        samples = low_shot_subset(samples, s.num_classes, seed=subset_seed, fraction=s.subset_fraction)
    if s.task == "aot":
        samples = [(path, direction) for path, _ in samples for direction in (0, 1)]
    return samples


def print_split(setup_name, split, ann_root, subset_seed=99999, subset_size=None, video_root=None):
    """Print the relative video paths of a setup's split, one per line, in list order: with video_root
    (--data-root) the videos a run would use, those not on disk left out before the subset is drawn."""
    for path, _, *segment in setup_samples(setup_name, split, ann_root, subset_seed, video_root, subset_size):
        print(path, *segment)


# ============ checkpoints: every SEVERE format into torchvision keys ============
#
# Every method of Table 4.2 is evaluated with the same network, torchvision's R(2+1)D-18, but each
# pretraining code base saved it under its own names. Below, one rule per layout turns a released
# checkpoint into torchvision keys (fc and projection heads, key encoders, queues and audio networks
# dropped); the encoder is then loaded STRICTLY, so a layout we got wrong fails loudly instead of
# finetuning from random weights (SEVERE's own loader used strict=False). The layouts are those of
# the authors' loaders in the SEVERE-BENCHMARK repository (action_recognition/backbones.py); AVID-CMA
# and RSPNet are the checkpoints the SEVERE authors re-trained with the torchvision R(2+1)D-18 (the
# original releases use a different network), CtP and Tubelet Contrast the mmcv/pyvrl code's names.

# name -> (entry of the saved dict holding the state dict or None for a bare state dict,
#          prefix of the backbone's keys inside it, key rename applied after the prefix is cut)
CHECKPOINT_LAYOUTS = {
    "ours":             (None, "", None),                          # tubelet_contrast.py's backbone.pt
    "supervised":       (None, "", None),                          # torchvision's K400 r2plus1d_18 weights
    "moco":             ("state_dict", "module.encoder_q.", None),
    "video_moco":       ("state_dict", "module.encoder_q.", None),
    "selavi":           ("model", "module.video_network.base.", None),
    "avid_cma":         ("model", "module.video_model.", None),
    "gdt":              ("model", "video_network.base.", None),
    "rspnet":           ("model", "encoder_q.encoder.base_network.", "numbered_stages"),
    "pretext_contrast": (None, "module.base_network.", "numbered_stages"),
    "ctp":              ("state_dict", "backbone.", "pyvrl"),
    "tubelet_contrast": ("state_dict", "backbone.", "pyvrl"),
    "tclr":             ("state_dict", "module.0.", None),
}
# our own checkpoint.pt (the whole MoCo model) is also read as "ours"
OURS_MOCO_PREFIX = "encoder_q.backbone."
CHECKPOINT_FORMATS = tuple(CHECKPOINT_LAYOUTS)

# pyvrl (CtP, Tubelet Contrast) names a (2+1)D conv Sequential(conv_s, bn_s, relu_s, conv_t) and keeps
# the block's BN beside it (bn1, bn2) and the shortcut's BN as downsample_bn; torchvision nests them:
# convN = Sequential(Conv2Plus1D(0: conv_s, 1: bn_s, 2: relu, 3: conv_t), 1: BN, 2: ReLU),
# downsample = Sequential(0: conv, 1: BN). The stem is Sequential(0: conv_s, 1: bn_s, 2: relu, 3: conv_t, 4: bn_t).
PYVRL_RENAMES = [
    (r"^stem\.conv_s\.", "stem.0."),
    (r"^stem\.bn_s\.", "stem.1."),
    (r"^stem\.conv_t\.", "stem.3."),
    (r"^stem\.bn_t\.", "stem.4."),
    (r"^(layer\d\.\d+)\.(conv[12])\.conv_s\.", r"\1.\2.0.0."),
    (r"^(layer\d\.\d+)\.(conv[12])\.bn_s\.", r"\1.\2.0.1."),
    (r"^(layer\d\.\d+)\.(conv[12])\.conv_t\.", r"\1.\2.0.3."),
    (r"^(layer\d\.\d+)\.bn([12])\.", r"\1.conv\2.1."),
    (r"^(layer\d\.\d+)\.downsample\.conv\.", r"\1.downsample.0."),
    (r"^(layer\d\.\d+)\.downsample\.(weight|bias)$", r"\1.downsample.0.\2"),  # a bare Conv3d shortcut
    (r"^(layer\d\.\d+)\.downsample_bn\.", r"\1.downsample.1."),
]


def rename_pyvrl_key(key):
    for pattern, replacement in PYVRL_RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return key  # unknown names stay as they are and show up as 'unexpected' in the strict load


def rename_numbered_stage_key(key):
    """RSPNet / Pretext-Contrast keep the network as one Sequential: 0 = stem, 1..4 = layer1..4."""
    stage, rest = key.split(".", 1)
    if not stage.isdigit():
        return key
    return ("stem." if stage == "0" else f"layer{stage}.") + rest


KEY_RENAMES = {None: lambda k: k, "pyvrl": rename_pyvrl_key, "numbered_stages": rename_numbered_stage_key}


def build_backbone(variant="r2plus1d_18"):
    """Returns (encoder without fc, feature_dim): (B, 3, T, H, W) -> (B, 512).

    'r2plus1d_18' (and 'r3d_18') are common.backbones.video_encoder. 'r2plus1d_18_tclr' is the network
    TCLR was pretrained with: torchvision's R(2+1)D-18 whose layer4 keeps the temporal resolution,
    because layer4.0.conv1's (2+1)D conv is one full 3x3x3 conv with stride (1, 2, 2), dilation (2, 1, 1)
    and padding (2, 1, 1), and the shortcut conv has stride (1, 2, 2). Keys stay torchvision's, except
    that layer4.0.conv1.0 is a single conv (`layer4.0.conv1.0.weight`, 512 x 256 x 3 x 3 x 3).
    """
    if variant == "r2plus1d_18_tclr":
        net, feature_dim = video_encoder("r2plus1d_18")
        block = net.layer4[0]
        block.conv1[0] = nn.Conv3d(256, 512, kernel_size=(3, 3, 3), stride=(1, 2, 2), padding=(2, 1, 1),
                                   dilation=(2, 1, 1), bias=False)
        block.downsample[0] = nn.Conv3d(256, 512, kernel_size=(1, 1, 1), stride=(1, 2, 2), bias=False)
        return net, feature_dim
    return video_encoder(variant)


def backbone_variant(fmt, default="r2plus1d_18"):
    """The build_backbone variant a checkpoint format needs: TCLR's own layer4, else `default`."""
    return "r2plus1d_18_tclr" if fmt == "tclr" else default


def torchvision_architecture(state):
    """'r3d_18', 'r2plus1d_18' or 'r2plus1d_18_small': the network a torchvision-key state dict holds (this
    repository's scripts pretrain each, e.g. `tubelet_contrast.py --backbone r3d_18` for Table C.2).
    R(2+1)D-18's stem is two convs (stem.0 1x7x7 then stem.3 3x1x1), R3D-18's one 3x7x7 conv; the
    quarter-width R(2+1)D-18 of the CPU miniatures has 16 stem channels instead of 64."""
    if "stem.3.weight" not in state:
        return "r3d_18"
    return "r2plus1d_18_small" if state["stem.3.weight"].shape[0] == 16 else "r2plus1d_18"


def guess_format(raw):
    """The format name of a loaded checkpoint, from where its backbone keys live.

    Layouts that are identical on disk get one name: moco for moco / video_moco, ctp for ctp /
    tubelet_contrast (they convert the same way); a bare torchvision state dict is 'supervised' when it
    still has the fc layer and 'ours' (backbone.pt) when it has not.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"cannot guess the format of a {type(raw).__name__}; pass --format")
    for entry, prefixes in (("state_dict", (("module.encoder_q.", "moco"), ("backbone.", "ctp"),
                                            ("module.0.", "tclr"))),
                            ("model", (("module.video_network.base.", "selavi"), ("module.video_model.", "avid_cma"),
                                       ("video_network.base.", "gdt"), ("encoder_q.encoder.base_network.", "rspnet"),
                                       (OURS_MOCO_PREFIX, "ours")))):
        if isinstance(raw.get(entry), dict):
            keys = list(raw[entry])
            for prefix, name in prefixes:
                if any(k.startswith(prefix) for k in keys):
                    return name
    if raw and all(torch.is_tensor(v) for v in raw.values()):  # a bare state dict
        keys = list(raw)
        if any(k.startswith("module.base_network.") for k in keys):
            return "pretext_contrast"
        if "stem.0.weight" in raw and any(k.startswith("layer4.") for k in keys):
            return "supervised" if "fc.weight" in raw else "ours"
    top = ", ".join(map(str, list(raw)[:8]))
    raise ValueError(f"cannot guess the checkpoint format (top-level keys: {top}); pass --format, one of "
                     + ", ".join(CHECKPOINT_FORMATS))


def convert_checkpoint(raw, fmt):
    """A loaded checkpoint of format `fmt` -> {torchvision key: tensor} of the backbone alone.

    Only keys under the layout's backbone prefix are kept (heads, key encoders, queues, audio networks,
    optimizer state are dropped), the prefix is cut, the layout's rename applied and fc.* dropped.
    """
    if fmt == "auto":
        fmt = guess_format(raw)
    if fmt not in CHECKPOINT_LAYOUTS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; choose from {', '.join(CHECKPOINT_FORMATS)}")
    entry, prefix, rename = CHECKPOINT_LAYOUTS[fmt]
    if fmt == "ours" and isinstance(raw, dict) and isinstance(raw.get("model"), dict):  # checkpoint.pt
        entry, prefix = "model", OURS_MOCO_PREFIX
    state = raw if entry is None else raw.get(entry)
    if not isinstance(state, dict):
        found = ", ".join(map(str, list(raw)[:8])) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{fmt} checkpoint: expected the weights under {entry!r}, found {found}")
    rename = KEY_RENAMES[rename]
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix) or not torch.is_tensor(value):
            continue
        new = rename(key[len(prefix):])
        if new.startswith("fc."):
            continue
        out[new] = value
    if not out:
        raise ValueError(f"{fmt} checkpoint: no tensor under the backbone prefix {prefix!r}")
    return out


def read_checkpoint(path):
    """torch.load on the CPU, safely first.

    Several public checkpoints of Table 4.2 pickle more than tensors (argparse.Namespace, numpy
    scalars, AMP scalers) and weights_only=True refuses them. Only then is the file opened with
    weights_only=False, which EXECUTES the pickle's code: do this only for the named public
    checkpoints or files you made yourself.
    """
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            print(f"{path}: not loadable with weights_only=True; opening it with full unpickling (trusted file)",
                  flush=True)
            return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 -- truncated, corrupt, or not a torch file (struct.error, ...)
        raise SystemExit(f"--checkpoint {path}: torch.load cannot read it ({str(err).splitlines()[0]})") from None


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_pretrained(path, fmt, encoder):
    """Loads checkpoint `path` of format `fmt` ('auto' guesses it) strictly into `encoder`.

    Returns dict(checkpoint, format, sha256, tensors); raises listing missing / unexpected keys.
    """
    raw = read_checkpoint(path)
    if fmt == "auto":
        fmt = guess_format(raw)
    state = convert_checkpoint(raw, fmt)
    try:
        load_encoder_weights(encoder, state, source=f"{path} ({fmt})")
    except RuntimeError as e:
        if fmt == "tclr" or "layer4.0.conv1.0.weight" in str(e):
            raise RuntimeError(f"{e}\n  (TCLR checkpoints need build_backbone('r2plus1d_18_tclr'), "
                               f"other formats the standard r2plus1d_18)") from None
        raise
    return dict(checkpoint=path, format=fmt, sha256=file_sha256(path), tensors=len(state))


# ============ clips for finetuning and testing (App. C.4) ============

def random_resized_box(h, w, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """(y, x, box height, box width) of a RandomResizedCrop, as SEVERE's video transforms draw it: a box
    of U(area) of the frame with a log-uniform aspect ratio, 10 tries, else the whole frame's centre at
    the nearest allowed ratio."""
    for _ in range(10):
        target = random.uniform(*area) * h * w
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        bw, bh = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if bw <= w and bh <= h:
            return random.randint(0, h - bh), random.randint(0, w - bw), bh, bw
    bh, bw = h, w
    if w / h < ratio[0]:
        bh = int(round(w / ratio[0]))
    elif w / h > ratio[1]:
        bw = int(round(h * ratio[1]))
    return (h - bh) // 2, (w - bw) // 2, bh, bw


def resized_crop(clips, box, size):
    """uint8 (N, T, H, W, 3) -> (N, T, 3, size, size): the box (y, x, height, width) of every frame,
    resized bilinearly (antialiased when it shrinks)."""
    (n, t), (y, x, bh, bw) = clips.shape[:2], box
    view = clips[:, :, y:y + bh, x:x + bw].permute(0, 1, 4, 2, 3).reshape(n * t, 3, bh, bw)
    view = F.interpolate(view.float(), size=(size, size), mode="bilinear", align_corners=False,
                         antialias=max(bh, bw) > size)
    return view.round_().clamp_(0, 255).to(torch.uint8).view(n, t, 3, size, size)


class Clips(torch.utils.data.Dataset):
    """Finetuning / test clips of a setup, cropped on the CPU worker, as uint8 (T, 3, S, S).

    train: one clip per video, a random crop resized to `crop_size` (train_crop "resized": SEVERE's
           RandomResizedCrop; "multiscale": a square of U(0.6, 1) of the short side; "jitter": SlowFast's
           short side rescaled to U[jitter_scales], then a crop_size square), horizontal flip p = 0.5
           (App. C.4; colour jitter follows on the device).
    test:  `num_clips` uniformly spaced clips, the centre square of `test_fraction` of the short side
           (SEVERE: Resize(128) + CenterCrop(112), 0.875), or with spatial_crops > 1 (Charades: 3)
           SlowFast's squares of the whole short side: (num_clips x spatial_crops, T, 3, S, S).
    aot:   arrow of time (Table 4.3): every video is listed twice, target 0 (forward) and 1
           (the clip reversed here); no augmentation, training clips get the test view (App. B.2.4).
    targets: per video an int label, or for multi-label a (C,) float multi-hot tensor;
    clip_targets(index, frame indices) -> target, when the label depends on the clip (Charades).
    """

    def __init__(self, videos, targets, crop_size, train, aot=False, clip_targets=None, train_crop="resized",
                 test_fraction=0.875, spatial_crops=1, jitter_scales=(256, 340)):
        self.videos, self.targets, self.crop_size = videos, targets, crop_size
        self.train, self.aot, self.clip_targets = train, aot, clip_targets
        self.train_crop, self.test_fraction, self.spatial_crops = train_crop, test_fraction, spatial_crops
        self.jitter_scales = jitter_scales
        self.augment = train and not aot

    def __len__(self):
        return len(self.videos)

    def boxes(self, h, w):
        """[(y, x, box height, box width)]: the crops taken of each clip of an h x w video."""
        if self.augment and self.train_crop == "resized":
            return [random_resized_box(h, w)]
        if self.augment:  # a square: U(0.6, 1) of the short side, or SlowFast's short side rescaled to U[scales]
            side = int(min(h, w) * random.uniform(0.6, 1.0)) if self.train_crop == "multiscale" else \
                max(1, round(min(h, w) * self.crop_size / random.randint(*self.jitter_scales)))
            return [(random.randint(0, h - side), random.randint(0, w - side), side, side)]
        if self.spatial_crops > 1:  # SlowFast's test views: whole short sides spread along the long side
            side, n = min(h, w), self.spatial_crops - 1
            return [((h - side) * k // n, (w - side) * k // n, side, side) for k in range(n + 1)]
        side = max(1, int(round(min(h, w) * self.test_fraction)))
        return [((h - side) // 2, (w - side) // 2, side, side)]

    def __getitem__(self, i):
        item = self.videos[i]
        clip = item["clip"]  # (T, H, W, 3) or (num_clips, T, H, W, 3)
        clips = clip if clip.dim() == 5 else clip[None]
        # test: (num_clips x spatial crops, T, 3, S, S)
        clips = torch.cat([resized_crop(clips, box, self.crop_size) for box in self.boxes(*clips.shape[2:4])])
        if self.augment and random.random() < 0.5:
            clips = clips.flip(-1)
        target = self.targets[item["index"]]
        if self.clip_targets is not None:  # labels of the frames this clip covers (Charades)
            target = self.clip_targets(item["index"], item["frames"])
        if self.aot and target == 1:  # arrow of time: target 1 = the clip played backwards
            clips = clips.flip(1)
        # test views keep their clip axis (num_clips, T, 3, S, S), also for --num-test-clips 1
        return (clips if clip.dim() == 5 or not self.train else clips[0]), target, item["index"]


class CharadesClipTargets:
    """Multi-hot (157,) target of a training clip: the classes whose intervals contain any frame of the
    clip's span, its first to its last frame, sampled or not (start < t < end, t = frame / fps), as
    SlowFast's charades.py aggregates per-frame labels. samples: [(path, [(class, start_s, end_s), ...])]."""

    def __init__(self, samples):
        self.samples, self.fps = samples, {}

    def __call__(self, index, frames):
        path, actions = self.samples[index]
        if index not in self.fps:
            self.fps[index] = frame_rate(path)
        labels = frame_labels(actions, int(frames.max()) + 1, self.fps[index])[int(frames.min()):]
        return torch.as_tensor(labels.any(0), dtype=torch.float32)


# Input normalisation: (mean, std, reverse the channel order).
INPUT_NORMALIZATION = {
    "kinetics": (KINETICS_MEAN, KINETICS_STD, False), "tclr": ((0.0,) * 3, (1.0,) * 3, True),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),
    "slowfast": ((0.45,) * 3, (0.225,) * 3, True),  # SEVERE's Charades configs: REVERSE_INPUT_CHANNEL True
    "raw": ((0.0,) * 3, (1.0,) * 3, False),  # TCLR in SEVERE's counting code: RGB in [0, 1]
}


def input_normalization(fmt, setup, how="severe"):
    """The normalisation of a checkpoint layout on a setup. severe: as SEVERE's configs ran each method:
    ImageNet statistics for every method (its supervised model and from-scratch too), TCLR raw [0, 1] BGR
    (in counting raw [0, 1] RGB), and on Charades SlowFast's 0.45 / 0.225 in BGR order for every method. pretraining: as each was pretrained
    (torchvision's and from scratch with the Kinetics statistics). This repository's checkpoints ("ours")
    were pretrained with the Kinetics statistics and get them in both."""
    if fmt == "ours" or (how == "pretraining" and fmt in ("supervised", "scratch")):
        return INPUT_NORMALIZATION["kinetics"]
    if how == "severe" and setup.task == "multilabel":
        return INPUT_NORMALIZATION["slowfast"]
    if how == "severe" and setup.task == "counting" and fmt == "tclr":  # (SEVERE normalises its test inputs,
        return INPUT_NORMALIZATION["raw"]                                # a mismatch not copied)
    return INPUT_NORMALIZATION["tclr" if fmt == "tclr" else "imagenet"]


def to_input(clips, device, train, norm=INPUT_NORMALIZATION["kinetics"], hue=0.0):
    """uint8 (..., T, 3, S, S) -> normalised float (N, 3, T, S, S) on the device; training clips
    also get colour jitter (brightness, contrast, saturation U(0.6, 1.4), then hue U(-hue, hue) as
    torchvision's adjust_hue: SEVERE's ColorJitter(0.4, 0.4, 0.4, 0.2), in a fixed order), one draw per clip."""
    x = clips.to(device, non_blocking=True).flatten(0, -5).float().div_(255).permute(0, 2, 1, 3, 4)
    if train:
        n = x.shape[0]
        rand = lambda lo, hi: torch.empty(n, 1, 1, 1, 1, device=device).uniform_(lo, hi)
        x = x * rand(0.6, 1.4)  # brightness
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        x = (x - mean) * rand(0.6, 1.4) + mean  # contrast
        grey = (x * torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1, 1)).sum(1, keepdim=True)
        x = ((x - grey) * rand(0.6, 1.4) + grey).clamp_(0, 1)  # saturation
        if hue > 0:  # one hue shift per clip, on its (T, 3, S, S) frames
            shifts = torch.empty(n).uniform_(-hue, hue).tolist()
            x = torch.stack([TF.adjust_hue(c.transpose(0, 1), h).transpose(0, 1) for c, h in zip(x, shifts)])
    mean, std, bgr = norm
    if bgr:
        x = x.flip(1)
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1, 1)
    return (x - mean) / std


# ============ model: pretrained backbone + a new head ============

class Classifier(nn.Module):
    """backbone (B, 3, T, H, W) -> (B, feature_dim) -> dropout -> linear head (B, num_outputs).

    linear=True is the linear probe of Table B.2: the backbone's weights are frozen. probe_bn "train":
    its BatchNorm layers still normalise with batch statistics and update their running ones while
    the head trains, as SEVERE's linear_eval.py (model.train()) ran it; "frozen": the backbone stays
    in eval mode, a probe of the pretrained features as they are."""

    def __init__(self, backbone, feature_dim, num_outputs, linear=False, dropout=0.0, probe_bn="train"):
        super().__init__()
        self.backbone, self.linear, self.probe_bn = backbone, linear, probe_bn
        self.dropout = nn.Dropout(0.0 if linear else dropout)
        self.fc = nn.Linear(feature_dim, num_outputs)
        if linear:
            for p in self.backbone.parameters():
                p.requires_grad = False

    def train(self, mode=True):
        super().train(mode)
        if self.linear and self.probe_bn == "frozen":
            self.backbone.eval()
        return self

    def forward(self, x):
        return self.fc(self.dropout(self.backbone(x)))


# ============ metrics (Table 4.4) ============
#
# Inputs may be numpy arrays or torch tensors (moved to the CPU); results are Python floats or
# numpy arrays. Accuracies, precisions and recalls are fractions in [0, 1]: multiply by 100 for the
# tables. The counting error is the ratio the tables print (UCF-RC: 0.150 = 15% off on average).
# Shapes: N test videos, C classes, M training videos, D feature dimensions.


def _numpy(x, dtype=None):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def top1(scores, labels):
    """Top-1 accuracy. scores (N, C), labels (N,) ints -> fraction of argmax(scores) == label.
    Ties between classes go to the lowest class index (np.argmax)."""
    scores, labels = _numpy(scores), _numpy(labels).reshape(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or labels.size == 0:
        raise ValueError(f"top1: scores {scores.shape} and labels {labels.shape} must be (N, C), (N,) with N > 0")
    return float(np.mean(scores.argmax(1) == labels))


def per_class_accuracy(scores, labels, num_classes):
    """Top-1 accuracy of each class over its own test videos: (num_classes,) float array, NaN for a
    class without test videos. Ties in scores go to the lowest class index, as in top1."""
    scores, labels = _numpy(scores), _numpy(labels).reshape(-1).astype(np.int64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"per_class_accuracy: scores {scores.shape}, labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"per_class_accuracy: labels must lie in [0, {num_classes})")
    correct = (scores.argmax(1) == labels).astype(np.float64)
    count = np.bincount(labels, minlength=num_classes).astype(np.float64)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, hits / np.maximum(count, 1), np.nan)


def mean_class_accuracy(scores, labels, num_classes, absent_as_zero=False):
    """Mean per-class top-1 accuracy ("Top-1 accuracy (mean per-class)", Sec 4.5, used for the
    FineGym setups): the mean of per_class_accuracy over the classes that occur in the test labels.

    Classes of the label space without any test video are left out of the mean (default). The
    authors' code (SEVERE-BENCHMARK action_recognition/test.py) instead averages over all
    `num_classes` and counts a class without test videos as accuracy 0; absent_as_zero=True does
    the same. The two agree whenever every class has a test video."""
    acc = per_class_accuracy(scores, labels, num_classes)
    if absent_as_zero:
        return float(np.nan_to_num(acc, nan=0.0).mean())
    present = ~np.isnan(acc)
    if not present.any():
        raise ValueError("mean_class_accuracy: no test labels")
    return float(acc[present].mean())


def mean_average_precision(scores, targets):
    """Multi-label mAP (Charades, Table 4.4). scores (N, C) real, targets (N, C) multi-hot {0, 1}.

    AP of class c = mean over its positive videos of the precision among the videos ranked at or
    above that video by score[:, c]. Ties: videos with equal scores form one block, and every
    positive in a block gets the precision at the end of the block (all tied videos counted as
    retrieved). This is independent of the input order and equals sklearn's
    average_precision_score, which SEVERE's Charades evaluation (slowfast/utils/meters.py get_map)
    calls after dropping classes without positives.

    Returns (mAP over the classes with >= 1 positive, per-class AP (C,) with NaN for classes
    without positives). Both are fractions in [0, 1]."""
    scores, targets = _numpy(scores, np.float64), _numpy(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"mean_average_precision: scores {scores.shape} and targets {targets.shape} must be (N, C)")
    positive = targets > 0
    ap = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        num_pos = positive[:, c].sum()
        if num_pos == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        s, y = scores[order, c], positive[order, c]
        # index of the last video of each tie block, for every position in the ranking
        block_end = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]
        end = block_end[np.searchsorted(block_end, np.arange(len(s)))]
        precision = np.cumsum(y)[end] / (end + 1)
        ap[c] = precision[y].sum() / num_pos
    if np.isnan(ap).all():
        raise ValueError("mean_average_precision: no class has a positive video")
    return float(np.nanmean(ap)), ap


def counting_error(pred_counts, gt_counts):
    """Mean absolute counting error of repetition counting (UCF-RC, Table 4.4):
    mean over videos of |pred - gt| / gt, as a ratio (0.15 = 15%). Predicted counts are used as
    given; `count_repetitions` rounds them, as the original val_2stream.py does. gt must be > 0."""
    pred, gt = _numpy(pred_counts, np.float64).reshape(-1), _numpy(gt_counts, np.float64).reshape(-1)
    if pred.shape != gt.shape or gt.size == 0 or (gt <= 0).any():
        raise ValueError("counting_error: need equally many predicted and true counts, all true counts > 0")
    return float(np.mean(np.abs(pred - gt) / gt))


def off_by_one_accuracy(pred_counts, gt_counts):
    """Fraction of videos whose predicted count is within one of the truth: |pred - gt| <= 1."""
    pred, gt = _numpy(pred_counts, np.float64).reshape(-1), _numpy(gt_counts, np.float64).reshape(-1)
    if pred.shape != gt.shape or gt.size == 0:
        raise ValueError("off_by_one_accuracy: need equally many (> 0) predicted and true counts")
    return float(np.mean(np.abs(pred - gt) <= 1))


def retrieval_recall_at_k(test_feats, test_labels, train_feats, train_labels, ks=(1, 5, 10, 20), chunk=1024):
    """Nearest-neighbour video retrieval: each test video queries the training set by cosine
    similarity of features; it is a hit at k when any of its k most similar training videos has
    its label. test_feats (N, D), train_feats (M, D), labels ints. Equal similarities are ranked
    by training index (stable sort). Returns {k: recall} with recall a fraction in [0, 1]."""
    q = F.normalize(torch.as_tensor(_numpy(test_feats, np.float32)), dim=1)
    g = F.normalize(torch.as_tensor(_numpy(train_feats, np.float32)), dim=1)
    q_labels = torch.as_tensor(_numpy(test_labels).reshape(-1).astype(np.int64))
    g_labels = torch.as_tensor(_numpy(train_labels).reshape(-1).astype(np.int64))
    if q.shape[0] != q_labels.shape[0] or g.shape[0] != g_labels.shape[0] or q.shape[1] != g.shape[1]:
        raise ValueError("retrieval_recall_at_k: features and labels do not match")
    kmax = min(max(ks), g.shape[0])
    first_hit = []  # per query: rank (0-based) of its first correct neighbour, kmax if none in the top kmax
    for start in range(0, q.shape[0], chunk):
        sim = q[start:start + chunk] @ g.T  # (n, M)
        idx = torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :kmax]
        hit = g_labels[idx] == q_labels[start:start + chunk, None]  # (n, kmax)
        rank = torch.where(hit.any(1), hit.float().argmax(1), torch.full_like(hit[:, 0], kmax, dtype=torch.long))
        first_hit.append(rank)
    first_hit = torch.cat(first_hit)
    return {k: float((first_hit < k).float().mean()) for k in ks}


def kmeans(features, k, iters=100, seed=0):
    """Euclidean k-means (Lloyd) with k-means++ seeding from a torch.Generator(seed).
    features (N, D) -> (assignments (N,) long, centroids (k, D) float32). Stops early once no
    assignment changes; an emptied cluster is re-seeded with the point farthest from its centroid."""
    x = torch.as_tensor(_numpy(features, np.float32))
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: need 1 <= k <= N, got k={k}, N={n}")
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randint(n, (1,), generator=gen)]
    for _ in range(1, k):  # k-means++: next centre with probability proportional to d^2
        d2 = torch.cdist(x, centroids).min(1).values.square()
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        centroids = torch.cat([centroids, x[torch.multinomial(probs, 1, generator=gen)]])
    assign = None
    for _ in range(iters):
        dist = torch.cdist(x, centroids)  # (N, k)
        new = dist.argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        for c in range(k):
            members = assign == c
            if members.any():
                centroids[c] = x[members].mean(0)
            else:
                far = dist.gather(1, assign[:, None])[:, 0].argmax()
                centroids[c], assign[far] = x[far], c
    return assign, centroids


def silhouette_score(features, assignments, metric="euclidean", chunk=2048):
    """Mean silhouette (b - a) / max(a, b) over all points, in [-1, 1]. a = mean distance to the
    other points of its own cluster, b = lowest mean distance to the points of another cluster;
    a point alone in its cluster scores 0. metric: "euclidean" (default, matches kmeans) or
    "cosine" (distance 1 - cosine similarity). features (N, D), assignments (N,) ints; needs
    2 <= number of clusters <= N - 1."""
    x = torch.as_tensor(_numpy(features, np.float64))
    _, assign = np.unique(_numpy(assignments).reshape(-1), return_inverse=True)
    assign = torch.as_tensor(assign)
    n, k = x.shape[0], int(assign.max()) + 1 if assign.numel() else 0
    if assign.shape[0] != n or not 2 <= k <= n - 1:
        raise ValueError(f"silhouette_score: need N matching assignments and 2 <= clusters <= N - 1 (N={n}, clusters={k})")
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    elif metric != "euclidean":
        raise ValueError(f"silhouette_score: unknown metric {metric!r}")
    onehot = F.one_hot(assign, k).double()  # (N, k)
    size = onehot.sum(0)
    scores = []
    for start in range(0, n, chunk):
        xs = x[start:start + chunk]
        dist = (1 - xs @ x.T).clamp_min(0) if metric == "cosine" else torch.cdist(xs, x)
        sums = dist @ onehot  # (n, k) summed distance to each cluster
        own = assign[start:start + chunk]
        own_size = size[own]
        a = sums.gather(1, own[:, None])[:, 0] / (own_size - 1).clamp_min(1)
        other = sums / size
        other.scatter_(1, own[:, None], float("inf"))
        b = other.min(1).values
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
        scores.append(torch.where(own_size > 1, s, torch.zeros_like(s)))
    return float(torch.cat(scores).mean())


def cluster_purity(assignments, labels):
    """Purity: each cluster votes for its most frequent label; the fraction of points that carry
    their cluster's label. assignments (N,), labels (N,) ints -> fraction in (0, 1]."""
    _, a = np.unique(_numpy(assignments).reshape(-1), return_inverse=True)
    _, y = np.unique(_numpy(labels).reshape(-1), return_inverse=True)
    if a.shape != y.shape or a.size == 0:
        raise ValueError("cluster_purity: need equally many (> 0) assignments and labels")
    table = np.zeros((a.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (a, y), 1)
    return float(table.max(1).sum() / a.size)


# ============ evaluation ============

@torch.no_grad()
def clip_outputs(net, clips, d, args):
    """net on the test views (B, n, T, 3, S, S) of a batch, in chunks of --batch-size: float (B, n, outputs)."""
    b, n = clips.shape[:2]
    out = torch.cat([net(to_input(chunk, d.device, train=False, norm=args.input_norm))
                     for chunk in clips.flatten(0, 1).split(d.local_batch(args.batch_size))])
    return out.float().view(b, n, -1)


def one_per_video(index):
    """Positions of the last row of each video index, in order of position: a video that was read twice
    (a sampler's padding, the reader's stand-in for an unreadable one) counts once."""
    return torch.as_tensor(sorted({int(i): k for k, i in enumerate(index.tolist())}.values()))


@torch.no_grad()
def predict(model, loader, d, args, setup):
    """Video-level scores of the test set, gathered over processes and ordered by video index.

    Recognition: softmax averaged over the clips of a video (App. C.4); multi-label: sigmoid
    max-pooled over clips (Charades). Returns (scores (N, C), targets, indices)."""
    model.eval()
    out_scores, out_targets, out_index = [], [], []
    for clips, targets, index in loader:
        with autocast(d.device, args.amp):
            logits = clip_outputs(model, clips, d, args)
        if setup.task == "multilabel":
            scores = logits.sigmoid().amax(1)
        elif setup.metric == "action_top1":  # EK-100 actions: the verb and the noun outputs each a softmax
            scores = torch.cat([part.softmax(-1) for part in logits.split(EK_HEADS, -1)], -1).mean(1)
        else:
            scores = logits.softmax(-1).mean(1)
        out_scores.append(scores.cpu()), out_targets.append(targets), out_index.append(index)
    parts = [(torch.cat(out_scores), torch.cat(out_targets), torch.cat(out_index))]
    if d.distributed:
        gathered = [None] * d.world_size
        torch.distributed.all_gather_object(gathered, parts[0])
        parts = gathered
    scores, targets, index = (torch.cat(x) for x in zip(*parts))
    keep = one_per_video(index)  # DistributedSampler pads the last shard with repeats
    order = index[keep].argsort()
    return scores[keep][order], targets[keep][order], index[keep][order]


def recognition_loss(logits, targets, setup):
    """Cross-entropy; Charades: per-class binary cross-entropy; EK-100 actions (target verb x 300 + noun):
    the cross-entropies of the verb and of the noun outputs, summed."""
    if setup.task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, targets)
    if setup.metric == "action_top1":
        verbs, nouns = logits.split(EK_HEADS, -1)
        noun_classes = EPIC_CLASSES["noun"]
        return F.cross_entropy(verbs, targets // noun_classes) + F.cross_entropy(nouns, targets % noun_classes)
    return F.cross_entropy(logits, targets)


def evaluate(model, loader, d, args, setup):
    """The setup's metric on the test set (Table 4.4). Unreadable test videos are reported by the
    reader and left out; `test_videos` says how many of the listed ones were scored."""
    multilabel = setup.task == "multilabel"
    scores, targets, _ = predict(model, loader, d, args, setup)
    listed = len(loader.dataset)
    if len(scores) < listed:
        d.print(f"warning: {listed - len(scores)} of {listed} test videos could not be read and are not scored")
    counts = dict(test_videos=len(scores), test_videos_listed=listed, unreadable_test_videos=listed - len(scores))
    return {**counts, **_metric(scores, targets, setup, multilabel)}


def _metric(scores, targets, setup, multilabel):
    if multilabel:
        value, per_class = mean_average_precision(scores.numpy(), targets.numpy())
        return dict(metric_name="map", value=100 * value, per_class=[None if np.isnan(a) else a for a in per_class])
    labels = targets.numpy()
    if setup.metric == "action_top1":  # EK-100: right when the verb and the noun are (Table B.4)
        verbs, nouns = scores.split(EK_HEADS, -1)
        verb_ok = verbs.argmax(1).numpy() == labels // EPIC_CLASSES["noun"]
        noun_ok = nouns.argmax(1).numpy() == labels % EPIC_CLASSES["noun"]
        return dict(metric_name="action_top1", value=100 * float(np.mean(verb_ok & noun_ok)),
                    verb_top1=100 * float(np.mean(verb_ok)), noun_top1=100 * float(np.mean(noun_ok)))
    if setup.metric == "mean_class_acc":
        return dict(metric_name="mean_class_acc", value=100 * mean_class_accuracy(scores.numpy(), labels, scores.shape[1]),
                    per_class=per_class_accuracy(scores.numpy(), labels, scores.shape[1]).tolist())
    return dict(metric_name="top1", value=100 * top1(scores.numpy(), labels),  # and Table 4.2's Gym99 measure
                mean_class_acc=100 * mean_class_accuracy(scores.numpy(), labels, scores.shape[1]))


@torch.no_grad()
def features(backbone, loader, d, args):
    """Frozen backbone features (N, D), averaged over the clips of a video, and labels, one per readable
    video: the reader stands in another video for an unreadable one, and that copy is left out here."""
    backbone.eval()
    feats, labels, index = [], [], []
    for clips, targets, idx in loader:
        feats.append(clip_outputs(backbone, clips, d, args).mean(1).cpu()), labels.append(targets), index.append(idx)
    keep = one_per_video(torch.cat(index))
    return torch.cat(feats)[keep], torch.cat(labels)[keep]


# ============ summary tables (Tables 4.1, 4.2, 4.4 / 5.8) ============

SEVERE_ORDER = SEVERE_SETUPS  # the columns of Table 4.4 / 5.8
SEVERE_HEADERS = {"ssv2": "SSv2", "gym99": "Gym99", "ucf_1000": "UCF (10^3)", "gym99_1000": "Gym (10^3)",
                  "fx_s1": "FX-S1", "ub_s1": "UB-S1", "ucf_rc": "UCF-RC↓", "charades": "Charades"}
LOWER_IS_BETTER = ("ucf_rc",)  # setups whose value is an error: the counting error of UCF-RC
# The thesis's other layouts, (title, protocol, columns, measure); no Mean or Rank (the thesis colours
# ranks per column). Table 4.2 reports mean per-class accuracy in every column, Gym99's included (its
# top-1 is Table 4.1's): measure "mean_class_acc" reads a top-1 result's `mean_class_acc`.
THESIS_TABLES = (
    ("Table 4.1, finetuning", "finetune", ("ucf101", "ntu60", "gym99", "ssv2", "ek100"), None),
    ("Table 4.1, linear evaluation", "linear", ("k400", "ucf101", "ntu60", "gym99", "ssv2", "ek100"), None),
    ("Table 4.2, action granularity (mean per-class accuracy)", "finetune",
     ("gym99", "gym_vault", "gym_floor", "fx_s1", "ub_s1", "gym288"), "mean_class_acc"),
)


def load_results(dirs):
    """Every results file under the given directories (searched recursively): files named
    `results*.json` (e.g. results.json, results_ucf_1000.json), each holding one dict or a list of
    dicts with keys 'checkpoint' (or 'name'), 'setup', 'metric_name', 'value'. Returns the dicts
    in sorted path order, each with '_path' added."""
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    out = []
    for d in dirs:
        if not os.path.isdir(d):
            raise SystemExit(f"--summary {d}: no such folder")
        for path in sorted(glob.glob(os.path.join(d, "**", "results*.json"), recursive=True)):
            with open(path) as f:
                data = json.load(f)
            for r in data if isinstance(data, list) else [data]:
                out.append(dict(r, _path=path))
    return out


def summary_rows(results, setups=SEVERE_ORDER):
    """The numbers behind `summarize`: one dict per row label, in order of first appearance,
    {'name', 'values': {setup: value or None}, 'mean', 'rank'}.

    Results of --task retrieval / cluster are left out. Row label: r['name'] if present, else
    r['checkpoint']; when the results of `setups` mix protocols
    (r['protocol'], e.g. finetune and linear) the protocol is appended, "name [linear]", so that the
    two never share a row. Several results of one row and setup
    (e.g. seeds) are averaged. mean: the mean over `setups`, with an error e (UCF-RC) entering as
    (1 - e) x 100, so that it is on the scale of the accuracies (Table 5.8 Mean). rank: per setup,
    1 + the number of rows (among all rows with a value for that setup) that are strictly better
    (higher, or lower for an error), averaged over `setups` (Table 5.8 Rank). A row missing any of
    `setups` gets mean = rank = None; its values still count when ranking the other rows."""
    rows = {}
    results = [r for r in results if r.get("task", "auto") == "auto"]  # retrieval / cluster are no table entries
    mixed = len({r.get("protocol") for r in results if r.get("setup") in setups}) > 1
    for r in results:
        name = r.get("name") or r.get("checkpoint")
        if name is None or "setup" not in r or "value" not in r:
            raise ValueError(f"summary_rows: a result needs 'name' or 'checkpoint', 'setup' and 'value': {r}")
        if mixed:
            name = f"{name} [{r.get('protocol')}]"
        if r["setup"] in setups:
            rows.setdefault(str(name), {}).setdefault(r["setup"], []).append(float(r["value"]))
    table = [{"name": name, "values": {s: (float(np.mean(v[s])) if s in v else None) for s in setups}}
             for name, v in rows.items()]
    for row in table:
        vals = row["values"]
        if any(vals[s] is None for s in setups):
            row["mean"] = row["rank"] = None
            continue
        row["mean"] = float(np.mean([(1 - vals[s]) * 100 if s in LOWER_IS_BETTER else vals[s] for s in setups]))
        ranks = []
        for s in setups:
            sign = -1 if s in LOWER_IS_BETTER else 1
            others = [o["values"][s] for o in table if o["values"][s] is not None]
            ranks.append(1 + sum(sign * (v - vals[s]) > 0 for v in others))
        row["rank"] = float(np.mean(ranks))
    return table


def summarize(results, setups=SEVERE_ORDER, mean_rank=True):
    """A markdown table in the layout of Table 5.8: one row per checkpoint (row label), one column
    per setup in `setups` order, then Mean and Rank↓ (see summary_rows; left out when not
    `mean_rank`). Accuracies and mAP print with one decimal, the UCF-RC error with three; a missing
    value, mean or rank prints as '–'."""
    table = summary_rows(results, setups)
    fmt = lambda v, spec: "–" if v is None else format(v, spec)
    headers = [SEVERE_HEADERS.get(s, SETUPS[s].title if s in SETUPS else s) for s in setups]
    headers += ["Mean", "Rank↓"] if mean_rank else []
    lines = ["| " + " | ".join(["Checkpoint"] + headers) + " |", "|" + "---|" + "---:|" * len(headers)]
    for row in table:
        cells = [row["name"].replace("|", "\\|")]
        cells += [fmt(row["values"][s], ".3f" if s in LOWER_IS_BETTER else ".1f") for s in setups]
        cells += [fmt(row["mean"], ".1f"), fmt(row["rank"], ".1f")] if mean_rank else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def thesis_table(results, title, protocol, setups, measure=None):
    """One layout of THESIS_TABLES: the --protocol `protocol` results of its setups, one row per
    checkpoint, no Mean or Rank; the value is the result's `measure` where that is not its metric (a
    result without it prints '–'). None when no result has one of the columns."""
    results = [r for r in results if r.get("protocol", "finetune") == protocol and r.get("setup") in setups]
    if measure:
        results = [r if r.get("metric_name") == measure else dict(r, value=r[measure])
                   for r in results if r.get("metric_name") == measure or measure in r]
    if not results:
        return None
    return f"{title}\n{summarize(results, setups, mean_rank=False)}"


def summary_tables(results):
    """What --summary prints: the Table 4.4 / 5.8 layout of the eight SEVERE setups (Mean and Rank),
    then each layout of THESIS_TABLES that has a result, then one table (a column per setup in SETUPS
    order, Mean and Rank over those columns) of every setup no layout shows, e.g. Table 5.7's HMDB51;
    says so when there is no SEVERE setup among the results."""
    results = [r for r in results if r.get("task", "auto") == "auto"]  # retrieval / cluster: no table entries
    found = {r.get("setup") for r in results}
    if not found:
        raise SystemExit("--summary: no finetuning or linear-probe results*.json under the folders given")
    parts = ["Table 4.4 / 5.8, SEVERE\n" + summarize(results) if found & set(SEVERE_ORDER) else
             f"(no SEVERE setup among the results: Table 4.4 / 5.8 needs {', '.join(SEVERE_ORDER)})\n"]
    parts += filter(None, (thesis_table(results, *layout) for layout in THESIS_TABLES))
    shown = set(SEVERE_ORDER).union(*(layout[2] for layout in THESIS_TABLES))
    others = [s for s in SETUPS if s in found and s not in shown]
    if others:
        parts.append("Other setups\n" + summarize(results, others))
    return "\n".join(parts)


# ============ repetition counting (UCFRep, Zhang et al. CVPR 2020; App. B.2.3, C.4) ============
#
# UCF-RC (Table 4.4, App. B.2.3) finetunes the backbone inside the counter of Zhang et al. ("Context-aware
# and scale-insensitive temporal repetition counting", CVPR 2020), as SEVERE's Repetition-Counting code does.
# The network looks at one position t of the video under a hypothesis of the cycle length there: a 32-frame
# input whose first 16 frames sample the two hypothesised cycles before t and whose last 16 frames sample the
# two after t (context-aware). Two branches (the cycle before t, the cycle after t) each score, for 7 anchors
# a x hypothesis, whether the true cycle matches the anchor (IoU = min/max >= 0.5) and regress
# log(true / anchor) (scale-insensitive: the input is always "two cycles wide", whatever the cycle length).
# At test time a coarse multi-scale search finds the cycle length at the centre of the video, which is then
# refined at 32 positions, and the count is the integral of 1 / cycle length over the annotated span.
#
# Deviations from the original code (kept simple; the network, anchors, targets, loss weights and search
# grid are the original's):
#   - training inputs are drawn independently (a random position and a random hypothesis per sample, from
#     the original's mixture of hypotheses) instead of following the original's tracking loop, which walks
#     the video with the network's own predictions for up to 11 optimiser steps per sampled segment;
#   - the per-anchor match is one logit with a sigmoid (BCE) instead of a 2-way softmax (CE): the same model;
#   - at test time every one of the 32 positions is refined from the centre's estimate (4 iterations) instead
#     of the original's coarse-to-fine tree, which hands refined estimates down to neighbouring positions;
#   - cycle lengths are periods (frames between corresponding points) and the count integrates over
#     (last - first boundary) frames, so a constant period c over N cycles gives exactly N (the original
#     integrates over one frame more with inclusive window lengths, period + 1);
#   - test videos are scored on rank 0 only (the others wait), on the unwrapped model.

COUNTING_ANCHORS = (0.5, 0.67, 0.8, 1.0, 1.25, 1.5, 2.0)  # ratios to the hypothesised cycle length
COUNTING_IOU = 0.5              # an anchor matches when min/max(true, anchor) >= 0.5, else it is a negative
COUNTING_BOX_WEIGHT = 50.0      # smooth-L1 weight of the regression (original, after Faster R-CNN)
COUNTING_SAMPLES_PER_VIDEO = 10  # training inputs per video per epoch (original: 10 segments per video)
COUNTING_SCALES = (0.03, 0.35, 30)  # coarse search: 30 cycle lengths, geometric from 3% to 35% of the span
COUNTING_MIN_CYCLE = 4          # shortest cycle (frames) the search accepts
COUNTING_MIN_CYCLES = 2         # and the longest is span / 2 (UCFRep: at least two repetitions)
COUNTING_POSITIONS = 32         # positions refined along the video (2^5 in the original)
COUNTING_REFINE_ITERS = 4       # refinement iterations, each moving halfway to the prediction (merge 0.5)
COUNTING_BOX_CLAMP = 0.5        # |log ratio| accepted per test-time step


def local_cycle_lengths(boundaries):
    """Per frame of the annotated span, the length of the cycle before and after it, from the boundaries.

    boundaries: 1-based frames b_0 < ... < b_N of the cycle starts (b_N ends the last cycle). Returns
    (pre, next), float arrays of length b_N - b_0 + 1 indexed by frame - b_0; NaN where undefined.
    As the UCFRep labels (label_interpolation_v1.m): a frame p in cycle k (b_k <= p <= b_k+1; a boundary
    belongs to the later cycle) at phase (p - b_k) / m, m = b_k+1 - b_k, corresponds to the point at the
    same phase of the next cycle (length r) and of the previous one (length l):
        next = round(b_k+1 + phase * r - p),   pre = round(p - b_k-1 - phase * l).
    Undefined in the last (next) or first (pre) cycle, and where the two cycles differ by more than 2 frames
    and by a ratio above 1.3 (the phase mapping is not trusted there).
    """
    b = np.asarray(boundaries, dtype=np.int64)
    if b.ndim != 1 or len(b) < 2 or (np.diff(b) <= 0).any():
        raise ValueError(f"need at least two increasing boundaries, got {list(b)}")
    span = b[-1] - b[0] + 1
    pre, nxt = np.full(span, np.nan), np.full(span, np.nan)
    similar = lambda u, v: not (max(u, v) - min(u, v) > 2 and max(u, v) / min(u, v) > 1.3)
    for k in range(len(b) - 1):
        m = b[k + 1] - b[k]
        p = np.arange(b[k], b[k + 1] + 1)
        phase = (p - b[k]) / m
        nxt[p - b[0]], pre[p - b[0]] = np.nan, np.nan  # a boundary belongs to the later cycle
        if k + 2 < len(b) and similar(m, b[k + 2] - b[k + 1]):
            nxt[p - b[0]] = np.floor(b[k + 1] + phase * (b[k + 2] - b[k + 1]) - p + 0.5)
        if k > 0 and similar(m, b[k] - b[k - 1]):
            pre[p - b[0]] = np.floor(p - b[k - 1] - phase * (b[k] - b[k - 1]) + 0.5)
    return pre, nxt


def context_indices(t, left, right, clip_len=32):
    """Frame positions of the network input at position t under cycle hypotheses left / right (frames).

    t, left, right: (P,) tensors. The first clip_len / 2 frames are spread evenly over the two cycles
    before t, (t - 2 left, t]; the last clip_len / 2 over the two cycles after it, (t, t + 2 right]
    (original: l_context_ratio 1, r_context_ratio 2). Returns (P, clip_len) rounded float positions.
    """
    half = clip_len // 2
    j = torch.linspace(0, 1, half, dtype=torch.float64)
    t, left, right = (torch.as_tensor(v, dtype=torch.float64).reshape(-1, 1) for v in (t, left, right))
    before = t - 2 * left + 1 + j * (2 * left - 1)
    after = t + 1 + j * (2 * right - 1)
    return torch.cat([before, after], 1).round()


def anchor_targets(true_cycle, hypothesis, anchors=COUNTING_ANCHORS, iou=COUNTING_IOU):
    """Per anchor a: match (1 / 0, or -1 = ignore) and regression target log(true / (a * hypothesis)).

    true_cycle, hypothesis: tensors of one shape (...); true_cycle NaN (undefined) -> all anchors ignored.
    An anchor matches when min / max of the true and anchor lengths is >= iou (0.5; the original's upper
    and lower bounds are equal, so no anchor is in between). Returns (cls (..., A) float, box (..., A)).
    """
    true_cycle, hypothesis = torch.as_tensor(true_cycle, dtype=torch.float64), torch.as_tensor(hypothesis, dtype=torch.float64)
    anchor = torch.tensor(anchors, dtype=torch.float64) * hypothesis[..., None]
    true = true_cycle[..., None].expand_as(anchor)
    overlap = torch.minimum(true, anchor) / torch.maximum(true, anchor)
    cls = (overlap >= iou).double()
    cls = torch.where(torch.isnan(true), torch.full_like(cls, -1), cls)
    box = torch.where(cls == 1, torch.log(true / anchor), torch.zeros_like(anchor))
    return cls.float(), box.float()


def counting_loss(logits, boxes, cls_target, box_target, box_weight=COUNTING_BOX_WEIGHT):
    """Both branches: BCE on the anchors that are not ignored (mean over them) + 50 x smooth-L1 on the
    matching anchors' log ratios, averaged over all B x A entries as the original does (it copies the
    prediction into the targets of the other anchors). logits, boxes, targets: (B, 2, A)."""
    loss = logits.new_zeros(())
    for branch in range(logits.shape[1]):
        lg, bx, ct, bt = logits[:, branch], boxes[:, branch], cls_target[:, branch], box_target[:, branch]
        keep = ct >= 0
        if keep.any():
            loss = loss + F.binary_cross_entropy_with_logits(lg[keep], ct[keep])
        positive = (ct == 1).float()
        loss = loss + box_weight * (F.smooth_l1_loss(bx, bt, reduction="none") * positive).sum() / bx.numel()
    return loss


class CountingHead(nn.Module):
    """backbone (B, 3, T, H, W) -> (B, 512) -> per branch (cycle before t, cycle after t) and anchor
    a match logit and a log-ratio regression: (logits (B, 2, A), boxes (B, 2, A))."""

    def __init__(self, backbone, feature_dim=512, num_anchors=len(COUNTING_ANCHORS)):
        super().__init__()
        self.backbone, self.num_anchors = backbone, num_anchors
        self.cls = nn.Linear(feature_dim, 2 * num_anchors)
        self.box = nn.Linear(feature_dim, 2 * num_anchors)

    def forward(self, x):
        f = self.backbone(x)
        return self.cls(f).view(-1, 2, self.num_anchors), self.box(f).view(-1, 2, self.num_anchors)


def letterbox_frames(frames, size, flip=False):
    """uint8 (T, H, W, 3) -> (T, 3, S, S) as SEVERE's counting code views a frame (Scale_longerside +
    CenterCrop, train and test alike): the longer side resized to S keeping the aspect ratio, the whole
    frame centred on black bars; `flip` mirrors it (training, p = 0.5). No crop, no colour jitter."""
    t, h, w = frames.shape[:3]
    nh, nw = max(1, round(h * size / max(h, w))), max(1, round(w * size / max(h, w)))
    view = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear", align_corners=False,
                         antialias=max(h, w) > size)
    out = torch.zeros(t, 3, size, size, dtype=torch.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[:, :, y:y + nh, x:x + nw] = view.round_().clamp_(0, 255).to(torch.uint8)
    return out.flip(-1) if flip else out


class RepetitionSamples(torch.utils.data.Dataset):
    """Training inputs of the counter from [(video path, boundaries)], samples_per_video per video.

    item: (clip uint8 (T, 3, S, S), valid (T,) bool (False = padding outside the annotated span),
           cls target (2, A), box target (2, A), video index).
    A random position t of the annotated span (first to last boundary) and a hypothesis h of the cycle
    length there, drawn as the original's training states: 25% c x 2^U(-1, 1), 25% c x (2^{-1,0,1} +
    U(-0.05, 0.05)) with c the true cycle at t, 50% one of the 30 search scales (3%..35% of the span);
    h is kept within [2, span / 2]. The input is context_indices(t, h, h), decoded with one seek.
    An unreadable video is reported to the BadVideoCounter and replaced by a random other one.
    """

    def __init__(self, videos, clip_len=32, crop_size=112, short_side=128, samples_per_video=None,
                 counter=None, max_retries=10):
        self.videos = [(p, tuple(int(b) for b in bounds)) for p, bounds in videos]
        if not self.videos:
            raise ValueError("RepetitionSamples: no videos")
        self.clip_len, self.crop_size, self.short_side = clip_len, crop_size, short_side
        self.samples_per_video = samples_per_video or COUNTING_SAMPLES_PER_VIDEO
        self.max_retries = max_retries
        self.counter = counter if counter is not None else BadVideoCounter()
        self.labels = [local_cycle_lengths(b) for _, b in self.videos]
        self._num_frames = {}

    def __len__(self):
        return len(self.videos) * self.samples_per_video

    def hypothesis(self, i, t):
        """(h, pre, next) for video i at span offset t: a training hypothesis and the true cycles."""
        pre, nxt = self.labels[i]
        bounds = self.videos[i][1]
        span = bounds[-1] - bounds[0]
        true = pre[t] if not np.isnan(pre[t]) else nxt[t] if not np.isnan(nxt[t]) else span / (len(bounds) - 1)
        magic = random.random()
        if magic < 0.25:
            h = true * 2 ** random.uniform(-1, 1)
        elif magic > 0.75:
            h = true * (2 ** random.randint(-1, 1) + random.uniform(-0.05, 0.05))
        else:
            lo, hi, n = COUNTING_SCALES
            h = span * lo * (hi / lo) ** (random.randrange(n) / (n - 1))
        return min(max(h, 2.0), max(span / 2, 2.0)), pre[t], nxt[t]

    def read(self, i):
        """(clip, valid, cls target, box target) of video i at a random position and hypothesis."""
        path, bounds = self.videos[i]
        span = bounds[-1] - bounds[0]
        t = random.randrange(span + 1)
        h, pre, nxt = self.hypothesis(i, t)
        pos = context_indices(t, h, h, self.clip_len)[0]  # offsets from the first boundary
        if path not in self._num_frames:
            self._num_frames[path] = count_frames(path)
        frames = read_clip(path, (pos.clamp(0, span) + bounds[0] - 1).clamp(0, self._num_frames[path] - 1).long().numpy(),
                           self.short_side)
        cls, box = anchor_targets(torch.tensor([pre, nxt]), torch.tensor([h, h]))
        clip = letterbox_frames(torch.from_numpy(frames), self.crop_size, flip=random.random() < 0.5)
        return clip, (pos >= 0) & (pos <= span), cls, box

    def __getitem__(self, item):
        """The one bad-file policy (common.video.read_or_replace): an unreadable video is reported,
        counted and replaced by a random other one."""
        (clip, valid, cls, box), i = read_or_replace(self.read, item // self.samples_per_video, len(self.videos),
                                                     lambda j: self.videos[j][0], self.counter,
                                                     np.random.default_rng(random.getrandbits(64)), self.max_retries)
        return clip, valid, cls, box, i


def counting_input(clips, valid, device, train, norm):
    """to_input (colour jitter only if `train`: --colour-jitter, off by the setup's preset as in SEVERE's
    counting code), with the padding frames set to 0 (N, 3, T, S, S). 0 is the mean pixel once normalised
    (SEVERE pads with the raw ImageNet means after normalising, a near-mean value; not copied)."""
    x = to_input(clips, device, train=train, norm=norm)
    return x * valid.to(device).flatten(0, -2)[:, None, :, None, None].to(x.dtype)


@torch.no_grad()
def predict_cycles(model, frames, t, left, right, device, norm, clip_len, batch_size, amp=False):
    """Network outputs at positions t under hypotheses left / right ((P,) tensors), in batches:
    (score (P, 2, A) = sigmoid of the match logits, ratio (P, 2, A) = anchor x exp(clamped box))."""
    positions = context_indices(t, left, right, clip_len)
    scores, ratios = [], []
    for s in range(0, len(positions), batch_size):
        pos = positions[s:s + batch_size]  # (P, T); outside the video: padding, zeroed after normalisation
        clips = frames[pos.clamp(0, len(frames) - 1).long()]
        with autocast(device, amp):
            logits, boxes = model(counting_input(clips, (pos >= 0) & (pos < len(frames)), device, train=False,
                                                 norm=norm))
        boxes = boxes.float().nan_to_num(0.0).clamp(-COUNTING_BOX_CLAMP, COUNTING_BOX_CLAMP)
        scores.append(logits.float().sigmoid().nan_to_num(0.0).cpu())
        ratios.append((torch.tensor(COUNTING_ANCHORS, device=boxes.device) * boxes.exp()).cpu())
    return torch.cat(scores), torch.cat(ratios)


def integrate_count(cycles, span):
    """Repetitions in `span` frames from cycle lengths at evenly spaced positions: the integral of
    1 / cycle over the span, span x mean(1 / cycle)."""
    cycles = torch.as_tensor(cycles, dtype=torch.float64)
    return float(span * (1.0 / cycles).mean())


@torch.no_grad()
def count_repetitions(model, frames, device, norm, clip_len=32, batch_size=32, amp=False):
    """Counts the repetitions in frames uint8 (L, 3, S, S), the annotated span of a video (first to last
    boundary). Returns dict(count = rounded count, raw = unrounded, cycle = the centre's cycle length).

    1. coarse search: 30 cycle hypotheses h (3%..35% of the span) at the centre; each is scored by the
       match probability of anchor 1.0 of the first branch and refined to h x exp(box); the best one
       whose refined length lies in [4, span / 2] wins;
    2. 4 refinements at the centre, each moving halfway to the predicted length (anchor 1.0);
    3. the 32 positions span / 33 x (k + 0.5) start from it and get 4 refinements each, per branch with
       the best-scoring anchor (lengths kept in [4, span / 2], halfway steps);
    4. count = span x mean over the positions whose 4-cycle context lies inside the span of
       (1/left + 1/right) / 2, rounded (as the original; no position inside: span / centre cycle).
    """
    model.eval()
    length = len(frames)
    span = length - 1
    hi = max(span / COUNTING_MIN_CYCLES, 1.0)
    lo = min(COUNTING_MIN_CYCLE, hi)
    ones = lambda n, v: torch.full((n,), float(v), dtype=torch.float64)
    predict = lambda t, left, right: predict_cycles(model, frames, t, left, right, device, norm, clip_len,
                                                    batch_size, amp)
    mid = length / 2
    s_lo, s_hi, n = COUNTING_SCALES
    hyp = span * s_lo * (s_hi / s_lo) ** (torch.arange(n, dtype=torch.float64) / (n - 1))
    score, ratio = predict(ones(n, mid), hyp, hyp)
    one = COUNTING_ANCHORS.index(1.0)
    refined = hyp * ratio[:, 0, one].double()
    ok = (refined >= lo) & (refined < hi)
    best = int(torch.where(ok, score[:, 0, one].double(), score[:, 0, one].double() - 2).argmax())
    cycle = float(refined[best].clamp(lo, hi))
    for _ in range(COUNTING_REFINE_ITERS):
        _, ratio = predict(ones(1, mid), ones(1, cycle), ones(1, cycle))
        new = cycle * float(ratio[0, 0, one])
        if lo <= new < hi:
            cycle = 0.5 * cycle + 0.5 * new
    t = length / (COUNTING_POSITIONS + 1) * (torch.arange(COUNTING_POSITIONS, dtype=torch.float64) + 0.5)
    left, right = ones(COUNTING_POSITIONS, cycle), ones(COUNTING_POSITIONS, cycle)
    for _ in range(COUNTING_REFINE_ITERS):
        score, ratio = predict(t, left, right)
        best_ratio = ratio.gather(2, score.argmax(2, keepdim=True))[..., 0].double()  # (P, 2)
        left = 0.5 * left + 0.5 * (left * best_ratio[:, 0]).clamp(lo, hi)
        right = 0.5 * right + 0.5 * (right * best_ratio[:, 1]).clamp(lo, hi)
    inside = (t - 2 * left >= 0) & (t + 2 * right <= span)
    if inside.any():
        raw = 0.5 * integrate_count(left[inside], span) + 0.5 * integrate_count(right[inside], span)
    else:
        raw = span / cycle
    return dict(count=float(round(raw)), raw=raw, cycle=cycle)


def read_count_span(path, boundaries, short_side, crop_size):
    """uint8 (L, 3, S, S): the letterboxed frames from the first to the last boundary (1-based),
    cut at the end of the video when the annotation runs past it."""
    last = min(boundaries[-1], count_frames(path))
    frames = read_clip(path, np.arange(boundaries[0] - 1, last), short_side)
    return letterbox_frames(torch.from_numpy(frames), crop_size)


def counting_data(args, d, num_synthetic=16, num_synthetic_test=4):
    """(train, test) [(path, boundaries)]: UCFRep under --data-root, else synthetic repetition videos."""
    if args.data_root is not None:
        ann_root = args.ann_root or args.data_root
        return tuple([(os.path.join(args.data_root, p), b)
                      for p, b in setup_samples("ucf_rc", split, ann_root, video_root=args.data_root)]
                     for split in ("train", "test"))
    videos = d.main_first(synthetic_repetition_videos, num_videos=num_synthetic)
    return videos[:-num_synthetic_test], videos[-num_synthetic_test:]


def evaluate_counting(model, test, args, d):
    """Counts every test video (rank 0; the other ranks get None) and scores them against
    len(boundaries) - 1: mean |pred - gt| / gt (counting_error) and the off-by-one accuracy. An
    unreadable test video is reported, counted and left out (none readable: the metrics are NaN)."""
    if not d.main:
        return None
    model = unwrap(model)  # no DDP forward on one rank: it would wait for the others
    predictions, counter = [], BadVideoCounter(max_fraction=1.0)  # evaluation never stops the run
    for path, bounds in test:
        try:
            frames = read_count_span(path, bounds, args.short_side, args.crop_size)
        except VideoReadError as err:
            counter.record_failure(path, err)
            continue
        counter.record_ok()
        out = count_repetitions(model, frames, d.device, args.input_norm, args.clip_len,
                               max(args.batch_size, COUNTING_POSITIONS), args.amp)  # no grad: 32 inputs a batch
        predictions.append(dict(path=path, count=len(bounds) - 1, pred=out["count"], raw=out["raw"], cycle=out["cycle"]))
    if len(predictions) < len(test):
        print(f"warning: {len(test) - len(predictions)} of {len(test)} test videos could not be read and are not scored")
    pred, gt = [p["pred"] for p in predictions], [p["count"] for p in predictions]
    error, off_by_one = (counting_error(pred, gt), off_by_one_accuracy(pred, gt)) if predictions else (math.nan, math.nan)
    return dict(metric_name="mean_count_error", value=error, off_by_one=off_by_one,
                test_videos=len(predictions), test_videos_listed=len(test),
                unreadable_test_videos=len(test) - len(predictions), predictions=predictions)


def run_counting(args, d, setup, out_dir, train, test, info, t_start, backbone, feature_dim):
    """Finetunes backbone + CountingHead on UCFRep (App. C.4: Adam, lr 5e-5 fixed, 100 epochs, batch 32)
    and counts the test videos. Resumes from OUT_DIR/checkpoint.pt (--resume auto); DDP-safe training,
    evaluation on rank 0 (the result is broadcast so that every rank returns the same record)."""
    if args.protocol != "finetune" or args.task != "auto":
        raise SystemExit(f"{setup.name}: repetition counting is evaluated by finetuning only (App. C.4)")
    sched = schedule(args, setup)
    batch_size = d.local_batch(sched.batch_size)
    model = d.wrap(CountingHead(backbone, feature_dim))
    dataset = RepetitionSamples(train, args.clip_len, args.crop_size, args.short_side,
                                counter=BadVideoCounter(args.max_bad_fraction))
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=True, seed=args.seed, drop_last=True) \
        if d.distributed else torch.utils.data.RandomSampler(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                                         pin_memory=d.device.type == "cuda", drop_last=True)
    if len(loader) == 0:
        raise SystemExit(f"{len(dataset)} training inputs are too few for a batch of {batch_size}")
    d.print(f"{setup.name}: {len(train)} training and {len(test)} test videos, {len(dataset)} inputs per epoch, {sched}")

    def inputs(batch):
        clips, valid, cls_target, box_target, _ = batch
        return (counting_input(clips, valid, d.device, train=args.colour_jitter, norm=args.input_norm),
                (cls_target.to(d.device), box_target.to(d.device)))

    train_epochs(args, d, out_dir, model, sched, loader, inputs,
                 lambda out, targets: counting_loss(out[0].float(), out[1].float(), *targets))
    result = evaluate_counting(model, test, args, d)  # the last epoch (the original picked the best val epoch)
    if d.distributed:
        box = [result]
        torch.distributed.broadcast_object_list(box, src=0)
        result = box[0]
    return finish(args, d, setup.name, out_dir, result, info, sched.epochs, t_start)


# ============ arguments ============

def setup_presets():
    """One preset per setup and protocol: the setup's schedule (Table C.4 finetuning, Table B.2 linear
    probe; UCF101's probe where the thesis gives none), clip length, frame rate and head dropout
    replace the defaults of the flags not given."""
    presets = []
    for name, s in SETUPS.items():
        for protocol in ("finetune", "linear"):
            sched = s.finetune if protocol == "finetune" else (s.linear or SETUPS["ucf101"].linear)
            if sched is None:
                continue
            presets.append((f"--setup {name} --protocol {protocol}",
                            lambda a, name=name, protocol=protocol: a.setup == name and a.protocol == protocol,
                            dict(epochs=sched.epochs, lr=sched.lr, batch_size=sched.batch_size,
                                 weight_decay=sched.weight_decay, milestones=list(sched.milestones),
                                 gamma=sched.gamma, video_fps=s.video_fps, dropout=s.dropout,
                                 subset_size=s.subset_size or 0,
                                 train_crop=s.train_crop, test_spatial_crops=s.test_spatial_crops,
                                 short_side=s.short_side, colour_jitter=s.colour_jitter,
                                 clip_len=LINEAR_CLIP_LEN if protocol == "linear" and s.task == "recognition"
                                 else s.clip_len)))
    return presets


def method_presets():
    """SEVERE's per-method configs for finetuning (configs/benchmark/<setup>/*_avid.yaml, *_tubelet.yaml,
    *_scratch.yaml), in one-clip-per-video epochs; they follow the setup presets, so they win over them.
    --format ours is this repository's backbone.pt, i.e. tubelet contrast (Chapter 5)."""
    recognition = tuple(n for n, s in SETUPS.items() if s.task == "recognition")
    finetune = lambda a, names: a.protocol == "finetune" and a.setup in names
    scratch = lambda a: a.init == "scratch" or not a.checkpoint
    return [
        ("--format avid_cma (SEVERE's *_avid.yaml)", lambda a: a.format == "avid_cma" and finetune(a, recognition),
         dict(lr=1e-3)),
        ("--format ours on ucf_1000, gym99_1000 (*_1000_examples_tubelet.yaml: 18 epochs [8, 13, 16], Table 5.8)",
         lambda a: a.format == "ours" and not scratch(a) and finetune(a, ("ucf_1000", "gym99_1000")),
         dict(epochs=180, milestones=[80, 130, 160])),
        ("from scratch on ucf101, hmdb51, gym99, gym288 (*_scratch.yaml: 20 epochs [10, 15, 18])",
         lambda a: scratch(a) and finetune(a, ("ucf101", "hmdb51", "gym99", "gym288")),
         dict(epochs=200, milestones=[100, 150, 180], weight_decay=1e-4)),
        ("from scratch on ssv2 (25 epochs [12, 19, 22] x 2 clips)", lambda a: scratch(a) and finetune(a, ("ssv2",)),
         dict(epochs=50, milestones=[24, 38, 44], weight_decay=1e-4)),
        ("from scratch on fx_s1, ub_s1", lambda a: scratch(a) and finetune(a, ("fx_s1", "ub_s1")),
         dict(weight_decay=1e-5)),
    ]


# Without --data-root every setup runs its pipeline on the built-in synthetic videos at these
# CPU sizes (flags given explicitly still win).
SYNTHETIC_PRESET = dict(epochs=2, batch_size=4, clip_len=8, crop_size=64, num_test_clips=2, workers=2, short_side=128,
                        milestones=[1], print_freq=5)
PRESETS = setup_presets() + method_presets() + [("synthetic (no --data-root)", lambda a: a.data_root is None and not
                              a.dataset_root and not
                              (a.summary or a.print_split), SYNTHETIC_PRESET)]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="SEVERE benchmark (thesis Ch. 4): finetune or linear-probe an R(2+1)D-18 checkpoint "
                    "on a downstream setup; --summary prints Tables 4.4 / 5.8, 4.1, 4.2 from result files. The "
                    "defaults shown are --setup ucf101's; every setup's schedule is a preset (below).",
        formatter_class=HelpFormatter)
    add_common_args(parser, lists=())
    g = parser.add_argument_group("SEVERE")
    g.add_argument("--setup", default="ucf101", choices=sorted(SETUPS) + ["all"],
                   help="downstream setup (Table 4.4 / 5.1); 'all' runs the eight SEVERE setups, each with its "
                        "own preset, into OUT_DIR/<setup>")
    g.add_argument("--protocol", default="finetune", choices=["finetune", "linear"],
                   help="finetune the whole network (App. C.4) or a linear layer on the frozen backbone (Table B.2)")
    g.add_argument("--task", default="auto", choices=["auto", "retrieval", "cluster"],
                   help="auto: the setup's task; retrieval: Recall@k of test clips against the training set; "
                        "cluster: k-means on frozen features (silhouette, purity)")
    g.add_argument("--synthetic-videos", type=int, default=12, metavar="N",
                   help="without --data-root: videos per class of the built-in synthetic dataset (the last "
                        "quarter of each class is its validation split)")
    g.add_argument("--synthetic-background", choices=BACKGROUNDS, default="gratings",
                   help="without --data-root: the synthetic world's backgrounds, as tubelet_contrast.py's flag")
    g.add_argument("--checkpoint", default=None, help="pretrained weights; none = --init scratch")
    g.add_argument("--format", default="auto", help="checkpoint layout: " + ", ".join(CHECKPOINT_FORMATS) +
                   " (auto guesses from the keys). Old pickles that weights_only=True cannot open are "
                   "opened with torch.load(weights_only=False), which runs pickle code: use trusted files")
    g.add_argument("--init", default="pretrained", choices=["pretrained", "scratch"],
                   help="pretrained: the weights of --checkpoint; scratch: random weights (SEVERE's *_scratch "
                        "configs). Without --checkpoint the run is a scratch run and is recorded as one")
    g.add_argument("--name", default=None, help="row label in --summary tables (default: the checkpoint path)")
    g.add_argument("--ann-root", default=None, help="annotation files; default: inside --data-root")
    g.add_argument("--dataset-root", nargs="+", default=[], metavar="DATASET=DIR",
                   help="the videos of each dataset, for --setup all over datasets stored apart (e.g. "
                        "--dataset-root ssv2=/data/ssv2 gym99=/data/finegym); datasets: "
                        + ", ".join(DATASETS) + ". A setup whose dataset has none uses --data-root")
    g.add_argument("--subset-seed", type=int, default=99999, help="seed of the 1,000-sample subsets (SEVERE's)")
    g.add_argument("--subset-size", type=int_at_least(0), default=0, metavar="N",
                   help="train on N videos drawn as SEVERE's 10^3 subsets, the same number per class (Fig. 4.3, "
                        "B.13: 1,000 doubling to the full set); 0 = the whole training split. The 10^3 setups' "
                        "preset: 1000")
    g.add_argument("--print-split", choices=["train", "test"], default=None,
                   help="print the setup's video paths of that split, one per line, and exit; with --data-root the "
                        "videos the run would use (those not on disk left out before any subset is drawn)")
    g.add_argument("--summary", nargs="+", default=None, metavar="DIR",
                   help="print the markdown tables (Table 4.4 / 5.8, 4.1, 4.2, other setups) of all results JSON files "
                        "under these folders and exit")
    g.add_argument("--num-test-clips", type=int_at_least(1), default=10, help="uniformly spaced test clips per video")
    g.add_argument("--milestones", type=int, nargs="*", default=[60, 100, 140],
                   help="lr x --gamma at these epochs (SEVERE's configs, in one-clip-per-video epochs)")
    g.add_argument("--gamma", type=float, default=0.3,
                   help="lr decay factor at each milestone (SEVERE's configs 0.3; the text of App. B says 0.1)")
    g.add_argument("--weight-decay", type=float_in(0), default=0.0, help="Adam / SGD weight decay (Table C.4)")
    g.add_argument("--short-side", type=int, default=128, help="frames are resized to this short side when decoded")
    g.add_argument("--video-fps", type=float, default=16.0,
                   help="resample every video to this frame rate, so a clip spans clip-len / fps seconds (SEVERE's "
                        "configs: 32 frames at 16 fps = 2 s); 0 = consecutive native frames (the thesis's '32 "
                        "frames'; UCF101 at 25 fps: 1.28 s, SSv2 at 12 fps: 2.67 s)")
    g.add_argument("--train-crop", choices=["resized", "multiscale", "jitter"], default="resized",
                   help="resized: SEVERE's RandomResizedCrop (area 8-100%%, aspect 3/4-4/3, resized to the crop "
                        "size); multiscale: a square of 60-100%% of the short side (the text's 'multi-scale crop'); "
                        "jitter: SlowFast's short side rescaled to U[--jitter-scales], a crop-size square (Charades)")
    g.add_argument("--jitter-scales", type=int, nargs=2, default=[256, 340], metavar=("MIN", "MAX"),
                   help="--train-crop jitter: the short side's range (SlowFast's TRAIN_JITTER_SCALES)")
    g.add_argument("--test-spatial-crops", type=int, default=1,
                   help="test views per clip: 1 centre crop (SEVERE), or N squares of the whole short side spread "
                        "along the long side, both ends included (SlowFast's NUM_SPATIAL_CROPS 3, Charades)")
    g.add_argument("--colour-jitter", action=argparse.BooleanOptionalAction, default=True,
                   help="training colour jitter (SEVERE's; off for Charades, whose SlowFast config has none, and "
                        "the arrow of time)")
    g.add_argument("--hue", type=float, default=0.2,
                   help="training hue jitter, factor U(-hue, hue) (SEVERE's ColorJitter(0.4, 0.4, 0.4, 0.2)); 0 = off")
    g.add_argument("--test-crop-fraction", type=float, default=0.875,
                   help="test view: the centre square of this fraction of the short side, resized to the crop "
                        "(SEVERE's Resize(128) + CenterCrop(112) = 0.875; 1 = the whole centre square)")
    g.add_argument("--probe-bn", choices=["train", "frozen"], default="train",
                   help="--protocol linear: the frozen backbone's BatchNorm in train mode (batch statistics, "
                        "running ones updated) as SEVERE's linear_eval.py, or frozen in eval mode")
    g.add_argument("--normalization", choices=["severe", "pretraining"], default="severe",
                   help="input statistics: severe = as SEVERE's configs ran each method (ImageNet for all, TCLR raw "
                        "BGR, Charades 0.45 / 0.225); pretraining = as each checkpoint was pretrained (Kinetics "
                        "for torchvision's and scratch). Ours always get the Kinetics statistics they trained with")
    g.add_argument("--dropout", type=float_in(0, 1), default=0.0,
                   help="dropout before the linear head (SEVERE: none, Charades 0.5 as SlowFast's config)")
    g.add_argument("--select-on-test", action="store_true",
                   help="report the best test epoch, as SEVERE's own code did (optimistic; off = last epoch)")
    parser.set_defaults(clip_len=32, crop_size=112, batch_size=32, epochs=160, lr=1e-4, out_dir="runs/severe")
    args = parse_with_presets(parser, argv, PRESETS)
    for item in args.dataset_root:
        name, sep, folder = item.partition("=")
        if not sep or name not in DATASETS or not folder:
            parser.error(f"--dataset-root {item!r}: expected DATASET=DIR with DATASET one of {', '.join(DATASETS)}")
    if args.test_spatial_crops < 1:
        parser.error(f"--test-spatial-crops {args.test_spatial_crops} must be at least 1")
    if args.video_fps < 0:
        parser.error(f"--video-fps {args.video_fps}: give a frame rate, or 0 for consecutive native frames")
    if args.init == "pretrained" and not args.checkpoint:
        if "init" in args.given_flags:
            parser.error("--init pretrained needs --checkpoint (the weights to finetune)")
        args.init = "scratch"  # no weights given: recorded as what it is (the scratch presets apply either way)
    return args


def schedule(args, setup):
    """The setup's Schedule (Table C.4 for finetuning, Table B.2 for the linear probe) with the
    values of --epochs, --lr, --milestones, --batch-size, --weight-decay (its preset, or given)."""
    base = setup.finetune if args.protocol == "finetune" else setup.linear
    if base is None and args.protocol == "finetune":
        raise SystemExit(f"--setup {setup.name}: Table B.2 evaluates it linearly only; add --protocol linear")
    if base is None:  # Table B.2 has no linear protocol for this setup: UCF101's (the preset's)
        base = SETUPS["ucf101"].linear
        print(f"{setup.name}: the thesis gives no linear protocol; using UCF101's of Table B.2 ({base})")
    return dataclasses.replace(base, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                               weight_decay=args.weight_decay, milestones=tuple(args.milestones), gamma=args.gamma)


def lr_factor(sched, epoch):
    """Multi-step decay by gamma at the milestones, after a linear warm-up from warmup_lr (Charades)."""
    if epoch < sched.warmup_epochs:
        start = sched.warmup_lr / sched.lr
        return start + (1 - start) * epoch / sched.warmup_epochs
    return sched.gamma ** sum(epoch >= m for m in sched.milestones)


# ============ one setup ============

def multi_hot(classes, num_classes):
    target = torch.zeros(num_classes)
    target[list(classes)] = 1
    return target


def setup_data(args, d, setup):
    """(train samples, test samples, targets per sample index, num_outputs) with paths under --data-root."""
    if args.data_root is None:
        synthetic = d.main_first(synthetic_video_dataset, videos_per_class=args.synthetic_videos,
                                 background=args.synthetic_background)
        root, num_classes = synthetic["root"], len(synthetic["classes"])
        train = read_video_list(synthetic["train_list"], root)
        test = read_video_list(synthetic["val_list"], root)
        if args.subset_size:
            train = low_shot_subset(train, num_classes, args.subset_size, args.subset_seed)
    else:
        root, ann_root = args.data_root, args.ann_root or args.data_root
        train, test = ([(os.path.join(root, p), *rest) for p, *rest in setup_samples(setup.name, split, ann_root,
                                                                             args.subset_seed, root, args.subset_size)]
                       for split in ("train", "test"))
        num_classes = setup.num_classes
    if setup.task == "multilabel":
        if args.data_root is None:  # synthetic: the class as a one-hot target
            train, test = [(p, multi_hot([y], num_classes)) for p, y in train], [(p, multi_hot([y], num_classes)) for p, y in test]
        else:  # Charades: training clips are labelled from the intervals (CharadesClipTargets),
            # test videos with every action annotated in them (App. C.4)
            test = [(p, multi_hot([c for c, _, _ in a], num_classes)) for p, a in test]
    if setup.task == "aot" and args.data_root is None:  # every video forward (0) and reversed (1)
        train, test = [[(p, r) for p, _ in split for r in (0, 1)] for split in (train, test)]
    if setup.metric == "action_top1":  # 97 verb + 300 noun outputs; a synthetic class is verb 0, noun = class
        num_classes = setup.num_classes
    num_outputs = 2 if setup.task == "aot" else num_classes
    return train, test, num_outputs


def make_loader(samples, args, d, train, batch_size, clips_per_video=1, aot=False, stride=1, clip_targets=None):
    """batch_size: videos per process. Training stops above --max-bad-fraction unreadable videos;
    evaluation never stops: an unreadable test video is reported and left out of the metric."""
    videos = VideoClipDataset([(p, k, *segment) for k, (p, _, *segment) in enumerate(samples)], clip_len=args.clip_len,
                              strides=(stride,), short_side=args.short_side, train=train, num_clips=clips_per_video,
                              max_fail_fraction=args.max_bad_fraction if train else 1.0, fps=args.video_fps or None,
                              spread=aot)  # arrow of time: "8 frames linearly with a random offset" (App. B.2.4)
    dataset = Clips(videos, [s[1] for s in samples], args.crop_size, train, aot, clip_targets, args.train_crop,
                    args.test_crop_fraction, args.test_spatial_crops, tuple(args.jitter_scales))
    sampler = torch.utils.data.DistributedSampler(dataset, shuffle=train, seed=args.seed, drop_last=train) \
        if d.distributed else (torch.utils.data.RandomSampler(dataset) if train else None)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                                       num_workers=args.workers, pin_memory=d.device.type == "cuda",
                                       drop_last=train, persistent_workers=False)


def prepare_setup(args, d, setup_name):
    """Everything one setup needs before it trains: its args (presets applied), out-dir, schedule,
    video lists (missing files left out) and checkpoint layout. `main` prepares every setup of the
    run first, so a missing file of the last setup stops the run before the first one trains."""
    setup = SETUPS[setup_name]
    roots = dict(item.split("=", 1) for item in args.dataset_root)
    if args.dataset_root:  # the videos of this setup's dataset
        args = argparse.Namespace(**{**vars(args), "data_root": roots.get(setup.dataset, args.data_root)})
        if args.data_root is None:
            raise SystemExit(f"--setup {setup_name}: no --dataset-root {setup.dataset}=DIR and no --data-root")
    if args.subset_size and setup.task != "recognition" and "subset_size" in args.given_flags:
        raise SystemExit(f"--subset-size: {setup_name} is not a classification setup; subsets are drawn per class")
    fmt, variant = "scratch", backbone_variant("scratch")
    if args.init == "pretrained":  # the layout decides the network (TCLR's layer4)
        if not os.path.isfile(args.checkpoint):
            raise SystemExit(f"--checkpoint {args.checkpoint}: no such file")
        raw = read_checkpoint(args.checkpoint) if args.format in ("auto", "ours", "supervised") else None
        fmt = args.format if args.format != "auto" else guess_format(raw)
        variant = backbone_variant(fmt)
        if fmt in ("ours", "supervised"):  # torchvision keys: build the network the file holds
            variant = torchvision_architecture(convert_checkpoint(raw, fmt))
    # the layout the run used (--format auto resolved): per-method presets, checkpoint and results
    args = apply_presets(argparse.Namespace(**{**vars(args), "setup": setup_name,
                                               "format": args.format if fmt == "scratch" else fmt}), PRESETS)
    out_dir = os.path.join(args.out_dir, setup_name) if len(args.run_setups) > 1 else args.out_dir
    check_result_file(args, out_dir, setup_name)
    sched = schedule(args, setup)
    d.local_batch(sched.batch_size)
    train, test, num_outputs = (*counting_data(args, d), 1) if setup.task == "counting" \
        else setup_data(args, d, setup)
    return dict(args=args, setup_name=setup_name, out_dir=out_dir, sched=sched, data=(train, test, num_outputs),
                fmt=fmt, variant=variant)


def run_setup(args, d, setup_name, out_dir, sched, data, fmt, variant):
    setup = SETUPS[setup_name]
    os.makedirs(out_dir, exist_ok=True)
    epochs, batch_size = sched.epochs, d.local_batch(sched.batch_size)
    train, test, num_outputs = data
    aot, multilabel = setup.task == "aot", setup.task == "multilabel"
    for line in args.presets:
        d.print(line)
    d.print(f"{setup_name}: {len(train)} training and {len(test)} test videos, {num_outputs} outputs, "
            f"{args.protocol}, {sched} (batch {batch_size} per process x {d.world_size})")

    info = dict(checkpoint=None, format="scratch")
    backbone, feature_dim = build_backbone(variant)
    if fmt != "scratch":
        info = load_pretrained(args.checkpoint, fmt, backbone)
        d.print(f"loaded {args.checkpoint} ({info['format']}, {variant}, sha256 {info['sha256'][:12]}...)")
    info["backbone"], info["train_videos"] = variant, len(train)
    args.input_norm = input_normalization(fmt, setup, args.normalization)
    if setup.task == "counting":
        return run_counting(args, d, setup, out_dir, train, test, info, time.time(), backbone, feature_dim)
    test_loader = make_loader(test, args, d, train=False, clips_per_video=args.num_test_clips, aot=aot,
                              stride=setup.clip_stride,
                              batch_size=max(1, batch_size // (args.num_test_clips * args.test_spatial_crops)))
    t_start = time.time()

    if args.task in ("retrieval", "cluster"):  # frozen features, no training
        if d.distributed:
            raise SystemExit("--task retrieval / cluster run in one process; start them without torchrun")
        backbone.to(d.device)
        train_loader = make_loader(train, args, d, train=False, clips_per_video=args.num_test_clips,
                                   batch_size=max(1, batch_size // args.num_test_clips))
        test_f, test_y = features(backbone, test_loader, d, args)
        listed = len(test_loader.dataset)
        if len(test_f) < listed:
            d.print(f"warning: {listed - len(test_f)} of {listed} test videos could not be read and are not scored")
        counts = dict(test_videos=len(test_f), test_videos_listed=listed, unreadable_test_videos=listed - len(test_f))
        if args.task == "retrieval":
            train_f, train_y = features(backbone, train_loader, d, args)
            recall = retrieval_recall_at_k(test_f, test_y, train_f, train_y)
            result = dict(metric_name="recall@1", value=100 * recall[1], recall={k: 100 * v for k, v in recall.items()},
                          **counts)
        else:
            assign, _ = kmeans(test_f, num_outputs, iters=100, seed=args.seed)
            result = dict(metric_name="purity", value=100 * cluster_purity(assign, test_y),
                          silhouette=silhouette_score(test_f, assign), **counts)
        return finish(args, d, setup_name, out_dir, result, info, epochs=0, t_start=t_start)

    model = d.wrap(Classifier(backbone, feature_dim, num_outputs, linear=args.protocol == "linear",
                              dropout=args.dropout, probe_bn=args.probe_bn))
    clip_targets = CharadesClipTargets(train) if multilabel and args.data_root is not None else None
    train_loader = make_loader(train, args, d, train=True, aot=aot, batch_size=batch_size,
                               stride=setup.clip_stride, clip_targets=clip_targets)
    if len(train_loader) == 0:
        raise SystemExit(f"{len(train)} training videos are too few for a batch of {batch_size}")
    best = train_epochs(
        args, d, out_dir, model, sched, train_loader,
        lambda batch: (to_input(batch[0], d.device, train=args.colour_jitter, norm=args.input_norm, hue=args.hue),
                       batch[1].to(d.device)),
        lambda logits, targets: recognition_loss(logits.float(), targets, setup),
        select=(lambda: evaluate(model, test_loader, d, args, setup)["value"]) if args.select_on_test else None)
    result = evaluate(model, test_loader, d, args, setup)  # model selection: the last epoch
    if args.select_on_test:
        result.update(last_epoch_value=result["value"], value=max(best, result["value"]), selected_on_test=True)
    return finish(args, d, setup_name, out_dir, result, info, epochs, t_start)


def train_epochs(args, d, out_dir, model, sched, loader, inputs, loss_of, select=None):
    """Trains `model` for sched.epochs, resuming from OUT_DIR/checkpoint.pt (--resume auto): Adam on the
    trainable parameters ("We train with the Adam optimizer", App. B.2.1), SGD where sched says so
    (Charades: SlowFast's recipe in SEVERE's config, App. C.4), the lr of `lr_factor` per epoch.
    inputs(batch) -> (x, targets) on the device; loss_of(model(x), targets) runs under autocast.
    select() (--select-on-test) is evaluated after every epoch; returns the best value (else None)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if sched.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=sched.lr, momentum=0.9, weight_decay=sched.weight_decay, fused=True)
    else:
        optimizer = torch.optim.Adam(params, lr=sched.lr, weight_decay=sched.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(sched, epoch))
    scaler = grad_scaler(d.device, args.amp)
    ckpt = resume_training(args, out_dir, d, model, optimizer, scheduler, scaler, sched.epochs)
    start_epoch, best = (ckpt["epoch"] + 1, ckpt.get("best")) if ckpt else (0, None)

    progress = Progress(d, sched.epochs, len(loader), sched.batch_size, args.print_freq)
    for epoch in range(start_epoch, sched.epochs):
        if d.distributed:
            loader.sampler.set_epoch(epoch)
        model.train()
        loss_sum = 0.0
        for it, batch in enumerate(loader):
            x, targets = inputs(batch)
            with autocast(d.device, args.amp):
                loss = loss_of(model(x), targets)
            loss = optimizer_step(loss, optimizer, scaler, epoch, it)
            loss_sum += loss
            progress.step(epoch, it, loss, optimizer.param_groups[0]["lr"])
        record = dict(epoch=epoch, loss=d.all_reduce_mean(loss_sum / len(loader)), lr=optimizer.param_groups[0]["lr"])
        scheduler.step()
        if select is not None:
            record["test"] = select()
            best = record["test"] if best is None else max(best, record["test"])
        save_epoch(d, out_dir, record, model, optimizer, scheduler, scaler, epoch, args, best=best)
        d.barrier()
    return best


def result_path(args, out_dir, setup_name):
    kind = args.protocol if args.task == "auto" else args.task  # retrieval / cluster train nothing
    return os.path.join(out_dir, f"results_{setup_name}_{kind}.json")


def check_result_file(args, out_dir, setup_name):
    """Refuses, before anything trains, to overwrite the result of another checkpoint (or init) in out_dir
    (--task retrieval / cluster write no checkpoint.pt whose resume check would catch it)."""
    path = result_path(args, out_dir, setup_name)
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f).get("args", {})
        if (before.get("init"), before.get("checkpoint")) != (args.init, args.checkpoint):
            raise SystemExit(f"{path} holds the result of --init {before.get('init')} --checkpoint "
                             f"{before.get('checkpoint')}; this run's differs: give another --out-dir")


def finish(args, d, setup_name, out_dir, result, info, epochs, t_start):
    """Prints the result and writes OUT_DIR/results_<setup>_<protocol or task>.json (rank 0)."""
    name = args.name or (args.checkpoint if args.init == "pretrained" else "None (scratch)")
    record = dict(name=name, setup=setup_name, protocol=args.protocol, task=args.task, **result,
                  checkpoint=info.get("checkpoint") or args.checkpoint, checkpoint_sha256=info.get("sha256"),
                  format=info.get("format"), backbone=info.get("backbone"), train_videos=info.get("train_videos"),
                  epochs=epochs, seconds=round(time.time() - t_start, 1), args=vars(args))
    if d.main:
        path = result_path(args, out_dir, setup_name)
        with open(path, "w") as f:
            json.dump(record, f, indent=1)
        kind = args.protocol if args.task == "auto" else args.task
        print(f"{setup_name} {kind}: {record['metric_name']} {record['value']:.2f}  ({path})", flush=True)
    return record


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        print(summary_tables(load_results(args.summary)))
        return
    if args.print_split:
        if not (args.ann_root or args.data_root):
            raise SystemExit(f"--print-split {args.print_split} needs --ann-root (the folder of the official "
                             f"annotation files) or --data-root")
    flag, ann_root = ("--ann-root", args.ann_root) if args.ann_root else ("--data-root", args.data_root)
    try:  # a missing or malformed annotation file, or no video on disk: one line, before any training
        if args.print_split:
            print_split(args.setup, args.print_split, ann_root, args.subset_seed, args.subset_size, args.data_root)
            return
        d = Dist(args.device)
        seed_everything(args.seed, d.rank)
        args.run_setups = list(SEVERE_SETUPS) if args.setup == "all" else [args.setup]
        d.print(json.dumps(vars(args)))
        runs = [prepare_setup(args, d, name) for name in args.run_setups]  # every input checked first
    except (FileNotFoundError, AnnotationError) as err:
        raise SystemExit(f"{err} ({flag} {ann_root})" if ann_root else str(err)) from None
    for run in runs:
        run_setup(d=d, **run)
    d.close()


if __name__ == "__main__":
    main()


