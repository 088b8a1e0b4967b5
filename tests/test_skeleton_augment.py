"""Tests of the skeleton augmentations of skeleton_contrast.py (thesis Sec 3.3.1, Eq. 3.1-3.4, App. A.1)."""
import argparse
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import skeleton_contrast as sc

T, V, M, L = 300, 25, 2, 64


def make_args(*argv):
    parser = argparse.ArgumentParser()
    sc.add_augmentation_args(parser)
    return parser.parse_args(list(argv))


def frame_index_batch(num_frames, pad=float("nan")):
    """(B, 3, T, V, M) whose every coordinate is its frame index, `pad` after the valid frames."""
    n = torch.tensor(num_frames)
    t = torch.arange(T, dtype=torch.float32).view(1, 1, T, 1, 1)
    x = torch.where(t < n.view(-1, 1, 1, 1, 1), t, pad).expand(len(n), 3, T, V, M).contiguous()
    return x, n


def positive_batch(B, t=8, seed=0):
    """(B, 3, t, V, M) coordinates in [1, 2): no zeros, so any multiplication that is not by 1 shows."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, t, V, M, generator=g) + 1


def changed_joints(out, x):
    """(B, V) bool: the joint differs somewhere (any coordinate, frame or person)."""
    return (out != x).permute(0, 3, 1, 2, 4).flatten(2).any(2)


def plain_resize(x, n, length):
    """The reference: F.interpolate of each sample's frames [0, n) to `length` frames."""
    out = []
    for xb, nb in zip(x, n.tolist()):
        seq = xb[:, :nb].permute(0, 2, 3, 1).reshape(1, -1, nb)  # (1, C*V*M, n)
        r = F.interpolate(seq, size=length, mode="linear", align_corners=False)
        out.append(r.view(3, V, M, length).permute(0, 3, 1, 2))
    return torch.stack(out)


def test_defaults_are_the_thesis_and_authors_values():
    a = make_args()
    assert (a.frames, a.l_min, a.jitter_joints, a.shear, a.spatial) == (64, 0.1, 15, 1.0, "random")  # Sec 3.4.2
    assert (a.min_crop_frames, a.downstream_l_min, a.center_crop) == (64, 0.5, 0.95)  # authors' options
    # what produced the tables: the authors' joint_courruption and their crop floor of 64 frames
    assert not a.no_temporal and a.jitter_mode == "authors"


def test_default_crop_floor_decides_most_short_crops():
    """The floor of 64 frames (the authors' min_crop_length) on a 100-frame sequence at l_min 0.1: every
    crop has at least 64 frames, and about 60% of the draws (ratio < 0.64) are raised to it; without the
    floor (--min-crop-frames 0, Eq. 3.3 alone) crops go down to 10 frames."""
    a = make_args()
    n, B = 100, 4000
    x = torch.zeros(B, 3, 300, 1, 1)  # one joint, one person: the crop does not look at them
    x[:, :, :n] = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1, 1)  # every value is its frame index

    def crop_lengths(floor):
        y = sc.temporal_crop_resize(x, torch.full((B,), n), 64, a.l_min, floor)[:, 0, :, 0, 0]
        return y[:, -1] - y[:, 0] + 1  # the resize reads from within a frame of the crop's two ends

    floored = crop_lengths(a.min_crop_frames)
    assert floored.min() >= 63
    assert 0.55 < float((floored < 65).float().mean()) < 0.67
    assert crop_lengths(0).min() < 12


# ----- pose augmentation (Eq. 3.1) -----

