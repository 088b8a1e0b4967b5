"""Tests of common/skeleton.py on tiny files written here: NTU .skeleton parsing, body selection,
2s-AGCN normalisation, benchmark splits, prepare_ntu, prepare_pku_mmd and SkeletonDataset."""
import os
import pickle

import numpy as np
import pytest

from common import skeleton as sk

BODY_ID = 72057594037931101  # a real-looking 64-bit Kinect id: float64 would lose its last digit


# ============ helpers writing the raw formats ============

def body_text(body_id, joints):
    """Lines of one body: the 10 body values, the joint count, 25 joint lines of 12 values."""
    lines = [f"{body_id} 0 1 2 0 2 0 0.01 -0.02 2", "25"]
    for j, (x, y, z) in enumerate(joints):
        # depthX depthY colorX colorY orientation(4) trackingState (1 for joint 3, else 2)
        lines.append(f"{x:.6f} {y:.6f} {z:.6f} 250.1 200.2 {1000 + j}.5 {500 + j}.25 "
                     f"0.1 0.2 0.3 0.4 {1 if j == 3 else 2}")
    return lines


def write_ntu(path, frames, ids=None):
    """frames: list over time of lists of (25, 3) bodies; returns the path."""
    lines = [str(len(frames))]
    for bodies in frames:
        lines.append(str(len(bodies)))
        for m, joints in enumerate(bodies):
            lines += body_text(BODY_ID + m if ids is None else ids[m], joints)
    with open(path, "w") as f:
        f.write("\r\n".join(lines) + "\r\n")  # the NTU files have Windows line ends
    return str(path)


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def canonical_body(rng):
    """(25, 3) skeleton in the normalised frame: spine base -> mid-spine along +z, mid-spine at
    the origin, left -> right shoulder along +x (perpendicular to the spine bone)."""
    joints = rng.normal(scale=0.3, size=(25, 3))
    joints[1] = 0
    joints[0] = (0, 0, -0.3)
    joints[4] = (-0.2, 0.1, 0.25)
    joints[8] = (0.2, 0.1, 0.25)
    return joints


def moving_sequence(rng, num_frames, amplitude, offset=(0, 0, 3.0)):
    """(T, 25, 3): a canonical body rotated and moved somewhere, wobbling by `amplitude` after
    frame 0 (frame 0 keeps the canonical shape: shoulders perpendicular to the spine bone)."""
    rotation, base = random_rotation(rng), canonical_body(rng)
    t = np.arange(num_frames)[:, None, None]
    return (base @ rotation.T + np.asarray(offset)
            + amplitude * np.sin(0.3 * t) * np.cos(0.2 * t + np.arange(75).reshape(1, 25, 3)))


# ============ .skeleton parsing ============

def test_read_ntu_skeleton_values(tmp_path):
    rng = np.random.default_rng(0)
    a, b, c = (rng.normal(size=(25, 3)) for _ in range(3))
    path = write_ntu(tmp_path / "S001C001P001R001A001.skeleton", [[a], [b, c], []])
    s = sk.read_ntu_skeleton(path)
    assert s["frames"].shape == (3, 2, 25, 3) and s["frames"].dtype == np.float32
    np.testing.assert_allclose(s["frames"][0, 0], a, atol=1e-6)
    np.testing.assert_allclose(s["frames"][1, 1], c, atol=1e-6)
    assert not s["frames"][0, 1].any() and not s["frames"][2].any()  # absent bodies are zeros
    assert s["body_ids"].tolist() == [[BODY_ID, -1], [BODY_ID, BODY_ID + 1], [-1, -1]]
    assert s["num_bodies"].tolist() == [1, 2, 0]
    assert s["tracking_state"][1, 0, 3] == 1 and s["tracking_state"][1, 0, 4] == 2
    np.testing.assert_allclose(s["color_xy"][0, 0, 7], [1007.5, 507.25])
    assert s["name"] == "S001C001P001R001A001"


