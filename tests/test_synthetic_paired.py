"""Tests of the synthetic paired RGB / flow / depth / skeleton dataset in common/synthetic.py: the
16-bit PNG writer, the NTU RGB+D on-disk layout and names, the cross-view split, depth against
the actors, flow direction, determinism and the skeleton files' format."""
import os
import struct

import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, decode_png, read_file

from common.skeleton import (MAX_FRAMES, SkeletonDataset, count_valid_frames, ntu_split,
                             parse_ntu_name, protocol_paths)
from common.synthetic import (MIRROR_JOINTS, PAIRED_SOURCE, PAIRED_TARGET, _paired_scene, _to_camera, flow_to_uint8,
                              mirror_people, paired_intrinsics, render_paired_views, synthetic_paired_dataset, write_png16)
from common.video import count_frames, read_clip

# torchvision 0.29 deprecates its image codecs (in favour of torchcodec); they still work
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
PARAMS = dict(target_actions=6, source_actions=2, subjects=2, replications=1, num_frames=(8, 11),
              rgb_size=(48, 64), depth_size=(40, 48), seed=0)
HANDSHAKE = dict(PAIRED_TARGET)[6]
MIDDLE_OF_SPINE = 1


def read_png16(path):
    image = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    assert image.dtype == torch.uint16 and image.shape[0] == 1
    return image[0].to(torch.int32).numpy()  # uint16 tensors support few ops


