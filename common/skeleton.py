"""3D skeleton sequences: NTU RGB+D 60/120 and PKU-MMD readers, preprocessing, and a dataset.

Data flow: raw Kinect files (NTU '.skeleton' text, PKU-MMD per-frame text + label files)
-> prepare_ntu / prepare_pku_mmd -> '{train,val}_data_joint.npy' float32 (N, 3, T=300, V=25, M=2),
'{train,val}_label.pkl' = (sample_names, labels), '{train,val}_num_frame.npy' -> SkeletonDataset.

The output is the format the community shares (ST-GCN / 2s-AGCN preprocessing; the thesis' code,
github fmthoker/skeleton-contrast, uses the 2s-AGCN files plus the num_frame file), so files made
here and files downloaded from those projects are interchangeable.

Axes: C = 3 camera-space coordinates x, y, z in metres (Kinect v2: y up, z away from the camera);
T = frames (30 fps), zero-padded to 300; V = 25 Kinect v2 joints; M = 2 bodies, the second all
zeros for single-person actions.

Joint indices are 0-based in code; the NTU paper numbers them 1-25. The ones used here:
    0 (NTU 1)  base of the spine (hip centre)      1 (NTU 2)  middle of the spine
    4 (NTU 5)  left shoulder                        8 (NTU 9)  right shoulder
    20 (NTU 21) spine at the shoulders
"""
import contextlib
import functools
import mmap
import os
import pickle
import re
import sys
import multiprocessing

import numpy as np

NUM_JOINTS = 25       # Kinect v2 skeleton
MAX_FRAMES = 300      # longest NTU sequence; the community files pad every sample to it
MAX_BODIES = 2        # NTU actions have one or two performers
SPLITS = ("train", "val")

# Joints of the normalisation (0-based), as in 2s-AGCN's pre_normalization defaults.
CENTER_JOINT = 1              # middle of the spine (NTU joint 2)
Z_AXIS_JOINTS = (0, 1)        # base of the spine -> middle of the spine (NTU joints 1 -> 2)
X_AXIS_JOINTS = (4, 8)        # left shoulder -> right shoulder (NTU joints 5 -> 9)


# ============ the shared .npy/.pkl format ============

