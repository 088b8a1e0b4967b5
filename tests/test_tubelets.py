"""Tests of the tubelet generation and augmentation of tubelet_contrast.py (thesis Sec 5.3)."""
import argparse
import math

import numpy as np
import pytest
import torch
from torchvision.io import read_image

import tubelet_contrast as tc
from common.backbones import KINETICS_MEAN, KINETICS_STD

B, T, CROP = 4, 8, 64


def make_args(*argv, **overrides):
    parser = argparse.ArgumentParser()
    tc.add_augmentation_args(parser)
    args = parser.parse_args(list(argv))
    args.crop_size, args.clip_len = CROP, T  # flags of the training script
    args.patch_size, args.delta = [8, 24], [20.0, 40.0]  # scaled to 64 px frames
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def random_clips(b=B, t=T, h=72, w=96):
    return torch.randint(0, 256, (b, t, h, w, 3), dtype=torch.uint8)


def constant_clips(colours, t=T, h=72, w=96):
    """uint8 (len(colours), t, h, w, 3) clips of one RGB colour each."""
    c = torch.tensor(colours, dtype=torch.uint8)
    return c.view(-1, 1, 1, 1, 3).expand(-1, t, h, w, 3).contiguous()


def opaque_hard(tub):
    tub.opacity.fill_(1.0)
    tub.edge.fill_(1e-4)
    return tub


def test_defaults_are_the_papers():
    parser = argparse.ArgumentParser()
    tc.add_augmentation_args(parser)
    a = parser.parse_args([])
    assert (a.mode, a.num_tubelets, a.patch_size, a.motion) == ("tubelet", 2, [16, 64], "nonlinear")
    assert (a.transform, a.keyframes, a.delta) == (("rotation",), 3, [40.0, 80.0])
    assert (a.nonlinear_points, a.sigma) == (48, 8.0)
    assert (a.scale_range, a.rotation_range, a.shear_range) == ([0.5, 1.5], [-90.0, 90.0], [-1.0, 1.0])
    assert a.recipe == "code"  # what produced Tables 5.2-5.8
    assert parser.parse_args(["--transform", "rotation,scale"]).transform == ("rotation", "scale")
    assert parser.parse_args(["--transform", "none"]).transform == ()
    with pytest.raises(SystemExit):
        parser.parse_args(["--transform", "rotate"])


@pytest.mark.parametrize("mode", ["tubelet", "temporal"])
def test_make_views_shapes_and_normalisation(mode):
    args = make_args(mode=mode)
    v1, v2 = random_clips(), random_clips()
    torch.manual_seed(3)
    q, k = tc.make_views(v1, v2, args, normalize=False)
    torch.manual_seed(3)
    qn, kn = tc.make_views(v1, v2, args)
    for x in (q, k, qn, kn):
        assert x.shape == (B, 3, T, CROP, CROP) and x.dtype == torch.float32
    assert q.min() >= 0 and q.max() <= 1 and k.min() >= 0 and k.max() <= 1
    mean, std = torch.tensor(KINETICS_MEAN).view(3, 1, 1, 1), torch.tensor(KINETICS_STD).view(3, 1, 1, 1)
    assert torch.allclose(qn, (q - mean) / std, atol=1e-4) and torch.allclose(kn, (k - mean) / std, atol=1e-4)


def test_temporal_mode_has_no_tubelets_but_tubelet_mode_has():
    c1, c2 = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], [[10, 10, 10]] * 4
    v1, v2 = constant_clips(c1), constant_clips(c2)
    want1 = torch.tensor(c1, dtype=torch.float32).view(B, 3, 1, 1, 1) / 255
    want2 = torch.tensor(c2, dtype=torch.float32).view(B, 3, 1, 1, 1) / 255
    q, k = tc.make_views(v1, v2, make_args(mode="temporal", jitter_prob=0.0), normalize=False)
    assert torch.allclose(q, want1.expand_as(q), atol=1e-5) and torch.allclose(k, want2.expand_as(k), atol=1e-5)

    q, k = tc.make_views(v1, v2, make_args(mode="tubelet", jitter_prob=0.0), normalize=False)
    assert torch.allclose(q, want1.expand_as(q), atol=1e-5)  # patches of v1 pasted onto v1 itself
    changed = (k - want2).abs().amax(1) > 1e-4
    assert changed.flatten(2).any(2).all()  # every frame of every clip shows a patch of v1
    alpha = (k - want2) / (want1 - want2)  # k = alpha * c1 + (1 - alpha) * c2, one alpha for all channels
    assert alpha.min() > -1e-4 and alpha.max() < 1 + 1e-4
    assert (alpha.amax(1) - alpha.amin(1)).abs().max() < 1e-3


