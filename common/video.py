"""Video clips from files: PyAV reading, clip sampling, list files, and bad-file accounting.

Data flow: list file -> [(path, label)] -> VideoClipDataset -> uint8 clips (T, H, W, 3) on CPU
workers; augmentation and normalisation happen later, batched on the device.

Frame indices are 0-based positions in display order, computed from timestamps, so the reader
assumes a constant frame rate (true for the datasets used in the thesis once transcoded).
"""
import csv
import os
import sys
from fractions import Fraction

import av
import numpy as np
import torch


class VideoReadError(RuntimeError):
    """A video file that cannot be opened or decoded, or lacks the requested frames."""


# Errors PyAV and the OS raise for unreadable files (av.FFmpegError covers corrupt/empty input).
_DECODE_ERRORS = (av.FFmpegError, OSError, ValueError, EOFError)


# ============ reading frames ============

def _open_video(path):
    """(container, stream, rate, time_base, start) for the first video stream of `path`."""
    container = av.open(str(path))
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster for h264
    rate = stream.average_rate or stream.guessed_rate
    if not rate:
        container.close()
        raise VideoReadError(f"{path}: unknown frame rate")
    return container, stream, Fraction(rate), stream.time_base, stream.start_time or 0


def _output_size(width, height, short_side):
    """(width, height) with the shorter side resized to `short_side`, aspect ratio kept."""
    if short_side is None or min(width, height) == short_side:
        return width, height
    scale = short_side / min(width, height)
    if width <= height:
        return short_side, round(height * scale)
    return round(width * scale), short_side


def _decode_range(path, wanted, seek_to, last, short_side):
    """Decodes from the keyframe at or before frame `seek_to` up to frame `last`.

    Returns ({index: (H, W, 3) uint8} for indices in `wanted`, index of the first decoded frame).
    """
    container, stream, rate, time_base, start = _open_video(path)
    frames, first_seen = {}, None
    with container:
        if seek_to > 0:
            container.seek(int(start + seek_to / (rate * time_base)), stream=stream,
                           backward=True, any_frame=False)
        # Without timestamps we can only count frames, which is valid when decoding from the start.
        index = -1 if seek_to == 0 else None
        for frame in container.decode(stream):
            if frame.pts is not None:
                index = round((frame.pts - start) * time_base * rate)
            elif index is not None:
                index += 1
            else:
                raise VideoReadError(f"{path}: frames without timestamps after a seek")
            if first_seen is None:
                first_seen = index
            if index in wanted and index not in frames:
                width, height = _output_size(frame.width, frame.height, short_side)
                # threads=1: PyAV keeps one swscale context per thread; one with slice threads, made in a
                # process that then forks DataLoader workers, hangs the worker that resizes with it
                frames[index] = frame.to_ndarray(width=width, height=height, format="rgb24", threads=1)
            if index >= last:
                break
    return frames, first_seen


def read_clip(path, indices, short_side=None):
    """uint8 (T, H, W, 3) RGB frames at the 0-based frame `indices` (any order, repeats allowed).

    Seeks to the keyframe at or before the first wanted frame and decodes only up to the last
    one, so the cost is independent of the video length. `short_side`: resize (swscale, during the
    RGB conversion) so the shorter side has this length. Raises VideoReadError naming `path`.
    """
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0:
        raise ValueError(f"{path}: frame indices must be a non-empty list of indices >= 0")
    wanted = set(indices.tolist())
    first, last = min(wanted), max(wanted)
    back = 0
    try:
        while True:
            seek_to = max(first - back, 0)
            frames, first_seen = _decode_range(path, wanted, seek_to, last, short_side)
            # With B-frames the demuxer can pick the keyframe just *after* the wanted frame
            # (its decode time is earlier than its display time): seek further back and retry.
            if seek_to == 0 or (first_seen is not None and first_seen <= first):
                break
            back = max(4 * back, 16)
    except _DECODE_ERRORS as err:
        raise VideoReadError(f"cannot decode {path}: {err}") from err
    if not frames and first_seen is None:
        raise VideoReadError(f"{path}: no video frames could be decoded")
    missing = sorted(wanted - frames.keys())
    if missing:
        raise VideoReadError(f"{path}: frame {missing[0]} requested but not decoded "
                             f"(past the end of the video, or missing)")
    return np.stack([frames[i] for i in indices.tolist()])


