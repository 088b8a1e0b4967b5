"""A built-in synthetic video dataset, written in the real on-disk formats.

Each class is a motion pattern; one or two textured objects move that way over a static textured
background. Object shapes, textures, colours, sizes, positions and backgrounds are random per
video and independent of the class, so only the motion tells classes apart: a tiny stand-in for
the motion-sensitive benchmarks of the thesis, for tests and quick runs without downloads.

Videos are h264 mp4 (yuv420p, 25 fps) with mmaction2 list files 'class/video.mp4 label', read by
common/video.py exactly like real datasets.
"""
import hashlib
import json
import os
import shutil
import tempfile

import av
import numpy as np

# Class index = position here. Image coordinates: x right, y down, so an angle increasing over
# time turns clockwise on screen.
MOTIONS = ("right", "left", "up", "down", "circle_cw", "circle_ccw", "spin_cw", "spin_ccw",
           "right_fast", "left_fast", "zigzag_right", "zigzag_left")
_DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
FORMAT_VERSION = 1  # bump when the rendering changes, so old caches are not reused


# ============ rendering ============

def _background(rng, h, w):
    """(h, w, 3) float32: a few random colour gratings plus static pixel noise."""
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


def render_video(motion, rng, num_frames=48, size=(128, 170)):
    """uint8 (T, H, W, 3) RGB frames of one video of the given motion class."""
    h, w = size
    scale = min(h, w) / 128
    background = _background(rng, h, w)
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
                            size=(128, 170), seed=0, val_fraction=0.25):
    """Writes the dataset once and returns dict(root, train_list, val_list, classes).

    root default: $VEF_CACHE (else ~/.cache/video_efficient)/synthetic_videos_<parameter hash>.
    An existing complete dataset with the same parameters is reused. Writing goes to a temporary
    folder renamed into place at the end, so concurrent processes (torchrun ranks, pytest
    workers) never see half a dataset; the loser of the rename uses the winner's copy.
    size: (H, W), both even (yuv420p). The last round(videos_per_class * val_fraction) videos of
    each class form the validation split.
    """
    if not 1 <= num_classes <= len(MOTIONS):
        raise ValueError(f"num_classes must be in 1..{len(MOTIONS)}, got {num_classes}")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"size {size}: height and width must be even for yuv420p h264")
    config = dict(version=FORMAT_VERSION, num_classes=num_classes, videos_per_class=videos_per_class,
                  num_frames=num_frames, size=list(size), seed=seed, val_fraction=val_fraction)
    if root is None:
        digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
        cache = os.environ.get("VEF_CACHE") or os.path.expanduser("~/.cache/video_efficient")
        root = os.path.join(cache, f"synthetic_videos_{digest}")
    root = os.path.abspath(root)
    classes = list(MOTIONS[:num_classes])
    result = dict(root=root, train_list=os.path.join(root, "train.txt"),
                  val_list=os.path.join(root, "val.txt"), classes=classes)
    if _is_complete(root, config):
        return result

    os.makedirs(os.path.dirname(root), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp", dir=os.path.dirname(root))
    try:
        num_val = round(videos_per_class * val_fraction)
        lines = {"train": [], "val": []}
        for label, motion in enumerate(classes):
            os.makedirs(os.path.join(tmp, motion))
            for k in range(videos_per_class):
                # one generator per video: the content does not depend on writing order
                rng = np.random.default_rng([seed, label, k])
                name = f"{motion}/{motion}_{k:03d}.mp4"
                write_mp4(os.path.join(tmp, name), render_video(motion, rng, num_frames, size))
                lines["val" if k >= videos_per_class - num_val else "train"].append(f"{name} {label}\n")
        for split, split_lines in lines.items():
            with open(os.path.join(tmp, f"{split}.txt"), "w") as f:
                f.writelines(split_lines)
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
    return result
