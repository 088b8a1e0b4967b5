"""distill_modality.py's tricky pieces: NTU pair matching, 16-bit depth, the granularity losses
(Eq. 2.1-2.5), per-class sampling, frozen finetuning, --init teacher, checkpoint errors."""
import argparse
import json
import os
import re

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

    videos = dm.index_ntu(str(rgb), "--rgb-dir", videos=True)
    assert set(videos) == set(both) | {"S001C002P001R001A007"}
    assert videos["S001C002P001R001A001"].endswith("S001C002P001R001A001_rgb.avi")
    folders = dm.non_empty(dm.index_ntu(str(depth), "--depth-dir", videos=False), dm.depth_files, "depth")
    assert "S004C002P001R002A004" not in folders
    assert "empty depth folder" in capsys.readouterr().err

    names = dm.match_pairs(videos, folders, "RGB video", "depth folder(s)")
    assert names == sorted(both)
    err = capsys.readouterr().err
    assert "2 depth folder(s) without a RGB video skipped" in err
    assert "S002C002P004R001A002" in err and "S003C001P001R001A003" in err


def test_missing_folder_names_the_flag(tmp_path):
    with pytest.raises(FileNotFoundError, match="--depth-dir"):
        dm.index_ntu(str(tmp_path / "nope"), "--depth-dir", videos=False)


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


def test_an_8_bit_depth_png_is_refused_before_training_with_the_flag_and_file(tmp_path):
    from torchvision.io import encode_png
    depth, rgb = tmp_path / "nturgb+d_depth_masked", tmp_path / "nturgb+d_rgb"
    (depth / "S001C002P001R001A001").mkdir(parents=True)
    rgb.mkdir()
    png = depth / "S001C002P001R001A001" / "MDepth-00000001.png"
    png.write_bytes(encode_png(torch.full((1, 4, 4), 7, dtype=torch.uint8)).numpy().tobytes())
    args = dm.parse_args(["--depth-dir", str(depth), "--rgb-dir", str(rgb), "--teacher-modality", "rgb",
                          "--stage", "finetune", "--init", "scratch"])
    with pytest.raises(SystemExit) as err:
        dm.check_inputs(args, ["finetune", "eval"])
    assert str(err.value) == (f"--depth-dir {depth}: {png}: an 8-bit PNG; masked depth maps are 16-bit PNGs in "
                              f"millimetres (NTU's nturgb+d_depth_masked)")
    write_png16(str(png), np.full((4, 4), 3000, np.uint16))
    dm.check_inputs(args, ["finetune", "eval"])  # a 16-bit one passes
    (depth / "S001C002P001R001A002").mkdir()  # an 8-bit export in any folder, not only the first
    later = depth / "S001C002P001R001A002" / "MDepth-00000001.png"
    later.write_bytes(encode_png(torch.full((1, 4, 4), 7, dtype=torch.uint8)).numpy().tobytes())
    with pytest.raises(SystemExit, match=re.escape(f"{later}: an 8-bit PNG")):
        dm.check_inputs(args, ["finetune", "eval"])


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
    # the loss trains the student: its gradient flows (a misplaced @torch.no_grad() once cut it)
    student = [torch.tensor([[1.0, 0.0]], requires_grad=True)]
    dm.granularity_loss(student, clip, video, "combined").backward()
    assert student[0].grad is not None and student[0].grad.abs().sum() > 0


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
    encoder, width = video_encoder("hara_r3d_18", in_channels=1)
    model = dm.Classifier(encoder, width, 3)
    params = dm.freeze_for_finetuning(model, "last")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        dm.train_mode(model, "last")
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