def test_read_ntu_skeleton_empty_file(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text("0\n")
    s = sk.read_ntu_skeleton(path)
    assert s["frames"].shape == (0, 0, 25, 3)
    assert not sk.ntu_to_array(s).any()


@pytest.mark.parametrize("corrupt, line, message", [
    (lambda L: L.__setitem__(5, "0.1 0.2 0.3"), 6, "expected 12 values"),      # short joint line
    (lambda L: L.__setitem__(9, L[9].replace("0.1", "abc", 1)), 10, "not a number"),
    (lambda L: L.__setitem__(3, "24"), 4, "expected 25 joints"),
    (lambda L: L.__setitem__(1, "x"), 2, "body count"),
    (lambda L: L.__setitem__(2, "1 2 3"), 3, "body line"),
    (lambda L: L.append("garbage"), 30, "unexpected content"),
    (lambda L: L.__delitem__(slice(20, None)), 21, "unexpected end of file"),
])
def test_malformed_skeleton_names_file_and_line(tmp_path, corrupt, line, message):
    path = write_ntu(tmp_path / "bad.skeleton", [[np.zeros((25, 3))]])
    # lines: 1 frame count, 2 body count, 3 body line, 4 joint count, 5-29 joints
    lines = open(path).read().splitlines()
    corrupt(lines)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=f"bad.skeleton:{line}: .*{message}"):
        sk.read_ntu_skeleton(path)


# ============ body selection and normalisation ============

