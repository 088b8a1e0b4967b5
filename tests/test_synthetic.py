"""Tests of common/synthetic.py: files in the real formats, caching, and motion-only classes."""
import multiprocessing
import os

import numpy as np
import pytest
import torch

from common.synthetic import MOTIONS, synthetic_video_dataset
from common.video import VideoClipDataset, count_frames, read_clip, read_video_list

PARAMS = dict(num_classes=8, videos_per_class=4, num_frames=24, seed=0)  # default size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_video_dataset(tmp_path_factory.mktemp("syn") / "videos", **PARAMS)


def samples_of(dataset):
    return {split: read_video_list(dataset[f"{split}_list"], dataset["root"])
            for split in ("train", "val")}


def test_files_in_real_formats(dataset):
    assert dataset["classes"] == list(MOTIONS[:8])
    with open(os.path.join(dataset["root"], "classes.txt")) as f:
        assert f.read().split() == dataset["classes"]
    splits = samples_of(dataset)
    assert len(splits["train"]) == 8 * 3 and len(splits["val"]) == 8 * 1  # val_fraction 0.25
    assert {label for _, label in splits["train"]} == set(range(8)) == {l for _, l in splits["val"]}
    assert not {p for p, _ in splits["train"]} & {p for p, _ in splits["val"]}
    for path, label in splits["train"] + splits["val"]:
        assert path.endswith(".mp4") and f"/{MOTIONS[label]}/" in path
        assert count_frames(path) == PARAMS["num_frames"]
        frames = read_clip(path, range(PARAMS["num_frames"]))
        assert frames.shape == (PARAMS["num_frames"], 128, 170, 3) and frames.std() > 10


def test_cache_is_reused(dataset):
    marker = os.path.join(dataset["root"], "done.json")
    video = samples_of(dataset)["train"][0][0]
    mtimes = os.path.getmtime(marker), os.path.getmtime(video)
    assert synthetic_video_dataset(dataset["root"], **PARAMS) == dataset
    assert (os.path.getmtime(marker), os.path.getmtime(video)) == mtimes
    with pytest.raises(FileExistsError, match="different|parameters"):
        synthetic_video_dataset(dataset["root"], **{**PARAMS, "seed": 1})


def test_default_root_under_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VEF_CACHE", str(tmp_path))
    small = dict(num_classes=2, videos_per_class=2, num_frames=8, size=(32, 32))
    a, b = synthetic_video_dataset(**small), synthetic_video_dataset(**small, seed=1)
    assert os.path.dirname(a["root"]) == str(tmp_path) == os.path.dirname(b["root"])
    assert os.path.basename(a["root"]).startswith("synthetic_videos_") and a["root"] != b["root"]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(d["root"]) for d in (a, b))


def _motion_statistics(frames):
    """Median per-frame displacement (dx, dy) and rotation sense of the frame-difference centroid."""
    diff = np.abs(np.diff(frames.astype(np.float32), axis=0)).sum(-1)
    diff *= diff > 30  # ignore compression noise of the static background
    y, x = np.mgrid[:diff.shape[1], :diff.shape[2]]
    mass = diff.sum((1, 2))
    cx, cy = (diff * x).sum((1, 2)) / mass, (diff * y).sum((1, 2)) / mass
    dx, dy = np.diff(cx), np.diff(cy)
    turn = np.mean((cx[:-1] - cx.mean()) * dy - (cy[:-1] - cy.mean()) * dx)  # > 0: clockwise
    return np.median(dx), np.median(dy), turn


def test_classes_differ_by_motion(dataset):
    stats = {}
    for path, label in samples_of(dataset)["train"]:
        stats.setdefault(MOTIONS[label], []).append(_motion_statistics(read_clip(path, range(24))))
    for motion, (sx, sy) in {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}.items():
        for dx, dy, _ in stats[motion]:  # rendered at 1.5 pixels per frame
            along, across = dx * sx + dy * sy, abs(dx * sy - dy * sx)
            assert 1.2 < along < 1.8 and across < along / 2, (motion, dx, dy)
    assert all(turn > 5 for _, _, turn in stats["circle_cw"])
    assert all(turn < -5 for _, _, turn in stats["circle_ccw"])
    for dx, dy, _ in stats["spin_cw"] + stats["spin_ccw"]:  # turns in place
        assert abs(dx) < 1 and abs(dy) < 1


def test_appearance_does_not_tell_the_classes_apart(dataset):
    """The Table 5.2 miniature rests on classes that only motion separates: the first frame's colours
    (mean and 8-bin histograms per channel) find a video of the same class, leave-one-out 1-NN over
    the 32 videos, no better than chance (3 / 31)."""
    assert _colour_1nn_accuracy(dataset) < 0.2


def _colour_1nn_accuracy(dataset):
    """Leave-one-out 1-NN class accuracy of the first frames' colours (mean, 8-bin histograms)."""
    samples = samples_of(dataset)["train"] + samples_of(dataset)["val"]
    features, labels = [], []
    for path, label in samples:
        frame = read_clip(path, [0])[0].astype(np.float32)
        hist = [np.histogram(frame[..., c], bins=8, range=(0, 256))[0] / frame[..., c].size for c in range(3)]
        features.append(np.concatenate([frame.mean((0, 1)) / 255, *hist]))
        labels.append(label)
    features, labels = np.array(features), np.array(labels)
    distances = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    return (labels[distances.argmin(1)] == labels).mean()


