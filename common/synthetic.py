"""The built-in synthetic worlds, each written in the real on-disk format of the data it stands for.

Videos (synthetic_video_dataset): each class is a motion pattern; one or two textured objects move
that way over a static textured background. Object shapes, textures, colours, sizes, positions and
backgrounds are random per video and independent of the class, so only the motion tells classes
apart: a tiny stand-in for the motion-sensitive benchmarks of the thesis, for tests and quick runs
without downloads.
With background="grey-noise" every background is blurred colour noise of one colour statistic
instead (the world of the tubelet-contrast miniature, README Chapter 5).

Videos are h264 mp4 (yuv420p, 25 fps) with mmaction2 list files 'class/video.mp4 label', read by
common/video.py exactly like real datasets.

Also here: synthetic skeletons in the NTU '.npy/.pkl' format (synthetic_skeleton_dataset) and a
paired RGB / optical flow / masked depth / skeleton stand-in for NTU RGB+D in its on-disk layout
(synthetic_paired_dataset, Chapter 2), both animating a Kinect skeleton by forward kinematics, and
videos of a bouncing disc with known repetition boundaries (synthetic_repetition_videos).
"""
import hashlib
import json
import os
import shutil
import struct
import tempfile
import warnings
import zlib

import av
import numpy as np

from common.skeleton import MAX_FRAMES, normalize_skeleton, ntu_split, parallel_map, protocol_paths, write_split

# Class index = position here. Image coordinates: x right, y down, so an angle increasing over
# time turns clockwise on screen.
MOTIONS = ("right", "left", "up", "down", "circle_cw", "circle_ccw", "spin_cw", "spin_ccw",
           "right_fast", "left_fast", "zigzag_right", "zigzag_left")
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
FORMAT_VERSION = 1  # bump when the rendering changes, so old caches are not reused


# ============ rendering ============

BACKGROUNDS = ("gratings", "grey-noise")


def _background(rng, h, w, kind="gratings"):
    """(h, w, 3) float32. gratings (the default world): a few random colour gratings plus static pixel
    noise. grey-noise: colour noise blurred by a Gaussian of sigma 4 px per 128 rows, std 50 around grey
    128, so that every video's background has the same colour statistics and a patch cut from it is
    visible only by its motion (the world on which tubelets beat temporal contrast; README, Chapter 5)."""
    if kind == "grey-noise":
        sigma = 4 * h / 128
        taps = np.exp(-0.5 * (np.arange(-int(3 * sigma) - 1, int(3 * sigma) + 2) / sigma) ** 2)
        noise = rng.normal(0, 1, (h, w, 3))
        for axis in (0, 1):
            noise = np.apply_along_axis(np.convolve, axis, noise, taps / taps.sum(), mode="same")
        return (128 + 50 * noise / (noise.std() + 1e-6)).astype(np.float32)
    if kind != "gratings":
        raise ValueError(f"background {kind!r}: choose from {BACKGROUNDS}")
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.broadcast_to(rng.uniform(40, 215, 3).astype(np.float32), (h, w, 3)).copy()
    for _ in range(4):
        cycles, angle, phase = rng.uniform(0.5, 4), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * cycles * (x * np.cos(angle) + y * np.sin(angle)) / max(h, w) + phase)
        image += wave[..., None] * rng.uniform(-30, 30, 3).astype(np.float32)
    return image + rng.uniform(-12, 12, (h, w, 3)).astype(np.float32)


def _trajectory(motion, rng, num_frames, h, w, radius, scale):
    """Per-frame centre x, y and rotation angle (each (T,) float) of one object."""
    t = np.arange(num_frames, dtype=np.float32)
    base = motion.replace("_fast", "").replace("zigzag_", "")
    angle = np.full_like(t, rng.uniform(0, 2 * np.pi))
    if base in _DIRECTIONS:
        speed = (3.5 if motion.endswith("_fast") else 1.5) * scale  # pixels per frame
        x, y = [], []
        for size, direction, out in ((w, _DIRECTIONS[base][0], x), (h, _DIRECTIONS[base][1], y)):
            travel = speed * direction * (num_frames - 1)
            # Start where the whole path stays in view if it can; otherwise the object leaves on
            # one side and comes back on the other.
            lo, hi = radius - min(travel, 0), size - radius - max(travel, 0)
            start = rng.uniform(lo, hi) if hi > lo else rng.uniform(0, size)
            out.append((start + speed * direction * t + radius) % (size + 2 * radius) - radius)
        x, y = x[0], y[0]
        if motion.startswith("zigzag"):  # add a triangle wave across the direction of travel
            y = y + 10 * scale * (2 * np.abs((t / 16 + rng.uniform()) % 1 - 0.5) - 0.5)
        return x, y, angle
    sign = 1 if motion.endswith("_cw") else -1
    if base.startswith("circle"):
        rho = 0.2 * min(h, w)
        cx, cy = (rng.uniform(rho + radius, size - rho - radius) for size in (w, h))
        theta = rng.uniform(0, 2 * np.pi) + sign * 2 * np.pi * t / 32  # one turn per 32 frames
        return cx + rho * np.cos(theta), cy + rho * np.sin(theta), angle
    if base.startswith("spin"):
        cx, cy = (np.full_like(t, rng.uniform(radius, size - radius)) for size in (w, h))
        return cx, cy, angle + sign * 2 * np.pi * t / 24  # one turn per 24 frames
    raise ValueError(f"unknown motion {motion!r}")


def _render_object(frame, rng_params, cx, cy, angle):
    """Draws one textured object into `frame` (H, W, 3) float32, in place."""
    radius, shape, colours, pattern, period = rng_params
    h, w = frame.shape[:2]
    reach = int(np.ceil(radius * 1.5))  # covers rotated squares and ellipses
    x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, w)
    y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, h)
    if x0 >= x1 or y0 >= y1:
        return
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    # object coordinates: the sampling grid turns with the object
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    if shape == "disc":
        mask = u ** 2 + v ** 2 <= radius ** 2
    elif shape == "square":
        mask = np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    else:  # ellipse
        mask = (u / radius) ** 2 + (v / (0.55 * radius)) ** 2 <= 1
    if pattern == "stripes":
        which = np.floor(u / period) % 2
    else:  # checker
        which = (np.floor(u / period) + np.floor(v / period)) % 2
    texture = np.where(which[..., None] > 0, colours[0], colours[1])
    frame[y0:y1, x0:x1][mask] = texture[mask]


def render_video(motion, rng, num_frames=48, size=(128, 170), background="gratings"):
    """uint8 (T, H, W, 3) RGB frames of one video of the given motion class over a `background`."""
    h, w = size
    scale = min(h, w) / 128
    background = _background(rng, h, w, background)
    objects = []
    for _ in range(rng.integers(1, 3)):
        radius = rng.uniform(10, 18) * scale
        params = (radius, rng.choice(["disc", "square", "ellipse"]), rng.uniform(0, 255, (2, 3)),
                  rng.choice(["stripes", "checker"]), rng.uniform(3, 7) * scale)
        objects.append((params, _trajectory(motion, rng, num_frames, h, w, radius, scale)))
    video = np.empty((num_frames, h, w, 3), np.uint8)
    for t in range(num_frames):
        frame = background.copy()
        for params, (x, y, angle) in objects:
            _render_object(frame, params, x[t], y[t], angle[t])
        video[t] = np.clip(frame, 0, 255)
    return video


