"""severe_eval.py driven as a user drives it: command lines (run in process, tests/script_run.py) with
tiny flags on the built-in synthetic videos (mp4 files and list files), for every protocol and task
that is implemented."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.models.video import r2plus1d_18

import severe_eval
from tests.script_run import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANNOTATIONS = os.path.join(REPO, "..", "shared", "data", "annotations")
TINY = ["--epochs", "1", "--batch-size", "4", "--clip-len", "4", "--crop-size", "32", "--num-test-clips", "2",
        "--workers", "0", "--device", "cpu", "--print-freq", "100"]


def run(args, check=True):
    """`python severe_eval.py ARGS`, in process (tests/script_run.py)."""
    return run_main(severe_eval, args, check)


def result(out_dir, setup, protocol="finetune"):
    with open(os.path.join(out_dir, f"results_{setup}_{protocol}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A torchvision-key backbone file, as tubelet_contrast.py writes it."""
    path = tmp_path_factory.mktemp("ckpt") / "backbone.pt"
    torch.manual_seed(0)
    net = r2plus1d_18()
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    return str(path)


def test_finetune_from_checkpoint_and_resume(pretrained, tmp_path):
    out = str(tmp_path / "ft")
    run(["--setup", "ucf101", *TINY, "--checkpoint", pretrained, "--format", "ours", "--out-dir", out])
    r = result(out, "ucf101")
    assert r["metric_name"] == "top1" and 0 <= r["value"] <= 100
    assert r["format"] == "ours" and len(r["checkpoint_sha256"]) == 64
    assert r["test_videos"] == r["test_videos_listed"] > 0
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert ckpt["epoch"] == 0 and "fc.weight" in ckpt["model"]
    proc = run(["--setup", "ucf101", *TINY, "--epochs", "2", "--checkpoint", pretrained, "--out-dir", out,
                "--resume", "auto"])
    assert "resumed from" in proc.stdout
    assert torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["epoch"] == 1