def test_ntu_to_array_keeps_highest_energy_bodies(tmp_path):
    rng = np.random.default_rng(1)
    still = moving_sequence(rng, 20, 0.0)        # a static false detection, listed first
    big = moving_sequence(rng, 20, 0.5)
    small = moving_sequence(rng, 20, 0.05)
    path = write_ntu(tmp_path / "S001C001P001R001A050.skeleton",
                     [[still[t], small[t], big[t]] for t in range(20)])
    array = sk.ntu_to_array(sk.read_ntu_skeleton(path))
    assert array.shape == (3, 300, 25, 2) and array.dtype == np.float32
    np.testing.assert_allclose(array[:, :20, :, 0], big.transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_allclose(array[:, :20, :, 1], small.transpose(2, 0, 1), atol=1e-5)
    assert not array[:, 20:].any()
    assert sk.body_energy(still) < sk.body_energy(small) < sk.body_energy(big)


@pytest.mark.parametrize("center_each_frame", [True, False])
def test_normalize_aligns_first_frame(center_each_frame):
    rng = np.random.default_rng(2)
    data = np.zeros((4, 3, 300, 25, 2), dtype=np.float32)
    for n in range(4):
        data[n, :, :50, :, 0] = moving_sequence(rng, 50, 0.05).transpose(2, 0, 1)
        data[n, :, :50, :, 1] = moving_sequence(rng, 50, 0.05, (1, 0, 3)).transpose(2, 0, 1)
    out = sk.normalize_skeleton(data, center_each_frame=center_each_frame)
    assert out.shape == data.shape and out.dtype == np.float32
    first = out[:, :, 0, :, 0]  # (N, 3, V): body 0, frame 0
    np.testing.assert_allclose(first[:, :, 1], 0, atol=1e-5)  # mid-spine at the origin
    spine = first[:, :, 1] - first[:, :, 0]
    shoulders = first[:, :, 8] - first[:, :, 4]
    np.testing.assert_allclose(spine / np.linalg.norm(spine, axis=1, keepdims=True),
                               np.tile([0, 0, 1], (4, 1)), atol=1e-5)
    np.testing.assert_allclose(shoulders / np.linalg.norm(shoulders, axis=1, keepdims=True),
                               np.tile([1, 0, 0], (4, 1)), atol=1e-5)
    # rigid motion: bone lengths of both bodies unchanged, every frame
    for m in range(2):
        before = np.linalg.norm(data[:, :, :50, 0, m] - data[:, :, :50, 20, m], axis=1)
        after = np.linalg.norm(out[:, :, :50, 0, m] - out[:, :, :50, 20, m], axis=1)
        np.testing.assert_allclose(after, before, rtol=1e-4)
    centres = out[:, :, :, 1, 0]  # body 0 mid-spine over time
    if center_each_frame:
        np.testing.assert_allclose(centres, 0, atol=1e-5)
    else:
        assert np.abs(centres[:, :, 1:50]).max() > 1e-3  # the wobble is kept


def test_normalize_pads_null_frames_by_repeating():
    rng = np.random.default_rng(3)
    sample = np.zeros((3, 12, 25, 2), dtype=np.float32)
    sample[:, 2:7, :, 0] = moving_sequence(rng, 5, 0.1).transpose(2, 0, 1)  # empty start
    out = sk.normalize_skeleton(sample)
    # frames 2-6 move to 0-4, then repeat: 5-9 = 0-4, 10-11 = 0-1
    np.testing.assert_allclose(out[:, 5:10], out[:, 0:5])
    np.testing.assert_allclose(out[:, 10:12], out[:, 0:2])
    assert np.any(out[:, :, :, 0] != 0, axis=(0, 2)).all()
    assert not out[..., 1].any()  # the empty second body stays empty
    assert not sk.normalize_skeleton(np.zeros((3, 5, 25, 2))).any()


# ============ splits ============

def test_ntu_names_and_splits():
    assert sk.parse_ntu_name("/x/S017C003P040R002A060.skeleton") == dict(
        setup=17, camera=3, subject=40, replication=2, action=60)
    assert sk.ntu_split("S001C001P001R001A001", "xview") == "val"
    assert sk.ntu_split("S001C002P003R001A001", "xview") == "train"
    assert sk.ntu_split("S001C003P003R001A001", "xview") == "train"
    assert sk.ntu_split("S001C001P001R001A001", "xsub") == "train"
    assert sk.ntu_split("S001C001P003R001A001", "xsub") == "val"
    assert sk.ntu_split("S001C001P038R001A001", "xsub") == "train"
    assert sk.ntu_split("S001C001P040R001A001", "xsub") == "val"
    assert sk.ntu_split("S018C001P045R001A061", "xsub") == "train"
    assert sk.ntu_split("S018C001P044R001A061", "xsub") == "val"
    assert sk.ntu_split("S025C001P103R001A120", "xsub") == "train"
    assert sk.ntu_split("S018C001P044R001A061", "xset") == "train"
    assert sk.ntu_split("S019C001P045R001A061", "xsetup") == "val"
    assert len(sk.NTU60_TRAIN_SUBJECTS) == 20 and len(sk.NTU120_TRAIN_SUBJECTS) == 53
    assert len(sk.missing_skeleton_samples("ntu60")) == 302
    assert len(sk.missing_skeleton_samples("ntu120")) == 535
    assert "S001C002P005R002A008" in sk.missing_skeleton_samples("ntu60")
    with pytest.raises(ValueError, match="benchmark"):
        sk.ntu_split("S001C001P001R001A001", "xcam")
    with pytest.raises(ValueError, match="not an NTU sample name"):
        sk.parse_ntu_name("video_001.skeleton")


# ============ prepare_ntu ============

@pytest.mark.parametrize("workers", [0, 2])
def test_prepare_ntu(tmp_path, monkeypatch, workers):
    rng = np.random.default_rng(4)
    raw = tmp_path / "raw"
    raw.mkdir()
    lengths = {"S001C001P001R001A001": 30,   # camera 1: val
               "S001C002P001R001A002": 40,   # train
               "S001C003P002R001A003": 25,   # train, but listed as missing below
               "S002C003P002R001A010": 20,   # train, two people
               "S018C002P001R001A061": 10}   # NTU-120 only: ignored for ntu60
    for name, length in lengths.items():
        people = 2 if name.endswith("A010") else 1
        seqs = [moving_sequence(rng, length, 0.1) for _ in range(people)]
        write_ntu(raw / f"{name}.skeleton", [[s[t] for s in seqs] for t in range(length)])
    (raw / "readme.txt").write_text("not a skeleton")
    monkeypatch.setattr(sk, "missing_skeleton_samples", lambda dataset: frozenset({"S001C003P002R001A003"}))
    out = tmp_path / "xview"
    counts = sk.prepare_ntu(str(raw), str(out), "xview", "ntu60", workers=workers)
    assert counts == {"train": 2, "val": 1}
    train = sk.SkeletonDataset(**sk.protocol_paths(str(out), "train"))
    assert train.sample_names == ["S001C002P001R001A002.skeleton", "S002C003P002R001A010.skeleton"]
    assert train.labels.tolist() == [1, 9]
    assert train.data.shape == (2, 3, 300, 25, 2) and train.data.dtype == np.float32
    assert np.load(out / "train_num_frame.npy").tolist() == [40, 20]
    sample, label, frames = train[1]
    assert sample.shape == (3, 300, 25, 2) and label == 9 and frames == 20
    assert sample[..., 1].any()  # the second person is kept
    # the written sample is the normalised parse of its file
    expected = sk.normalize_skeleton(sk.ntu_to_array(sk.read_ntu_skeleton(
        raw / "S002C003P002R001A010.skeleton")))
    np.testing.assert_allclose(sample, expected, atol=1e-6)
    val = sk.SkeletonDataset(**sk.protocol_paths(str(out), "val"))
    assert val.sample_names == ["S001C001P001R001A001.skeleton"] and val.labels.tolist() == [0]

    with pytest.raises(ValueError, match="ntu60 benchmarks"):
        sk.prepare_ntu(str(raw), str(out), "xset", "ntu60", workers=0)


def test_prepare_ntu_reports_and_leaves_out_a_malformed_file(tmp_path, capsys):
    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C002P001R001A002.skeleton").write_text("2\n0\n")  # truncated
    for k in range(3):
        seq = moving_sequence(rng, 12, 0.1)
        write_ntu(raw / f"S001C003P001R001A00{k + 3}.skeleton", [[seq[t]] for t in range(12)])
    # 1 bad file of 3 train files is more than the allowed 5%: the conversion stops, naming it
    with pytest.raises(RuntimeError, match="1 of 4 .skeleton files could not be read"):
        sk.prepare_ntu(str(raw), str(tmp_path / "out"), "xsub", workers=0)
    assert "S001C002P001R001A002.skeleton:3: " in capsys.readouterr().err
    counts = sk.prepare_ntu(str(raw), str(tmp_path / "out"), "xview", workers=0, max_bad_fraction=0.5)
    assert counts == {"train": 3, "val": 0}
    train = sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path / "out"), "train"))
    assert len(train) == 3 and train.data.shape[0] == 3 and train.labels.tolist() == [2, 3, 4]
    assert "S001C002P001R001A002" not in " ".join(train.sample_names)