def read_flow(path):
    return decode_jpeg(read_file(str(path)))[0].numpy().astype(np.int64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return synthetic_paired_dataset(tmp_path_factory.mktemp("paired") / "ntu", **PARAMS)


@pytest.fixture(scope="module")
def names(dataset):
    avis = sorted(os.listdir(dataset["rgb_dir"]))
    assert all(a.endswith("_rgb.avi") for a in avis)
    return [a[:-len("_rgb.avi")] for a in avis]


def test_write_png16_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65536, (13, 7)).astype(np.uint16)
    image[0, :5] = [0, 1, 255, 256, 65535]
    write_png16(tmp_path / "a.png", image)
    raw = (tmp_path / "a.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    assert struct.unpack(">IIBB", raw[16:26]) == (7, 13, 16, 0)  # width, height, 16 bit, grey
    np.testing.assert_array_equal(read_png16(tmp_path / "a.png"), image)
    # other integer arrays in range are accepted; out-of-range values are refused
    write_png16(tmp_path / "b.png", image.astype(np.int64))
    np.testing.assert_array_equal(read_png16(tmp_path / "b.png"), image)
    with pytest.raises(ValueError):
        write_png16(tmp_path / "c.png", np.full((2, 2), 65536))


def test_layout_and_names(dataset, names):
    target, source = dataset["target_actions"], dataset["source_actions"]
    assert target == [n for n, _ in PAIRED_TARGET] and source == [n for n, _ in PAIRED_SOURCE[:2]]
    assert not set(target) & set(source)
    assert max(target) <= 60 and min(source) > 60  # NTU-60 classes vs NTU-120-only classes
    assert sorted(dataset["classes"]) == sorted(target + source)
    skeleton_names = set()
    for split in ("train", "val"):
        skeleton_names |= set(SkeletonDataset(**protocol_paths(dataset["skeleton_dir"], split)).sample_names)
    performances = {}
    for name in names:
        ids = parse_ntu_name(name)
        performances.setdefault((ids["subject"], ids["replication"], ids["action"]), []).append(ids["camera"])
        frames = count_frames(os.path.join(dataset["rgb_dir"], f"{name}_rgb.avi"))
        assert 8 <= frames <= 11
        flow = sorted(os.listdir(os.path.join(dataset["flow_dir"], name)))
        assert flow == sorted(f"flow_{axis}_{i:05d}.jpg" for i in range(1, frames) for axis in "xy")
        depth_dir = os.path.join(dataset["depth_dir"], name)
        if ids["action"] in target:
            assert sorted(os.listdir(depth_dir)) == [f"MDepth-{i:08d}.png" for i in range(1, frames + 1)]
            assert read_png16(os.path.join(depth_dir, "MDepth-00000001.png")).shape == (40, 48)
            assert name in skeleton_names
        else:
            assert ids["action"] in source and not os.path.exists(depth_dir)
            assert name not in skeleton_names
    # every performance of every action, subject and replication, from the three cameras
    assert sorted(performances) == sorted((p, 1, a) for p in (1, 2) for a in target + source)
    assert all(sorted(cameras) == [1, 2, 3] for cameras in performances.values())
    assert read_clip(os.path.join(dataset["rgb_dir"], f"{names[0]}_rgb.avi"), [0]).shape == (1, 48, 64, 3)


def test_cross_view_split_and_skeleton_format(dataset):
    target = dataset["target_actions"]
    for split, cameras in (("train", {2, 3}), ("val", {1})):
        data = SkeletonDataset(**protocol_paths(dataset["skeleton_dir"], split))
        assert data.data.shape == (len(data), 3, MAX_FRAMES, 25, 2) and data.data.dtype == np.float32
        assert {parse_ntu_name(n)["camera"] for n in data.sample_names} == cameras
        assert all(ntu_split(n, "xview") == split for n in data.sample_names)
        # 2 subjects x 1 replication x (2 or 1) cameras per class, labels 0-based over the target
        assert np.bincount(data.labels, minlength=6).tolist() == [2 * len(cameras)] * 6
        assert all(target[label] == parse_ntu_name(name)["action"]
                   for name, label in zip(data.sample_names, data.labels))
        for i in range(len(data)):
            sample, label, n = data[i]
            name = data.sample_names[i]
            depth_frames = len(os.listdir(os.path.join(dataset["depth_dir"], name)))
            assert n == count_valid_frames(sample) == depth_frames
            two_people = dataset["classes"][target[label]] == HANDSHAKE
            assert sample[:, :n, :, 1].any() == two_people
            # camera space: people stand about 2 m in front of the camera, below and above its height
            z = sample[2, :n, :, 0]
            assert 1.0 < z.min() and z.max() < 3.5
            assert sample[1, :n, :, 0].min() < -0.5 < 0.3 < sample[1, :n, :, 0].max()


def test_depth_is_positive_on_the_actors_and_zero_elsewhere(dataset):
    focal, cx, cy = dataset["depth_intrinsics"]
    assert focal == pytest.approx(24 / np.tan(np.radians(70.6 / 2)))  # NTU's Kinect v2 depth FOV
    data = SkeletonDataset(**protocol_paths(dataset["skeleton_dir"], "train"))
    checked = 0
    for i in range(len(data)):
        sample, _, n = data[i]
        name = data.sample_names[i]
        for t in (0, n // 2, n - 1):
            depth = read_png16(os.path.join(dataset["depth_dir"], name, f"MDepth-{t + 1:08d}.png"))
            assert depth.max() < 65535 and 0 < (depth > 0).mean() < 0.5  # masked: actors only
            x, y, z = sample[:, t, MIDDLE_OF_SPINE, 0]
            u, v = int(round(cx + focal * x / z)), int(round(cy - focal * y / z))
            if 0 <= u < depth.shape[1] and 0 <= v < depth.shape[0]:
                # the torso's surface (14 cm radius) or an arm before it: in front of the joint
                assert 0 < z * 1000 - depth[v, u] < 700
                checked += 1
            # far from every projected joint there is nothing: background is 0
            joints_u = cx + focal * sample[0, t, :, :] / sample[2, t, :, :].clip(min=1e-3)
            far = np.abs(np.arange(depth.shape[1])[:, None, None] - joints_u[None]).min((1, 2)) > 8
            assert not depth[:, far].any()
    assert checked > 0.9 * 3 * len(data)


def test_rgb_shows_background_exactly_where_depth_is_zero():
    rng = np.random.default_rng(1)
    joints = np.zeros((4, 1, 25, 3))
    joints[:, 0, :, 1] = np.linspace(-0.8, 0.8, 25)  # a vertical line of joints, 3 m away
    joints[:, 0, :, 2] = 3.0
    joints[:, 0, ::2, 0] = 0.1
    background = rng.uniform(0, 100, (40, 48, 3))
    colours = np.full((1, 4, 3), 250.0)  # shaded to >= 0.55 * 250: brighter than the background
    views = render_paired_views(joints, colours, (40, 48), (36, 44), background)
    actor = views["mask"]
    assert actor.any() and not actor.all()
    same = (views["rgb"] == np.round(background).astype(np.uint8)[None]).all(-1)
    np.testing.assert_array_equal(same, ~actor)
    assert views["depth"].shape == (4, 36, 44) and views["depth"].dtype == np.uint16
    # the depth camera sees the same actors: something in front, between 2.8 and 3 m away
    assert (views["depth"] > 0).any(axis=(1, 2)).all()
    assert 2800 < views["depth"][views["depth"] > 0].min() and views["depth"].max() < 3000


def test_flow_follows_the_motion():
    h, w = 40, 48
    focal = (w / 2) / np.tan(np.radians(84.1) / 2)  # Kinect v2 colour FOV
    assert paired_intrinsics((h, w), 84.1)[0] == pytest.approx(focal)
    base = np.zeros((1, 25, 3))
    base[0, :, 1] = np.linspace(-0.5, 0.5, 25)
    base[0, :, 2] = 3.0
    background = np.full((h, w, 3), 100.0)
    colours = np.full((1, 4, 3), 200.0)
    for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1)):
        joints = np.repeat(base[None], 3, 0)
        joints[:, 0, :, axis] += sign * 0.05 * np.arange(3)[:, None]  # 5 cm per frame
        flow = render_paired_views(joints, colours, (h, w), (h, w), background)["flow"]
        mask = render_paired_views(joints, colours, (h, w), (h, w), background)["mask"][:-1]
        assert flow.shape == (2, h, w, 2)
        assert not flow[~mask].any()  # static background: no motion
        # camera x (Kinect: to the left, images mirrored) moves right in the image; camera y up
        # moves up in the image, i.e. towards smaller rows
        expected = focal * 0.05 / 3 * (sign if axis == 0 else -sign)
        np.testing.assert_allclose(flow[mask][:, axis], expected, rtol=1e-3)
        np.testing.assert_allclose(flow[mask][:, 1 - axis], 0, atol=1e-3)
    # the JPEG encoding of denseflow / mmaction2: 128 + flow * 128 / 20, clipped
    np.testing.assert_array_equal(flow_to_uint8(np.array([0.0, 5.0, -5.0, 20.0, -20.0, 40.0])),
                                  [128, 160, 96, 255, 0, 255])