def _in_batch_pick_rate(features_q, features_k):
    """Fraction of queries whose own key is the nearest (cosine) of the batch's keys."""
    q = torch.nn.functional.normalize(features_q - features_q.mean(1, keepdim=True), dim=1)
    k = torch.nn.functional.normalize(features_k - features_k.mean(1, keepdim=True), dim=1)
    return ((q @ k.T).argmax(1) == torch.arange(len(q))).float().mean().item()


def test_tubelet_pairs_share_their_motion_and_temporal_pairs_their_colours(dataset):
    """What Table 5.2's ordering rests on, in the CPU preset's views (32 x 32 crops of 8 frames): the
    positive of a tubelet pair is found among the batch's keys from where its clips change over time
    (frame-difference maps), not from its colours; the temporal baseline's positive is the reverse."""
    import tubelet_contrast as tc
    torch.manual_seed(0)
    rates = {}
    for mode in ("tubelet", "temporal"):
        args = tc.parse_args(["--mode", mode])  # the synthetic preset
        videos = VideoClipDataset(samples_of(dataset)["train"], clip_len=args.clip_len, strides=args.strides,
                                  short_side=args.short_side)
        loader = torch.utils.data.DataLoader(tc.PairDataset(videos, mode), batch_size=8, shuffle=True, drop_last=True)
        colour, motion = [], []
        for v1, v2 in [batch for _ in range(2) for batch in loader]:  # two epochs: 6 batches
            q, k = tc.make_views(v1, v2, args, normalize=False)  # (B, 3, T, S, S) in [0, 1]
            colour.append(_in_batch_pick_rate(q.mean((2, 3, 4)), k.mean((2, 3, 4))))
            changes = [(x[:, :, 1:] - x[:, :, :-1]).abs().mean(1).flatten(1) for x in (q, k)]
            motion.append(_in_batch_pick_rate(*changes))
        rates[mode] = np.mean(colour), np.mean(motion)
    assert rates["tubelet"][1] > 0.8 and rates["tubelet"][0] < 0.4, rates  # chance 1 / 8
    assert rates["temporal"][0] > 0.6 and rates["temporal"][1] < 0.5, rates


def test_grey_noise_backgrounds_share_one_colour_statistic(dataset, tmp_path):
    """The world of the Table 5.2 miniature (README): every background is blurred colour noise around
    grey, so the videos' mean colours agree (the default world's differ by tens of grey levels) while
    each frame is textured and colour still does not find a video's class; an unknown choice is refused."""
    grey = synthetic_video_dataset(tmp_path / "grey", num_classes=8, videos_per_class=4, num_frames=2,
                                   size=(64, 86), background="grey-noise")
    assert _colour_1nn_accuracy(grey) < 0.2  # chance 3 / 31: appearance does not tell the classes apart
    means = {}
    for name, data in (("gratings", dataset), ("grey-noise", grey)):
        frames = [read_clip(path, [0])[0].astype(np.float32) for path, _ in samples_of(data)["train"]]
        means[name] = np.array([f.mean((0, 1)) for f in frames])  # (videos, 3)
        if name == "grey-noise":
            assert all(30 < f.std((0, 1)).min() < 70 for f in frames)  # textured: std 50 before h264
    assert np.abs(means["grey-noise"] - 128).max() < 20 and means["grey-noise"].std(0).max() < 8, means
    assert means["gratings"].std(0).min() > 20, means
    with pytest.raises(ValueError, match="background 'stripes'"):
        synthetic_video_dataset(tmp_path / "x", background="stripes")


def test_same_seed_same_videos(tmp_path):
    small = dict(num_classes=3, videos_per_class=2, num_frames=8, size=(32, 48))
    runs = [synthetic_video_dataset(tmp_path / name, **small, seed=seed)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    lists = [read_video_list(r["train_list"], r["root"]) for r in runs]
    for (pa, la), (pb, lb), (pc, lc) in zip(*lists):
        assert la == lb == lc
        frames = [read_clip(p, range(8)) for p in (pa, pb, pc)]
        assert np.array_equal(frames[0], frames[1])
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            assert fa.read() == fb.read()  # x264 output is deterministic, even multi-threaded
        assert not np.array_equal(frames[0], frames[2])


def _write(root, result_queue):
    result_queue.put(synthetic_video_dataset(root, num_classes=2, videos_per_class=3,
                                             num_frames=8, size=(32, 32)))


def test_concurrent_writers_agree(tmp_path):
    root = str(tmp_path / "shared")
    queue = multiprocessing.get_context("fork").Queue()
    workers = [multiprocessing.get_context("fork").Process(target=_write, args=(root, queue))
               for _ in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    assert results[0] == results[1] and results[0]["root"] == root
    assert os.listdir(tmp_path) == ["shared"]  # the loser's temporary folder is gone
    assert len(read_video_list(results[0]["train_list"], root)) == 2 * 2