# ============ SkeletonDataset ============

def write_labels(path, names, labels, as_list=False):
    with open(path, "wb") as f:
        pickle.dump([names, labels] if as_list else (names, labels), f)


def test_skeleton_dataset_reads_samples(tmp_path):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(64, 3, 300, 25, 2)).astype(np.float32)
    data[7, :, 11:] = 0  # 11 valid frames
    np.save(tmp_path / "train_data_joint.npy", data)
    write_labels(tmp_path / "train_label.pkl", [f"s{i}" for i in range(64)], list(range(64)),
                 as_list=True)
    ds = sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path), "train"))
    assert isinstance(ds.data, np.memmap) and len(ds) == 64
    for i in (0, 7, 63, -1):
        sample, label, frames = ds[i]
        np.testing.assert_array_equal(sample, data[i])
        assert not isinstance(sample, np.memmap) and sample.flags.writeable
        assert label == i % 64
    assert ds[7][2] == 11 and ds[0][2] == 300
    with pytest.raises(IndexError):
        ds[64]

    np.save(tmp_path / "train_num_frame.npy", np.arange(64) + 1)
    ds = sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path), "train"))
    assert ds[7][2] == 8
    assert not isinstance(sk.SkeletonDataset(ds.data_path, ds.label_path, mmap=False).data,
                          np.memmap)