def test_linear_probe_keeps_backbone_frozen(pretrained, tmp_path):
    """Only fc trains. By default the backbone's BatchNorm runs in train mode, as SEVERE's linear_eval.py,
    so its running statistics move; --probe-bn frozen keeps every backbone tensor as it was."""
    original = torch.load(pretrained, weights_only=True)
    for probe_bn in ("train", "frozen"):
        out = str(tmp_path / probe_bn)
        run(["--setup", "ucf_1000", "--protocol", "linear", *TINY, "--checkpoint", pretrained, "--out-dir", out,
             "--probe-bn", probe_bn])
        model = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]
        stats = [k for k in original if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        assert all(torch.equal(model[f"backbone.{k}"], v) for k, v in original.items() if k not in stats)
        moved = [k for k in stats if not torch.equal(model[f"backbone.{k}"], original[k])]
        assert (len(moved) > 0) == (probe_bn == "train"), (probe_bn, moved[:3])
        assert result(out, "ucf_1000", "linear")["metric_name"] == "top1"


@pytest.mark.parametrize("setup,metric", [("charades", "map"), ("ucf_aot", "top1"), ("fx_s1", "mean_class_acc")])
def test_other_tasks_run_end_to_end(setup, metric, tmp_path):
    out = str(tmp_path / setup)
    run(["--setup", setup, *TINY, "--out-dir", out])
    r = result(out, setup)
    assert r["metric_name"] == metric and 0 <= r["value"] <= 100


@pytest.mark.parametrize("task,metric", [("retrieval", "recall@1"), ("cluster", "purity")])
def test_frozen_feature_tasks(task, metric, pretrained, tmp_path):
    out = str(tmp_path / task)
    proc = run(["--setup", "ucf101", "--task", task, *TINY, "--checkpoint", pretrained, "--out-dir", out])
    r = result(out, "ucf101", task)
    assert r["metric_name"] == metric and 0 <= r["value"] <= 100
    assert f"ucf101 {task}: {metric} " in proc.stdout  # the printed line names the task, as the file does


def test_counting_runs_end_to_end(tmp_path):
    out = str(tmp_path / "rc")
    run(["--setup", "ucf_rc", *TINY, "--out-dir", out])
    r = result(out, "ucf_rc")
    assert r["metric_name"] == "mean_count_error" and r["value"] >= 0 and 0 <= r["off_by_one"] <= 1


def test_summary_table_from_result_files(tmp_path):
    for name, values in (("a", [60.0, 90.0, 70.0, 40.0, 70.0, 85.0, 0.15, 10.0]),
                         ("b", [50.0, 80.0, 60.0, 30.0, 60.0, 75.0, 0.25, 5.0])):
        for setup, value in zip(["ssv2", "gym99", "ucf_1000", "gym99_1000", "fx_s1", "ub_s1", "ucf_rc", "charades"],
                                values):
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / f"results_{setup}_finetune.json").write_text(json.dumps(
                dict(checkpoint=name, setup=setup, protocol="finetune", metric_name="m", value=value)))
    table = run(["--summary", str(tmp_path / "a"), str(tmp_path / "b")]).stdout
    row_a = next(line for line in table.splitlines() if line.startswith("| a"))
    # mean of 60, 90, 70, 40, 70, 85, (1 - 0.15) * 100, 10 = 510 / 8; a is best everywhere: rank 1
    assert "63.8" in row_a and row_a.rstrip(" |").endswith("1.0")
    # setups beyond the eight get a table of their own; a folder without SEVERE setups says so
    for name, value in (("a", 80.0), ("b", 70.0)):
        (tmp_path / "other" / name).mkdir(parents=True)
        for setup in ("hmdb51", "gym_vault"):
            (tmp_path / "other" / name / f"results_{setup}_finetune.json").write_text(json.dumps(
                dict(checkpoint=name, setup=setup, protocol="finetune", metric_name="mean_class_acc", value=value)))
    table = run(["--summary", str(tmp_path)]).stdout
    assert "| Checkpoint | SSv2 |" in table and "| Checkpoint | HMDB51 | Mean | Rank↓ |" in table
    assert "| Checkpoint | Gym99 | Vault | Floor | FX-S1 | UB-S1 | Gym-288 |" in table  # Table 4.2
    only_other = run(["--summary", str(tmp_path / "other")]).stdout
    assert "no SEVERE setup among the results" in only_other and "| a | 80.0 | 80.0 | 1.0 |" in only_other
    assert "| a | – | 80.0 | – | – | – | – |" in only_other  # Vault in Table 4.2, not among the others


@pytest.mark.skipif(not os.path.isdir(ANNOTATIONS), reason="real annotation files (../shared) not present")
def test_print_split_lists_the_official_files(capsys):
    """In process (main(argv) is what the command line runs): four commands cost one torch import."""
    severe_eval.main(["--setup", "ucf_1000", "--print-split", "train", "--ann-root", ANNOTATIONS])
    lines = capsys.readouterr().out.split()
    assert len(lines) == 1010 and all(line.endswith(".avi") for line in lines)
    severe_eval.main(["--setup", "hmdb51", "--print-split", "test", "--ann-root", ANNOTATIONS])
    assert len(capsys.readouterr().out.split()) == 1530
    with pytest.raises(SystemExit, match="--print-split train needs --ann-root"):
        severe_eval.main(["--setup", "ucf101", "--print-split", "train"])
    # the list-file flags of the other video scripts are not offered: setups read their official files
    with pytest.raises(SystemExit):
        severe_eval.main(["--train-list", "x.txt"])
    assert "unrecognized arguments: --train-list" in capsys.readouterr().err


def test_a_missing_annotation_file_is_one_line_before_training(tmp_path):
    """The shipped annotations have no Charades CSVs: the run stops in setup, naming the file and the flag."""
    with pytest.raises(SystemExit) as err:
        severe_eval.main([*TINY, "--setup", "charades", "--data-root", str(tmp_path), "--ann-root", ANNOTATIONS,
                          "--out-dir", str(tmp_path / "out")])
    message = str(err.value)
    assert "Charades_v1_train.csv" in message and "--ann-root" in message and "\n" not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_torchrun_two_processes(tmp_path):
    out = str(tmp_path / "ddp")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
         "severe_eval.py", "--setup", "ucf101", *TINY, "--batch-size", "2", "--out-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --batch-size is the global batch: the thesis's batch and lr on any number of GPUs (it was 2 x 2)
    assert "(batch 1 per process x 2)" in proc.stdout and r"batch_size=2," in proc.stdout
    r = result(out, "ucf101")
    assert r["test_videos"] == r["test_videos_listed"]  # predictions of both ranks gathered, no repeats