def test_flow_files_are_neutral_on_the_background(dataset, names):
    for name in names[:6]:
        flow_x = read_flow(os.path.join(dataset["flow_dir"], name, "flow_x_00001.jpg"))
        flow_y = read_flow(os.path.join(dataset["flow_dir"], name, "flow_y_00001.jpg"))
        assert flow_x.shape == (48, 64)
        for image in (flow_x, flow_y):  # the corners show the static room
            corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
            assert np.abs(corners - 128).max() <= 2


def test_deterministic_by_seed_whatever_the_workers(tmp_path):
    small = dict(PARAMS, target_actions=1, source_actions=1, subjects=1)
    a = synthetic_paired_dataset(tmp_path / "a", **small)
    b = synthetic_paired_dataset(tmp_path / "b", workers=0, **small)  # in-process, not a pool
    c = synthetic_paired_dataset(tmp_path / "c", **dict(small, seed=1))
    files = sorted(os.path.relpath(os.path.join(d, f), a["root"])
                   for d, _, fs in os.walk(a["root"]) for f in fs)
    assert len(files) > 30
    for f in files:
        if f.endswith(".avi"):  # compare the decoded frames, not container metadata
            fa, fb = (read_clip(os.path.join(r, f), list(range(8))) for r in (a["root"], b["root"]))
            np.testing.assert_array_equal(fa, fb)
        else:
            with open(os.path.join(a["root"], f), "rb") as fa, open(os.path.join(b["root"], f), "rb") as fb:
                assert fa.read() == fb.read(), f
    data_a = np.load(os.path.join(a["skeleton_dir"], "train_data_joint.npy"))
    data_c = np.load(os.path.join(c["skeleton_dir"], "train_data_joint.npy"))
    assert not np.array_equal(data_a, data_c)
    # a complete dataset with the same parameters is reused, not rewritten
    stamp = os.stat(os.path.join(a["root"], "done.json")).st_mtime_ns
    assert synthetic_paired_dataset(tmp_path / "a", **small) == a
    assert os.stat(os.path.join(a["root"], "done.json")).st_mtime_ns == stamp


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        synthetic_paired_dataset(tmp_path / "a", target_actions=len(PAIRED_TARGET) + 1)
    with pytest.raises(ValueError):
        synthetic_paired_dataset(tmp_path / "b", rgb_size=(47, 64))


# ============ the world fits the thesis's augmentation (Sec 2.4.3: corner crops, flips) ============

def _chirality(joints):
    """Sign of det(left hip - right hip, middle of the spine - its base, the feet's forward direction) per
    frame: the same for every real body, the opposite for one turned inside out (left and right
    relabelled without mirroring)."""
    lateral, up = joints[..., 12, :] - joints[..., 16, :], joints[..., 1, :] - joints[..., 0, :]
    forward = joints[..., 15, :] - joints[..., 14, :] + joints[..., 19, :] - joints[..., 18, :]
    return np.sign(np.linalg.det(np.stack([lateral, up, forward], -2)))


def _path(joints, j):
    return np.linalg.norm(np.diff(joints[:, j], axis=0), axis=-1).sum()


LEFT_RIGHT = dict(wave=(6, 10), raise_arm=(6, 10), kick=(15, 19))  # (left, right) wrist or foot that acts