def test_shared_colour_jitter_in_tubelet_mode_only():
    c = [[120, 80, 40], [40, 120, 80], [80, 40, 120], [100, 100, 100]]
    v = constant_clips(c)
    torch.manual_seed(0)
    q, k = tc.make_views(v, v.clone(), make_args(mode="tubelet", jitter_prob=1.0), normalize=False)
    assert torch.allclose(q, k, atol=1e-5)  # same colour under the patches, same jitter
    assert (q - torch.tensor(c).view(B, 3, 1, 1, 1) / 255).abs().amax() > 0.02  # and it did jitter
    torch.manual_seed(0)
    q, k = tc.make_views(v, v.clone(), make_args(mode="temporal", jitter_prob=1.0), normalize=False)
    assert (q - k).flatten(1).abs().amax(1).min() > 1e-3  # independent jitter for every pair


def test_pasted_patches_coincide_in_both_clips_and_stay_inside_their_box():
    torch.manual_seed(1)
    args = make_args()
    H = W = CROP
    tub = tc.sample_tubelets(B, T, H, W, args, "cpu")
    source = 50 + 150 * torch.rand(B, 3, H, W)  # patch colours in [50, 200]
    x1, x2 = torch.zeros(B, 3, T, H, W), torch.full((B, 3, T, H, W), 255.0)
    tc.paste_tubelets([x1, x2], source, tub)
    alpha = 1 - (x2 - x1) / 255  # x1 = a p, x2 = a p + (1 - a) 255
    assert ((x1 != 0).any(1) == (x2 != 255).any(1)).all()  # same pixels changed in every frame
    assert (alpha.amax(1) - alpha.amin(1)).max() < 1e-4  # one alpha per pixel for all channels
    assert alpha.min() > -1e-5 and alpha.max() < 1 + 1e-5
    patch = x1 / alpha.clamp_min(1e-3)
    inside = alpha > 0.05
    assert patch[inside].min() > 50 - 1 and patch[inside].max() < 200 + 1
    assert (alpha > 0.75).sum() > 0.5 * (alpha > 0.01).sum()  # mostly at the opacity, 0.8-1

    # nothing changes outside the circle around the tubelet centre that holds the transformed patch
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    covered = torch.zeros(B, T, H, W, dtype=torch.bool)
    for m in range(args.num_tubelets):
        radius = torch.linalg.matrix_norm(tub.matrix[:, m], ord=2) * tub.half_size[:, m].norm(dim=-1, keepdim=True)
        c = tub.path[:, m]  # (B, T, 2)
        dist = ((xs - c[..., 0, None, None]) ** 2 + (ys - c[..., 1, None, None]) ** 2).sqrt()
        covered |= dist <= (radius + 1)[..., None, None]
    assert not (x1 != 0).any(1)[~covered].any()


def test_opaque_hard_patches_are_equal_in_both_clips():
    torch.manual_seed(2)
    args = make_args()
    tub = opaque_hard(tc.sample_tubelets(B, T, CROP, CROP, args, "cpu"))
    source = 50 + 150 * torch.rand(B, 3, CROP, CROP)
    x1, x2 = torch.zeros(B, 3, T, CROP, CROP), torch.full((B, 3, T, CROP, CROP), 255.0)
    tc.paste_tubelets([x1, x2], source, tub)
    changed = (x1 != 0).any(1)
    assert changed.sum() > 1000
    same = (x1 == x2).all(1)
    assert (same & changed).sum() > 0.98 * changed.sum()  # all but the anti-aliased border pixels