def test_charades_clip_targets_follow_the_intervals_over_the_clips_span(tmp_path):
    import numpy as np

    import severe_eval as se
    from common.synthetic import write_mp4
    path = str(tmp_path / "v.mp4")
    write_mp4(path, np.zeros((50, 16, 16, 3), np.uint8), fps=25)  # 2 s
    # class 3 from 0.1 s to 0.5 s (frames 3..12 at 25 fps), class 7 from 1.0 s to 1.9 s (frames 26..47)
    targets = se.CharadesClipTargets([(path, [(3, 0.1, 0.5), (7, 1.0, 1.9)])])
    early = targets(0, np.arange(0, 8))      # frames 0..7: only class 3
    late = targets(0, np.arange(24, 48, 8))  # frames 24, 32, 40: class 7 (24 is outside, 32 inside)
    both = targets(0, np.array([4, 30]))
    assert early.shape == (157,) and set(early.nonzero().flatten().tolist()) == {3}
    assert set(late.nonzero().flatten().tolist()) == {7}
    assert set(both.nonzero().flatten().tolist()) == {3, 7}
    assert targets(0, np.array([13, 20, 25])).sum() == 0  # t = 0.52 ... 1.0: in no open interval
    # SlowFast's charades.py pools the labels of every frame from the clip's first to its last, sampled or not
    assert set(targets(0, np.array([0, 14])).nonzero().flatten().tolist()) == {3}


def test_charades_on_its_own_file_layout(tmp_path):
    """Charades_v1_{train,test}.csv under ANN_ROOT/charades/ and <id>.mp4 under DATA_ROOT: per-clip
    training labels at stride 8, max-pooled sigmoid test scores, mAP."""
    import numpy as np

    from common.synthetic import write_mp4
    (tmp_path / "videos").mkdir()
    (tmp_path / "ann" / "charades").mkdir(parents=True)
    rng = np.random.default_rng(0)
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"
    for split, ids in (("train", ["AAAA1", "AAAA2", "AAAA3", "AAAA4"]), ("test", ["BBBB1", "BBBB2"])):
        rows = []
        for k, vid in enumerate(ids):
            write_mp4(str(tmp_path / "videos" / f"{vid}.mp4"), rng.integers(0, 255, (40, 36, 48, 3), np.uint8), fps=20)
            rows.append(f'{vid},S1,Kitchen,6,7,Yes,"a script",cup,"words",c{k:03d} 0.0 1.2;c156 0.5 1.9,2.0\n')
        (tmp_path / "ann" / "charades" / f"Charades_v1_{split}.csv").write_text(header + "".join(rows))
    out = str(tmp_path / "out")
    run(["--setup", "charades", *TINY, "--batch-size", "2", "--short-side", "36", "--data-root",
         str(tmp_path / "videos"), "--ann-root", str(tmp_path / "ann"), "--out-dir", out])
    r = result(out, "charades")
    assert r["metric_name"] == "map" and 0 <= r["value"] <= 100 and r["test_videos"] == 2
    # classes 0, 1 (one positive each) and 156 (both) have positives in the test set; the rest do not
    assert sum(ap is not None for ap in r["per_class"]) == 3


# ---- the protocol SEVERE's configs ran (issue 12 section 1) ----

def _video_at(path, fps, num_frames=80):
    """A 32 x 32 mp4 of num_frames frames at `fps` whose frame k shows the grey level 3k."""
    from common.synthetic import write_mp4
    import numpy as np
    frames = np.stack([np.full((32, 32, 3), 3 * k, np.uint8) for k in range(num_frames)])
    write_mp4(str(path), frames, fps=fps)
    return str(path)