@pytest.mark.parametrize("action", [a for _, a in PAIRED_TARGET + PAIRED_SOURCE])
def test_a_mirrored_performance_is_the_same_motion_with_left_and_right_swapped(action):
    """A horizontal flip of a clip shows the mirror image of its performance. Every class is drawn
    mirrored with p = 1/2 and no class is the mirror of another (no left- and right-arm pair), so a
    flipped clip is a likely clip of its own class: the flip keeps every label's meaning."""
    assert MIRROR_JOINTS[[4, 8, 12, 16, 21, 23]].tolist() == [8, 4, 16, 12, 23, 21]
    assert (MIRROR_JOINTS[MIRROR_JOINTS] == np.arange(25)).all()
    scene = [_paired_scene(action, np.random.default_rng(3), 20, (1.0, 0.9), 1, mirror=m) for m in (False, True)]
    for person in range(scene[0].shape[1]):
        plain, mirrored = (s[:, person] for s in scene)
        # the same body motion: every distance between two joints, with left and right swapped
        dist = lambda j: np.linalg.norm(j[:, :, None] - j[:, None], axis=-1)
        np.testing.assert_allclose(dist(mirrored), dist(plain)[:, MIRROR_JOINTS][:, :, MIRROR_JOINTS], atol=1e-9)
        chirality = _chirality(plain)[0]
        assert (_chirality(plain) == chirality).all() and (_chirality(mirrored) == chirality).all()  # real bodies
        assert (_chirality(plain[:, MIRROR_JOINTS]) == -chirality).all()  # not merely relabelled
    if action in LEFT_RIGHT:  # a one-sided action: the other side acts in the mirror image
        left, right = LEFT_RIGHT[action]
        assert _path(scene[0][:, 0], right) > 2 * _path(scene[0][:, 0], left)
        assert _path(scene[1][:, 0], left) > 2 * _path(scene[1][:, 0], right)
        lefty = [_path(p, left) > _path(p, right) for p in
                 (_paired_scene(action, np.random.default_rng(s), 20, (1.0, 1.0), 1)[:, 0] for s in range(200))]
        assert 0.35 < np.mean(lefty) < 0.65  # mirrored with p = 1/2
    assert not {"raise_left_arm", "raise_right_arm"} & set(dict(PAIRED_SOURCE + PAIRED_TARGET).values())


def test_actors_fill_about_three_quarters_of_the_frame_height(dataset):
    """NTU's actors fill a large part of the frame; here a standing person spans 50-95% of the height of
    the depth frame's centre square (the square the clips are cut from), in every single-person video
    (the median over its frames; up to 95% for a jump or raised arms, at this test's 40-pixel frames)."""
    data = SkeletonDataset(**protocol_paths(dataset["skeleton_dir"], "train"))
    shares = []
    for name, label in zip(data.sample_names, data.labels):
        if dataset["classes"][dataset["target_actions"][label]] == HANDSHAKE:
            continue
        folder = os.path.join(dataset["depth_dir"], name)
        heights = []
        for f in sorted(os.listdir(folder)):
            on = read_png16(os.path.join(folder, f)) > 0
            side = min(on.shape)
            square = on[:, (on.shape[1] - side) // 2:][:, :side]
            rows = np.nonzero(square.any(1))[0]
            heights.append((rows[-1] - rows[0] + 1) / side if len(rows) else 0)
        shares.append(np.median(heights))
    assert len(shares) >= 10 and 0.5 < min(shares) and max(shares) <= 0.95 and 0.6 < np.median(shares) < 0.85


def test_a_flipped_clip_is_the_rendering_of_the_mirrored_performance():
    """The flip on the rendered frames, not only on the joints: flipping a camera's RGB, depth and flow
    frames left-right gives what the same camera renders of the mirror image of the performance (a
    performance of the same class, drawn with p = 1/2: the test above), flow with its x negated."""
    scene = _paired_scene("kick", np.random.default_rng(5), 6, (1.0,), 1, mirror=False)
    joints = _to_camera(scene, 2, (2.2, 1.0, 0.03))
    colours = np.random.default_rng(0).uniform(20, 235, (1, 4, 3))
    background = np.full((40, 48, 3), 90.0)
    plain, mirrored = (render_paired_views(j, colours, (40, 48), (36, 40), background)
                       for j in (joints, mirror_people(joints)))
    assert plain["mask"].mean() > 0.03 and not np.array_equal(plain["depth"], plain["depth"][..., ::-1])
    def same_pixels(a, b, atol):  # share of the (t, y, x) pixels where a and b agree in every channel
        close = np.isclose(np.asarray(a, float), np.asarray(b, float), atol=atol)
        return close.reshape(*close.shape[:3], -1).all(-1).mean()
    assert same_pixels(mirrored["depth"], plain["depth"][:, :, ::-1], atol=2) > 0.995  # mm
    assert same_pixels(mirrored["rgb"], plain["rgb"][:, :, ::-1], atol=2) > 0.995
    assert same_pixels(mirrored["flow"], plain["flow"][:, :, ::-1] * [-1, 1], atol=0.01) > 0.995  # pixels