def test_skeleton_dataset_finds_2s_agcn_repetition_padding(tmp_path):
    """2s-AGCN's released files have no num_frame file and pad every sample to 300 frames by repeating its
    valid ones (pre_normalization: person[i_f:] = person[0:i_f] tiled), so no frame is zero; the dataset
    must still see the 60 frames of a 60-frame sample, not 300."""
    rng = np.random.default_rng(11)
    data = np.zeros((4, 3, 300, 25, 2), np.float32)
    motion = moving_sequence(rng, 60, 0.1).transpose(2, 0, 1)  # (3, 60, 25)
    data[0, :, :, :, 0] = np.concatenate([motion] * 5, axis=1)  # padded by hand, the 2s-AGCN way
    raw = np.zeros((3, 300, 25, 2), np.float32)  # two bodies of 70 and 30 frames, the second from frame 9
    raw[:, :70, :, 0] = moving_sequence(rng, 70, 0.1).transpose(2, 0, 1)
    raw[:, 9:39, :, 1] = moving_sequence(rng, 30, 0.1, (1, 0, 3)).transpose(2, 0, 1)
    data[1] = sk.normalize_skeleton(raw)  # padded, centred per frame and rotated as 2s-AGCN
    data[2, :, :45, :, 0] = moving_sequence(rng, 45, 0.1).transpose(2, 0, 1)  # zero-padded
    data[3, :, :, :, 0] = moving_sequence(rng, 300, 0.1).transpose(2, 0, 1)  # 300 real frames
    assert np.all(np.any(data[:2] != 0, axis=(1, 3, 4)))  # no zero frame to count on
    np.save(tmp_path / "train_data_joint.npy", data)
    write_labels(tmp_path / "train_label.pkl", [f"s{i}" for i in range(4)], [0, 1, 2, 3])
    paths = sk.protocol_paths(str(tmp_path), "train")
    assert paths["num_frame_path"] is None
    ds = sk.SkeletonDataset(**paths)
    assert [ds[i][2] for i in range(4)] == [60, 70, 45, 300]


def test_skeleton_dataset_errors(tmp_path):
    np.save(tmp_path / "val_data_joint.npy", np.zeros((3, 3, 10, 25, 2), np.float32))
    with pytest.raises(FileNotFoundError, match="val_label.pkl"):
        sk.protocol_paths(str(tmp_path), "val")
    with pytest.raises(FileNotFoundError, match="train_data_joint.npy"):
        sk.protocol_paths(str(tmp_path), "train")
    write_labels(tmp_path / "val_label.pkl", ["a", "b"], [0, 1])
    with pytest.raises(ValueError, match="val_data_joint.npy.*3 samples.*val_label.pkl.*2 labels"):
        sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path), "val"))
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump({"names": []}, f)
    with pytest.raises(ValueError, match="bad.pkl"):
        sk.read_label_pickle(tmp_path / "bad.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps((["a", "b"], [0, 1]))[:-5])  # a truncated copy
    with pytest.raises(ValueError, match="cut.pkl: not a readable label pickle"):
        sk.read_label_pickle(tmp_path / "cut.pkl")
    write_labels(tmp_path / "val_label.pkl", ["a", "b", "c"], [0, 1, 1])
    np.save(tmp_path / "val_num_frame.npy", np.array([10, 0, 11]))  # a sample with no frame, one past T
    with pytest.raises(ValueError, match=r"val_num_frame.npy: 2 frame counts outside 1..10 \(the first: sample 1, 0"):
        sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path), "val"))
    (tmp_path / "val_data_joint.npy").write_bytes(open(tmp_path / "val_data_joint.npy", "rb").read()[:500])
    with pytest.raises(ValueError, match="val_data_joint.npy: "):  # truncated: mmap longer than the file
        sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path), "val"))