def test_patch_follows_its_path():
    torch.manual_seed(4)
    args = make_args(num_tubelets=1, transform=(), patch_size=[10, 14])
    tub = opaque_hard(tc.sample_tubelets(B, T, CROP, CROP, args, "cpu"))
    tub.shape.zero_()  # rectangles
    x1, x2 = torch.zeros(B, 3, T, CROP, CROP), torch.zeros(B, 3, T, CROP, CROP)
    tc.paste_tubelets([x1, x2], 100 + torch.rand(B, 3, CROP, CROP), tub)
    mask = (x1[:, 0] > 0).float()  # (B, T, H, W)
    ys, xs = torch.meshgrid(torch.arange(CROP) + 0.5, torch.arange(CROP) + 0.5, indexing="ij")
    area = mask.sum((2, 3))
    centroid = torch.stack([(mask * xs).sum((2, 3)), (mask * ys).sum((2, 3))], -1) / area.clamp_min(1)[..., None]
    c, half = tub.path[:, 0], tub.half_size[:, 0, None]
    inside = ((c - half >= 1) & (c + half <= CROP - 1)).all(-1)  # patch fully inside the frame
    assert inside.sum() > 8
    assert (centroid - c)[inside].abs().max() < 0.75
    expected = (4 * half[..., 0] * half[..., 1]).expand(B, T)
    assert ((area - expected).abs() <= 2 * (2 * half.sum(-1) + 1).expand(B, T))[inside].all()


def test_shape_alpha_areas():
    g = torch.linspace(-1, 1, 801)
    n = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1)
    edge = torch.tensor(1e-4)
    for shape, area in [(0, 1.0), (1, math.pi / 4), (2, 0.5)]:
        assert abs(tc.shape_alpha(n[..., 0], n[..., 1], shape, edge).mean().item() - area) < 0.01
        assert abs(tc.shape_alpha(n[..., 0], n[..., 1], torch.tensor(shape), edge).mean().item() - area) < 0.01
    soft = tc.shape_alpha(n[..., 0], n[..., 1], 1, torch.tensor(0.4))
    assert soft.max() == 1 and 0 < soft[(soft > 0) & (soft < 1)].numel()


@pytest.mark.parametrize("shape, fraction", [(0, 1.0), (1, math.pi / 4), (2, 0.5)])
def test_rasterised_shapes_cover_their_area(shape, fraction):
    torch.manual_seed(5)
    args = make_args(num_tubelets=1, motion="none", transform=("rotation",), patch_size=[20, 24])
    tub = opaque_hard(tc.sample_tubelets(B, T, CROP, CROP, args, "cpu"))
    tub.shape.fill_(shape)
    tub.path[:] = CROP / 2  # centred, rotated, fully inside
    x1 = torch.zeros(B, 3, T, CROP, CROP)
    tc.paste_tubelets([x1], 100 + torch.rand(B, 3, CROP, CROP), tub)
    area = (x1[:, 0] > 0).float().sum((2, 3))
    expected = fraction * 4 * tub.half_size[:, 0].prod(-1, keepdim=True)
    assert ((area - expected).abs() / expected).max() < 0.12


def test_nonlinear_paths_are_smooth_and_curved():
    torch.manual_seed(6)
    n, W = 400, 64
    path = tc.nonlinear_path(n, 16, W, W, 48, 8.0, "cpu")
    assert path.shape == (n, 16, 2) and path.min() >= 0 and path.max() <= W
    extent = path.amax(1) - path.amin(1)
    assert extent.min() > 0.15 * W  # the path is spread out in the frame

    def max_bend(p):
        return (p[:, 2:] - 2 * p[:, 1:-1] + p[:, :-2]).norm(dim=-1).amax(1)

    def straightness(p):  # max distance from the chord between first and last point, / extent
        chord, rel = p[:, -1:] - p[:, :1], p - p[:, :1]
        off = (rel[..., 0] * chord[..., 1] - rel[..., 1] * chord[..., 0]).abs() / chord.norm(dim=-1).clamp_min(1e-6)
        return off.amax(1) / (p.amax(1) - p.amin(1)).amax(-1)

    rough = tc.nonlinear_path(n, 16, W, W, 48, 0.0, "cpu")  # no Gaussian smoothing
    assert max_bend(path).median() < 0.12 * W < max_bend(rough).median()
    assert max_bend(path).quantile(0.9) < 0.25 * W
    assert (straightness(path) > 0.1).float().mean() > 0.8  # non-linear
    # Sec 5.3.3: with N not >> T the smoothed path is nearly a straight line
    assert (straightness(tc.nonlinear_path(n, 16, W, W, 4, 8.0, "cpu")) > 0.1).float().mean() < 0.3