def test_init_scratch_trains_every_layer_as_table_2_4_defines_from_scratch():
    """Table 2.4: From-scratch is "training directly on the target modality without any pretraining"."""
    torch.manual_seed(0)
    model = dm.Classifier(video_encoder("hara_r3d_18", in_channels=1)[0], 512, 3)
    assert len(dm.freeze_for_finetuning(model, "all")) == len(list(model.parameters()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dm.train_mode(model, "all")
    dm.Classifier.forward(model, torch.rand(2, 1, 4, 16, 16)).sum().backward()
    assert all(m.training for m in model.modules())
    assert not torch.equal(before["encoder.stem.1.running_mean"], model.state_dict()["encoder.stem.1.running_mean"])
    assert model.encoder.stem[0].weight.grad is not None
    ntu = ["--data-root", "data/ntu"]
    assert dm.parse_args(ntu + ["--init", "scratch"]).finetune_layers == "all"
    assert dm.parse_args(ntu).finetune_layers == "last"  # Sec 2.4.3: the last block and fc
    assert dm.parse_args(ntu + ["--init", "teacher"]).finetune_layers == "last"
    assert dm.parse_args(ntu + ["--init", "scratch", "--finetune-layers", "last"]).finetune_layers == "last"
    assert dm.parse_args(ntu + ["--target", "skeleton"]).finetune_layers == "all"  # Sec 2.4.3: all of ST-GCN
    with pytest.raises(SystemExit):
        dm.parse_args(ntu + ["--target", "skeleton", "--finetune-layers", "last"])


def test_optimiser_is_hara_et_al_2018_sgd_with_dampening_and_a_plateau_schedule(tmp_path):
    """SGD momentum 0.9, dampening 0.9; lr x 0.1 once the epoch's loss has not fallen for 10 epochs."""
    from common.engine import Dist
    args = dm.parse_args(["--data-root", "data/ntu", "--out-dir", str(tmp_path), "--print-freq", "100"])
    assert (args.lr, args.teacher_lr, args.dampening, args.lr_schedule, args.lr_patience) == (0.1, 0.1, 0.9, "plateau", 10)
    model = torch.nn.Linear(3, 2)
    loader = torch.utils.data.DataLoader(list(range(4)), batch_size=2)
    run = dm.StageRun(args, Dist("cpu"), str(tmp_path), model, model.parameters(), loader, 14, 0.1, 1e-3, "transfer")
    group = run.optimizer.param_groups[0]
    assert (group["momentum"], group["dampening"], group["weight_decay"]) == (0.9, 0.9, 1e-3)
    lrs = []
    for epoch in run.epochs():  # a loss that stops falling after epoch 1
        for it in range(len(loader)):
            run.step(model(torch.ones(1, 3)).sum() * 0 + max(5.0 - epoch, 4.0), it)
        run.end_epoch()
        lrs.append(group["lr"])
    # the best loss at epoch 1; 10 epochs without improvement are tolerated, the 11th (epoch 12) reduces
    assert lrs[:12] == [0.1] * 12 and lrs[12:] == pytest.approx([0.01] * 2)
    log = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    assert [r["loss"] for r in log[:3]] == [5.0, 4.0, 4.0] and len(log) == 14
    steps = dm.parse_args(["--data-root", "data/ntu", "--out-dir", str(tmp_path / "s"), "--lr-schedule", "steps"])
    run = dm.StageRun(steps, Dist("cpu"), str(tmp_path / "s"), model, model.parameters(), loader, 8, 0.1, 0, "transfer")
    assert run.scheduler.milestones == {2: 1, 4: 1, 6: 1}  # --lr-steps 0.25 0.5 0.75 of 8 epochs


def _args(tmp_path, **kw):
    base = dict(target="depth", init="teacher", teacher_checkpoint=None, teacher_modality="flow",
                stgcn_width=0.25, out_dir=str(tmp_path), student_checkpoint=None, arch="hara_r3d_18")
    base.update(kw)
    return argparse.Namespace(**base)


def test_init_teacher_sums_the_first_convolution_over_input_channels(tmp_path):
    teacher, _ = video_encoder("hara_r3d_18", in_channels=2)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    path = str(tmp_path / "teacher.pt")
    torch.save(dict(encoder=state, modality="flow"), path)
    model = dm.initial_student(_args(tmp_path, teacher_checkpoint=path), 5)
    stem = model.encoder.stem[0].weight
    assert stem.shape == (64, 1, 7, 7, 7)
    assert torch.allclose(stem, state["stem.0.weight"][:, 0:1] + state["stem.0.weight"][:, 1:2])
    assert torch.equal(model.encoder.layer3[0].conv1[0].weight, state["layer3.0.conv1.0.weight"])
    assert model.fc.out_features == 5


def test_torchvision_state_dict_with_wrong_channels_names_flag_and_file(tmp_path):
    path = str(tmp_path / "r3d_18_kinetics.pth")
    torch.save(r3d_18().state_dict(), path)  # 3 input channels, with fc.*
    with pytest.raises(SystemExit) as err:
        dm.build_teacher(_args(tmp_path, teacher_modality="flow", arch="r3d_18"), path)
    message = str(err.value)
    assert "--teacher-checkpoint" in message and path in message and "3 input channel" in message
    teacher = dm.build_teacher(_args(tmp_path, teacher_modality="rgb", arch="r3d_18"), path)  # an RGB teacher
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    with pytest.raises(SystemExit, match="pass --arch r3d_18") as err:  # torchvision's network, not Hara's
        dm.build_teacher(_args(tmp_path, teacher_modality="rgb"), path)
    assert "weights do not match" in str(err.value) and path in str(err.value)


def test_a_missing_or_truncated_teacher_file_is_one_line_naming_the_flag(tmp_path):
    path = str(tmp_path / "teacher.pt")
    with pytest.raises(SystemExit, match=f"--teacher-checkpoint {path}: no such file"):
        dm.build_teacher(_args(tmp_path), path)
    torch.save(dict(encoder={"w": torch.zeros(1000)}), path)
    with open(path, "r+b") as f:
        f.truncate(1500)
    with pytest.raises(SystemExit, match=f"--teacher-checkpoint {path}: not a checkpoint"):
        dm.build_teacher(_args(tmp_path), path)


def test_a_skeleton_student_file_of_another_width_names_the_file_without_an_arch_hint(tmp_path):
    from common.backbones import STGCN
    path = str(tmp_path / "student.pt")
    torch.save(dict(encoder=STGCN(width=0.125).state_dict()), path)
    args = _args(tmp_path, target="skeleton", init="transfer", student_checkpoint=path, stgcn_width=0.25)
    with pytest.raises(SystemExit) as err:
        dm.initial_student(args, 3)
    assert "weights do not match" in str(err.value) and path in str(err.value) and "--arch" not in str(err.value)


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


def test_corner_crop_is_one_of_hara_et_als_crops_flipped_with_p_one_half():
    """Sec 2.4.3 / [83]: a square of side 1, 2^-1/4, 2^-1/2, 2^-3/4 or 1/2 of the frame at a corner or the
    centre, resized, flipped with p = 1/2 (flow: x negated). On a 32-pixel frame resized to 16 the sides
    1 and 1/2 are whole pixels, so those crops can be written out by slicing: 2 of the 5 scales."""
    torch.manual_seed(0)
    x = torch.randn(400, 2, 2, 32, 32)
    out = dm.multiscale_corner_crop(x, 16, "flow")
    whole = F.interpolate(x.reshape(400, 4, 32, 32), size=(16, 16), mode="bilinear",
                          align_corners=False).view(400, 2, 2, 16, 16)
    candidates = {"whole": whole}
    for name, (y, x0) in dict(centre=(8, 8), top_left=(0, 0), top_right=(0, 16), bottom_left=(16, 0),
                              bottom_right=(16, 16)).items():
        candidates[name] = x[..., y:y + 16, x0:x0 + 16]
    found = []
    for b in range(400):
        for name, c in candidates.items():
            mirror = torch.cat([-c[b, :1], c[b, 1:]]).flip(-1)
            if torch.allclose(out[b], c[b], atol=1e-5):
                found.append((name, False))
            elif torch.allclose(out[b], mirror, atol=1e-5):
                found.append((name, True))
    assert set(found) == {(n, f) for n in candidates for f in (False, True)}  # every crop, flipped and not
    assert 0.3 < len(found) / 400 < 0.5  # 2 of the 5 scales
    assert 0.35 < sum(f for _, f in found) / len(found) < 0.65


def test_skeleton_frames_keeps_the_first_frames_and_refuses_to_cut_a_sequence(tmp_path):
    from common.skeleton import write_split
    rng = np.random.default_rng(0)
    lengths = [5, 9, 7]
    samples = []
    for n in lengths:  # (3, 300, 25, 2) zero-padded after n frames
        x = np.zeros((3, 300, 25, 2), np.float32)
        x[:, :n] = rng.normal(size=(3, n, 25, 2))
        samples.append((x, n))
    names = ["S001C002P001R001A001", "S001C002P002R001A002", "S001C003P001R001A003"]
    write_split(str(tmp_path), "train", names, [0, 1, 2], iter(samples), 300)

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


# ============ Hara et al.'s 3D-ResNet-18 (Sec 2.4.3, [83]) ============

def _conv_macs_and_map(net, shape):
    """Multiply-accumulates of every convolution and the last block's output shape, on the meta device
    (shapes only, nothing computed)."""
    macs = []
    hooks = [m.register_forward_hook(lambda m, i, o: macs.append(o.numel() // o.shape[0] * m.in_channels
                                                                 * int(np.prod(m.kernel_size))))
             for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    x = net.stem(torch.empty(shape, device="meta"))
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        x = layer(x)
    for h in hooks:
        h.remove()
    return sum(macs), tuple(x.shape[2:])


def test_hara_3d_resnet_18_stem_pool_shortcuts_and_final_map():
    from common.backbones import ZeroPadShortcut
    hara, width = video_encoder("hara_r3d_18")
    conv, pool = hara.stem[0], hara.stem[3]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((7, 7, 7), (1, 2, 2), (3, 3, 3)) and width == 512
    assert isinstance(pool, torch.nn.MaxPool3d) and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    # type-A shortcuts: no parameters; the input subsampled by 2 and zero-padded to the new width
    assert not any("downsample" in k for k in hara.state_dict())
    x = torch.randn(2, 64, 5, 7, 7)
    expected = torch.cat([F.avg_pool3d(x, kernel_size=1, stride=2), torch.zeros(2, 64, 3, 4, 4)], 1)
    assert torch.equal(ZeroPadShortcut(128, 2)(x), expected)  # Hara et al.'s downsample_basic_block
    assert isinstance(hara.layer3[0].downsample, ZeroPadShortcut)
    hara_macs, hara_map = _conv_macs_and_map(hara.to("meta"), (1, 3, 16, 112, 112))
    tv_macs, tv_map = _conv_macs_and_map(r3d_18().to("meta"), (1, 3, 16, 112, 112))
    assert hara_map == (1, 4, 4) and tv_map == (2, 7, 7)
    assert 4.5 < tv_macs / hara_macs < 5.5  # torchvision's r3d_18: 40.7 against 8.3 GMACs, 4.9x
    assert dm.parse_args(["--data-root", "data/ntu"]).arch == "hara_r3d_18"


def test_hara_et_als_released_resnet_18_file_loads_as_a_teacher(tmp_path):
    """resnet-18-kinetics.pth: {'arch', 'state_dict': {'module.conv1.weight', 'module.bn1.*',
    'module.layer1.0.conv1.weight', 'module.layer1.0.bn1.*', ..., 'module.fc.*'}}, without
    num_batches_tracked (older PyTorch)."""
    torch.manual_seed(0)
    reference, _ = video_encoder("hara_r3d_18")
    hara_keys = {}
    for key, value in reference.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "stem":  # stem.0 -> conv1, stem.1 -> bn1
            name = ("conv1." if parts[1] == "0" else "bn1.") + parts[-1]
        else:  # layerX.Y.convK.0 -> layerX.Y.convK, layerX.Y.convK.1 -> layerX.Y.bnK
            layer, block, conv, index, param = parts
            name = f"{layer}.{block}.{conv if index == '0' else 'bn' + conv[-1]}.{param}"
        hara_keys["module." + name] = value.clone()
    hara_keys["module.fc.weight"], hara_keys["module.fc.bias"] = torch.randn(400, 512), torch.zeros(400)
    path = str(tmp_path / "resnet-18-kinetics.pth")
    torch.save(dict(arch="resnet-18", epoch=200, state_dict=hara_keys), path)
    teacher = dm.build_teacher(_args(tmp_path, teacher_modality="rgb"), path)
    for key, value in reference.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(teacher.state_dict()[key], value), key


def test_kinetics_teacher_reads_its_train_and_held_out_csvs_and_drops_missing_flow(tmp_path, capsys):
    from common.synthetic import write_mp4
    root, flow = tmp_path / "kinetics", tmp_path / "flow"
    rng = np.random.default_rng(0)
    lists = {}
    for split, count in (("train", 6), ("validate", 2)):
        rows = []
        for k in range(count):
            label, vid = ("abseiling", "air drumming")[k % 2], f"{split[:2]}{k:09d}"
            rows.append(f"{label},{vid},0,10,{split}")
            path = root / label / f"{vid}_000000_000010.mp4"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_mp4(str(path), rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8))
            if not (split == "train" and k == 3):  # one flow folder not extracted
                (flow / path.stem).mkdir(parents=True)
        lists[split] = tmp_path / f"{split}.csv"
        lists[split].write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n")
    kinetics = ["--source", "kinetics", "--source-root", str(root), "--train-list", str(lists["train"]),
                "--data-root", "data/ntu"]
    args = dm.parse_args(kinetics + ["--val-list", str(lists["validate"]), "--teacher-modality", "rgb"])
    train, classes = dm.source_items(args, "train")
    held_out, _ = dm.source_items(args, "val")
    assert len(train) == 6 and len(held_out) == 2 and classes == 2
    assert [y for _, y in held_out] == [0, 1] and all(p.endswith(".mp4") for p, _ in held_out)
    args = dm.parse_args(kinetics + ["--source-flow-dir", str(flow)])  # flow teacher, no --val-list
    train, _ = dm.source_items(args, "train")
    assert len(train) == 5 and all(os.path.isdir(p) for p, _ in train)
    assert "1 of 6 files are not on disk" in capsys.readouterr().err
    assert dm.source_items(args, "val") == ([], 0)  # not evaluated
