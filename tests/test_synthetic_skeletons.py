"""Tests of the synthetic skeleton dataset in common/synthetic.py: the NTU community format,
forward-kinematics sanity, one/two-person bodies, caching, determinism and class signal."""
import os

import numpy as np
import pytest

from common.backbones import NTU_EDGES
from common.skeleton import MAX_FRAMES, SkeletonDataset, count_valid_frames, protocol_paths
from common.synthetic import (SKELETON_ACTIONS, TWO_PERSON_ACTIONS, render_skeleton_action,
                              synthetic_skeleton_dataset)

PARAMS = dict(num_classes=8, per_class_train=10, per_class_val=6, frames=(40, 120), seed=0)
LEFT_WRIST, RIGHT_WRIST = 6, 10


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_skeleton_dataset(tmp_path_factory.mktemp("syn") / "skeletons", **PARAMS)


@pytest.fixture(scope="module")
def splits(dataset):
    return {split: SkeletonDataset(**dataset[split]) for split in ("train", "val")}


def test_community_format(dataset, splits):
    assert dataset["classes"] == list(SKELETON_ACTIONS[:8]) and "approach" in dataset["classes"]
    for split, per_class in (("train", 10), ("val", 6)):
        assert protocol_paths(dataset["root"], split) == dataset[split]
        data = splits[split]
        assert len(data) == 8 * per_class and data.data.dtype == np.float32
        assert data.data.shape == (8 * per_class, 3, MAX_FRAMES, 25, 2)
        assert np.bincount(data.labels).tolist() == [per_class] * 8
        assert all(name.startswith(dataset["classes"][label])
                   for name, label in zip(data.sample_names, data.labels))
        sample, label, n = data[0]
        assert sample.shape == (3, MAX_FRAMES, 25, 2) and sample.dtype == np.float32
        assert isinstance(label, int) and isinstance(n, int)
    assert not set(splits["train"].sample_names) & set(splits["val"].sample_names)


def test_num_frame_matches_nonzero_frames(splits):
    lengths = []
    for data in splits.values():
        for i in range(len(data)):
            sample, _, n = data[i]
            assert n == count_valid_frames(sample)
            assert sample[:, :n, :, 0].any(axis=(0, 2)).all() and not sample[:, n:].any()  # padding after the end
            lengths.append(n)
    # durations vary (speed), within frames=(40, 120) less up to 10% cut at either end
    assert min(lengths) >= 40 - 2 * 4 and max(lengths) <= 120 and np.ptp(lengths) > 40


def bone_lengths(body):
    """(T, E) lengths of the NTU_EDGES bones of a (3, T, 25) body."""
    child, parent = np.array(NTU_EDGES).T
    return np.linalg.norm(body[:, :, child] - body[:, :, parent], axis=0)


@pytest.mark.parametrize("action", SKELETON_ACTIONS)
def test_bones_keep_their_length(action):
    sample = render_skeleton_action(action, np.random.default_rng(3), 80, noise=0)
    noisy = render_skeleton_action(action, np.random.default_rng(3), 80)  # same draws plus noise
    for m in range(2 if action in TWO_PERSON_ACTIONS else 1):
        exact = bone_lengths(sample[..., m])
        assert np.ptp(exact, axis=0).max() < 1e-4  # rigid bones: forward kinematics
        assert 0.01 < exact.min() and exact.max() < 0.5  # metres, a human-sized skeleton
        assert bone_lengths(noisy[..., m]).std(axis=0).max() < 0.03  # ~1 cm noise on each end
        assert np.ptp(sample[..., m], axis=1).max() > 0.15  # while the body does move


def test_second_person_only_for_two_person_actions(dataset, splits):
    for data in splits.values():
        for i in range(len(data)):
            sample, label, n = data[i]
            if dataset["classes"][label] in TWO_PERSON_ACTIONS:
                assert sample[:, :n, :, 1].all()
                # the two bodies are apart, ~0.7-3 m between their spine bases
                assert 0.5 < np.linalg.norm(sample[:, 0, 0, 0] - sample[:, 0, 0, 1]) < 3.5
            else:
                assert not sample[..., 1].any()