def test_pose_augment_is_one_shear_per_sample_with_unit_diagonal():
    B, amplitude = 6, 0.3
    x = positive_batch(B)
    x[:, :, :, :3, :] = torch.eye(3).view(1, 3, 1, 3, 1)  # joints 0, 1, 2 are the unit vectors e_x, e_y, e_z
    x[3:, :, :, :, 1] = 0  # absent second person
    x[:, :, 5] = 0  # an all-zero frame
    out = sc.pose_augment(x, amplitude)
    S = out[:, :, 0, :3, 0].transpose(1, 2)  # (B, 3, 3): row c = e_c . S
    # the same matrix at every frame and person (except the zero ones)
    rows = out[:, :, :, :3].permute(0, 2, 4, 3, 1)  # (B, t, M, 3, 3)
    real = torch.ones(B, 8, M, dtype=torch.bool)
    real[:, 5] = False
    real[3:, :, 1] = False
    assert torch.allclose(rows[real], S.unsqueeze(1).unsqueeze(1).expand(B, 8, M, 3, 3)[real])
    eye = torch.eye(3, dtype=torch.bool)
    assert torch.equal(S[:, eye], torch.ones(B, 3))
    off = S[:, ~eye]
    assert off.abs().max() <= amplitude and off.abs().min() > 0
    assert not torch.allclose(S[0], S[1])  # drawn per sample
    # linear: every joint is x @ S
    assert torch.allclose(out, torch.einsum("bctvm,bcd->bdtvm", x, S), atol=1e-6)
    assert torch.equal(out[:, :, 5], torch.zeros_like(out[:, :, 5]))  # zero frame stays zero
    assert torch.equal(out[3:, ..., 1], torch.zeros_like(out[3:, ..., 1]))  # absent person stays absent


# ----- joint jittering (Eq. 3.2) -----

@pytest.mark.parametrize("mode", sc.JITTER_MODES)
@pytest.mark.parametrize("j", [0, 1, 15, 25])
def test_jitter_moves_exactly_j_joints_and_leaves_the_others_bit_identical(mode, j):
    x = positive_batch(32)
    out = sc.joint_jitter(x, j, mode)
    changed = changed_joints(out, x)
    assert torch.equal(changed.sum(1), torch.full((32,), j))
    keep = ~changed.view(32, 1, 1, V, 1).expand_as(x)
    assert torch.equal(out[keep], x[keep])
    # the same joints for both persons and every frame
    per_person = (out != x).any(1).any(1)  # (B, V, M)
    assert torch.equal(per_person[..., 0], per_person[..., 1]) and torch.equal(per_person[..., 0], changed)


def recover_matrix(x_joints, out_joints):
    """Least-squares R with out = x @ R; x_joints, out_joints (N, 3)."""
    return torch.linalg.lstsq(x_joints.double(), out_joints.double()).solution


def test_jitter_matrix_is_uniform_0_1_and_shared_by_the_jittered_joints():
    x = positive_batch(8, t=6)
    out = sc.joint_jitter(x, 15, "matrix")
    changed = changed_joints(out, x)
    for b in range(8):
        xs = x[b][:, :, changed[b]].permute(1, 2, 3, 0).reshape(-1, 3)
        os_ = out[b][:, :, changed[b]].permute(1, 2, 3, 0).reshape(-1, 3)
        R = recover_matrix(xs, os_)
        assert torch.allclose(xs.double() @ R, os_.double(), atol=1e-5)
        assert R.min() > -1e-4 and R.max() < 1 + 1e-4  # Eq. 3.2: entries ~ U[0, 1]


def test_jitter_zero_and_authors_modes():
    x = positive_batch(64, t=4)
    out = sc.joint_jitter(x, 10, "zero")
    changed = changed_joints(out, x).view(64, 1, 1, V, 1).expand_as(x)
    assert torch.equal(out[changed], torch.zeros(int(changed.sum())))
    # authors' code: per sample, zero the joints (p = 1/2) or a matrix with entries in [-1, 1]
    out = sc.joint_jitter(x, 10, "authors")
    changed = changed_joints(out, x)
    zeroed = torch.stack([(out[b][:, :, changed[b]] == 0).all() for b in range(64)])
    assert 0 < zeroed.sum() < 64
    negative = torch.stack([(out[b][:, :, changed[b]] < 0).any() for b in range(64)])
    assert negative.any()  # U[-1, 1] entries turn positive coordinates negative, U[0, 1] never would