@pytest.mark.parametrize("fps, last_index", [(25, 48), (12, 23)])
def test_clips_span_two_seconds_at_16_fps_whatever_the_video_rate(tmp_path, fps, last_index):
    """SEVERE's configs decode `clip_duration: 2.0` at `video_fps: 16`: 32 frames whose times are k / 16 s,
    i.e. native frame floor(k * fps / 16): every 1.5625th frame of a 25 fps video, frames repeated in a
    12 fps one. The default of every recognition setup; --video-fps 0 gives 32 consecutive frames."""
    from common.video import VideoClipDataset
    path = _video_at(tmp_path / f"v{fps}.mp4", fps)
    args = severe_eval.parse_args(["--setup", "ucf101", "--data-root", str(tmp_path)])
    assert (args.clip_len, args.video_fps) == (32, 16.0)
    videos = VideoClipDataset([(path, 0)], clip_len=args.clip_len, short_side=32, train=False,
                              fps=args.video_fps)
    item = videos[0]
    frames = item["frames"]
    assert frames[-1] - frames[0] == last_index  # floor(31 * fps / 16)
    assert (frames[1:] - frames[:-1]).tolist() == \
        [int((k + 1) * fps / 16) - int(k * fps / 16) for k in range(31)]
    native = VideoClipDataset([(path, 0)], clip_len=32, short_side=32, train=False, fps=None)[0]["frames"]
    assert native[-1] - native[0] == 31


def test_setups_that_keep_native_frames_and_charades_dropout():
    charades = severe_eval.parse_args(["--setup", "charades", "--data-root", "x"])
    aot = severe_eval.parse_args(["--setup", "ucf_aot", "--data-root", "x"])
    ucf = severe_eval.parse_args(["--setup", "ucf101", "--data-root", "x"])
    assert charades.video_fps == 0 and severe_eval.SETUPS["charades"].clip_stride == 8  # SlowFast's 32 x 8
    assert aot.video_fps == 0 and aot.clip_len == 8
    assert (ucf.dropout, charades.dropout) == (0.0, 0.5)  # SEVERE's bare linear head; Charades's DROPOUT_RATE
    assert severe_eval.parse_args(["--setup", "charades", "--data-root", "x", "--dropout", "0.1"]).dropout == 0.1
    head = severe_eval.Classifier(nn.Identity(), 8, 3, dropout=ucf.dropout)
    head.train()
    x = torch.ones(4, 8)
    assert torch.equal(head(x), head(x))  # no dropout in training mode either


class _FramedVideo:
    """One (T, H, W, 3) clip: 0 inside the centre 56 x 56 square of a 64 x 96 frame, 255 outside."""
    def __len__(self):
        return 1

    def __getitem__(self, i):
        clip = torch.full((2, 64, 96, 3), 255, dtype=torch.uint8)
        clip[:, 4:60, 20:76] = 0
        return dict(clip=clip, label=0, index=0, frames=torch.arange(2))


def test_test_view_is_resize_128_centre_crop_112():
    """SEVERE tests on Resize(128) + CenterCrop(112): the centre square of 112 / 128 = 0.875 of the short side."""
    view = severe_eval.Clips(_FramedVideo(), [0], crop_size=56, train=False)[0][0]
    assert view.shape == (1, 2, 3, 56, 56) and int(view.max()) == 0
    whole = severe_eval.Clips(_FramedVideo(), [0], crop_size=56, train=False, test_fraction=1.0)[0][0]
    assert int(whole.max()) == 255  # the old view: the whole centre square, its border included
    assert severe_eval.parse_args(["--data-root", "x"]).test_crop_fraction == 0.875


def test_training_crop_is_severes_random_resized_crop():
    import random
    random.seed(0)
    boxes = [severe_eval.random_resized_box(128, 170) for _ in range(3000)]
    areas = [bh * bw / (128 * 170) for _, _, bh, bw in boxes]
    aspects = [bw / bh for _, _, bh, bw in boxes]
    assert all(0 <= y <= 128 - bh and 0 <= x <= 170 - bw for y, x, bh, bw in boxes)
    assert min(areas) < 0.1 and max(areas) > 0.9 and all(0.07 < a <= 1.0 for a in areas)
    assert min(aspects) < 0.8 and max(aspects) > 1.25 and all(0.7 < a < 1.4 for a in aspects)
    train = severe_eval.Clips(_FramedVideo(), [0], crop_size=16, train=True)
    assert train[0][0].shape == (2, 3, 16, 16)