def test_linear_paths_are_piecewise_linear_with_close_keyframes():
    torch.manual_seed(7)
    n, W, K = 2000, 64, 3
    path = tc.linear_path(n, 16, W, W, K, (20.0, 40.0), "cpu")
    assert path.shape == (n, 16, 2) and path.min() >= 0 and path.max() <= W
    bend = (path[:, 2:] - 2 * path[:, 1:-1] + path[:, :-2]).norm(dim=-1)  # at frames 1..14
    kinks = bend > 1e-3
    assert kinks.sum(1).max() <= K - 2  # straight between keyframes
    assert kinks.any(1).float().mean() > 0.9
    for p, k in zip(path[:300], kinks):
        keys = [0] + [i + 1 for i in k.nonzero().flatten().tolist()] + [15]
        assert max((p[b] - p[a]).norm().item() for a, b in zip(keys, keys[1:])) <= 40 + 1e-3
    # keyframe centres are drawn inside the frame, not clamped onto its border (62% of tubelets had one there)
    on_border = ((path == 0) | (path == W)).any(-1).any(-1)
    assert on_border.float().mean() < 0.01
    straight = tc.linear_path(n, 16, W, W, 2, (20.0, 40.0), "cpu")
    assert ((straight[:, 2:] - 2 * straight[:, 1:-1] + straight[:, :-2]).norm(dim=-1) < 1e-3).all()
    # uniform within the disc: some steps use most of Delta
    steps = (straight[:, -1] - straight[:, 0]).norm(dim=-1)
    assert steps.max() <= 40 + 1e-3 and (steps > 30).float().mean() > 0.05


def test_keyframes():
    kf = tc.random_keyframes(500, 16, 4, "cpu")
    assert (kf[:, 0] == 0).all() and (kf[:, -1] == 15).all() and (kf.diff(dim=1) > 0).all()
    assert len(torch.unique(kf[:, 1])) > 5
    values = torch.randn(500, 4, 2)
    for eased in (False, True):
        out = tc.interpolate_keyframes(kf, values, 16, eased)
        assert torch.allclose(out.gather(1, kf.unsqueeze(-1).expand(-1, -1, 2)), values, atol=1e-6)
    # the code's keyframes at T = 16: [0, 15], [0, 6..9, 15], [0, 4..5, 9..10, 15]
    assert tc.spaced_keyframes(3, 16, 0, "cpu").tolist() == [[0, 15]] * 3
    one = tc.spaced_keyframes(2000, 16, 1, "cpu")[:, 1]
    assert set(one.tolist()) == {6, 7, 8, 9}
    two = tc.spaced_keyframes(2000, 16, 2, "cpu")
    assert set(two[:, 1].tolist()) == {4, 5} and set(two[:, 2].tolist()) == {9, 10}
    for T in (3, 4, 8):  # short clips: still strictly increasing
        assert (tc.spaced_keyframes(100, T, 2, "cpu").diff(dim=1) > 0).all()
    # eased segments: some frames off the straight line between the keyframes, never beyond them
    kf2 = torch.tensor([[0, 15]]).repeat(3000, 1)
    v = torch.tensor([0.0, 1.0]).view(1, 2, 1).expand(3000, 2, 1)
    mid = tc.interpolate_keyframes(kf2, v, 16, eased=True)[:, 5, 0]
    linear = 5 / 15
    assert {round(x, 4) for x in mid.tolist()} == {round(linear, 4), round(linear ** 2, 4),
                                                   round(1 - (1 - linear) ** 2, 4)}
    assert abs((mid == mid.mode().values).float().mean().item() - 0.7) < 0.05