def count_frames(path):
    """Number of frames, from the header when possible, else by demuxing (no decoding)."""
    try:
        container, stream, rate, time_base, _ = _open_video(path)
        with container:
            if stream.frames > 0:
                return stream.frames
            if stream.duration:
                return round(stream.duration * time_base * rate)
            # e.g. mkv/webm keep no per-stream count: count packets, the last one is an empty flush
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except _DECODE_ERRORS as err:
        raise VideoReadError(f"cannot read {path}: {err}") from err


def frame_rate(path):
    """Frames per second of the first video stream (for labels given in seconds, e.g. Charades)."""
    try:
        container, _, rate, _, _ = _open_video(path)
        container.close()
        return float(rate)
    except _DECODE_ERRORS as err:
        raise VideoReadError(f"cannot read {path}: {err}") from err


# ============ clip sampling ============

def clip_span(clip_len, stride):
    """Frames from the first to the last index of a clip, both included (stride may be fractional)."""
    return int((clip_len - 1) * stride) + 1


def clip_indices(num_frames, clip_len, stride, start=None, rng=None, jitter=False):
    """(clip_len,) int64 frame indices start + floor(k * stride), k = 0 .. clip_len - 1.

    A fractional stride resamples the video: stride = native fps / wanted fps (e.g. 25 / 16 for
    SEVERE's 16 fps), < 1 repeats frames as SEVERE's decoder does for slower videos.
    start=None: random start, uniform over the positions where the clip fits (training);
    `rng` is a numpy Generator (a fresh unseeded one if None). jitter=True: temporal jitter, each index
    moves on by its own random 0..stride-1 frames. Indices past the end wrap around (loop padding), so
    videos shorter than the clip span still give clip_len frames.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    rng = np.random.default_rng() if rng is None and (start is None or jitter) else rng
    if jitter and stride != int(stride):
        raise ValueError(f"temporal jitter needs a whole-frame stride, got {stride}")
    if start is None:
        span = clip_len * int(stride) if jitter else clip_span(clip_len, stride)
        start = int(rng.integers(0, max(num_frames - span, 0) + 1))
    indices = start + np.floor(stride * np.arange(clip_len)).astype(np.int64)
    if jitter:
        indices = indices + rng.integers(0, stride, clip_len)
    return indices % num_frames


def uniform_starts(num_frames, clip_len, stride, num_clips):
    """`num_clips` evenly spaced clip starts covering the video (test-time multi-clip views).

    One clip: the centre clip. Starts repeat when the video is shorter than the clips.
    """
    last = max(num_frames - clip_span(clip_len, stride), 0)
    if num_clips == 1:
        return [last // 2]
    return [int(round(s)) for s in np.linspace(0, last, num_clips)]


# ============ list files ============

def _check_exists(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def drop_missing(samples, what, any_extension=False):
    """The samples (path first in each tuple) whose file or folder is on disk, in order.

    Incomplete downloads (FineGym, Kinetics, SSv2) are the common case: the others are left out
    here, before any subset is drawn, and reported once (count and the first names). Each folder
    is listed once, so a list of 200k videos costs a few directory reads, not 200k stats.
    any_extension: a file of the same name with another extension counts too, and the kept sample's
    path takes the extension found on disk (SSv2 converted from .webm, EK-100 re-encoded).
    """
    listed = {}

    def key(name):
        return os.path.splitext(name)[0] if any_extension else name

    def on_disk(path):  # the path as it is on disk, or None
        folder, name = os.path.split(os.path.normpath(path))
        if folder not in listed:
            names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
            listed[folder] = {key(n): n for n in names}
        found = listed[folder].get(key(name))
        return found and os.path.splitext(path)[0] + os.path.splitext(found)[1]

    kept, missing = [], []
    for path, *rest in samples:
        found = on_disk(path)
        if found:
            kept.append((found, *rest))
        else:
            missing.append(path)
    if missing and not kept:
        raise FileNotFoundError(f"{what}: none of its {len(samples)} files is on disk (the first: {missing[0]})")
    if missing and os.environ.get("RANK", "0") == "0":
        print(f"{what}: {len(missing)} of {len(samples)} files are not on disk and are left out: "
              f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}", file=sys.stderr, flush=True)
    return kept


def read_video_list(list_path, root):
    """[(root/path, label)] from an mmaction2-style list file, videos not on disk left out
    (`drop_missing`).

    Accepted lines: 'path label', 'path' (label -1, e.g. UCF101 test lists) and the rawframe
    style 'path num_frames label'.
    """
    _check_exists(list_path, "list file")
    _check_exists(root, "video root")
    samples = []
    with open(list_path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) > 3:
                raise ValueError(f"{list_path}:{lineno}: expected 'path [num_frames] label', "
                                 f"got {len(fields)} fields: {line.strip()!r}")
            try:
                numbers = [int(x) for x in fields[1:]]
            except ValueError:
                raise ValueError(f"{list_path}:{lineno}: label (or num_frames) is not an integer: "
                                 f"{line.strip()!r}") from None
            samples.append((os.path.join(root, fields[0]), numbers[-1] if numbers else -1))
    return drop_missing(samples, list_path)


def read_kinetics_csv(csv_path, root, split_dir=None):
    """Kinetics-400 official CSV ('label,youtube_id,time_start,time_end,split[,is_cc]').

    Files are looked up as '{youtube_id}_{start:06d}_{end:06d}' (or '{youtube_id}') with
    extension .mp4/.mkv/.webm, in `root[/split_dir]` or any folder directly below it (the
    downloaders' '<label>/' folders, with spaces or underscores). Class index = position of the
    label in the sorted unique labels. Videos that are not on disk (deleted from YouTube) are
    skipped with one summary line. Returns ([(path, label)], classes).
    """
    _check_exists(csv_path, "Kinetics csv")
    base = os.path.join(root, split_dir) if split_dir else root
    _check_exists(base, "video root")
    # Index the files once instead of probing up to 6 names per row (250k rows for K400 train).
    on_disk = {}
    for entry in os.scandir(base):
        files = [entry] if entry.is_file() else list(os.scandir(entry.path)) if entry.is_dir() else []
        for file in files:
            on_disk.setdefault(file.name, file.path)
    rows = []
    with open(csv_path, newline="") as f:
        for lineno, row in enumerate(csv.DictReader(f), 2):  # line 1 is the header
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                name, label = row["youtube_id"], row["label"]
                if not name or not label:
                    raise ValueError("empty youtube_id or label")
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{csv_path}:{lineno}: bad Kinetics row {row}: {err}") from None
            rows.append((label, [f"{name}_{start:06d}_{end:06d}", name]))
    classes = sorted({label for label, _ in rows})
    class_index = {c: i for i, c in enumerate(classes)}
    samples, absent = [], []
    for label, stems in rows:
        found = [on_disk[s + ext] for s in stems for ext in (".mp4", ".mkv", ".webm")
                 if s + ext in on_disk]
        if found:
            samples.append((found[0], class_index[label]))
        else:
            absent.append(stems[0])
    if rows and not samples:
        raise FileNotFoundError(f"none of the {len(rows)} videos of {csv_path} found under {base}")
    if absent:
        print(f"{csv_path}: {len(absent)} of {len(rows)} videos not found under {base}; skipped "
              f"(first: {', '.join(absent[:3])})", file=sys.stderr)
    return samples, classes


def read_samples(list_path, root):
    """[(path, label)] from a Kinetics .csv or an mmaction2-style list file."""
    if str(list_path).endswith(".csv"):
        return read_kinetics_csv(list_path, root)[0]
    return read_video_list(list_path, root)


# ============ bad-file accounting ============

class BadVideoCounter:
    """Counts video reads and failures across DataLoader workers; stops a run with too many.

    The counts live in a shared-memory tensor created in the main process, so forked or spawned
    workers update the same numbers. Each process writes its own row (worker id + 1; 0 for the
    main process), so there are no lost updates without needing a lock.
    """

    def __init__(self, max_fraction=0.05, min_reads=20, max_workers=64):
        self.max_fraction, self.min_reads = max_fraction, min_reads
        self.counts = torch.zeros(max_workers + 1, 2, dtype=torch.int64).share_memory_()  # (ok, failed)
        self._warned = set()  # per process: one warning per path

    def _row(self):
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (len(self.counts) - 1)

    @property
    def reads(self):
        return int(self.counts.sum())

    @property
    def failures(self):
        return int(self.counts[:, 1].sum())

    def record_ok(self):
        self.counts[self._row(), 0] += 1

    def known_bad(self, path):
        """Whether `path` already failed in this process (it is not read or counted again)."""
        return path in self._warned

    def record_failure(self, path, err):
        self.counts[self._row(), 1] += 1
        if path not in self._warned:
            self._warned.add(path)
            print(f"skipping unreadable video {path}: {err}", file=sys.stderr, flush=True)

    def check(self):
        """RuntimeError if, after `min_reads` reads, more than `max_fraction` of them failed."""
        reads, failures = self.reads, self.failures
        if reads >= self.min_reads and failures > self.max_fraction * reads:
            raise RuntimeError(
                f"{failures} of {reads} video reads failed ({100 * failures / reads:.1f}%, "
                f"more than the allowed {100 * self.max_fraction:.1f}% of --max-bad-fraction); check the dataset: "
                f"list file paths, root folder, corrupt or empty files (warnings above name them)")


# Errors of a file that cannot be read or decoded: PyAV's (as VideoReadError), the OS's and those of
# torchvision's image decoders (RuntimeError) and numpy's loaders (ValueError, EOFError).
READ_ERRORS = (VideoReadError, OSError, ValueError, RuntimeError, EOFError)


def read_or_replace(read, i, num_items, path_of, counter, rng, max_retries=10, errors=READ_ERRORS):
    """read(i), or read(j) of a random other item j when item i's file cannot be read: the failure is
    reported and counted once per path in `counter`, which stops the run above its max_fraction (of
    the files read); a known bad file is replaced without reading it again.
    The one bad-file policy of every training dataset. Returns (read's result, index read)."""
    def other(i):  # a random other item, never i itself
        return (i + 1 + int(rng.integers(num_items - 1))) % num_items if num_items > 1 else i

    for _ in range(max_retries + 1):
        if counter.known_bad(path_of(i)) and num_items > 1:  # replaced again without reading or counting
            i = other(i)
            continue
        try:
            result = read(i)
        except errors as err:
            counter.record_failure(path_of(i), err)
            counter.check()
            i = other(i)
            continue
        counter.record_ok()
        counter.check()
        return result, i
    raise RuntimeError(f"{max_retries + 1} files in a row could not be read, the last one {path_of(i)}; "
                       f"check the dataset")


# ============ dataset ============

class VideoClipDataset(torch.utils.data.Dataset):
    """Clips from [(path, label)] samples.

    item: dict(clip=uint8 (T, H, W, 3), or (num_clips, T, H, W, 3) when num_clips > 1,
               label=int, index=int index of the video actually read,
               frames=(num_clips * T,) int64 frame indices that were read (within a segment), for per-frame labels).
    train=True: random stride from `strides` and random starts; train=False: `num_clips`
    uniformly spaced starts with strides[0]. fps: instead of `strides`, every video is resampled to
    this frame rate (stride = its native fps / fps, see `clip_indices`), so that a clip spans
    clip_len / fps seconds whatever the video's rate. spread: each clip's frames spread evenly over the
    whole video instead (stride = its frames / clip_len; the start a random offset within one stride
    when training). An unreadable video is reported to `counter` and
    replaced by a random other one; the run stops once more than max_fail_fraction failed.
    A sample (path, label, first, last) is a segment of its file: frames first..last (0-based, both
    included) are the whole video (EPIC-Kitchens' narrations of long recordings).
    """

    def __init__(self, samples, clip_len=16, strides=(1,), short_side=128, train=True,
                 num_clips=1, max_fail_fraction=0.05, counter=None, max_retries=10, fps=None, spread=False):
        self.samples = list(samples)
        if not self.samples:
            raise ValueError("VideoClipDataset: no samples")
        self.clip_len, self.strides, self.short_side = clip_len, tuple(strides), short_side
        self.train, self.num_clips, self.max_retries = train, num_clips, max_retries
        self.fps, self.spread = fps, spread
        self.counter = counter if counter is not None else BadVideoCounter(max_fail_fraction)
        self._num_frames, self._frame_rates = {}, {}  # per file, lazily filled, one cache per worker process
        self._rng, self._rng_seed = None, None

    def __len__(self):
        return len(self.samples)

    def rng(self):
        """numpy Generator of this process, seeded from torch.initial_seed().

        DataLoader workers get initial_seed = base_seed + worker_id with a new base_seed each
        epoch (drawn from torch's RNG), so workers and epochs differ and torch.manual_seed makes
        runs reproducible. Re-seeding on a seed change also stops forked workers from inheriting
        copies of the main process's generator.
        """
        seed = torch.initial_seed()
        if seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def segment(self, i):
        """(path, first, last) of video i: the frames of its file that are the video; first and last
        are None for a whole file."""
        path, _, *segment = self.samples[i]
        return (path, *segment) if segment else (path, None, None)

    def num_frames(self, i):
        """Frames of video i; of a segment, those of first..last that the file has (an annotation may
        run past the end of its recording)."""
        path, first, last = self.segment(i)
        if path not in self._num_frames:
            self._num_frames[path] = count_frames(path)
        if first is None:
            return self._num_frames[path]
        if first >= self._num_frames[path]:
            raise VideoReadError(f"{path}: segment {first}-{last} starts past its last frame "
                                 f"{self._num_frames[path] - 1}")
        return min(last, self._num_frames[path] - 1) - first + 1

    def name(self, i):
        """Video i as bad-file reports name it: its path, with a segment's frames (each counts on its own)."""
        path, first, last = self.segment(i)
        return path if first is None else f"{path} (frames {first}-{last})"

    def first_frame(self, i):
        """Index in its file of video i's frame 0: a segment's first frame, else 0."""
        return self.segment(i)[1] or 0

    def frame_stride(self, i, stride):
        """The stride of video i: `stride`; with `spread` its frames / clip_len; with `fps` its native
        frame rate / fps."""
        if self.spread:
            return max(self.num_frames(i) / self.clip_len, 1)
        if self.fps is None:
            return stride
        path = self.samples[i][0]
        if path not in self._frame_rates:
            self._frame_rates[path] = frame_rate(path)
        return self._frame_rates[path] / self.fps

    def _read(self, i, sample_indices, rng):
        """(frames, label, i, frame indices) of video i at sample_indices(num_frames, i), or of a random
        replacement video."""
        def read(j):
            indices = sample_indices(self.num_frames(j), j)
            return read_clip(self.samples[j][0], indices + self.first_frame(j), self.short_side), indices

        (frames, indices), i = read_or_replace(read, i, len(self), self.name, self.counter, rng, self.max_retries,
                                               errors=(VideoReadError,))
        return torch.from_numpy(frames), self.samples[i][1], i, indices

    def load(self, i, start=None, stride=None, rng=None, jitter=False):
        """(clip uint8 (T, H, W, 3), label, index actually read) for one clip of video i.

        start=None: random start; stride=None: random from `strides` (train) or strides[0];
        jitter: temporal jitter (see `clip_indices`). A given start applies to video i; for a
        replacement video it wraps around its length. Wrappers build on this, e.g. two clips per
        item for tubelet or temporal contrast.
        """
        rng = self.rng() if rng is None else rng
        if stride is None:
            stride = int(rng.choice(self.strides)) if self.train else self.strides[0]
        return self._read(i, lambda n, j: clip_indices(n, self.clip_len, self.frame_stride(j, stride), start, rng,
                                                       jitter), rng)[:3]

    def __getitem__(self, i):
        rng = self.rng()
        stride = int(rng.choice(self.strides)) if self.train else self.strides[0]

        def sample_indices(n, j):  # all clips in one read: one seek, decoded once
            step = self.frame_stride(j, stride)
            if self.train:
                starts = [None] * self.num_clips
            else:
                starts = uniform_starts(n, self.clip_len, step, self.num_clips)
            return np.concatenate([clip_indices(n, self.clip_len, step, s, rng) for s in starts])

        frames, label, index, indices = self._read(i, sample_indices, rng)
        clip = frames.reshape(self.num_clips, self.clip_len, *frames.shape[1:])
        return dict(clip=clip[0] if self.num_clips == 1 else clip, label=label, index=index,
                    frames=indices)