def test_training_colour_jitter_includes_hue():
    """ColorJitter(0.4, 0.4, 0.4, 0.2): brightness, contrast and saturation keep G = B on a pure red clip;
    only the hue shift moves them apart."""
    red = torch.zeros(16, 2, 3, 8, 8, dtype=torch.uint8)
    red[:, :, 0] = 200
    norm = ((0.0,) * 3, (1.0,) * 3, False)
    torch.manual_seed(0)
    no_hue = severe_eval.to_input(red, "cpu", train=True, norm=norm, hue=0.0)
    with_hue = severe_eval.to_input(red, "cpu", train=True, norm=norm, hue=0.2)
    assert torch.allclose(no_hue[:, 1], no_hue[:, 2])
    assert (with_hue[:, 1] - with_hue[:, 2]).abs().amax() > 0.05
    assert severe_eval.parse_args(["--data-root", "x"]).hue == 0.2


def test_schedules_are_severes_configs_in_one_clip_epochs():
    """SEVERE's yaml files: gamma 0.3, epochs of 10 clips per video (SSv2: 2). FX-S1 18 epochs [7, 12, 16] ->
    180 [70, 120, 160]; SSv2 22 [12, 17, 20] -> 44 [24, 34, 40]; the UCF101 linear probe: batch 128, 16 frames."""
    parse = lambda *a: severe_eval.parse_args(["--data-root", "x", "--checkpoint", "pretrained.pt", *a])
    fx, ssv2, low = parse("--setup", "fx_s1"), parse("--setup", "ssv2"), parse("--setup", "ucf_1000")
    assert (fx.epochs, fx.milestones, fx.gamma) == (180, [70, 120, 160], 0.3)
    assert (ssv2.epochs, ssv2.milestones) == (44, [24, 34, 40])
    assert (low.epochs, low.milestones) == (160, [60, 100, 140])
    lin = parse("--setup", "ucf101", "--protocol", "linear")
    assert (lin.batch_size, lin.clip_len, lin.lr, lin.gamma) == (128, 16, 0.01, 0.3)
    assert parse("--setup", "charades").gamma == 0.1  # SlowFast's steps
    sched = severe_eval.schedule(parse("--setup", "fx_s1", "--gamma", "0.1"), severe_eval.SETUPS["fx_s1"])
    assert severe_eval.lr_factor(sched, 130) == pytest.approx(0.01)


def test_arrow_of_time_spreads_8_frames_over_the_video_without_augmentation(tmp_path):
    """App. B.2.4: "we sample 8 frames linearly with a random offset ... 112x112 center crops ... We do not
    use any augmentations"."""
    from common.video import VideoClipDataset
    import random
    path = _video_at(tmp_path / "v.mp4", 25, num_frames=80)
    args = severe_eval.parse_args(["--setup", "ucf_aot", "--data-root", str(tmp_path)])
    videos = VideoClipDataset([(path, 0)], clip_len=args.clip_len, short_side=32, train=True, spread=True)
    starts = set()
    for _ in range(40):
        frames = videos[0]["frames"]
        assert (frames[1:] - frames[:-1]).tolist() == [10] * 7  # 80 frames / 8
        starts.add(int(frames[0]))
    assert starts <= set(range(10)) and len(starts) > 3
    random.seed(0)
    views = [severe_eval.Clips(_FramedVideo(), [1], crop_size=56, train=True, aot=True)[0][0] for _ in range(5)]
    assert all(torch.equal(v, views[0]) for v in views) and int(views[0].max()) == 0  # the centre view, unflipped
    assert torch.equal(views[0], severe_eval.Clips(_FramedVideo(), [1], crop_size=56, train=False, aot=True)[0][0][0])