def rotation_angles(A):
    return torch.rad2deg(torch.atan2(A[..., 1, 0], A[..., 0, 0]))


@pytest.mark.parametrize("recipe", ["code", "thesis"])
@pytest.mark.parametrize("transform", [("scale",), ("shear",), ("rotation",), ("rotation", "scale")])
def test_transformations_start_at_identity_and_change_over_time(transform, recipe):
    torch.manual_seed(8)
    args = make_args(transform=transform, recipe=recipe)
    A = tc.transform_matrices(200, 16, args, "cpu")
    eye = torch.eye(2)
    assert torch.allclose(A[:, 0], eye.expand(200, 2, 2))
    changed = (A[:, -1] - eye).abs().amax((1, 2)) > 1e-3
    assert changed.float().mean() > 0.9
    if transform == ("rotation",):
        assert torch.allclose(A @ A.transpose(-1, -2), eye.expand_as(A), atol=1e-5)
        angle = rotation_angles(A)
        assert angle.abs().max() <= 90 + 1e-3 and angle.abs().max() > 60
    if transform == ("scale",):
        assert (A[..., 0, 1] == 0).all() and (A[..., 1, 0] == 0).all()
        diag = torch.stack([A[..., 0, 0], A[..., 1, 1]])
        assert diag.min() >= 0.5 - 1e-6 and diag.max() <= 1.5 + 1e-6
    if transform == ("shear",):
        assert torch.allclose(torch.linalg.det(A), torch.ones(200, 16), atol=1e-4)
        assert A[..., 0, 1].abs().max() <= 1.0 + 1e-6

    # pasting the patch back where it was cut: unchanged at t = 0 (identity), changed later
    tub = tc.sample_tubelets(B, T, CROP, CROP, make_args(motion="none", transform=transform, recipe=recipe), "cpu")
    tub.path[:] = tub.source_centre.unsqueeze(2)
    source = torch.rand(B, 3, CROP, CROP) * 255
    clip = source.unsqueeze(2).repeat(1, 1, T, 1, 1)
    tc.paste_tubelets([clip], source, tub)
    assert torch.allclose(clip[:, :, 0], source, atol=0.02)
    assert ((clip[:, :, -1] - source).abs().amax((1, 2, 3)) > 10).any()


def test_code_recipe_bounds_the_change_per_frame():
    """The authors' rotation is a walk of at most 6 deg/frame on average over a segment (an eased segment peaks at
    twice that), shear one of 0.066/frame on x only, y only or both; the text's uniform draws turned 31% of
    tubelets by more than 20 degrees in one frame."""
    torch.manual_seed(10)
    n = 4000
    angle = rotation_angles(tc.transform_matrices(n, 16, make_args(transform=("rotation",)), "cpu"))
    step = angle.diff(dim=1).abs()
    assert step.max() <= 12 + 1e-3 and angle.abs().max() <= 90 + 1e-3
    assert 2 < step.mean() < 4  # a uniform walk: 3 deg/frame on average
    thesis = rotation_angles(tc.transform_matrices(n, 16, make_args(transform=("rotation",), recipe="thesis"), "cpu"))
    assert (thesis.diff(dim=1).abs().amax(1) > 20).float().mean() > 0.2

    A = tc.transform_matrices(n, 16, make_args(transform=("shear",)), "cpu")
    r, s = A[..., 0, 1], A[..., 1, 0]
    for f in (r, s):
        assert f.diff(dim=1).abs().max() <= 2 * 0.066 + 1e-5 and f.abs().max() <= 15 * 0.066 + 1e-5
    x_only = (s.abs().amax(1) == 0) & (r.abs().amax(1) > 0)
    y_only = (r.abs().amax(1) == 0) & (s.abs().amax(1) > 0)
    for kind in (x_only, y_only):
        assert abs(kind.float().mean().item() - 1 / 3) < 0.05