def test_label_pickle_from_python2(tmp_path):
    # Python 2 'str' pickled with protocol 2: SHORT_BINSTRING bytes, not utf-8 decodable
    raw = b"\x80\x02(]q\x00(U\x05abc\xe9dq\x01U\x02xyq\x02e]q\x03(K\x05K\x07etq\x04."
    path = tmp_path / "py2_label.pkl"
    path.write_bytes(raw)
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(raw)
    names, labels = sk.read_label_pickle(path)
    assert names == ["abc\xe9d", "xy"] and labels.tolist() == [5, 7]


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_skeleton_dataset_does_not_read_the_file(tmp_path):
    n = 140  # 140 x 180 kB = 25 MB, written sparse: open_memmap only sets the file size
    data = np.lib.format.open_memmap(tmp_path / "train_data_joint.npy", mode="w+",
                                     dtype=np.float32, shape=(n, 3, 300, 25, 2))
    data[5] = 1.5
    data[100, :, :3] = 2.0
    data[100, 0, 1:3, 3, 0] = (2.5, 3.0)  # the pose changes over its 3 frames
    data.flush()
    del data
    write_labels(tmp_path / "train_label.pkl", [str(i) for i in range(n)], [0] * n)
    before = _rss_bytes()
    ds = sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path), "train"))
    a, b = ds[5], ds[100]
    growth = _rss_bytes() - before
    assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB"
    # a constant sample repeats with period 1 (any crop of it is the same); 3 moving frames count 3
    assert (a[0] == 1.5).all() and a[2] == 1 and b[2] == 3

    # a whole pass (what every DataLoader worker makes each epoch) does not keep the file mapped
    before = _rss_bytes()
    for i in range(n):
        sample, _, _ = ds[i]
        assert sample[0, 0, 0, 0] == (1.5 if i == 5 else 2.0 if i == 100 else 0.0)
    growth = _rss_bytes() - before
    assert growth < 6 * 2**20, f"RSS grew by {growth / 2**20:.1f} MB over one pass of a 25 MB file"


# ============ PKU-MMD ============

def write_pku(root, video, frames, actions):
    """frames (T, 2, 25, 3); actions [(label, start, end, confidence)]."""
    np.savetxt(root / "skeleton" / f"{video}.txt", frames.reshape(len(frames), -1), fmt="%.6f")
    with open(root / "label" / f"{video}.txt", "w") as f:
        f.writelines(",".join(map(str, a)) + "\n" for a in actions)


def test_prepare_pku_mmd(tmp_path):
    rng = np.random.default_rng(6)
    for folder in ("skeleton", "label"):
        (tmp_path / folder).mkdir()
    videos = {}
    for video in ("0001-L", "0002-L", "0002-M"):
        frames = np.zeros((400, 2, 25, 3), np.float32)
        frames[:, 0] = rng.normal(size=(400, 25, 3))
        frames[100:150, 1] = rng.normal(size=(50, 25, 3))  # a second person for a while
        frames[380:] = 0  # no one in the last frames
        videos[video] = frames
    write_pku(tmp_path, "0001-L", videos["0001-L"], [(3, 10, 60, 1), (51, 100, 150, 2)])
    write_pku(tmp_path, "0002-L", videos["0002-L"], [(1, 0, 40, 1), (7, 50, 399, 1)])
    write_pku(tmp_path, "0002-M", videos["0002-M"], [(2, 385, 395, 1), (4, 5, 6, 2)])
    split = tmp_path / "cross-subject.txt"
    split.write_text("Training videos: \n0002-L, 0002-M, 0003-R,\nValidataion videos: \n0001-L\n")

    out = tmp_path / "pku"
    counts = sk.prepare_pku_mmd(str(tmp_path / "skeleton"), str(tmp_path / "label"), str(split),
                                str(out), phase=1, workers=0, normalize=False)
    assert counts == {"train": 3, "val": 2}  # 0002-M's first action is empty; 0003-R is absent
    train = sk.SkeletonDataset(**sk.protocol_paths(str(out), "train"))
    assert train.sample_names == ["0002-L_0", "0002-L_1", "0002-M_1"]
    assert train.labels.tolist() == [0, 6, 3]
    assert train.num_frames.tolist() == [40, 300, 1]  # 349 frames truncated to 300
    np.testing.assert_allclose(train[1][0], videos["0002-L"][50:350].transpose(3, 0, 2, 1),
                               atol=1e-6)  # files hold 6 decimals
    np.testing.assert_allclose(train[2][0][:, 0], videos["0002-M"][5].transpose(2, 1, 0),
                               atol=1e-6)
    val = sk.SkeletonDataset(**sk.protocol_paths(str(out), "val"))
    assert val.sample_names == ["0001-L_0", "0001-L_1"] and val.labels.tolist() == [2, 50]
    sample = val[1][0]
    np.testing.assert_allclose(sample[:, :50], videos["0001-L"][100:150].transpose(3, 0, 2, 1),
                               atol=1e-6)
    assert not sample[:, 50:].any()
    assert not os.path.exists(out / ".train_tmp")

    normalised = sk.prepare_pku_mmd(str(tmp_path / "skeleton"), str(tmp_path / "label"),
                                    str(split), str(tmp_path / "pku_norm"), workers=0)
    assert normalised == counts
    first = np.load(tmp_path / "pku_norm" / "val_data_joint.npy")[0, :, 0, 1, 0]
    np.testing.assert_allclose(first, 0, atol=1e-5)