def test_per_method_configs_and_normalisation_as_severe_ran_them():
    parse = lambda *a: severe_eval.parse_args(["--data-root", "x", *a])
    scratch = parse("--setup", "ucf101", "--init", "scratch")
    assert (scratch.epochs, scratch.milestones, scratch.weight_decay) == (200, [100, 150, 180], 1e-4)
    assert parse("--setup", "ssv2", "--init", "scratch").epochs == 50
    assert parse("--setup", "ub_s1", "--init", "scratch").weight_decay == 1e-5
    assert parse("--setup", "gym99_1000", "--checkpoint", "c", "--format", "avid_cma").lr == 1e-3
    assert parse("--setup", "gym99_1000", "--checkpoint", "c", "--format", "gdt").lr == 1e-4
    assert parse("--setup", "ucf101", "--init", "scratch", "--epochs", "7").epochs == 7  # a given flag wins
    for setup in ("ucf_1000", "gym99_1000"):  # tubelet contrast's own low-shot config (Table 5.8)
        ours = parse("--setup", setup, "--checkpoint", "c", "--format", "ours")
        assert (ours.epochs, ours.milestones) == (180, [80, 130, 160])
        assert parse("--setup", setup, "--checkpoint", "c", "--format", "gdt").epochs == 160
    assert parse("--setup", "ucf101", "--checkpoint", "c", "--format", "ours").epochs == 160
    S, norm = severe_eval.SETUPS, severe_eval.input_normalization
    imagenet, kinetics = severe_eval.INPUT_NORMALIZATION["imagenet"], severe_eval.INPUT_NORMALIZATION["kinetics"]
    assert norm("supervised", S["ucf101"]) == norm("scratch", S["ucf101"]) == norm("gdt", S["ucf101"]) == imagenet
    assert norm("supervised", S["ucf101"], "pretraining") == kinetics
    assert norm("gdt", S["charades"]) == norm("tclr", S["charades"]) == ((0.45,) * 3, (0.225,) * 3, True)
    assert norm("tclr", S["ucf101"]) == ((0.0,) * 3, (1.0,) * 3, True)  # unnormalised BGR (switch_channels)
    # SEVERE's counting code reads RGB with PIL and leaves TCLR unnormalised: no channel switch there
    assert norm("tclr", S["ucf_rc"]) == ((0.0,) * 3, (1.0,) * 3, False)
    assert norm("ours", S["ucf101"]) == norm("ours", S["charades"]) == kinetics


def test_charades_views_are_slowfasts():
    """SEVERE's Charades configs (SlowFast): TRAIN_JITTER_SCALES [256, 340] then a random 112 crop, no colour
    jitter; NUM_SPATIAL_CROPS 3 at test (the whole short side at both ends and the centre); decoded at 340."""
    import random
    args = severe_eval.parse_args(["--setup", "charades", "--data-root", "x"])
    assert (args.train_crop, args.test_spatial_crops, args.short_side, args.colour_jitter) == ("jitter", 3, 340, False)
    ucf = severe_eval.parse_args(["--setup", "ucf101", "--data-root", "x"])
    assert (ucf.train_crop, ucf.test_spatial_crops, ucf.short_side, ucf.colour_jitter) == ("resized", 1, 128, True)
    assert not severe_eval.parse_args(["--setup", "ucf_aot", "--data-root", "x"]).colour_jitter

    class Columns:  # one 2-frame clip of 64 x 96 whose pixel value is its column
        def __len__(self):
            return 1

        def __getitem__(self, i):
            clip = torch.arange(96, dtype=torch.uint8).view(1, 1, 96, 1).expand(2, 64, 96, 3).contiguous()
            return dict(clip=clip, label=0, index=0, frames=torch.arange(2))

    views = severe_eval.Clips(Columns(), [0], crop_size=64, train=False, spatial_crops=3)[0][0]
    assert views.shape == (3, 2, 3, 64, 64)
    assert [int(v[0, 0, 0, 0]) for v in views] == [0, 16, 32] and int(views[2].max()) == 95
    random.seed(0)
    clips = severe_eval.Clips(Columns(), [0], crop_size=112, train=True, train_crop="jitter")
    sides = [clips.boxes(340, 453)[0][2] for _ in range(500)]
    assert min(sides) == 112 and max(sides) >= 145 and max(sides) <= 149  # 340 * 112 / U{256 .. 340}


