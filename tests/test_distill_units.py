"""distill_modality.py's tricky pieces: NTU pair matching, 16-bit depth, the granularity losses
(Eq. 2.1-2.5), per-class sampling, frozen finetuning, --init teacher, checkpoint errors."""
import argparse
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.video import r3d_18

import distill_modality as dm
from common.backbones import video_encoder
from common.synthetic import write_png16


# ============ NTU names, pairs, depth ============

def test_pairs_are_matched_by_ntu_name_and_unmatched_depth_is_reported(tmp_path, capsys):
    rgb, depth = tmp_path / "nturgb+d_rgb", tmp_path / "nturgb+d_depth_masked"
    rgb.mkdir(), depth.mkdir()
    both = ["S001C002P001R001A001", "S001C003P002R002A005", "S017C001P003R001A060"]
    for name in both + ["S001C002P001R001A007"]:  # an RGB video without depth is simply not used
        (rgb / f"{name}_rgb.avi").write_bytes(b"")
    (rgb / "README.txt").write_text("not a sample")
    for name in both + ["S002C002P004R001A002", "S003C001P001R001A003"]:
        (depth / name).mkdir()
        write_png16(str(depth / name / "MDepth-00000001.png"), np.full((4, 5), 1000, np.uint16))
    (depth / "S004C002P001R002A004").mkdir()  # an empty depth folder

    videos = dm.index_rgb_videos(str(rgb))
    assert set(videos) == set(both) | {"S001C002P001R001A007"}
    assert videos["S001C002P001R001A001"].endswith("S001C002P001R001A001_rgb.avi")
    folders = dm.non_empty(dm.index_frame_folders(str(depth), "--depth-dir"), dm.depth_files, "depth")
    assert "S004C002P001R002A004" not in folders
    assert "empty depth folder" in capsys.readouterr().err

    names = dm.match_pairs(videos, folders, "RGB video", "depth folder(s)")
    assert names == sorted(both)
    err = capsys.readouterr().err
    assert "2 depth folder(s) without a RGB video skipped" in err
    assert "S002C002P004R001A002" in err and "S003C001P001R001A003" in err


def test_missing_folder_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--depth-dir"):
        dm.index_frame_folders(str(tmp_path / "nope"), "--depth-dir")


def test_depth_png_reads_back_all_16_bits(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 65536, (3, 6, 7)).astype(np.uint16)
    frames[0, 0, 0], frames[1, 1, 1], frames[2, 2, 2] = 0, 65535, 4500
    paths = []
    for t, image in enumerate(frames):
        paths.append(str(tmp_path / f"MDepth-{t + 1:08d}.png"))
        write_png16(paths[-1], image)
    back = dm.read_depth_frames(paths, [2, 0, 1])
    assert back.dtype == torch.int32
    np.testing.assert_array_equal(back.numpy(), frames[[2, 0, 1]].astype(np.int32))
    # the fixed metric scaling: 0 stays 0, 2.25 m -> 0.5, 4.5 m and beyond -> 1
    x = dm.normalise(torch.tensor([0, 2250, 4500, 9000]).view(1, 4, 1, 1, 1), "depth")
    assert x.flatten().tolist() == [0.0, 0.5, 1.0, 1.0]


def test_flow_frames_in_both_layouts(tmp_path):
    from torchvision.io import encode_jpeg
    for prefix in ("flow_", ""):
        folder = tmp_path / f"v{prefix}"
        folder.mkdir()
        for t in range(1, 4):
            for axis, value in (("x", 40 * t), ("y", 200)):
                data = encode_jpeg(torch.full((1, 8, 8), value, dtype=torch.uint8), quality=100)
                (folder / f"{prefix}{axis}_{t:05d}.jpg").write_bytes(data.numpy().tobytes())
        xs, ys = dm.flow_files(str(folder))
        assert len(xs) == len(ys) == 3
        clip = dm.read_flow_frames(xs, ys, [2, 0])
        assert clip.shape == (2, 8, 8, 2)
        assert abs(int(clip[0, 4, 4, 0]) - 120) <= 1 and abs(int(clip[1, 4, 4, 0]) - 40) <= 1
        assert abs(int(clip[0, 4, 4, 1]) - 200) <= 1