def test_random_crop_flip_is_a_scaled_window():
    H, W = 72, 96
    xs = torch.arange(W, dtype=torch.uint8).view(1, 1, 1, W).expand(16, 2, H, W)
    ys = torch.arange(H, dtype=torch.uint8).view(1, 1, H, 1).expand(16, 2, H, W)
    clips = torch.stack([xs, ys, torch.zeros_like(xs)], -1).contiguous()  # R = x, G = y
    torch.manual_seed(9)
    out = tc.random_crop_flip(clips, CROP)
    assert out.shape == (16, 3, 2, CROP, CROP)
    inner = slice(2, CROP - 2)
    dx = out[:, 0, :, inner, inner].diff(dim=-1)  # along x: constant step = window side / crop
    dy = out[:, 1, :, inner, inner].diff(dim=-2)
    steps = torch.tensor([72, 63, 56]) / CROP  # short side / s for s in SCALES
    for d, signed in ((dx, True), (dy, False)):
        step = d.flatten(1).median(1).values
        assert (d - step.view(-1, 1, 1, 1)).abs().max() < 1e-3
        assert ((step.abs().view(-1, 1) - steps).abs().min(1).values < 1e-3).all()
        assert (step < 0).any() == signed and (step > 0).any()  # flips only horizontally
    assert out.min() >= 0 and out[:, 0].max() <= W - 1 and out[:, 1].max() <= H - 1


def test_gaussian_smooth_is_normalised():
    x = torch.full((3, 2, 48), 5.0)
    assert torch.allclose(tc.gaussian_smooth(x, 8.0), x)
    spike = torch.zeros(1, 1, 48)
    spike[..., 24] = 1
    y = tc.gaussian_smooth(spike, 2.0)
    assert abs(y.sum().item() - 1) < 1e-5 and y.argmax().item() == 24 and y.max() < 0.25


def test_save_examples_and_benchmark(tmp_path, capsys):
    args = make_args()
    q, k = tc.make_views(random_clips(), random_clips(), args, normalize=False)
    path = tmp_path / "pairs.png"
    tc.save_examples(q, k, str(path), max_pairs=3, frames=2)
    image = read_image(str(path))
    assert image.shape == (3, 3 * (CROP + 2) + 2, 4 * (CROP + 2) + 2)
    assert min(tc.tubelet_benchmark(make_args(), torch.device("cpu"), 2, 1)) > 0
    assert "pairs/s" in capsys.readouterr().out


def test_make_views_with_differently_sized_clips():
    q, k = tc.make_views(random_clips(h=72, w=96), random_clips(h=64, w=64), make_args())
    assert q.shape == k.shape == (B, 3, T, CROP, CROP)


class RecordingVideos:
    """Stands in for VideoClipDataset: records the stride and jitter of each clip PairDataset asks for."""
    strides = (1, 2, 3, 4)

    def __init__(self):
        self.calls = []

    def __len__(self):
        return 10

    def rng(self):
        return np.random.default_rng(len(self.calls))

    def load(self, i, stride=None, jitter=False):
        self.calls.append((i, stride, jitter))
        return torch.zeros(2, 6, 8, 3, dtype=torch.uint8), 0, i


def test_temporal_pairs_share_one_stride_tubelet_pairs_do_not():
    videos = RecordingVideos()
    for i in range(20):
        tc.PairDataset(videos, "temporal")[i % 10]
    pairs = list(zip(videos.calls[::2], videos.calls[1::2]))
    assert all(a[0] == b[0] and a[1] == b[1] and a[1] in videos.strides and a[2] for a, b in pairs)
    assert len({a[1] for a, _ in pairs}) > 1  # the stride is random per pair
    videos.calls.clear()
    tc.PairDataset(videos, "tubelet", jitter=False)[3]
    (i, s1, j1), (k, s2, j2) = videos.calls
    assert i == 3 and k != 3 and s1 is None and s2 is None and not j1  # two videos, each its own stride


def test_epochs_zero_is_refused(capsys):
    with pytest.raises(SystemExit):
        tc.parse_args(["--epochs", "0"])
    assert "--epochs 0" in capsys.readouterr().err