def test_pku_readers_name_file_and_line(tmp_path):
    labels = tmp_path / "0001-L.txt"
    labels.write_text("3,10,60,1\n\n5,20\n")
    with pytest.raises(ValueError, match="0001-L.txt:3: "):
        sk.read_pku_labels(labels)
    labels.write_text("52,10,60,1\n")
    with pytest.raises(ValueError, match="0001-L.txt:1: label must be in 1..51"):
        sk.read_pku_labels(labels)
    skel = tmp_path / "skel.txt"
    skel.write_text(" ".join(["0.5"] * 150) + "\n" + " ".join(["0.5"] * 149) + "\n")
    with pytest.raises(ValueError, match="skel.txt:2: .*expected 150 values"):
        sk.read_pku_skeleton(skel)
    split = tmp_path / "split.txt"
    split.write_text("Training videos: A01N01-L, A01N01-M\nTesting videos:\nA02N01-L.txt\n")
    assert sk.read_pku_split(split) == (["A01N01-L", "A01N01-M"], ["A02N01-L"])
    split.write_text("Training videos:\n0002-L\n")
    with pytest.raises(ValueError, match="split.txt"):
        sk.read_pku_split(split)


def test_prepare_pku_mmd_reports_and_skips_an_unreadable_skeleton_file(tmp_path, capsys):
    """A malformed PKU-MMD skeleton file is reported and its actions left out; above --max-bad-fraction the
    preparation stops with the count and the first file."""
    rng = np.random.default_rng(7)
    for folder in ("skeleton", "label"):
        (tmp_path / folder).mkdir()
    for video in ("0001-L", "0002-L", "0003-L"):
        frames = np.zeros((60, 2, 25, 3), np.float32)
        frames[:, 0] = rng.normal(size=(60, 25, 3))
        write_pku(tmp_path, video, frames, [(1, 0, 30, 1), (2, 30, 59, 1)])
    bad = tmp_path / "skeleton" / "0002-L.txt"
    bad.write_text("1.0 2.0 not-a-number\n")
    split = tmp_path / "cross-subject.txt"
    split.write_text("Training videos: \n0001-L, 0002-L,\nValidataion videos: \n0003-L\n")
    counts = sk.prepare_pku_mmd(str(tmp_path / "skeleton"), str(tmp_path / "label"), str(split),
                                str(tmp_path / "out"), workers=0, max_bad_fraction=0.5)
    assert counts == {"train": 2, "val": 2}
    assert "0002-L" in capsys.readouterr().err
    train = sk.SkeletonDataset(**sk.protocol_paths(str(tmp_path / "out"), "train"))
    assert train.sample_names == ["0001-L_0", "0001-L_1"]
    with pytest.raises(RuntimeError, match=r"1 of 3 PKU-MMD skeleton files could not be read .*0002-L\.txt"):
        sk.prepare_pku_mmd(str(tmp_path / "skeleton"), str(tmp_path / "label"), str(split),
                           str(tmp_path / "out2"), workers=0)