def test_deterministic_and_cached(dataset, tmp_path):
    other = synthetic_skeleton_dataset(tmp_path / "again", **PARAMS)
    for split in ("train", "val"):
        for key in ("data_path", "label_path", "num_frame_path"):
            with open(dataset[split][key], "rb") as a, open(other[split][key], "rb") as b:
                assert a.read() == b.read(), (split, key)
    reseeded = synthetic_skeleton_dataset(tmp_path / "seed1", **{**PARAMS, "seed": 1})
    assert not np.array_equal(np.load(reseeded["val"]["data_path"]),
                              np.load(other["val"]["data_path"]))

    mtimes = {p: os.stat(p).st_mtime_ns for p in other["train"].values()}
    assert synthetic_skeleton_dataset(tmp_path / "again", **PARAMS) == other
    assert {p: os.stat(p).st_mtime_ns for p in other["train"].values()} == mtimes
    assert not [n for n in os.listdir(tmp_path) if ".tmp" in n]  # temporary folders removed


def test_default_root_under_vef_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VEF_CACHE", str(tmp_path))
    small = dict(num_classes=2, per_class_train=1, per_class_val=1, frames=(20, 30))
    result = synthetic_skeleton_dataset(**small)
    assert os.path.dirname(result["root"]) == str(tmp_path)
    assert os.path.basename(result["root"]).startswith("synthetic_skeletons_")
    assert synthetic_skeleton_dataset(**small)["root"] == result["root"]
    assert synthetic_skeleton_dataset(**{**small, "seed": 5})["root"] != result["root"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic_skeleton_dataset(tmp_path / "a", num_classes=len(SKELETON_ACTIONS) + 1)
    with pytest.raises(ValueError):
        synthetic_skeleton_dataset(tmp_path / "b", frames=(40, MAX_FRAMES + 1))


def test_wrist_height_separates_raising_left_and_right_arm(dataset, splits):
    """The files are normalised (z up the spine), whatever the viewpoint: the raised wrist sweeps a
    large height range, the other stays low; the raised one is the subject's left (x < 0) or right."""
    left, right = (dataset["classes"].index(a) for a in ("raise_left_arm", "raise_right_arm"))
    for data in splits.values():
        for i in range(len(data)):
            sample, label, n = data[i]
            if label in (left, right):
                ranges = np.ptp(sample[2, :n, [LEFT_WRIST, RIGHT_WRIST], 0], axis=1)
                raised, other = ranges if label == left else ranges[::-1]
                assert raised > 0.5 and other < 0.25, (label, ranges)
                # normalize_skeleton puts the right shoulder at +x: the left wrist is at x < 0
                assert sample[0, :n, LEFT_WRIST, 0].mean() < 0 < sample[0, :n, RIGHT_WRIST, 0].mean()


def motion_features(data):
    """Per person and joint, the temporal spread (sqrt of summed variance over x, y, z) of the
    positions relative to person 1's middle of the spine: invariant to place and to turning."""
    features = []
    for i in range(len(data)):
        sample, _, n = data[i]
        x = sample[:, :n]
        present = np.any(x != 0, axis=0, keepdims=True)
        centred = (x - x[:, :, 1:2, 0:1]) * present
        features.append(np.sqrt(centred.var(axis=1).sum(axis=0)).ravel())
    return np.array(features)


def test_nearest_centroid_on_motion_features_beats_chance(splits):
    train, val = splits["train"], splits["val"]
    features, labels = motion_features(train), train.labels
    centroids = np.stack([features[labels == c].mean(0) for c in range(8)])
    predicted = np.argmin(((motion_features(val)[:, None] - centroids) ** 2).sum(-1), axis=1)
    accuracy = (predicted == val.labels).mean()
    assert accuracy >= 2 / 8, accuracy  # >= 2x chance; about 0.95 in practice


def test_all_actions_render(tmp_path):
    result = synthetic_skeleton_dataset(tmp_path / "all", num_classes=len(SKELETON_ACTIONS),
                                        per_class_train=2, per_class_val=1, frames=(30, 60))
    data = SkeletonDataset(**result["train"])
    assert result["classes"] == list(SKELETON_ACTIONS)
    assert np.bincount(data.labels).tolist() == [2] * len(SKELETON_ACTIONS)
    assert np.isfinite(data.data).all()