def test_flipped_flow_negates_its_x_component():
    x = torch.zeros(64, 2, 2, 8, 8)
    x[:, 0], x[:, 1] = 0.5, 0.25  # uniform motion right and down
    out = dm.multiscale_corner_crop(x, 4, "flow")
    assert out.shape == (64, 2, 2, 4, 4)
    horizontal = out[:, 0].flatten(1)
    assert torch.allclose(out[:, 1], torch.full_like(out[:, 1], 0.25))  # y is never negated
    flipped = (horizontal < 0).all(1)
    assert torch.allclose(horizontal.abs(), torch.full_like(horizontal, 0.5))
    assert (flipped | (horizontal > 0).all(1)).all()
    assert 10 < int(flipped.sum()) < 54  # p = 0.5 of 64


# ============ losses (Eq. 2.1-2.5, Table 2.2) ============

def test_cosine_distance_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    assert dm.feature_distance(a, a).item() == pytest.approx(0.0, abs=1e-6)          # identical
    assert dm.feature_distance(a, 5 * a).item() == pytest.approx(0.0, abs=1e-6)      # scale-free
    assert dm.feature_distance(a, -a).item() == pytest.approx(2.0)                   # opposite
    assert dm.feature_distance(a, a.flip(1)).item() == pytest.approx(1.0)            # orthogonal
    # MSE: mean over all elements of the squared difference
    assert dm.feature_distance(a, torch.zeros(2, 2), "mse").item() == pytest.approx((1 + 9) / 4)


def test_video_feature_is_the_mean_over_each_videos_clips():
    clips = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                          [[2.0, 4.0], [99.0, 99.0], [99.0, 99.0]]])  # video 2 has 1 clip, rest padding
    out = dm.video_feature(clips, torch.tensor([3, 1]))
    assert torch.allclose(out, torch.tensor([[2 / 3, 2 / 3], [2.0, 4.0]]))


def test_granularity_losses_by_hand():
    student = [torch.tensor([[1.0, 0.0]])]
    clip = [torch.tensor([[1.0, 0.0]])]                         # the paired teacher clip
    teacher_clips = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])    # the N = 2 clips of the video
    video = [dm.video_feature(teacher_clips, torch.tensor([2]))]  # (0.5, 0.5)
    c2c = dm.granularity_loss(student, clip, None, "clip2clip").item()
    v2c = dm.granularity_loss(student, None, video, "video2clip").item()
    both = dm.granularity_loss(student, clip, video, "combined").item()
    assert c2c == pytest.approx(0.0, abs=1e-6)
    assert v2c == pytest.approx(1 - 1 / np.sqrt(2))             # cos((1,0), (.5,.5)) = 1/sqrt 2
    assert both == pytest.approx(c2c + v2c)                     # Eq. 2.4
    assert dm.granularity_loss(student, None, video, "video2video").item() == pytest.approx(v2c)  # Eq. 2.5
    # --match-layers all: the sum over layers
    two = dm.granularity_loss(student * 2, None, video * 2, "video2clip").item()
    assert two == pytest.approx(2 * v2c)


# ============ few labels and finetuning (Sec 2.4.3) ============

def test_per_class_subset_is_exact_and_seeded():
    labels = np.repeat(np.arange(5), [7, 9, 4, 12, 5])
    rows = dm.per_class_subset(labels, 4, seed=0)
    assert np.bincount(labels[rows]).tolist() == [4, 4, 4, 4, 4]
    assert len(set(rows.tolist())) == 20
    assert np.array_equal(rows, dm.per_class_subset(labels, 4, seed=0))
    assert not np.array_equal(rows, dm.per_class_subset(labels, 4, seed=1))
    assert len(dm.per_class_subset(labels, 0, seed=0)) == len(labels)  # 0 = all
    half = dm.per_class_subset(labels, 0, seed=0, fraction=0.5)
    assert len(half) == round(0.5 * len(labels))