def write_mp4(path, frames, fps=25, crf=23):
    """Writes uint8 (T, H, W, 3) RGB frames as h264/yuv420p mp4 (H and W must be even)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


# ============ the dataset on disk ============

def _is_complete(root, config):
    try:
        with open(os.path.join(root, "done.json")) as f:
            return json.load(f) == config
    except (OSError, ValueError):
        return False


def synthetic_video_dataset(root=None, num_classes=8, videos_per_class=12, num_frames=48,
                            size=(128, 170), seed=0, val_fraction=0.25, background="gratings"):
    """Writes the dataset once and returns dict(root, train_list, val_list, classes).

    root default: $VEF_CACHE (else ~/.cache/video_efficient)/synthetic_videos_<parameter hash>;
    a complete dataset with the same parameters is reused, and writing is atomic (`_write_once`).
    size: (H, W), both even (yuv420p). The last round(videos_per_class * val_fraction) videos of
    each class form the validation split. background: one of BACKGROUNDS (see `_background`).
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background {background!r}: choose from {BACKGROUNDS}")
    if not 1 <= num_classes <= len(MOTIONS):
        raise ValueError(f"num_classes must be in 1..{len(MOTIONS)}, got {num_classes}")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size {size}: height and width must be even for yuv420p h264")
    config = dict(version=FORMAT_VERSION, num_classes=num_classes, videos_per_class=videos_per_class,
                  num_frames=num_frames, size=list(size), seed=seed, val_fraction=val_fraction,
                  background=background)
    root = _dataset_root(root, "synthetic_videos", config)
    classes = list(MOTIONS[:num_classes])

    def write(tmp):
        num_val = round(videos_per_class * val_fraction)
        lines = {"train": [], "val": []}
        for label, motion in enumerate(classes):
            os.makedirs(os.path.join(tmp, motion))
            for k in range(videos_per_class):
                # one generator per video: the content does not depend on writing order
                rng = np.random.default_rng([seed, label, k])
                name = f"{motion}/{motion}_{k:03d}.mp4"
                write_mp4(os.path.join(tmp, name), render_video(motion, rng, num_frames, size, background))
                lines["val" if k >= videos_per_class - num_val else "train"].append(f"{name} {label}\n")
        for split, split_lines in lines.items():
            with open(os.path.join(tmp, f"{split}.txt"), "w") as f:
                f.writelines(split_lines)

    _write_once(root, config, classes, write)
    return dict(root=root, train_list=os.path.join(root, "train.txt"),
                val_list=os.path.join(root, "val.txt"), classes=classes)


def _dataset_root(root, prefix, config):
    """`root`, or by default $VEF_CACHE (else ~/.cache/video_efficient)/<prefix>_<hash of config>."""
    if root is None:
        digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
        cache = os.environ.get("VEF_CACHE") or os.path.expanduser("~/.cache/video_efficient")
        root = os.path.join(cache, f"{prefix}_{digest}")
    return os.path.abspath(root)