def test_sample_size_sweep_from_the_command_line(tmp_path):
    """Fig. 4.3 / B.13: --subset-size N trains on N videos drawn per class (here 8 of 8 classes' 96), under
    the linear probe too, and records the count; setups without classes refuse it before training."""
    out = str(tmp_path / "n8")
    run(["--setup", "ucf101", "--protocol", "linear", *TINY, "--subset-size", "8", "--out-dir", out])
    assert result(out, "ucf101", "linear")["train_videos"] == 8
    run(["--setup", "ucf101", *TINY, "--epochs", "0", "--out-dir", str(tmp_path / "all")])
    assert result(str(tmp_path / "all"), "ucf101")["train_videos"] > 8
    proc = run(["--setup", "ucf_rc", *TINY, "--subset-size", "8", "--out-dir", str(tmp_path / "rc")], check=False)
    assert proc.returncode != 0 and "--subset-size: ucf_rc is not a classification setup" in proc.stderr


def test_an_r3d_18_backbone_of_ours_builds_r3d_18(tmp_path):
    """Table C.2: `tubelet_contrast.py --backbone r3d_18` writes an R3D-18 backbone.pt; --format ours built
    R(2+1)D-18 for every file, and the strict load failed (104 of 120 keys)."""
    from torchvision.models.video import r3d_18
    path = tmp_path / "backbone.pt"
    torch.save({k: v for k, v in r3d_18().state_dict().items() if not k.startswith("fc.")}, path)
    out = str(tmp_path / "out")
    run(["--setup", "ucf101", *TINY, "--epochs", "0", "--checkpoint", str(path), "--format", "ours",
         "--out-dir", out])
    record = result(out, "ucf101")
    assert record["backbone"] == "r3d_18" and record["format"] == "ours"
    assert severe_eval.torchvision_architecture(r2plus1d_18().state_dict()) == "r2plus1d_18"
    # --format auto (the default) finds the same: the network, and Table 5.8's low-shot schedule of ours
    out = str(tmp_path / "auto")
    run(["--setup", "ucf_1000", *TINY, "--epochs", "0", "--checkpoint", str(path), "--out-dir", out])
    record = result(out, "ucf_1000")
    assert record["backbone"] == "r3d_18" and record["format"] == "ours"
    assert record["args"]["format"] == "ours"  # the synthetic sizes follow it, so the schedule is the preset's line
    assert any(line.startswith("preset --format ours on ucf_1000") and "--milestones 80 130 160" in line
               for line in record["args"]["presets"])


def test_a_small_backbone_of_ours_builds_the_small_network(tmp_path):
    """The Table 5.2 miniature pretrains `--backbone r2plus1d_18_small` (1/4 width); its backbone.pt must
    build that network here, not the full R(2+1)D-18 (every shape would mismatch in the strict load)."""
    from common.backbones import encoder_state_dict, video_encoder
    path = tmp_path / "backbone.pt"
    torch.save(encoder_state_dict(video_encoder("r2plus1d_18_small")[0]), path)
    out = str(tmp_path / "out")
    run(["--setup", "ucf101", *TINY, "--epochs", "0", "--checkpoint", str(path), "--format", "ours",
         "--out-dir", out])
    assert result(out, "ucf101")["backbone"] == "r2plus1d_18_small"


def test_ntu60_on_its_released_layout_end_to_end(tmp_path):
    """--setup ntu60 --data-root <nturgb+d_rgb>: the cross-subject split from the names of 30 fps MPEG-4
    avi files (NTU's container), 16-frame clips at 16 fps, trained and scored; a corrupt file is skipped."""
    import numpy as np
    from common.synthetic import write_avi
    rng = np.random.default_rng(0)
    folder = tmp_path / "nturgb+d_rgb"
    folder.mkdir()
    for subject in (1, 2, 3, 6):  # 1, 2 train; 3, 6 test
        for action in (1, 2):
            write_avi(str(folder / f"S001C001P{subject:03d}R001A{action:03d}_rgb.avi"),
                      rng.integers(0, 255, (40, 32, 40, 3), np.uint8), fps=30)
    (folder / "S001C001P004R001A001_rgb.avi").write_bytes(b"not a video")  # subject 4: train, unreadable
    out = str(tmp_path / "out")
    proc = run(["--setup", "ntu60", *TINY, "--clip-len", "4", "--batch-size", "2", "--short-side", "32",
                "--data-root", str(folder), "--init", "scratch", "--max-bad-fraction", "0.5",
                "--out-dir", out])
    r = result(out, "ntu60")
    assert r["metric_name"] == "top1" and r["test_videos"] == 4 and r["args"]["video_fps"] == 16.0
    assert "S001C001P004R001A001_rgb.avi" in proc.stderr