def test_depth_finetuning_trains_only_layer4_and_fc():
    torch.manual_seed(0)
    encoder, width = video_encoder("r3d_18", in_channels=1)
    model = dm.Classifier(encoder, width, 3)
    params = dm.freeze_for_finetuning(model, "depth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        dm.train_mode(model, "depth")
        loss = F.cross_entropy(model(torch.rand(4, 1, 4, 16, 16)), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    frozen = [k for k in before if not k.startswith(("encoder.layer4.", "fc."))]
    trained = [k for k in before if k.startswith(("encoder.layer4.", "fc.")) and "num_batches" not in k]
    assert any(k.startswith("encoder.stem") for k in frozen) and any("running_mean" in k for k in frozen)
    for k in frozen:  # weights and BN running statistics of stem, layer1-3
        assert torch.equal(before[k], after[k]), k
    changed = [k for k in trained if not torch.equal(before[k], after[k])]
    assert "fc.weight" in changed and "encoder.layer4.1.conv2.0.weight" in changed
    assert "encoder.layer4.1.conv2.1.running_mean" in changed  # BN of the trained block keeps learning


def _args(tmp_path, **kw):
    base = dict(target="depth", init="teacher", teacher_checkpoint=None, teacher_modality="flow",
                stgcn_width=0.25, out_dir=str(tmp_path), student_checkpoint=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_init_teacher_sums_the_first_convolution_over_input_channels(tmp_path):
    teacher, _ = video_encoder("r3d_18", in_channels=2)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    path = str(tmp_path / "teacher.pt")
    torch.save(dict(encoder=state, modality="flow"), path)
    model = dm.initial_student(_args(tmp_path, teacher_checkpoint=path), 5)
    stem = model.encoder.stem[0].weight
    assert stem.shape == (64, 1, 3, 7, 7)
    assert torch.allclose(stem, state["stem.0.weight"][:, 0:1] + state["stem.0.weight"][:, 1:2])
    assert torch.equal(model.encoder.layer3[0].conv1[0].weight, state["layer3.0.conv1.0.weight"])
    assert model.fc.out_features == 5


def test_torchvision_state_dict_with_wrong_channels_names_flag_and_file(tmp_path):
    path = str(tmp_path / "r3d_18_kinetics.pth")
    torch.save(r3d_18().state_dict(), path)  # 3 input channels, with fc.*
    with pytest.raises(SystemExit) as err:
        dm.build_teacher(_args(tmp_path, teacher_modality="flow"), path)
    message = str(err.value)
    assert "--teacher-checkpoint" in message and path in message and "3 input channel" in message
    teacher = dm.build_teacher(_args(tmp_path, teacher_modality="rgb"), path)  # fits an RGB teacher
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_student_projection_only_when_widths_differ():
    encoder, widths = video_encoder("r3d_18", in_channels=1)[0], dm.RESNET_WIDTHS
    student = dm.Student("depth", encoder, [0, 1, 2, 3], dm.RESNET_WIDTHS, widths)
    assert all(isinstance(p, torch.nn.Identity) for p in student.proj)
    feats = student(torch.rand(2, 1, 4, 16, 16))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    from common.backbones import STGCN
    gcn = STGCN(width=0.125)
    student = dm.Student("skeleton", gcn, [3], dm.RESNET_WIDTHS, (None, None, None, gcn.feature_dim))
    assert isinstance(student.proj[0], torch.nn.Linear) and student.proj[0].in_features == gcn.feature_dim
    assert student(torch.rand(2, 3, 12, 25, 2))[0].shape == (2, 512)


def test_video_clip_starts_cover_the_video():
    assert dm.video_clip_starts(50, 16) == [0, 16, 32]     # N = 50 // 16 (Eq. 2.3)
    assert dm.video_clip_starts(10, 16) == [0]             # at least one (looped) clip
    assert dm.video_clip_starts(50, 16, num_clips=2) == [0, 34]
    assert os.path.basename(dm.ntu_key("/x/S001C002P003R002A013_rgb.avi")) == "S001C002P003R002A013"


def test_clear_errors_for_missing_inputs(tmp_path):
    with pytest.raises(SystemExit, match="run --stage transfer first"):
        dm.initial_student(_args(tmp_path, init="transfer"), 3)
    args = dm.parse_args(["--depth-dir", str(tmp_path / "nope"), "--rgb-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="--depth-dir.*nope"):
        dm.depth_items(args, "train")
    with pytest.raises(SystemExit):  # skeleton students take whole sequences: video2video only
        dm.parse_args(["--target", "skeleton", "--granularity", "combined", "--depth-dir", "x"])


def test_corner_crop_whole_frame_without_flip_is_a_plain_resize():
    """--min-crop-scale 1 --no-flip: every training crop is the whole frame, resized."""
    x = torch.randn(8, 2, 4, 36, 36)
    out = dm.multiscale_corner_crop(x, 32, "flow", min_scale=1.0, flip=False)
    expected = F.interpolate(x.reshape(8, 8, 36, 36), size=(32, 32), mode="bilinear",
                             align_corners=False).view(8, 2, 4, 32, 32)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # with flips, a flow clip is either that resize or its mirror image with the x motion negated
    torch.manual_seed(0)
    flipped = dm.multiscale_corner_crop(x, 32, "flow", min_scale=1.0, flip=True)
    mirror = torch.cat([-expected[:, :1], expected[:, 1:]], 1).flip(-1)
    plain = [torch.allclose(f, e, atol=1e-5) for f, e in zip(flipped, expected)]
    mirrored = [torch.allclose(f, m, atol=1e-5) for f, m in zip(flipped, mirror)]
    assert all(p or m for p, m in zip(plain, mirrored)) and any(plain) and any(mirrored)


def test_skeleton_frames_keeps_the_first_frames_and_refuses_to_cut_a_sequence(tmp_path):
    from common.skeleton import _write_split
    rng = np.random.default_rng(0)
    lengths = [5, 9, 7]
    samples = []
    for n in lengths:  # (3, 300, 25, 2) zero-padded after n frames
        x = np.zeros((3, 300, 25, 2), np.float32)
        x[:, :n] = rng.normal(size=(3, n, 25, 2))
        samples.append((x, n))
    names = ["S001C002P001R001A001", "S001C002P002R001A002", "S001C003P001R001A003"]
    _write_split(str(tmp_path), "train", names, [0, 1, 2], iter(samples), 300)

    args = argparse.Namespace(target="skeleton", skeleton_dir=str(tmp_path), skeleton_frames=12)
    dataset, labels, keys = dm.labeled_data(args, "train")
    assert labels == [0, 1, 2] and keys == names
    item = dataset[1]
    assert item["skeleton"].shape == (3, 12, 25, 2)
    assert torch.equal(item["skeleton"], torch.from_numpy(samples[1][0][:, :12]))  # nothing of the 9 lost

    with pytest.raises(SystemExit) as err:  # 8 < 9 frames of the longest sequence
        dm.skeleton_split(argparse.Namespace(skeleton_dir=str(tmp_path), skeleton_frames=8), "train")
    assert "--skeleton-frames 8" in str(err.value) and "up to 9 frames" in str(err.value)
    full = dm.labeled_data(argparse.Namespace(target="skeleton", skeleton_dir=str(tmp_path), skeleton_frames=300),
                           "train")[0]
    assert full[0]["skeleton"].shape == (3, 300, 25, 2)


def test_synthetic_preset_transfer_epochs_depend_on_the_student_and_yield_to_flags():
    assert dm.parse_args([]).transfer_epochs == dm.SYNTHETIC_TRANSFER_EPOCHS["depth"]
    assert dm.parse_args(["--target", "skeleton"]).transfer_epochs == dm.SYNTHETIC_TRANSFER_EPOCHS["skeleton"]
    assert dm.parse_args(["--target", "skeleton", "--transfer-epochs", "3"]).transfer_epochs == 3
    args = dm.parse_args(["--epochs", "2"])  # --epochs fills every stage without its own flag
    assert args.transfer_epochs == 2 and dm.stage_epochs(args, "transfer") == 2
    real = dm.parse_args(["--data-root", "data/ntu", "--target", "skeleton"])  # the thesis's, Sec 2.4.3
    assert real.transfer_epochs == 120 and dm.stage_epochs(real, "transfer") == 120


def test_depth_crop_actors_reads_the_square_around_the_clips_actors(tmp_path):
    """--depth-crop actors: the box of the nonzero pixels over the clip's frames, +10%, made square and
    kept inside the frame; the whole frame without actors; the thesis's full frame by default."""
    frames = np.zeros((4, 60, 80), np.uint16)
    frames[0, 10:30, 40:44] = 3000  # the actor moves right and down over the clip: rows 10..34, cols 40..51
    frames[1, 15:35, 48:52] = 3100
    frames[3, 0:60, 0:2] = 2000  # a frame outside the clip read below
    folder = tmp_path / "S001C002P001R001A001"
    folder.mkdir()
    for t, image in enumerate(frames):
        write_png16(str(folder / f"MDepth-{t + 1:08d}.png"), image)

    clip = dm.Modality("depth", actor_crop=True).read(str(folder), [0, 1, 2], 28, 0.5)[..., 0]
    side = int(24 * (1 + dm.ACTOR_MARGIN)) + 2  # rows 10..34 span 24, the longer side of the box
    assert side == 28 and clip.shape == (3, 28, 28)  # the square's side is the short side: no resize
    top, left = int((10 + 34) / 2 - side / 2), int((40 + 51) / 2 - side / 2)
    np.testing.assert_array_equal(clip.numpy(), frames[:3, top:top + side, left:left + side].astype(np.int32))
    assert (clip > 0).sum() == (frames[:3] > 0).sum()  # every actor pixel of the clip is inside

    # an actor spanning the frame's height: the square is the frame's short side, moved inside it
    edge = dm.Modality("depth", actor_crop=True).read(str(folder), [3], 60, 0.5)[0, ..., 0]
    np.testing.assert_array_equal(edge.numpy(), frames[3, :, :60].astype(np.int32))
    # no actor in the clip: the frame's centre square; actor_crop off: the frame's centre square too
    empty = dm.Modality("depth", actor_crop=True).read(str(folder), [2], 60, 0.5)
    assert empty.shape == (1, 60, 60, 1) and not empty.any()
    whole = dm.Modality("depth").read(str(folder), [0], 60, 0.5)[0, ..., 0]
    np.testing.assert_array_equal(whole.numpy(), frames[0, :, 10:70].astype(np.int32))
    # evaluation: every clip of the video around its own actors, like the training clips
    video = dm.Clips([(str(folder), 0)], "depth", 2, 28, train=False, actor_crop=True)[0]["clip"]
    assert video.shape == (2, 2, 28, 28, 1)
    for k, start in enumerate((0, 2)):
        own = dm.Modality("depth", actor_crop=True).read(str(folder), [start, start + 1], 28, 0.5)
        assert torch.equal(video[k], own)
    with pytest.raises(ValueError, match="masked depth"):
        dm.Modality("flow", actor_crop=True)
    assert dm.parse_args([]).depth_crop == "actors"  # the synthetic preset
    assert dm.parse_args(["--data-root", "data/ntu"]).depth_crop == "frame"  # the thesis's default