# ----- temporal crop-resize (Eq. 3.3) -----

def test_temporal_crop_reads_only_valid_frames_in_order():
    n = [1, 2, 5, 63, 64, 65, 150, 300] * 16
    x, n = frame_index_batch(n)  # NaN padding: any padded frame read would show
    for min_crop in (0, 64):
        out = sc.temporal_crop_resize(x, n, L, 0.1, min_crop)
        assert out.shape == (len(n), 3, L, V, M) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert torch.equal(out, out[:, :1, :, :1, :1].expand_as(out))  # a frame is a frame: same in c, v, m
        f = out[:, 0, :, 0, 0]  # (B, L) source positions
        assert (f >= 0).all() and (f <= (n - 1).view(-1, 1)).all()
        assert (f[:, 1:] >= f[:, :-1]).all()  # time runs forwards


def test_temporal_crop_with_l_min_1_is_the_plain_resize():
    x = torch.randn(6, 3, T, V, M)
    n = torch.tensor([1, 7, 64, 100, 257, 300])
    x.transpose(1, 2)[torch.arange(T).view(1, T) >= n.view(-1, 1)] = 1e30  # huge padding must never leak in
    ref = plain_resize(x, n, L)
    assert torch.allclose(sc.temporal_crop_resize(x, n, L, 1.0), ref, atol=1e-5)
    assert torch.allclose(sc.center_crop_resize(x, n, L, 1.0), ref, atol=1e-5)
    # a sequence shorter than the minimum crop is taken whole
    assert torch.allclose(sc.temporal_crop_resize(x[:4], n[:4], L, 0.1, 300), ref[:4], atol=1e-5)


def crop_lengths(out):
    """Crop length from the output of frame-index data when the crop has >= L frames:
    the outputs span (L - 1) / L of the crop (F.interpolate, align_corners=False)."""
    f = out[:, 0, :, 0, 0]
    return (f[:, -1] - f[:, 0]) * L / (L - 1)


def test_temporal_crop_ratio_follows_l_min_and_min_crop():
    x, n = frame_index_batch([300] * 512)
    c = crop_lengths(sc.temporal_crop_resize(x, n, L, 0.5, 0))
    assert c.min() >= 150 - 1e-3 and c.max() <= 300 + 1e-3  # L_ratio in [0.5, 1]
    assert c.min() < 160 and c.max() > 290  # and the whole range is used
    f = sc.temporal_crop_resize(x, n, L, 0.1, 0)[:, 0, :, 0, 0]
    assert (f[:, -1] - f[:, 0]).min() < 40  # L_ratio down to 0.1 (30 frames)
    assert f[:, 0].min() < 2 and f[:, -1].max() > 297  # crops start and end anywhere
    assert len(f[:, 0].unique()) > 100  # random starts
    c = crop_lengths(sc.temporal_crop_resize(x, n, L, 0.1, 64))
    assert c.min() >= 64 - 1e-3 and c.min() < 70  # the authors' minimum of 64 frames


def test_center_crop_is_deterministic_and_as_the_authors():
    x = torch.randn(3, 3, T, V, M)
    n = torch.tensor([100, 100, 300])
    a, b = sc.center_crop_resize(x, n, L, 0.95), sc.center_crop_resize(x, n, L, 0.95)
    assert torch.equal(a, b)
    # start = int(0.05 * 100 / 2) = 2 -> frames [2, 98); int(0.05 * 300 / 2) = 7 -> [7, 293)
    ref = torch.cat([plain_resize(x[:2, :, 2:], n[:2] - 4, L), plain_resize(x[2:, :, 7:], n[2:] - 14, L)])
    assert torch.allclose(a, ref, atol=1e-5)


def test_downstream_crop_random_in_training_central_at_test():
    args = make_args()
    x, n = frame_index_batch([300] * 256)
    test = sc.downstream_crop(x, n, args, train=False)
    assert torch.equal(test, sc.center_crop_resize(x, n, L, 0.95))
    train = sc.downstream_crop(x, n, args, train=True)
    c = crop_lengths(train)
    assert c.min() >= 150 - 1e-3 and len(train[:, 0, 0, 0, 0].unique()) > 50
    assert torch.isfinite(train).all() and train.shape == (256, 3, L, V, M)