def _write_once(root, config, classes, write):
    """Unless `root` already holds a dataset of `config`: write(tmp) fills a temporary sibling
    folder, classes.txt and done.json (the config) are added, and the folder is renamed to `root`
    atomically, so concurrent processes (torchrun ranks, test workers) never see half a dataset;
    when another process won the race, its identical copy is used."""
    if _is_complete(root, config):
        return
    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp", dir=os.path.dirname(root))
    try:
        write(tmp)
        with open(os.path.join(tmp, "classes.txt"), "w") as f:
            f.writelines(c + "\n" for c in classes)
        with open(os.path.join(tmp, "done.json"), "w") as f:
            json.dump(config, f)
        try:
            os.rename(tmp, root)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError:
            if not _is_complete(root, config):  # not another process's finished copy
                raise FileExistsError(f"{root} exists and does not hold a synthetic dataset with "
                                      f"these parameters; remove it or pass another root") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ============ synthetic repetition videos (UCFRep's counting task, severe_eval.py) ============

def synthetic_repetition_videos(root=None, num_videos=16, size=64, periods=(6, 14), counts=(2, 8), margin=6, seed=0):
    """Writes (once) mp4s of a textured disc bouncing with a known period and returns
    [(path, boundaries)], boundaries 1-based as UCFRep's: cycle k starts at frame margin + 1 + k x period.

    Per video a random period (frames, in `periods`), count (in `counts`), colours and amplitude; the
    disc moves as |sin| (one bounce per period, starting on the floor at each boundary) plus a slow drift,
    and `margin` still frames precede and follow the repetitions. root default: $VEF_CACHE (else
    ~/.cache/video_efficient)/synthetic_repetition_<parameter hash>; a complete folder is reused.
    """
    config = dict(version=2, num_videos=num_videos, size=size, periods=list(periods), counts=list(counts),
                  margin=margin, seed=seed)
    root = _dataset_root(root, "synthetic_repetition", config)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    def write(tmp):
        videos = []
        for k in range(num_videos):
            rng = np.random.default_rng([seed, k])
            period, count = int(rng.integers(periods[0], periods[1] + 1)), int(rng.integers(counts[0], counts[1] + 1))
            num_frames = 2 * margin + period * count + 1
            t = np.clip(np.arange(num_frames) - margin, 0, period * count)  # still before and after
            height = np.abs(np.sin(np.pi * t / period))  # 0 on the floor at every boundary
            radius, amplitude = size * rng.uniform(0.08, 0.14), size * rng.uniform(0.3, 0.5)
            floor = size - radius - 2
            x0 = rng.uniform(radius + 2, size - radius - 2)
            background = rng.uniform(40, 200, 3) + rng.normal(0, 12, (size, size, 1))
            colours = rng.uniform(0, 255, (2, 3))
            frames = np.empty((num_frames, size, size, 3), np.uint8)
            for f in range(num_frames):
                cx = x0 + 3 * np.sin(2 * np.pi * f / num_frames)
                cy = floor - amplitude * height[f]
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius ** 2
                stripes = ((xx - cx) // 4 % 2).astype(bool)
                frame = background.copy()
                frame[inside] = np.where(stripes[inside, None], colours[0], colours[1])
                frames[f] = np.clip(frame, 0, 255)
            name = f"rep_{k:03d}.mp4"
            write_mp4(os.path.join(tmp, name), frames)
            videos.append((name, [int(margin + 1 + c * period) for c in range(count + 1)]))
        with open(os.path.join(tmp, "videos.json"), "w") as f:
            json.dump(videos, f)

    _write_once(root, config, ["repetition"], write)
    with open(os.path.join(root, "videos.json")) as f:
        return [(os.path.join(root, name), tuple(b)) for name, b in json.load(f)]


# ============ synthetic skeletons (NTU 25-joint format) ============
# A skeleton stand-in for NTU RGB+D, written in the community '.npy/.pkl' format that
# common/skeleton.py reads (SkeletonDataset, protocol_paths). Each sample is a rest-pose Kinect v2
# skeleton animated by forward kinematics: joint angles over time -> joint positions. Every action
# starts and ends near the same standing rest pose, so classes differ by motion, not by one frame.
# Per sample: random body size, rest-pose jitter, duration (speed), timing, viewpoint, 1 cm noise
# and start/end truncation.
#
# Body frame of one person (metres): X towards the person's left, Y up, Z the way the person
# faces. Camera frame (Kinect v2): y up, z away from the camera; a person facing the camera has
# body X = camera -x, so their right shoulder is at larger camera x, as normalize_skeleton expects.

SKELETON_ACTIONS = ("raise_left_arm", "raise_right_arm", "wave", "kick", "squat", "bow", "jump",
                    "approach", "clap", "handshake")
TWO_PERSON_ACTIONS = ("approach", "handshake")
SKELETON_FORMAT_VERSION = 2  # 2: sequences normalised as prepare_ntu writes them
SKELETON_NOISE = 0.01  # metres, Gaussian per coordinate

# 0-based joint (NTU number - 1): (parent, rest offset from the parent in the body frame).
# Arms hang straight down and legs straight; rest-pose jitter bends them a little per sample.
_REST = {
    0: (-1, (0.0, 0.0, 0.0)),          # base of the spine (root)
    1: (0, (0.0, 0.28, 0.0)),          # middle of the spine
    20: (1, (0.0, 0.22, 0.0)),         # spine at the shoulders
    2: (20, (0.0, 0.07, 0.0)),         # neck
    3: (2, (0.0, 0.15, 0.01)),         # head
    4: (20, (0.17, -0.03, 0.0)),       # left shoulder
    5: (4, (0.0, -0.28, 0.0)),         # left elbow
    6: (5, (0.0, -0.25, 0.0)),         # left wrist
    7: (6, (0.0, -0.08, 0.0)),         # left hand
    21: (7, (0.0, -0.07, 0.0)),        # left hand tip
    22: (7, (-0.02, -0.03, 0.04)),     # left thumb
    8: (20, (-0.17, -0.03, 0.0)),      # right shoulder
    9: (8, (0.0, -0.28, 0.0)),         # right elbow
    10: (9, (0.0, -0.25, 0.0)),        # right wrist
    11: (10, (0.0, -0.08, 0.0)),       # right hand
    23: (11, (0.0, -0.07, 0.0)),       # right hand tip
    24: (11, (0.02, -0.03, 0.04)),     # right thumb
    12: (0, (0.09, -0.05, 0.0)),       # left hip
    13: (12, (0.0, -0.42, 0.0)),       # left knee
    14: (13, (0.0, -0.40, 0.0)),       # left ankle
    15: (14, (0.0, -0.05, 0.10)),      # left foot
    16: (0, (-0.09, -0.05, 0.0)),      # right hip
    17: (16, (0.0, -0.42, 0.0)),       # right knee
    18: (17, (0.0, -0.40, 0.0)),       # right ankle
    19: (18, (0.0, -0.05, 0.10)),      # right foot
}
_FK_ORDER = tuple(_REST)  # every parent comes before its children
_HIP_HEIGHT = 0.05 + 0.42 + 0.40 + 0.05  # root above the floor at rest, nominal body
_LEG = 0.42 + 0.40
L_SHOULDER, L_ELBOW, L_HIP, L_KNEE, L_ANKLE = 4, 5, 12, 13, 14
R_SHOULDER, R_ELBOW, R_HIP, R_KNEE, R_ANKLE = 8, 9, 16, 17, 18
X, Y, Z = 0, 1, 2  # Euler angle slots


def _rotation(axis, angle):
    """(..., 3, 3) rotations by `angle` (radians, any shape) about body axis 0 (X), 1 (Y), 2 (Z)."""
    angle = np.asarray(angle, dtype=np.float64)
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]  # the plane the rotation turns
    r[..., axis, axis] = 1
    r[..., i, i], r[..., i, j], r[..., j, i], r[..., j, j] = c, -s, s, c
    return r


def _local_rotations(angles):
    """(T, V, 3) Euler angles -> (T, V, 3, 3) rotations Ry @ Rx @ Rz: a limb is first turned about Z
    (sideways: positive abducts a left limb, negative a right one), then about X (negative swings a
    hanging limb forwards; positive bends the spine forwards and a knee backwards), then about the
    vertical Y."""
    return (_rotation(Y, angles[..., Y]) @ _rotation(X, angles[..., X])
            @ _rotation(Z, angles[..., Z]))


def forward_kinematics(angles, root, scale=1.0):
    """Joint positions (T, 25, 3) in the body frame from local joint angles (T, 25, 3) and the root
    position (T, 3): p_j = p_parent + W_parent o_j, W_j = W_parent L_j, with o_j the rest offsets
    times `scale`. Every bone keeps its length whatever the angles."""
    local = _local_rotations(angles)
    world = np.empty_like(local)
    pos = np.empty(angles.shape[:2] + (3,))
    for j in _FK_ORDER:
        parent, offset = _REST[j]
        if parent < 0:
            world[:, j], pos[:, j] = local[:, j], root
        else:
            world[:, j] = world[:, parent] @ local[:, j]
            pos[:, j] = pos[:, parent] + world[:, parent] @ (scale * np.asarray(offset))
    return pos


def _smoothstep(u, a, b):
    """0 before a, 1 after b, smooth (C1) in between; u any shape."""
    x = np.clip((u - a) / max(b - a, 1e-6), 0, 1)
    return x * x * (3 - 2 * x)


def _envelope(u, rng):
    """Rise from rest, hold, return to rest, with random timing: (T,) in [0, 1]."""
    up, down = rng.uniform(0.12, 0.25), rng.uniform(0.65, 0.8)
    ramp = rng.uniform(0.12, 0.2)
    return _smoothstep(u, up, up + ramp) * (1 - _smoothstep(u, down, down + ramp))


def _rest_pose(rng, num_frames):
    """(T, 25, 3) angles of a relaxed standing pose, jittered per person: arms slightly out and
    bent, knees slightly bent."""
    angles = np.zeros((num_frames, 25, 3))
    angles[:, L_SHOULDER, Z], angles[:, R_SHOULDER, Z] = rng.uniform(0.05, 0.2, 2) * (1, -1)
    angles[:, [L_ELBOW, R_ELBOW], X] = -rng.uniform(0.05, 0.3, 2)
    knee = rng.uniform(0, 0.1)
    angles[:, [L_HIP, R_HIP], X] -= knee / 2
    angles[:, [L_KNEE, R_KNEE], X] += knee
    angles[:, [L_ANKLE, R_ANKLE], X] -= knee / 2
    angles[:, 1, X] = rng.uniform(-0.05, 0.1)  # posture
    return angles


def _bend_knees(angles, root, bend):
    """Bends both legs by `bend` (T,) radians at the knee, feet flat and staying on the floor
    (thighs forward bend/2, shins back), lowering the root by as much as the legs shorten."""
    for hip, knee, ankle in ((L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE)):
        angles[:, hip, X] -= bend / 2
        angles[:, knee, X] += bend
        angles[:, ankle, X] -= bend / 2
    root[:, 1] -= _LEG * (1 - np.cos(bend / 2))


def _walk(angles, u, rng, speed):
    """Adds a gait (legs and arms swinging in opposition) with amplitude `speed` (T,) in [0, 1]."""
    phase = 2 * np.pi * rng.uniform(2.5, 4) * u + rng.uniform(0, 2 * np.pi)
    swing = rng.uniform(0.3, 0.45) * speed
    angles[:, L_HIP, X] -= swing * np.sin(phase)
    angles[:, R_HIP, X] += swing * np.sin(phase)
    angles[:, L_KNEE, X] += 2 * swing * np.maximum(np.sin(phase + 1.2), 0)
    angles[:, R_KNEE, X] += 2 * swing * np.maximum(-np.sin(phase + 1.2), 0)
    angles[:, L_SHOULDER, X] += 0.8 * swing * np.sin(phase)
    angles[:, R_SHOULDER, X] -= 0.8 * swing * np.sin(phase)


def _action_people(action, rng, num_frames):
    """One or two people performing `action`: list of (angles (T, 25, 3), root (T, 3) in the body
    frame of a nominal-size person, heading (yaw of the person in the scene), (x, z) place)."""
    u = np.linspace(0, 1, num_frames)
    if action in TWO_PERSON_ACTIONS:
        people = []
        if action == "approach":  # face each other, walk towards each other, stop close
            start, end = rng.uniform(1.2, 1.5), rng.uniform(0.35, 0.5)  # half distances
            t0, t1 = rng.uniform(0.05, 0.2), rng.uniform(0.7, 0.9)
            progress = _smoothstep(u, t0, t1)
            moving = np.gradient(progress) * num_frames / 1.5  # ~1 while walking, 0 standing
            half = start + (end - start) * progress
        else:  # handshake: stand at arm's length, reach out right hands, shake, let go
            half = np.full(num_frames, rng.uniform(0.38, 0.45))
        for side in (-1, 1):  # person 1 at -X of the scene facing +X; person 2 at +X facing -X
            angles = _rest_pose(rng, num_frames)
            root = np.zeros((num_frames, 3))
            if action == "approach":
                _walk(angles, u, rng, np.clip(moving, 0, 1))
            else:
                env = _envelope(u, rng)
                shake = 0.12 * np.sin(2 * np.pi * rng.uniform(3, 5) * u) * env
                angles[:, R_SHOULDER, X] -= rng.uniform(0.8, 1.0) * env
                angles[:, R_SHOULDER, Y] += 0.4 * env  # towards the body midline and the partner
                angles[:, R_ELBOW, X] -= 0.3 * env + shake
            place = np.stack([side * half, np.zeros_like(half)], -1)  # (x, z) in the scene
            people.append((angles, root, -side * np.pi / 2, place))
        return people

    angles = _rest_pose(rng, num_frames)
    root = np.zeros((num_frames, 3))
    env = _envelope(u, rng)
    if action in ("raise_left_arm", "raise_right_arm"):  # up sideways, over the head
        shoulder, sign = (L_SHOULDER, 1) if action == "raise_left_arm" else (R_SHOULDER, -1)
        angles[:, shoulder, Z] += sign * rng.uniform(2.3, 2.9) * env
        angles[:, shoulder, X] -= rng.uniform(0, 0.3) * env
    elif action == "raise_both_arms":  # both up sideways, over the head
        lift = rng.uniform(2.3, 2.9) * env
        angles[:, L_SHOULDER, Z] += lift
        angles[:, R_SHOULDER, Z] -= lift
    elif action == "wave":  # right upper arm out, forearm up, forearm swinging side to side
        swing = 0.45 * np.sin(2 * np.pi * rng.uniform(2.5, 4.5) * u + rng.uniform(0, 2 * np.pi))
        angles[:, R_SHOULDER, Z] -= rng.uniform(1.2, 1.5) * env
        angles[:, R_ELBOW, Z] -= (rng.uniform(1.3, 1.6) + swing) * env
    elif action == "kick":  # right leg forwards and back, knee cocked then straight
        kick = _smoothstep(u, 0.25, 0.45) * (1 - _smoothstep(u, 0.5, 0.7))
        cock = np.sin(np.pi * _smoothstep(u, 0.15, 0.45))
        angles[:, R_HIP, X] -= rng.uniform(1.0, 1.4) * kick
        angles[:, R_KNEE, X] += rng.uniform(0.6, 0.9) * cock
        angles[:, 1, X] -= 0.2 * kick  # lean back
        angles[:, [L_SHOULDER, R_SHOULDER], Z] += np.array([1, -1]) * 0.3 * kick[:, None]
    elif action == "squat":  # knees bent deep, arms forwards for balance, torso leaning
        _bend_knees(angles, root, rng.uniform(1.6, 2.1) * env)
        angles[:, [L_SHOULDER, R_SHOULDER], X] -= rng.uniform(1.0, 1.5) * env[:, None]
        angles[:, 1, X] += 0.35 * env
    elif action == "bow":  # bend forwards at the spine, arms hanging
        depth = rng.uniform(0.7, 1.1) * env
        angles[:, 1, X] += depth
        angles[:, 20, X] += 0.2 * depth
        angles[:, [L_SHOULDER, R_SHOULDER], X] -= 0.9 * depth[:, None]
        angles[:, 2, X] -= 0.3 * depth  # keep looking ahead
    elif action == "jump":  # crouch, take off with arms swinging up, land, crouch, stand
        takeoff, flight = rng.uniform(0.35, 0.45), rng.uniform(0.12, 0.18)
        land = takeoff + flight
        crouch = (np.sin(np.pi * _smoothstep(u, takeoff - 0.2, takeoff))
                  + np.sin(np.pi * _smoothstep(u, land, land + 0.2)))
        _bend_knees(angles, root, rng.uniform(0.8, 1.2) * crouch)
        s = np.clip((u - takeoff) / flight, 0, 1)
        root[:, 1] += rng.uniform(0.15, 0.3) * 4 * s * (1 - s)  # ballistic flight
        arms = np.sin(np.pi * _smoothstep(u, takeoff - 0.1, land + 0.1))
        angles[:, [L_SHOULDER, R_SHOULDER], X] -= rng.uniform(2.0, 2.6) * arms[:, None]
    elif action == "clap":  # hands forwards, meeting in front of the chest a few times
        claps = 0.5 - 0.5 * np.cos(2 * np.pi * rng.uniform(3, 5) * u)
        angles[:, [L_SHOULDER, R_SHOULDER], X] -= rng.uniform(1.1, 1.4) * env[:, None]
        inward = (0.05 + 0.3 * claps) * env
        angles[:, L_SHOULDER, Y] -= inward
        angles[:, R_SHOULDER, Y] += inward
        angles[:, [L_ELBOW, R_ELBOW], X] -= 0.4 * env[:, None]
    else:
        raise ValueError(f"unknown skeleton action {action!r}")
    return [(angles, root, 0.0, np.zeros((num_frames, 2)))]


def render_skeleton_action(action, rng, num_frames, noise=SKELETON_NOISE):
    """float32 (3, num_frames, 25, 2) camera-space joints of one sample (second body all zeros for
    one-person actions) with a random body size per person, viewpoint, place and noise."""
    yaw = rng.uniform(-np.pi / 3, np.pi / 3)  # the scene turned about the vertical
    tilt = _rotation(X, rng.uniform(-0.1, 0.1)) @ _rotation(Z, rng.uniform(-0.05, 0.05))
    to_camera = np.diag([-1.0, 1.0, -1.0]) @ tilt @ _rotation(Y, yaw)  # body Z faces the camera
    camera_height = rng.uniform(0.8, 1.1)
    place = np.array([rng.uniform(-0.3, 0.3), 0.0, rng.uniform(2.6, 3.4)])  # camera frame
    out = np.zeros((3, num_frames, 25, 2), np.float32)
    for m, (angles, root, heading, where) in enumerate(_action_people(action, rng, num_frames)):
        scale = rng.uniform(0.85, 1.15)
        root = scale * root + [0, scale * _HIP_HEIGHT, 0]
        joints = forward_kinematics(angles, np.zeros_like(root), scale)  # (T, V, 3) about the root
        root = root + np.insert(where, 1, 0, axis=1)  # (x, z) place in the scene -> (x, 0, z)
        scene = joints @ _rotation(Y, heading).T + root[:, None]
        camera = scene @ to_camera.T + place - [0, camera_height, 0]
        camera += rng.normal(0, noise, camera.shape) if noise else 0
        out[..., m] = camera.transpose(2, 0, 1)
    return out


def _skeleton_sample(action, rng, frames):
    """(float32 (3, 300, 25, 2) zero-padded sample, number of valid frames): a random duration in
    [frames[0], frames[1]], then up to 10% cut from either end, then normalised as prepare_ntu
    normalises the real files (2s-AGCN: centred on the middle of the spine every frame, spine
    along z, shoulders along x), so models see the coordinates they would see on NTU."""
    length = int(rng.integers(frames[0], frames[1] + 1))
    sample = render_skeleton_action(action, rng, length)
    cut_start, cut_end = (int(c) for c in rng.integers(0, length // 10 + 1, 2))
    return _pad_frames(normalize_skeleton(sample[:, cut_start:length - cut_end]))


def synthetic_skeleton_dataset(root=None, num_classes=8, per_class_train=40, per_class_val=12,
                               frames=(40, 120), seed=0):
    """Writes the dataset once and returns dict(root, train, val, classes).

    train / val: common.skeleton.protocol_paths(root, split), i.e. SkeletonDataset keyword
    arguments of '{split}_data_joint.npy' float32 (N, 3, 300, 25, 2), '{split}_label.pkl' =
    (sample_names, labels) and '{split}_num_frame.npy', as written by prepare_ntu. Samples are
    class-major; classes = SKELETON_ACTIONS[:num_classes] (the default 8 include one two-person
    action, 'approach'). Each sample lasts a random number of frames in [frames[0], frames[1]]
    before up to 10% is cut from either end; it is normalised as prepare_ntu does (normalize_skeleton)
    and the rest of the 300 frames are zeros (as prepare_ntu with the num_frame file).
    root default: $VEF_CACHE (else ~/.cache/video_efficient)/synthetic_skeletons_<parameter hash>;
    caching and atomic writing as synthetic_video_dataset.
    """
    if not 1 <= num_classes <= len(SKELETON_ACTIONS):
        raise ValueError(f"num_classes must be in 1..{len(SKELETON_ACTIONS)}, got {num_classes}")
    if not 2 <= frames[0] <= frames[1] <= MAX_FRAMES:
        raise ValueError(f"frames must be (min, max) with 2 <= min <= max <= {MAX_FRAMES}, "
                         f"got {frames}")
    config = dict(version=SKELETON_FORMAT_VERSION, num_classes=num_classes,
                  per_class_train=per_class_train, per_class_val=per_class_val,
                  frames=list(frames), seed=seed)
    root = _dataset_root(root, "synthetic_skeletons", config)
    classes = list(SKELETON_ACTIONS[:num_classes])

    def write(tmp):
        for split, first, count in (("train", 0, per_class_train), ("val", per_class_train, per_class_val)):
            jobs = [(label, action, k) for label, action in enumerate(classes)
                    for k in range(first, first + count)]
            names = [f"{action}_{k:03d}" for _, action, k in jobs]
            labels = [label for label, _, _ in jobs]
            results = (_skeleton_sample(action, np.random.default_rng([seed, label, k]), frames)
                       for label, action, k in jobs)  # one generator per sample
            write_split(tmp, split, names, labels, results, MAX_FRAMES)

    _write_once(root, config, classes, write)
    return dict(root=root, train=protocol_paths(root, "train"), val=protocol_paths(root, "val"),
                classes=classes)


# ============ synthetic paired modalities (NTU RGB+D on-disk layout, Chapter 2) ============
# A stand-in for NTU RGB+D with every modality of one performance: RGB video, masked depth,
# optical flow and skeleton, written where and how the real dataset (and the usual TV-L1 flow
# extraction) puts them, so the modality-transfer readers are exercised as on real data.

def write_png16(path, array):
    """Writes a (H, W) uint16 array as a 16-bit grayscale PNG (colour type 0, bit depth 16).

    torchvision's encode_png takes uint8 only; NTU's depth maps are 16-bit PNGs in millimetres.
    PNG stores samples big-endian, one filter-type byte (0 = none) before every row.
    """
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"expected a (H, W) array, got shape {array.shape}")
    if array.dtype != np.uint16:
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError("values must fit in 0..65535")
        array = array.astype(np.uint16)
    h, w = array.shape
    rows = np.zeros((h, 1 + 2 * w), np.uint8)  # filter byte 0, then big-endian samples
    rows[:, 1:] = array.astype(">u2").view(np.uint8).reshape(h, 2 * w)

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n"
           + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
           + chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(png)


# Classes. The numbers only place each class where NTU puts it: target classes among the NTU-60
# numbers (1-60), source classes among the NTU-120-only numbers (61-120), the thesis's
# "NTU-120 minus NTU-60" source (Sec 2.4.2); the names are the synthetic motions. The source
# shares low-level motion with the target without sharing a class: arm raises (source) vs waving
# and clapping (target), squatting vs jumping and bowing, two people walking up to each other vs
# two people shaking hands, so a teacher trained on the source has features worth transferring.
# No class is the mirror image of another, and every performance is mirrored (left and right
# swapped) with p = 1/2: a class looks the same flipped, so Hara et al.'s horizontal flip keeps
# every label's meaning, as it does for NTU's actions ("raise_arm" is either arm).
PAIRED_TARGET = ((1, "wave"), (2, "clap"), (3, "kick"), (4, "jump"), (5, "bow"), (6, "handshake"))
PAIRED_SOURCE = ((61, "raise_arm"), (62, "raise_both_arms"), (63, "squat"), (64, "approach"))
_PAIRED_MOTION = {"raise_arm": "raise_right_arm"}  # the generator of a class, before the mirror draw
PAIRED_FORMAT_VERSION = 4  # bump when the rendering changes, so old caches are not reused
# NTU's joints of the left and right body sides (0-based): arm, leg, hand tip and thumb
MIRROR_JOINTS = np.arange(25)
MIRROR_JOINTS[[4, 5, 6, 7, 12, 13, 14, 15, 21, 22]] = [8, 9, 10, 11, 16, 17, 18, 19, 23, 24]
MIRROR_JOINTS[[8, 9, 10, 11, 16, 17, 18, 19, 23, 24]] = [4, 5, 6, 7, 12, 13, 14, 15, 21, 22]
# Cameras 2.0-2.3 m from the performance (NTU's subjects stand 2.5-4.5 m from 1920 x 1080 cameras): at
# this world's few pixels a standing person spans about 70% of the depth frame's height, arms a few pixels.
CAMERA_DISTANCE = (2.0, 2.3)
NTU_FPS = 30
CAMERA_YAWS = (-np.pi / 4, 0.0, np.pi / 4)  # cameras 1, 2, 3: NTU's -45, 0 and +45 degrees
# Horizontal fields of view of the Kinect v2 colour and depth cameras (degrees); both cameras are
# placed at the same point here (on the Kinect they are ~5 cm apart).
RGB_FOV, DEPTH_FOV = 84.1, 70.6
FLOW_BOUND = 20.0  # pixels; flow images store 128 + flow * 128 / bound, clipped (denseflow)

# Body surface: one capsule per bone, (joint, joint, radius in metres, clothing part); clothing
# parts 0 shirt, 1 trousers, 2 skin, 3 shoes. Thumbs are left out.
_CAPSULES = (
    (0, 1, 0.13, 0), (1, 20, 0.14, 0), (20, 2, 0.05, 2), (2, 3, 0.10, 2),      # torso, neck, head
    (20, 4, 0.06, 0), (4, 5, 0.05, 0), (5, 6, 0.04, 0), (6, 7, 0.035, 2), (7, 21, 0.03, 2),
    (20, 8, 0.06, 0), (8, 9, 0.05, 0), (9, 10, 0.04, 0), (10, 11, 0.035, 2), (11, 23, 0.03, 2),
    (0, 12, 0.08, 1), (12, 13, 0.07, 1), (13, 14, 0.05, 1), (14, 15, 0.045, 3),
    (0, 16, 0.08, 1), (16, 17, 0.07, 1), (17, 18, 0.05, 1), (18, 19, 0.045, 3),
)


def paired_intrinsics(size, fov):
    """(focal, cx, cy) in pixels of a pinhole camera with square pixels, `size` (H, W) and
    horizontal field of view `fov` degrees; pixel centres at integer coordinates.

    Projection of a Kinect camera-space point (x left, y up, z away, metres), as the Kinect's
    mirrored images: u = cx + focal * x / z, v = cy - focal * y / z.
    """
    h, w = size
    return float((w / 2) / np.tan(np.radians(fov) / 2)), (w - 1) / 2, (h - 1) / 2


def _project(points, intrinsics):
    """(..., 3) camera-space points -> (..., 2) pixel coordinates (u, v)."""
    focal, cx, cy = (float(x) for x in intrinsics)
    z = np.maximum(points[..., 2], np.float32(0.05))
    return np.stack([cx + focal * points[..., 0] / z, cy - focal * points[..., 1] / z], -1)


def rasterise_capsules(ends, radii, size, intrinsics):
    """Z-buffered rendering of capsules (limbs) seen by a pinhole camera.

    ends: float (T, C, 2, 3) camera-space end points of C capsules per frame (metres); radii: (C,).
    Returns depth (T, H, W) int32 millimetres to the nearest surface along the optical axis (0 =
    nothing) and capsule (T, H, W) int32 index of that capsule (-1 = nothing). All capsules of all
    frames are evaluated at once over the pixels of their bounding boxes (no per-pixel loop); the
    nearest surface wins a scatter-min over the keys depth * 128 + capsule.
    """
    T, C = ends.shape[:2]
    if C > 127:
        raise ValueError("at most 127 capsules")
    h, w = size
    focal = float(intrinsics[0])
    ends = np.asarray(ends, np.float32).reshape(T * C, 2, 3)
    radii = np.tile(np.asarray(radii, np.float32), T)                         # (T * C,)
    uv = _project(ends, intrinsics)                                          # (TC, 2, 2)
    reach = focal * radii[:, None] / np.maximum(ends[..., 2], 0.05)          # (TC, 2) pixels
    lo = np.maximum(np.floor((uv - reach[..., None]).min(1)), 0).astype(np.int64)
    hi = np.minimum(np.ceil((uv + reach[..., None]).max(1)), [w - 1, h - 1]).astype(np.int64)
    size_xy = np.where((ends[..., 2] > 0.05).all(1)[:, None], np.maximum(hi - lo + 1, 0), 0)
    # one entry per (capsule, bounding-box pixel): ragged boxes flattened with repeat
    area = size_xy[:, 0] * size_xy[:, 1]
    owner = np.repeat(np.arange(T * C), area)
    local = np.arange(len(owner)) - np.repeat(np.cumsum(area) - area, area)
    px = (lo[owner, 0] + local % size_xy[owner, 0]).astype(np.float32)
    py = (lo[owner, 1] + local // size_xy[owner, 0]).astype(np.float32)
    a, ab = uv[:, 0], uv[:, 1] - uv[:, 0]                                   # (TC, 2)
    length2 = np.maximum((ab ** 2).sum(-1), 1e-6)
    ax, ay, abx, aby = a[owner, 0], a[owner, 1], ab[owner, 0], ab[owner, 1]
    s = np.clip(((px - ax) * abx + (py - ay) * aby) / length2[owner], 0, 1)
    d2 = (px - ax - s * abx) ** 2 + (py - ay - s * aby) ** 2
    za, zb = ends[owner, 0, 2], ends[owner, 1, 2]
    z_axis = np.maximum(za + s * (zb - za), 0.05)
    r = radii[owner]
    rpx2 = (focal * r / z_axis) ** 2
    inside = d2 <= rpx2
    owner, px, py, z_axis, r, d2, rpx2 = (x[inside] for x in (owner, px, py, z_axis, r, d2, rpx2))
    surface = z_axis - r * np.sqrt(np.maximum(1 - d2 / rpx2, 0))          # front of the tube
    t, c = owner // C, owner % C
    key = np.clip(np.round(surface * 1000), 1, 65535).astype(np.int32) * 128 + c.astype(np.int32)
    big = np.iinfo(np.int32).max
    zbuffer = np.full(T * h * w, big, np.int32)
    np.minimum.at(zbuffer, (t * h + py.astype(np.int64)) * w + px.astype(np.int64), key)
    hit = zbuffer < big
    depth = np.where(hit, zbuffer // 128, 0).reshape(T, h, w)
    capsule = np.where(hit, zbuffer % 128, -1).reshape(T, h, w)
    return depth, capsule


def mirror_people(joints):
    """(..., 25, 3) joints -> their mirror image in the YZ plane: X negated, left and right joints swapped."""
    return joints[..., MIRROR_JOINTS, :] * np.array([-1.0, 1.0, 1.0])


def _paired_scene(action, rng, num_frames, scales, side, mirror=None):
    """Joints (T, M, 25, 3) of one performance in the scene frame (metres; Y up, floor at Y = 0),
    M = 1 or 2 people with body sizes `scales` (M,), as render_skeleton_action poses them, mirrored
    with p = 1/2 (mirror=None; True / False forces it), turned as a whole towards the camera on one
    side (side +1 or -1, about 45 degrees): NTU's subjects perform every action twice, facing the
    left and then the right camera."""
    drawn = rng.random() < 0.5
    mirror = drawn if mirror is None else mirror
    people = _action_people(_PAIRED_MOTION.get(action, action), rng, num_frames)
    turn = _rotation(Y, side * np.pi / 4 + rng.normal(0, 0.15))
    offset = np.array([rng.uniform(-0.2, 0.2), 0.0, rng.uniform(-0.2, 0.2)])
    scene = np.zeros((num_frames, len(people), 25, 3))
    for m, ((angles, root, heading, where), scale) in enumerate(zip(people, scales)):
        root = scale * root + [0, scale * _HIP_HEIGHT, 0]
        joints = forward_kinematics(angles, np.zeros_like(root), scale)
        scene[:, m] = joints @ _rotation(Y, heading).T + (root + np.insert(where, 1, 0, axis=1))[:, None]
    if mirror:
        scene = mirror_people(scene)
    return scene @ turn.T + offset


def _to_camera(scene, camera, rig):
    """Scene joints (..., 3) -> Kinect camera space of camera 1, 2 or 3 (x left, y up, z away).
    rig: (distance, height, tilt) of the cameras, shared by the three (NTU: same height)."""
    distance, height, tilt = rig
    rotation = np.diag([-1.0, 1.0, -1.0]) @ _rotation(X, tilt) @ _rotation(Y, CAMERA_YAWS[camera - 1])
    return scene @ rotation.T + [0, -height, distance]


def _capsule_ends(joints):
    """(T, M, 25, 3) joints -> (T, M * len(_CAPSULES), 2, 3) float32 capsule end points."""
    first, second = (np.array([c[i] for c in _CAPSULES]) for i in (0, 1))
    ends = np.stack([joints[:, :, first], joints[:, :, second]], 3)         # (T, M, B, 2, 3)
    return ends.reshape(len(joints), -1, 2, 3).astype(np.float32)


def render_paired_views(joints, colours, rgb_size, depth_size, background):
    """Renders one camera's view of a performance.

    joints: (T, M, 25, 3) camera-space joints (noise-free); colours: (M, 4, 3) clothing colours
    per person (shirt, trousers, skin, shoes); background: (H, W, 3) float RGB image.
    Returns rgb uint8 (T, H, W, 3), depth uint16 (T, Hd, Wd) mm (0 = background, as NTU's masked
    depth), flow float32 (T - 1, H, W, 2) pixels (x right, y down) of the visible surface point
    from frame t to t + 1, and mask bool (T, H, W) of the actor pixels in the RGB view.
    """
    radii = np.tile([c[2] for c in _CAPSULES], joints.shape[1]).astype(np.float32)
    parts = np.tile([c[3] for c in _CAPSULES], joints.shape[1])
    person = np.repeat(np.arange(joints.shape[1]), len(_CAPSULES))
    ends = _capsule_ends(joints)
    rgb_intrinsics = paired_intrinsics(rgb_size, RGB_FOV)
    depth_mm, capsule = rasterise_capsules(ends, radii, rgb_size, rgb_intrinsics)
    mask = capsule >= 0
    t, y, x = np.nonzero(mask)
    c = capsule[t, y, x]
    # the visible point's position s along its capsule's axis (0 first end, 1 second end)
    a, b = _project(ends[t, c, 0], rgb_intrinsics), _project(ends[t, c, 1], rgb_intrinsics)
    ab = b - a
    s = np.clip(((x - a[:, 0]) * ab[:, 0] + (y - a[:, 1]) * ab[:, 1])
                / np.maximum((ab ** 2).sum(-1), 1e-6), 0, 1)[:, None]
    point = ends[t, c, 0] + s * (ends[t, c, 1] - ends[t, c, 0])            # on the capsule axis
    # colour: the clothing of the part, shaded by how squarely the surface faces the camera
    facing = np.clip((point[:, 2] - depth_mm[t, y, x] / 1000) / radii[c], 0, 1)
    rgb = np.repeat(np.asarray(background, np.float32)[None], len(joints), 0)
    rgb[t, y, x] = colours[person[c], parts[c]] * (0.55 + 0.45 * facing[:, None])
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    # flow: the visible point moves with its bone from frame t to t + 1 (static camera and room)
    flow = np.zeros((len(joints) - 1,) + tuple(rgb_size) + (2,), np.float32)
    last = t < len(joints) - 1
    t, y, x, c, s, point = t[last], y[last], x[last], c[last], s[last], point[last]
    moved = ends[t + 1, c, 0] + s * (ends[t + 1, c, 1] - ends[t + 1, c, 0])
    flow[t, y, x] = _project(moved, rgb_intrinsics) - _project(point, rgb_intrinsics)
    depth, _ = rasterise_capsules(ends, radii, depth_size, paired_intrinsics(depth_size, DEPTH_FOV))
    return dict(rgb=rgb, depth=depth.astype(np.uint16), flow=flow, mask=mask)


def flow_to_uint8(flow, bound=FLOW_BOUND):
    """float flow (pixels) -> uint8 as stored by denseflow / mmaction2's TV-L1 extraction:
    128 + flow * 128 / bound, rounded and clipped to 0..255 (128 = no motion)."""
    return np.clip(np.round(128 + np.asarray(flow) * (128 / bound)), 0, 255).astype(np.uint8)


def write_avi(path, frames, fps=NTU_FPS, bit_rate=2_000_000):
    """Writes uint8 (T, H, W, 3) RGB frames as MPEG-4 part 2 in avi (NTU RGB+D's container; the
    real files are 1920x1080 at 30 fps). H and W must be even (yuv420p)."""
    with av.open(path, "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bit_rate
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def _write_paired_video(tmp, name, views, with_depth, bound=FLOW_BOUND):
    """Writes one camera's RGB avi, flow JPEGs and (target classes) masked-depth PNGs in the
    NTU RGB+D / denseflow layout under `tmp`."""
    import torch
    from torchvision.io import encode_jpeg

    write_avi(os.path.join(tmp, "nturgb+d_rgb", f"{name}_rgb.avi"), views["rgb"])
    flow_dir = os.path.join(tmp, "nturgb+d_flow", name)
    os.makedirs(flow_dir)
    flow = torch.from_numpy(flow_to_uint8(views["flow"], bound))             # (T - 1, H, W, 2)
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its image codecs for torchcodec
        warnings.simplefilter("ignore", DeprecationWarning)
        images = encode_jpeg([flow[t, None, :, :, i].contiguous() for t in range(len(flow))
                              for i in (0, 1)], quality=95)
    for t in range(len(flow)):  # one pair per consecutive frame pair, numbered from 1
        for i, axis in enumerate("xy"):
            with open(os.path.join(flow_dir, f"flow_{axis}_{t + 1:05d}.jpg"), "wb") as f:
                f.write(images[2 * t + i].numpy().tobytes())
    if with_depth:
        depth_dir = os.path.join(tmp, "nturgb+d_depth_masked", name)
        os.makedirs(depth_dir)
        for t, image in enumerate(views["depth"]):  # NTU numbers depth frames from 1
            write_png16(os.path.join(depth_dir, f"MDepth-{t + 1:08d}.png"), image)


def _paired_performance(job):
    """Renders and writes one performance (subject, replication, action) from the three cameras;
    returns [(name, label, camera-space skeleton (3, T, 25, 2) with Kinect-like noise)] of the
    target actions (label None: a source action, no depth or skeleton). Runs in pool workers; one
    generator per performance, so the content does not depend on the order of the jobs."""
    tmp, config, number, action, label, subject, replication = job
    seed, (low, high) = config["seed"], config["num_frames"]
    rgb_size, depth_size = tuple(config["rgb_size"]), tuple(config["depth_size"])
    person = np.random.default_rng([seed, 1, subject])  # size and clothing of the subject
    subject_look = (person.uniform(0.85, 1.15), person.uniform(20, 235, (4, 3)))
    rng = np.random.default_rng([seed, 2, subject, replication, number])
    length = int(rng.integers(low, high + 1))
    partner = (rng.uniform(0.85, 1.15), rng.uniform(20, 235, (4, 3)))
    scales, colours = zip(subject_look, partner)
    scene = _paired_scene(action, rng, length, scales, 1 if replication % 2 else -1)
    colours = np.stack(colours[:scene.shape[1]])
    rig = (rng.uniform(*CAMERA_DISTANCE), rng.uniform(0.9, 1.1), rng.uniform(-0.08, 0.08))
    skeletons = []
    for camera in (1, 2, 3):
        name = f"S001C{camera:03d}P{subject:03d}R{replication:03d}A{number:03d}"
        # one room seen by three cameras: the background depends on the camera only
        background = _background(np.random.default_rng([seed, 0, camera]), *rgb_size)
        joints = _to_camera(scene, camera, rig)
        light = rng.uniform(0.85, 1.15)
        views = render_paired_views(joints, colours * light, rgb_size, depth_size, background * light)
        _write_paired_video(tmp, name, views, with_depth=label is not None)
        if label is not None:  # Kinect skeleton: ~1 cm noise on the camera-space joints
            noisy = joints + rng.normal(0, SKELETON_NOISE, joints.shape)
            sample = np.zeros((3, length, 25, 2), np.float32)
            sample[..., :noisy.shape[1]] = noisy.transpose(3, 0, 2, 1)
            skeletons.append((name, label, sample))
    return skeletons


def _pad_frames(sample):
    """(3, T, 25, 2) -> ((3, MAX_FRAMES, 25, 2) zero-padded, T)."""
    padded = np.zeros((3, MAX_FRAMES) + sample.shape[2:], np.float32)
    padded[:, :sample.shape[1]] = sample
    return padded, sample.shape[1]


def synthetic_paired_dataset(root=None, target_actions=6, source_actions=4, subjects=5,
                             replications=2, num_frames=(40, 56), rgb_size=(72, 128),
                             depth_size=(80, 96), seed=0, workers=None):
    """Writes the paired multi-modal dataset once and returns
    dict(root, rgb_dir, depth_dir, flow_dir, skeleton_dir, target_actions, source_actions, classes,
    rgb_intrinsics, depth_intrinsics, flow_bound).

    Every performance (subject 1..subjects, replication, action) is seen by NTU's three cameras,
    so one sample name SsssCcccPpppRrrrAaaa (setup 1) per camera and common.skeleton.ntu_split's
    cross-view split applies (camera 1 val, cameras 2 and 3 train). Layout under root, as NTU RGB+D
    and the usual TV-L1 extraction write it:
      nturgb+d_rgb/<name>_rgb.avi                       RGB, mpeg4 avi, 30 fps, rgb_size (H, W)
      nturgb+d_flow/<name>/flow_{x,y}_%05d.jpg          frames - 1 pairs, 128 + px * 128 / 20
      nturgb+d_depth_masked/<name>/MDepth-%08d.png      16-bit mm, 0 off the actors, depth_size
      nturgb+d_skeleton_npy/xview/{train,val}_*         common/skeleton.py format (camera space)
    Depth and skeletons exist for the target actions only (their labels: 0-based positions in
    target_actions); source actions have RGB and flow only: they train the teacher (Sec 2.4.2).
    RGB, flow, depth and skeleton of a sample have the same number of frames, drawn per
    performance in num_frames = (min, max). Deterministic by seed; cached and written atomically
    like synthetic_video_dataset (root default: $VEF_CACHE or ~/.cache/video_efficient).
    workers: processes rendering performances (default min(CPUs, 8); 0 = this process only).
    """
    if not (1 <= target_actions <= len(PAIRED_TARGET) and 1 <= source_actions <= len(PAIRED_SOURCE)):
        raise ValueError(f"target_actions must be in 1..{len(PAIRED_TARGET)} and source_actions in "
                         f"1..{len(PAIRED_SOURCE)}, got {target_actions}, {source_actions}")
    if isinstance(num_frames, int):
        num_frames = (num_frames, num_frames)
    if not 2 <= num_frames[0] <= num_frames[1] <= MAX_FRAMES:
        raise ValueError(f"num_frames must be (min, max) with 2 <= min <= max <= {MAX_FRAMES}")
    if any(x % 2 for x in rgb_size):
        raise ValueError(f"rgb_size {rgb_size}: height and width must be even (yuv420p)")
    config = dict(version=PAIRED_FORMAT_VERSION, target_actions=target_actions,
                  source_actions=source_actions, subjects=subjects, replications=replications,
                  num_frames=list(num_frames), rgb_size=list(rgb_size),
                  depth_size=list(depth_size), seed=seed)
    root = _dataset_root(root, "synthetic_paired", config)
    target, source = PAIRED_TARGET[:target_actions], PAIRED_SOURCE[:source_actions]
    classes = dict(target + source)

    def write(tmp):
        for folder in ("nturgb+d_rgb", "nturgb+d_flow", "nturgb+d_depth_masked",
                       "nturgb+d_skeleton_npy/xview"):
            os.makedirs(os.path.join(tmp, folder))
        jobs = [(tmp, config, number, action, label if label < len(target) else None, subject,
                 replication)
                for label, (number, action) in enumerate(target + source)
                for subject in range(1, subjects + 1) for replication in range(1, replications + 1)]
        with parallel_map(workers) as imap:
            done = list(imap(_paired_performance, jobs))
        skeletons = sorted((sample for samples in done for sample in samples), key=lambda x: x[0])
        for split in ("train", "val"):
            samples = [x for x in skeletons if ntu_split(x[0], "xview") == split]
            write_split(os.path.join(tmp, "nturgb+d_skeleton_npy", "xview"), split,
                         [x[0] for x in samples], [x[1] for x in samples],
                         (_pad_frames(x[2]) for x in samples), MAX_FRAMES)

    _write_once(root, config, [f"A{n:03d} {name}" for n, name in classes.items()], write)
    return dict(root=root, rgb_dir=os.path.join(root, "nturgb+d_rgb"),
                depth_dir=os.path.join(root, "nturgb+d_depth_masked"),
                flow_dir=os.path.join(root, "nturgb+d_flow"),
                skeleton_dir=os.path.join(root, "nturgb+d_skeleton_npy", "xview"),
                target_actions=[n for n, _ in target], source_actions=[n for n, _ in source],
                classes=classes, rgb_intrinsics=paired_intrinsics(rgb_size, RGB_FOV),
                depth_intrinsics=paired_intrinsics(depth_size, DEPTH_FOV), flow_bound=FLOW_BOUND)