def protocol_paths(root, split):
    """Paths of one split of a preprocessed benchmark folder, as SkeletonDataset keyword arguments.

    root/{split}_data_joint.npy and root/{split}_label.pkl must exist; root/{split}_num_frame.npy
    is optional (None when absent: the dataset then counts the valid frames itself, count_valid_frames).
    Raises FileNotFoundError naming the missing path.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    paths = dict(data_path=os.path.join(root, f"{split}_data_joint.npy"),
                 label_path=os.path.join(root, f"{split}_label.pkl"),
                 num_frame_path=os.path.join(root, f"{split}_num_frame.npy"))
    for key in ("data_path", "label_path"):
        if not os.path.isfile(paths[key]):
            raise FileNotFoundError(f"skeleton {key.split('_')[0]} file not found: {paths[key]}")
    if not os.path.isfile(paths["num_frame_path"]):
        paths["num_frame_path"] = None
    return paths


def read_label_pickle(path):
    """(sample_names list[str], labels int64 (N,)) from a '{split}_label.pkl'.

    Accepts a pickled tuple or list of the two lists. Pickles written by Python 2 (2s-AGCN's
    released files) hold byte strings that only load with encoding='latin1'.
    """
    with open(path, "rb") as f:
        try:
            try:
                content = pickle.load(f)
            except UnicodeDecodeError:
                f.seek(0)
                content = pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as err:
            raise ValueError(f"{path}: not a readable label pickle ({err})") from None
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path}: expected a pickled (sample_names, labels) pair, got "
                         f"{type(content).__name__}" + (f" of length {len(content)}"
                                                        if hasattr(content, "__len__") else ""))
    names, labels = content
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(names) != len(labels):
        raise ValueError(f"{path}: {len(names)} sample names but {len(labels)} labels")
    return names, labels


def count_valid_frames(sample):
    """Number of valid frames of a (3, T, V, M) sample whose true length is not stored.

    Zero padding: the frames with any non-zero coordinate count. Repetition padding: 2s-AGCN's
    pre_normalization fills the frames after a body's n valid ones by repeating those n frames, so
    every frame is non-zero; a body whose pose repeats with period n counts n (repetition_period).
    The sample counts its longest body.
    """
    nonzero = np.any(sample != 0, axis=(0, 2))  # (T, M)
    counts = [repetition_period(sample[:, :int(np.flatnonzero(nonzero[:, m])[-1]) + 1, :, m])
              for m in range(sample.shape[-1]) if nonzero[:, m].any()]
    return min(max(counts, default=0), int(np.count_nonzero(nonzero.any(axis=1))))


def repetition_period(body, atol=1e-4):
    """Smallest n such that the pose of body (3, T, V) repeats with period n: frame t equals frame t - n
    for every t >= n, to atol metres (T when it does not). The pose is taken relative to joint 0, because
    2s-AGCN centres every frame on the *first* body's centre of that frame, which moves the second body's
    copies by different amounts. Real motion never repeats to 0.1 mm in all 25 joints (Kinect's noise is
    millimetres), so it keeps its length."""
    T = body.shape[1]
    pose = (body - body[:, :, :1]).transpose(1, 0, 2).reshape(T, -1)
    for n in np.flatnonzero(np.abs(pose[1:] - pose[0]).max(axis=1) <= atol) + 1:  # poses equal to frame 0's
        if np.abs(pose[n:] - pose[:T - n]).max() <= atol:
            return int(n)
    return T


class SkeletonDataset:
    """Samples of a '{split}_data_joint.npy' + '{split}_label.pkl' (+ '{split}_num_frame.npy').

    mmap=True opens the data with np.load(mmap_mode='r'): nothing is read at construction and
    each item copies one (3, 300, 25, 2) sample (180 kB) from the page cache, so DataLoader
    workers share the file instead of each holding the whole array (6.8 GB for NTU-60 x-view
    train). Works as a torch Dataset (map-style: __len__ and __getitem__).

    item i: (float32 (3, T, V, M) array, int label, int number of valid frames). Valid frames come
    from num_frame_path when given, else from count_valid_frames, computed lazily per sample: it
    finds zero padding and also 2s-AGCN's padding by repetition (its released files pad every
    sample to 300 frames by repeating it), so those files give the true lengths without the file.
    """

    def __init__(self, data_path, label_path, num_frame_path=None, mmap=True):
        self.data_path, self.label_path, self.num_frame_path = data_path, label_path, num_frame_path
        self.sample_names, self.labels = read_label_pickle(label_path)
        try:
            self.data = np.load(data_path, mmap_mode="r" if mmap else None)
        except ValueError as err:  # truncated or not a .npy file
            raise ValueError(f"{data_path}: {err}") from None
        if self.data.ndim != 5 or self.data.shape[1] != 3:
            raise ValueError(f"{data_path}: expected (N, 3, T, V, M) data, got shape "
                             f"{self.data.shape}")
        if len(self.data) != len(self.labels):
            raise ValueError(f"{data_path} has {len(self.data)} samples but {label_path} has "
                             f"{len(self.labels)} labels")
        self.num_frames = None
        if num_frame_path is not None:
            self.num_frames = np.load(num_frame_path).astype(np.int64).reshape(-1)
            if len(self.num_frames) != len(self.labels):
                raise ValueError(f"{num_frame_path} has {len(self.num_frames)} entries but "
                                 f"{label_path} has {len(self.labels)} labels")
            bad = np.flatnonzero((self.num_frames < 1) | (self.num_frames > self.data.shape[2]))
            if len(bad):
                raise ValueError(f"{num_frame_path}: {len(bad)} frame counts outside 1..{self.data.shape[2]} "
                                 f"(the first: sample {bad[0]}, {self.num_frames[bad[0]]})")
        self._counted = {}  # lazily computed valid-frame counts, one cache per worker process

    def __len__(self):
        return len(self.labels)

    def num_valid_frames(self, i):
        if self.num_frames is not None:
            return int(self.num_frames[i])
        if i not in self._counted:
            self._counted[i] = count_valid_frames(self.data[i])
        return self._counted[i]

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        sample = np.array(self.data[i], dtype=np.float32)  # copy: never hand out the mmap itself
        if self.num_frames is None and i not in self._counted:
            self._counted[i] = count_valid_frames(sample)  # from the copy: the mapping is released next
        self._release(i)
        return sample, int(self.labels[i]), self.num_valid_frames(i)

    def _release(self, i):
        """Unmap sample i's pages from this process after copying it. The pages stay in the page
        cache (a later read is still fast), but they no longer count in the RSS of every
        DataLoader worker: without this, an epoch over NTU-60 x-view would map the whole 6.8 GB
        file into each worker."""
        mm = getattr(self.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        item = self.data[0].nbytes
        # np.memmap maps from the allocation-granularity boundary below the array's file offset
        begin = self.data.offset % mmap.ALLOCATIONGRANULARITY + i * item
        first = begin // mmap.PAGESIZE * mmap.PAGESIZE
        last = min(-(-(begin + item) // mmap.PAGESIZE) * mmap.PAGESIZE, len(mm))
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


# ============ NTU RGB+D .skeleton files ============

_BODY_FIELDS = ("bodyID", "clipedEdges", "handLeftConfidence", "handLeftState",
                "handRightConfidence", "handRightState", "isResticted", "leanX", "leanY",
                "trackingState")
_JOINT_FIELDS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY", "orientationW",
                 "orientationX", "orientationY", "orientationZ", "trackingState")


def _parse_int(path, lines, lineno, what):
    """int on line `lineno` (1-based) of `lines`, or ValueError naming path:lineno."""
    if lineno > len(lines):
        raise ValueError(f"{path}:{lineno}: unexpected end of file, expected {what}")
    text = lines[lineno - 1].strip()
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: expected {what} (one integer), got {text!r}") from None
    if value < 0:
        raise ValueError(f"{path}:{lineno}: negative {what}: {value}")
    return value


def _parse_rows(path, lines, lineno, rows, width, what):
    """float64 (rows, width) from lines lineno .. lineno + rows - 1 (1-based), checked."""
    block = lines[lineno - 1:lineno - 1 + rows]
    try:
        values = np.array(" ".join(block).split(), dtype=np.float64)
    except ValueError:
        values = None  # a non-number somewhere: find the line below
    if len(block) == rows and values is not None and values.size == rows * width:
        return values.reshape(rows, width)
    for k, line in enumerate(block):  # slow path, only to name the offending line
        fields = line.split()
        try:
            [float(x) for x in fields]
        except ValueError:
            raise ValueError(f"{path}:{lineno + k}: {what}: not a number in "
                             f"{line.strip()!r}") from None
        if len(fields) != width:
            raise ValueError(f"{path}:{lineno + k}: {what}: expected {width} values, got "
                             f"{len(fields)}: {line.strip()!r}")
    raise ValueError(f"{path}:{lineno + len(block)}: unexpected end of file, expected {what}")


def read_ntu_skeleton(path):
    """Parses an NTU RGB+D '.skeleton' text file (Kinect v2 output, one file per sample).

    Format: line 1 the frame count; per frame a body count, then per body one line of the 10
    _BODY_FIELDS, the joint count (25), and 25 lines of the 12 _JOINT_FIELDS.

    Returns dict(
        frames=float32 (T, M_max, 25, 3) x, y, z in metres (camera space), zeros where a frame
            has fewer than M_max bodies,
        body_ids=int64 (T, M_max) Kinect tracking ids (-1: no body),
        num_bodies=int64 (T,) bodies per frame,
        tracking_state=int8 (T, M_max, 25) per joint: 0 not tracked, 1 inferred, 2 tracked,
        color_xy=float32 (T, M_max, 25, 2) joint positions in the 1920x1080 RGB frame,
        name=file name without '.skeleton').
    Bodies are in their order within each frame (slot m = m-th body listed), as the ST-GCN and
    2s-AGCN readers do; M_max is the largest body count of any frame (0 for an empty file).
    Raises ValueError f"{path}:{line}: ..." for a malformed file.
    """
    with open(path) as f:
        lines = f.read().splitlines()
    num_frames = _parse_int(path, lines, 1, "the frame count")
    lineno = 2
    per_frame = []  # [(body ids, (bodies, 25, 12) joint values)] per frame
    for _ in range(num_frames):
        num_bodies = _parse_int(path, lines, lineno, "a body count")
        lineno += 1
        ids, joints = [], []
        for _ in range(num_bodies):
            fields = lines[lineno - 1].split() if lineno <= len(lines) else []
            if len(fields) != len(_BODY_FIELDS):
                got = repr(lines[lineno - 1].strip()) if lineno <= len(lines) else "end of file"
                raise ValueError(f"{path}:{lineno}: expected a body line of "
                                 f"{len(_BODY_FIELDS)} values, got {got}")
            try:
                ids.append(int(fields[0]))  # 64-bit ids: float() would lose digits
            except ValueError:
                raise ValueError(f"{path}:{lineno}: body id is not an integer: "
                                 f"{fields[0]!r}") from None
            num_joints = _parse_int(path, lines, lineno + 1, "the joint count")
            if num_joints != NUM_JOINTS:
                raise ValueError(f"{path}:{lineno + 1}: expected {NUM_JOINTS} joints, got "
                                 f"{num_joints}")
            joints.append(_parse_rows(path, lines, lineno + 2, NUM_JOINTS, len(_JOINT_FIELDS),
                                      "joint line"))
            lineno += 2 + NUM_JOINTS
        per_frame.append((ids, joints))
    for k in range(lineno - 1, len(lines)):
        if lines[k].strip():
            raise ValueError(f"{path}:{k + 1}: unexpected content after the last of the "
                             f"{num_frames} frames: {lines[k].strip()[:60]!r}")

    max_bodies = max((len(ids) for ids, _ in per_frame), default=0)
    frames = np.zeros((num_frames, max_bodies, NUM_JOINTS, 3), dtype=np.float32)
    color_xy = np.zeros((num_frames, max_bodies, NUM_JOINTS, 2), dtype=np.float32)
    tracking = np.zeros((num_frames, max_bodies, NUM_JOINTS), dtype=np.int8)
    body_ids = np.full((num_frames, max_bodies), -1, dtype=np.int64)
    for t, (ids, joints) in enumerate(per_frame):
        for m, (body_id, values) in enumerate(zip(ids, joints)):
            body_ids[t, m] = body_id
            frames[t, m] = values[:, 0:3]
            color_xy[t, m] = values[:, 5:7]
            tracking[t, m] = values[:, 11]
    name = os.path.basename(str(path))
    return dict(frames=frames, body_ids=body_ids,
                num_bodies=np.array([len(ids) for ids, _ in per_frame], dtype=np.int64),
                tracking_state=tracking, color_xy=color_xy,
                name=name[:-len(".skeleton")] if name.endswith(".skeleton") else name)


def body_energy(body):
    """Motion energy of one body (T, V, 3): the 2s-AGCN/ST-GCN body-selection score.

    Over the frames where the body is present (any non-zero coordinate), the standard deviation of
    the x coordinates of all joints and frames together, plus that of y, plus that of z. It is
    large for a body that moves or spreads out, near zero for a static false detection.
    """
    present = np.any(body != 0, axis=(1, 2))
    if not present.any():
        return 0.0
    coords = body[present].reshape(-1, 3).astype(np.float64)
    return float(coords.std(axis=0).sum())


def ntu_to_array(skeleton, max_frames=MAX_FRAMES, max_bodies=MAX_BODIES):
    """float32 (3, max_frames, 25, max_bodies) from read_ntu_skeleton's dict (or its 'frames').

    Keeps the `max_bodies` bodies of highest body_energy, highest first (Kinect often adds
    spurious low-energy bodies: furniture, a second person passing by); ties keep the earlier
    slot. Frames past max_frames are dropped (NTU has none past 300), missing ones are zeros.
    Not normalised: see normalize_skeleton.
    """
    frames = skeleton["frames"] if isinstance(skeleton, dict) else np.asarray(skeleton)
    num_frames, num_bodies = frames.shape[:2]
    out = np.zeros((3, max_frames, frames.shape[2], max_bodies), dtype=np.float32)
    if num_frames == 0 or num_bodies == 0:
        return out
    energy = np.array([body_energy(frames[:, m]) for m in range(num_bodies)])
    keep = np.argsort(-energy, kind="stable")[:max_bodies]
    t = min(num_frames, max_frames)
    out[:, :t, :, :len(keep)] = frames[:t][:, keep].transpose(3, 0, 2, 1)  # (T,M,V,C)->(C,T,V,M)
    return out


# ============ 2s-AGCN normalisation ============

def _rotation_to(vector, target):
    """(3, 3) rotation taking the direction of `vector` onto unit `target`.

    Rodrigues' rotation about vector x target by the angle between them. Identity when either
    vector is (near) zero or they are already (anti)parallel: as in 2s-AGCN, which leaves an
    upside-down bone upside down rather than picking an arbitrary axis for a 180 degree turn.
    """
    vector = np.asarray(vector, dtype=np.float64)
    axis = np.cross(vector, target)
    norm_v, norm_axis = np.linalg.norm(vector), np.linalg.norm(axis)
    if norm_v < 1e-6 or norm_axis < 1e-6 * norm_v:
        return np.eye(3)
    k = axis / norm_axis
    cos = np.clip(np.dot(vector, target) / norm_v, -1.0, 1.0)
    sin = norm_axis / norm_v  # |v x t| = |v| sin(angle) for a unit target
    cross_k = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return cos * np.eye(3) + sin * cross_k + (1 - cos) * np.outer(k, k)


def _pad_null_frames(body):
    """In place on one body (T, V, 3): 2s-AGCN's 'pad the null frames with the previous frames'.

    A body whose first frame is empty has its non-empty frames moved to the front (this also
    closes gaps inside the sequence); the empty tail after the last non-empty frame is then filled
    by repeating the sequence from its start. Gaps inside a sequence that starts non-empty stay.
    """
    present = np.any(body != 0, axis=(1, 2))
    if not present.any():
        return
    if not present[0]:
        valid = body[present].copy()
        body[:] = 0
        body[:len(valid)] = valid
        present = np.zeros(len(body), dtype=bool)
        present[:len(valid)] = True
    length = int(np.flatnonzero(present)[-1]) + 1
    if length < len(body):
        reps = -(-len(body) // length)  # ceil
        body[length:] = np.concatenate([body[:length]] * reps)[:len(body) - length]


def normalize_skeleton(data, center_each_frame=True):
    """2s-AGCN's pre_normalization of (3, T, V, M) or (N, 3, T, V, M) data; returns a new array.

    Per sample, with body 0 the main (highest-energy) body and "first frame" its frame 0 after
    padding (the order of the steps is 2s-AGCN's):
    1. pad null frames by repeating the sequence (_pad_null_frames), per body;
    2. centre: subtract body 0's middle-of-spine joint (CENTER_JOINT = 1, NTU joint 2) from every
       body. center_each_frame=True (2s-AGCN): frame t minus the centre of frame t, which also
       removes the global translation over time; False: every frame minus the centre of the first
       frame (only the start position is removed). Joints that were exactly zero (missing) stay
       zero;
    3. rotate all bodies and frames so that body 0's first-frame bone from the base of the spine to
       the middle of the spine (Z_AXIS_JOINTS = 0 -> 1, NTU joints 1 -> 2; 2s-AGCN calls them
       'hip' and 'spine') points along +z;
    4. rotate so that body 0's first-frame vector right shoulder minus left shoulder
       (X_AXIS_JOINTS: joint 8 - joint 4, NTU 9 - NTU 5, i.e. from the left to the right
       shoulder) points along +x.
    Both rotations are proper (det +1), so when the shoulder line is perpendicular to the spine
    bone the result has +z = up the spine, +x = towards the subject's right shoulder and
    +y = z x x = the direction the subject faces. Step 4 turns about an axis perpendicular to x,
    so when the shoulders are not perpendicular to that bone it tilts the bone away from z again
    (2s-AGCN behaves the same; only the last alignment is exact).
    All-zero samples are returned unchanged.
    """
    data = np.asarray(data)
    if data.ndim == 4:
        return normalize_skeleton(data[None], center_each_frame)[0]
    if data.ndim != 5 or data.shape[1] != 3:
        raise ValueError(f"expected (3, T, V, M) or (N, 3, T, V, M) data, got shape {data.shape}")
    out = np.ascontiguousarray(data.transpose(0, 4, 2, 3, 1), dtype=np.float32)  # (N, M, T, V, C)
    for sample in out:
        if not sample.any():
            continue
        for body in sample:
            _pad_null_frames(body)
        center = sample[0, :, CENTER_JOINT:CENTER_JOINT + 1].copy()  # (T, 1, 3)
        if not center_each_frame:
            center = center[0:1]
        for body in sample:
            if body.any():
                body[:] = (body - center) * np.any(body != 0, axis=-1, keepdims=True)
        first = sample[0, 0].astype(np.float64)  # (V, 3), body 0 frame 0
        bottom, top = Z_AXIS_JOINTS
        rot_z = _rotation_to(first[top] - first[bottom], np.array([0.0, 0.0, 1.0]))
        left, right = X_AXIS_JOINTS
        shoulders = rot_z @ (first[right] - first[left])
        rot_x = _rotation_to(shoulders, np.array([1.0, 0.0, 0.0]))
        # Rotating row vectors: p' = R p  <=>  rows @ R.T. Zero joints stay zero.
        sample[:] = sample @ (rot_x @ rot_z).T.astype(np.float32)
    return np.ascontiguousarray(out.transpose(0, 4, 2, 3, 1))


# ============ NTU names and benchmarks ============

_NTU_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")

# Official training subjects (Shahroudy et al. 2016; Liu et al. 2019). The 20 NTU-60 ids are
# exactly the NTU-120 ids below 41, so one 'xsub' rule serves both datasets.
NTU60_TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
NTU120_TRAIN_SUBJECTS = NTU60_TRAIN_SUBJECTS + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
XVIEW_TRAIN_CAMERAS = (2, 3)  # cameras 2 and 3 (0 and 45 degrees) train, camera 1 (-45) tests
BENCHMARKS = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset")}
NTU_MAX_SETUP = {"ntu60": 17, "ntu120": 32}  # NTU-120 = NTU-60 (setups 1-17) + setups 18-32


def parse_ntu_name(name):
    """dict(setup, camera, subject, replication, action), 1-based ints, from 'SsssCcccPpppRrrrAaaa'.

    `name` may be a path or carry a '.skeleton' suffix.
    """
    match = _NTU_NAME.search(os.path.basename(str(name)))
    if match is None:
        raise ValueError(f"not an NTU sample name (SsssCcccPpppRrrrAaaa): {name!r}")
    return dict(zip(("setup", "camera", "subject", "replication", "action"),
                    map(int, match.groups())))


def ntu_split(sample_name, benchmark):
    """'train' or 'val' for an NTU sample under a benchmark.

    'xsub': training subjects NTU120_TRAIN_SUBJECTS (NTU-60 and NTU-120 cross-subject);
    'xview': cameras 2 and 3 train (NTU-60 cross-view); 'xset' (or 'xsetup'): even setup ids
    train (NTU-120 cross-setup).
    """
    ids = parse_ntu_name(sample_name)
    if benchmark == "xsub":
        train = ids["subject"] in NTU120_TRAIN_SUBJECTS
    elif benchmark == "xview":
        train = ids["camera"] in XVIEW_TRAIN_CAMERAS
    elif benchmark in ("xset", "xsetup"):
        train = ids["setup"] % 2 == 0
    else:
        raise ValueError(f"unknown NTU benchmark {benchmark!r}; expected 'xsub', 'xview' or 'xset'")
    return "train" if train else "val"


def missing_skeleton_samples(dataset="ntu60"):
    """frozenset of the official sample names whose skeletons are missing or empty.

    These are excluded by every preprocessing (ST-GCN, 2s-AGCN, and the thesis' code): 302 for
    NTU-60, 535 for NTU-120 (the 302 plus 233 from setups 19-32). Lists from the 2s-AGCN (NTU-60)
    and MS-G3D (NTU-120) repositories' samples_with_missing_skeletons files, kept in common/data/.
    """
    if dataset not in ("ntu60", "ntu120"):
        raise ValueError(f"dataset must be 'ntu60' or 'ntu120', got {dataset!r}")
    names = _name_list("ntu60_missing_skeletons.txt")
    if dataset == "ntu120":
        names = names + _name_list("ntu120_extra_missing_skeletons.txt")
    return frozenset(names)


def _name_list(file_name):
    """The names of a list in common/data/ (one per line, '#' comments)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", file_name)) as f:
        return tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))