def test_epic_kitchens_segments_on_their_released_layout_end_to_end(tmp_path):
    """--setup ek100: EPIC_100_{train,validation}.csv under ANN_ROOT/epic_kitchens, the recordings as
    P01/videos/P01_01.MP4 (50 fps) under DATA_ROOT; every narration is a segment of its recording, trained
    and scored; a recording that is not on disk is reported and its narrations left out."""
    import numpy as np
    from common.synthetic import write_mp4
    from tests.test_severe_readers import EPIC_HEADER
    rng = np.random.default_rng(0)
    for name in ("P01_01", "P01_02"):
        (tmp_path / "videos" / "P01" / "videos").mkdir(parents=True, exist_ok=True)
        write_mp4(str(tmp_path / "videos" / "P01" / "videos" / f"{name}.MP4"),
                  rng.integers(0, 255, (120, 32, 40, 3), np.uint8), fps=50)
    ann = tmp_path / "ann" / "epic_kitchens"
    ann.mkdir(parents=True)
    row = "{vid}_{k},P01,{vid},,,,{first},{last},x,verb,{verb},noun,{noun},,\n"
    train = [("P01_01", 1, 40, 0, 4), ("P01_01", 41, 100, 1, 7), ("P01_02", 10, 70, 0, 4), ("P01_02", 60, 120, 1, 7),
             ("P09_01", 1, 50, 1, 7)]  # P09_01: not downloaded
    test = [("P01_01", 20, 90, 1, 7), ("P01_02", 5, 60, 0, 4)]
    for file, rows in (("EPIC_100_train.csv", train), ("EPIC_100_validation.csv", test)):
        (ann / file).write_text(EPIC_HEADER + "".join(row.format(vid=v, k=k, first=a, last=b, verb=c, noun=n)
                                                      for k, (v, a, b, c, n) in enumerate(rows)))
    out = str(tmp_path / "out")
    proc = run(["--setup", "ek100", *TINY, "--batch-size", "2", "--short-side", "32", "--init", "scratch",
                "--data-root", str(tmp_path / "videos"), "--ann-root", str(tmp_path / "ann"), "--out-dir", out])
    r = result(out, "ek100")
    assert r["metric_name"] == "top1" and r["test_videos"] == 2 and 0 <= r["value"] <= 100
    assert "1 of 5 files are not on disk" in proc.stderr and "P09_01.MP4" in proc.stderr


def test_counting_frames_are_letterboxed_as_severes_counting_code():
    """Scale_longerside(112) + CenterCrop(112): the whole frame, its longer side 112, centred on black bars;
    training adds only a flip (no crop, no colour jitter: the ucf_rc preset turns --colour-jitter off)."""
    frames = torch.arange(4 * 8 * 3, dtype=torch.uint8).view(1, 4, 8, 3) + 1  # one 4 x 8 frame, no zero pixel
    out = severe_eval.letterbox_frames(frames, 8)
    assert out.shape == (1, 3, 8, 8)
    assert (out[:, :, :2] == 0).all() and (out[:, :, 6:] == 0).all()  # bars above and below
    assert torch.equal(out[0, :, 2:6], frames[0].permute(2, 0, 1))  # the whole frame, unscaled at 8 wide
    assert torch.equal(severe_eval.letterbox_frames(frames, 8, flip=True), out.flip(-1))
    tall = severe_eval.letterbox_frames(torch.full((2, 12, 6, 3), 200, dtype=torch.uint8), 4)  # 12 x 6 -> 4 x 2
    assert (tall[:, :, :, 1:3] == 200).all() and (tall[:, :, :, 0] == 0).all() and (tall[:, :, :, 3] == 0).all()
    assert severe_eval.parse_args(["--setup", "ucf_rc", "--data-root", "x"]).colour_jitter is False
    assert severe_eval.parse_args(["--setup", "ucf_rc", "--data-root", "x", "--colour-jitter"]).colour_jitter is True