# ----- spatio-temporal composition (Eq. 3.4) -----

def test_spatial_none_leaves_the_temporal_view_only():
    x, n = frame_index_batch([40, 120, 300, 2] * 8)
    out = sc.spatio_temporal_augment(x, n, make_args("--spatial", "none"))
    assert torch.equal(out, out[:, :1, :, :1, :1].expand_as(out))  # no coordinate was mixed or moved
    torch.manual_seed(3)
    a = sc.spatio_temporal_augment(x, n, make_args("--spatial", "none"))
    torch.manual_seed(3)
    assert torch.equal(a, sc.temporal_crop_resize(x, n, L, 0.1, 64))
    out = sc.spatio_temporal_augment(x, n, make_args("--spatial", "none", "--no-temporal"))
    assert torch.equal(out, sc.center_crop_resize(x, n, L, 1.0))


def test_random_spatial_mode_uses_pose_and_jitter_within_a_batch():
    B = 64
    x = torch.rand(B, 3, T, V, M) + 1
    n = torch.randint(30, T + 1, (B,))
    args = make_args("--no-temporal", "--spatial", "random", "--jitter-joints", "15")
    resized = sc.center_crop_resize(x, n, L, 1.0)
    counts = changed_joints(sc.spatio_temporal_augment(x, n, args), resized).sum(1)
    assert set(counts.tolist()) == {15, V}  # jittered views move 15 joints, sheared views all of them
    for kind, expected in (("pose", V), ("jitter", 15)):
        args.spatial = kind
        counts = changed_joints(sc.spatio_temporal_augment(x, n, args), resized).sum(1)
        assert set(counts.tolist()) == {expected}


@pytest.mark.parametrize("spatial", ["random", "pose", "jitter"])
@pytest.mark.parametrize("mode", sc.JITTER_MODES)
def test_views_keep_absent_persons_and_padding_out(spatial, mode):
    x, n = frame_index_batch([1, 30, 200, 300] * 4)
    x[:, :, :, :, 1] = torch.where(torch.isnan(x[:, :, :, :, 1]), x[:, :, :, :, 1], 0.0)  # one-person actions
    out = sc.spatio_temporal_augment(x, n, make_args("--spatial", spatial, "--jitter-mode", mode))
    assert out.shape == (16, 3, L, V, M) and torch.isfinite(out).all()
    assert torch.equal(out[..., 1], torch.zeros_like(out[..., 1]))


def test_query_and_key_views_differ():
    x, n = sc.random_skeletons(8, "cpu")
    args = make_args()
    q, k = sc.spatio_temporal_augment(x, n, args), sc.spatio_temporal_augment(x, n, args)
    assert q.shape == k.shape == (8, 3, L, V, M)
    assert not torch.allclose(q, k)


# ----- pictures and speed -----

def test_save_examples_writes_stick_figures(tmp_path):
    x, n = sc.random_skeletons(3, "cpu")
    with warnings.catch_warnings():  # torchvision.io.write_png is deprecated (0.29) and warned: not used
        warnings.simplefilter("error")
        path = sc.save_examples(x, n, make_args(), str(tmp_path / "examples.png"), count=3, frames=2, size=40)
    img = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    pad, size = 4, 40
    assert img.shape == (3, pad + 3 * (size + pad), pad + 6 * (size + pad))
    for r in range(3):
        for c in range(6):  # every tile (original, query, key x 2 frames) has a figure drawn
            tile = img[:, pad + r * (size + pad):][:, :size, pad + c * (size + pad):][:, :, :size]
            assert (tile > 0).any(0).sum() >= 20


def test_augment_benchmark_returns_a_rate():
    rate = sc.augment_benchmark("cpu", 4, make_args(), iters=2)
    assert rate > 0