# ============ writing the shared format ============

@contextlib.contextmanager
def parallel_map(workers, chunksize=1):
    """An ordered map over a pool of `workers` processes (None: up to 8), or in this process (0);
    the workers are terminated on leaving, errors included."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8)
    if workers <= 0:
        yield map
        return
    with multiprocessing.Pool(workers) as pool:
        yield functools.partial(pool.imap, chunksize=chunksize)


def write_split(out_dir, split, names, labels, results, max_frames, num_bodies=MAX_BODIES, drop_empty=False):
    """Writes {split}_data_joint.npy, _label.pkl and _num_frame.npy from per-sample results.

    `results` yields (array (3, max_frames, 25, num_bodies), num_valid_frames) in the order of
    `names`, or (None, error) for a file that could not be read: it is reported and left out;
    with drop_empty, samples of 0 valid frames are left out too and counted in one line.
    The data go straight into a memory-mapped .npy (np.lib.format.open_memmap), so memory stays
    at one sample whatever the dataset size. The label pickle is (names, labels) as in 2s-AGCN,
    protocol 4 (loadable by any Python 3). Returns the number of samples written.
    """
    path = os.path.join(out_dir, f"{split}_data_joint.npy")
    shape = (len(names), 3, max_frames, NUM_JOINTS, num_bodies)
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    num_frames = np.zeros(len(names), dtype=np.int64)
    kept, seen, empty = [], 0, 0
    for i, (array, length) in enumerate(results):
        seen += 1
        if array is None:
            print(f"skipping unreadable skeleton file {names[i]}: {length}", file=sys.stderr, flush=True)
            continue
        if drop_empty and not length:
            empty += 1
            continue
        data[len(kept)], num_frames[len(kept)] = array, length
        kept.append(i)
        if seen % 1000 == 0:
            print(f"{split}: {seen}/{len(names)} samples", file=sys.stderr, flush=True)
    if seen != len(names):
        raise RuntimeError(f"{split}: got {seen} samples for {len(names)} names")
    if empty:
        print(f"{split}: {empty} of {len(names)} actions have no skeleton in their interval, dropped",
              file=sys.stderr)
    data.flush()
    if len(kept) < len(names):  # samples left out: the array keeps only the rows written
        compact = np.lib.format.open_memmap(path + ".tmp", mode="w+", dtype=np.float32,
                                            shape=(len(kept),) + shape[1:])
        for start in range(0, len(kept), 1000):
            end = min(start + 1000, len(kept))
            compact[start:end] = data[start:end]
        compact.flush()
        del compact
        os.replace(path + ".tmp", path)
    del data
    np.save(os.path.join(out_dir, f"{split}_num_frame.npy"), num_frames[:len(kept)])
    with open(os.path.join(out_dir, f"{split}_label.pkl"), "wb") as f:
        pickle.dump(([names[i] for i in kept], [int(labels[i]) for i in kept]), f, protocol=4)
    return len(kept)


def _ntu_sample(job):
    """(array (3, T, 25, 2), valid frames) for one .skeleton file, or (None, the error) when it cannot
    be read; runs in pool workers."""
    path, max_frames, normalize = job
    try:
        skeleton = read_ntu_skeleton(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        return None, err
    array = ntu_to_array(skeleton, max_frames)
    if normalize:
        array = normalize_skeleton(array)
    return array, min(len(skeleton["frames"]), max_frames)


def prepare_ntu(skeleton_dir, out_dir, benchmark, dataset="ntu60", workers=None, normalize=True,
                max_frames=MAX_FRAMES, max_bad_fraction=0.05):
    """Converts NTU RGB+D '.skeleton' files into the shared format for one benchmark.

    skeleton_dir: a folder (or a list of folders, e.g. the two NTU-120 downloads) of
    'SsssCcccPpppRrrrAaaa.skeleton' files; for dataset='ntu60' files of setups past 17 are ignored,
    so a merged NTU-120 folder also works. Writes out_dir/{train,val}_data_joint.npy float32
    (N, 3, max_frames, 25, 2), {train,val}_label.pkl (names with '.skeleton', labels = action
    id - 1), and {train,val}_num_frame.npy (int64 frames in the file, at most max_frames; the
    thesis' code writes the same file). Samples of missing_skeleton_samples(dataset) are skipped.
    Samples are in sorted name order. normalize: apply normalize_skeleton (2s-AGCN does).
    workers: processes parsing files (None: up to 8; 0: in this process).
    A malformed file is reported (file:line) and left out; more than max_bad_fraction of them stop
    the conversion.
    Returns {split: number of samples}.
    """
    if dataset not in BENCHMARKS:
        raise ValueError(f"dataset must be one of {tuple(BENCHMARKS)}, got {dataset!r}")
    benchmark = "xset" if benchmark == "xsetup" else benchmark
    if benchmark not in BENCHMARKS[dataset]:
        raise ValueError(f"{dataset} benchmarks are {BENCHMARKS[dataset]}, got {benchmark!r}")
    folders = [skeleton_dir] if isinstance(skeleton_dir, (str, os.PathLike)) else list(skeleton_dir)
    files = {}
    for folder in folders:
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"NTU skeleton folder not found: {folder}")
        for entry in os.scandir(folder):
            if entry.name.endswith(".skeleton") and _NTU_NAME.search(entry.name):
                files.setdefault(entry.name, entry.path)
    missing = missing_skeleton_samples(dataset)
    split_names = {split: [] for split in SPLITS}
    skipped = 0
    for name in sorted(files):
        ids = parse_ntu_name(name)
        if ids["setup"] > NTU_MAX_SETUP[dataset]:
            continue
        if name[:-len(".skeleton")] in missing:
            skipped += 1
            continue
        split_names[ntu_split(name, benchmark)].append(name)
    if not any(split_names.values()):
        raise FileNotFoundError(f"no {dataset} .skeleton files in {folders}")
    print(f"{dataset} {benchmark}: {len(split_names['train'])} train, {len(split_names['val'])} "
          f"val samples; {skipped} with missing skeletons skipped", file=sys.stderr)
    os.makedirs(out_dir, exist_ok=True)
    counts = {}
    with parallel_map(workers, chunksize=16) as imap:
        for split, names in split_names.items():
            labels = [parse_ntu_name(n)["action"] - 1 for n in names]
            jobs = [(files[n], max_frames, normalize) for n in names]
            counts[split] = write_split(out_dir, split, names, labels, imap(_ntu_sample, jobs), max_frames)
    listed = sum(map(len, split_names.values()))
    bad = listed - sum(counts.values())
    if bad > max_bad_fraction * listed:
        raise RuntimeError(f"{bad} of {listed} .skeleton files could not be read (more than {max_bad_fraction:.0%}); "
                           f"the messages above name them")
    return counts


# ============ PKU-MMD ============

PKU_NUM_CLASSES = 51  # action ids 1-51 in the label files of both phases


def read_pku_skeleton(path):
    """float32 (T, 2, 25, 3) from a PKU-MMD skeleton file.

    One line per frame with 150 values: person 1's 25 joints (x y z each, Kinect v2 order as NTU),
    then person 2's (all zeros when there is one person). Raises ValueError naming file:line.
    """
    with open(path) as f:
        lines = f.read().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    values = _parse_rows(path, lines, 1, len(lines), 2 * NUM_JOINTS * 3, "PKU-MMD frame")
    return values.reshape(len(lines), 2, NUM_JOINTS, 3).astype(np.float32)


def read_pku_labels(path):
    """int64 (K, 4) rows (label, start, end, confidence) from a PKU-MMD label file.

    One action per line, 'label,start,end,confidence' (1-based label id; start and end are frame
    indices into the skeleton file, cut as frames[start:end] like the community converters;
    confidence 1 or 2). Blank lines are skipped; anything else malformed raises ValueError
    naming file:line.
    """
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = [x.strip() for x in line.strip().split(",")]
            try:
                row = [int(float(x)) for x in fields]
            except ValueError:
                row = []
            if len(row) != 4:
                raise ValueError(f"{path}:{lineno}: expected 'label,start,end,confidence', got "
                                 f"{line.strip()!r}")
            if not 1 <= row[0] <= PKU_NUM_CLASSES or row[1] < 0 or row[2] < row[1]:
                raise ValueError(f"{path}:{lineno}: label must be in 1..{PKU_NUM_CLASSES} and "
                                 f"0 <= start <= end, got {line.strip()!r}")
            rows.append(row)
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def read_pku_split(path):
    """(train video names, val video names) from an official PKU-MMD split file.

    Expected layout (cross-subject.txt / cross-view.txt of phase 1, and the v2 files), as read by
    the community converters:
        Training videos:
        0002-L, 0002-M, 0002-R, ...
        Validataion videos:            (sic)
        0001-L, 0001-M, ...
    A header is a line whose text before a ':' contains 'train' or 'valid'/'test' (any case); names
    after it (commas and/or whitespace separated, optionally on the header line after the ':',
    optional '.txt') belong to that part. ValueError naming the file if a part is missing.
    """
    parts, current = {"train": [], "val": []}, None
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            head, colon, rest = text.partition(":")
            if colon and re.search(r"train|valid|test", head, re.IGNORECASE):
                current = "train" if re.search("train", head, re.IGNORECASE) else "val"
                text = rest
            names = [n[:-4] if n.endswith(".txt") else n for n in re.split(r"[,\s]+", text) if n]
            if names and current is None:
                raise ValueError(f"{path}:{lineno}: video names before a 'Training videos:' or "
                                 f"'Validation videos:' header")
            if current is not None:
                parts[current].extend(names)
    if not parts["train"] or not parts["val"]:
        raise ValueError(f"{path}: expected 'Training videos:' and 'Validation videos:' parts with "
                         f"names, found {len(parts['train'])} train and {len(parts['val'])} val")
    return parts["train"], parts["val"]


def pku_to_array(frames, start, end, max_frames=MAX_FRAMES):
    """(float32 (3, max_frames, 25, 2), valid frames) for the action frames[start:end].

    `frames`: (T, 2, 25, 3) from read_pku_skeleton. Longer actions are truncated to their first
    max_frames frames (as the community converters do); shorter ones zero-padded.
    """
    cut = frames[start:min(end, start + max_frames)]
    out = np.zeros((3, max_frames, NUM_JOINTS, 2), dtype=np.float32)
    out[:, :len(cut)] = cut.transpose(3, 0, 2, 1)  # (T, M, V, C) -> (C, T, V, M)
    return out, count_valid_frames(out)


def _pku_video(job):
    """[(array, valid frames)] for the listed actions of one video, or [(None, the error)] for each when
    the file cannot be read; runs in pool workers."""
    path, intervals, max_frames, normalize = job
    try:
        frames = read_pku_skeleton(path)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        return [(None, err)] * len(intervals)
    results = []
    for start, end in intervals:
        array, length = pku_to_array(frames, start, end, max_frames)
        results.append((normalize_skeleton(array) if normalize and length else array, length))
    return results


def _pku_samples(jobs, videos, unreadable):
    """The samples of every video in order (streamed to write_split); appends unreadable files' paths."""
    for job, samples in zip(jobs, videos):
        if samples and samples[0][0] is None:
            unreadable.append(job[0])
        yield from samples


def prepare_pku_mmd(skeleton_dir, label_dir, split_file, out_dir, phase=1, workers=None,
                    normalize=True, max_frames=MAX_FRAMES, max_bad_fraction=0.05):
    """Cuts PKU-MMD's long videos into one sample per labelled action, in the shared format.

    skeleton_dir / label_dir hold '<video>.txt' files of the same names (phase 1: '0002-L.txt';
    read_pku_skeleton, read_pku_labels); split_file is the official cross-subject (or
    cross-view) file of that phase (read_pku_split). Both phases share these formats; `phase`
    (1 or 2) is checked and only names the output in messages. Writes
    out_dir/{train,val}_data_joint.npy float32 (N, 3, max_frames, 25, 2),
    {train,val}_label.pkl (names '<video>_<k>' with k the 0-based line of the action in the
    label file; labels = action id - 1), and {train,val}_num_frame.npy. Samples are in split-file
    order of the videos, then label-file order.
    Videos of the split file without a skeleton or label file are skipped with one summary line
    (stop: FileNotFoundError when a split has none); actions with no non-zero frame in their
    interval are dropped (as the community converters do) and counted. A skeleton file that cannot
    be read is reported (its actions are left out); more than max_bad_fraction of the videos stop
    the run (RuntimeError). Returns {split: number of samples}.
    """
    if phase not in (1, 2):
        raise ValueError(f"PKU-MMD phase must be 1 or 2, got {phase!r}")
    for path, what in ((skeleton_dir, "skeleton folder"), (label_dir, "label folder"),
                       (split_file, "split file")):
        if not os.path.exists(path):
            raise FileNotFoundError(f"PKU-MMD phase {phase} {what} not found: {path}")
    split_videos = dict(zip(SPLITS, read_pku_split(split_file)))
    os.makedirs(out_dir, exist_ok=True)
    counts, listed, unreadable = {}, 0, []
    with parallel_map(workers) as imap:
        for split, videos in split_videos.items():
            jobs, names, labels, absent = [], [], [], []
            for video in videos:
                skeleton = os.path.join(skeleton_dir, video + ".txt")
                label_file = os.path.join(label_dir, video + ".txt")
                if not (os.path.isfile(skeleton) and os.path.isfile(label_file)):
                    absent.append(video)
                    continue
                rows = read_pku_labels(label_file)
                jobs.append((skeleton, [(int(s), int(e)) for _, s, e, _ in rows], max_frames,
                             normalize))
                names.extend(f"{video}_{k}" for k in range(len(rows)))
                labels.extend(int(r[0]) - 1 for r in rows)
            if absent:
                print(f"PKU-MMD phase {phase} {split}: {len(absent)} of {len(videos)} videos of "
                      f"{split_file} lack a skeleton or label file, skipped (first: {absent[0]})",
                      file=sys.stderr)
            if not jobs:
                raise FileNotFoundError(f"none of the {split} videos of {split_file} found in "
                                        f"{skeleton_dir} and {label_dir}")
            listed += len(jobs)
            results = _pku_samples(jobs, imap(_pku_video, jobs), unreadable)
            counts[split] = write_split(out_dir, split, names, labels, results, max_frames, drop_empty=True)
    if len(unreadable) > max_bad_fraction * listed:
        raise RuntimeError(f"{len(unreadable)} of {listed} PKU-MMD skeleton files could not be read (more than "
                           f"{max_bad_fraction:.0%}; first: {unreadable[0]})")
    return counts

