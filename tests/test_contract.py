"""The contract every script keeps (README, "Shared flags"): presets never beat a flag that was
given, resume refuses other method flags, missing files are dropped when a list is read, unreadable
files are reported and left out of metrics, every input is checked before training, and
--batch-size is the global batch under torchrun."""
import argparse
import json
import os
import re
import sys

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
ANNOTATIONS = os.path.join(REPO, "..", "shared", "data", "annotations")

import distill_modality  # noqa: E402
import severe_eval  # noqa: E402
import skeleton_contrast  # noqa: E402
import tubelet_contrast  # noqa: E402
from common import engine  # noqa: E402
from common.synthetic import write_avi  # noqa: E402
from common.video import drop_missing  # noqa: E402
from tests.script_run import run_main, run_process as run  # noqa: E402


# ============ a flag given wins over every preset ============

# argv that switch each preset on: the synthetic runs, per-protocol / per-target / per-setup presets
TRIGGERS = {
    tubelet_contrast: [[]],
    skeleton_contrast: [[]] + [["--eval", e, "--checkpoint", "c.pt"] + extra
                                                     for e in skeleton_contrast.EVAL_DEFAULTS
                                                     for extra in ([], ["--data-root", "x"])],
    distill_modality: [[], ["--target", "skeleton"], ["--data-root", "x"], ["--target", "skeleton", "--data-root", "x"]],
    severe_eval: [["--setup", s, "--protocol", p] + extra for s in severe_eval.SETUPS for p in ("finetune", "linear")
                  for extra in ([], ["--data-root", "x"])
                  if p == "linear" or severe_eval.SETUPS[s].finetune is not None],  # k400: linear only
}
CHOICES = dict(granularity={"combined": "video2clip"},
               bn={"shuffle": "sync", "sync": "shuffle"},
               train_crop={"resized": "multiscale", "jitter": "resized"},
               negatives={"batch": "queue"}, backbone={"r2plus1d_18_small": "r2plus1d_18"},
               synthetic_background={"grey-noise": "gratings"})


def other_value(key, value):
    """A command-line value unlike `value` (the preset's): (argv tokens, parsed value); a boolean
    (BooleanOptionalAction) is given as --KEY or --no-KEY, its tokens then hold the whole flag."""
    if isinstance(value, bool):
        return [("--no-" if value else "--") + key.replace("_", "-")], not value
    if key == "seeds":  # distill_modality's comma list
        return ["5"], [5]
    if key in ("batch_size", "queue_size"):  # doubled: the queue must stay a whole number of batches
        return [str(2 * value)], 2 * value
    if isinstance(value, int):
        return [str(value + 3)], value + 3
    if isinstance(value, float):  # halved inside (0, 1]: momenta and probabilities are refused above 1
        new = value / 2 if 0 < value <= 1 else value * 3 + 0.5
        return [repr(new)], new
    if isinstance(value, list):
        new = [v + 1 for v in value] or [7]
        if key == "schedule":  # skeleton_contrast's comma list
            return [",".join(map(str, new))], new
        return [str(v) for v in new], new
    if key in CHOICES and value in CHOICES[key]:
        return [CHOICES[key][value]], CHOICES[key][value]
    return None


@pytest.mark.parametrize("script", list(TRIGGERS), ids=lambda m: m.__name__)
def test_a_given_flag_wins_over_every_preset(script):
    checked = booleans = 0
    for trigger in TRIGGERS[script]:
        base = script.parse_args(trigger)
        applied = {k for name, when, values in script.PRESETS if when(base) for k in values}
        assert base.presets, f"{trigger} switched no preset on"
        for key in sorted(applied - set(base.given_flags)):
            alt = other_value(key, getattr(base, key))
            if alt is None:  # the skeleton student's are fixed
                assert key in ("granularity", "finetune_layers"), key
                continue
            tokens, expected = alt
            flag = [] if isinstance(expected, bool) else ["--" + key.replace("_", "-")]
            if script is skeleton_contrast and "--checkpoint" in trigger and key in ("width", "bigru"):
                with pytest.raises(SystemExit):  # the checkpoint's encoders are built as it holds them
                    script.parse_args(trigger + flag + tokens)
                continue
            args = script.parse_args(trigger + flag + tokens)
            assert getattr(args, key) == expected, (script.__name__, trigger, key)
            checked += 1
            booleans += isinstance(expected, bool)
    assert checked >= 5
    assert booleans >= (1 if script is severe_eval else 0)  # --colour-jitter over the Charades / AoT / UCF-RC presets


def test_help_lists_the_presets(capsys):
    with pytest.raises(SystemExit):
        tubelet_contrast.parse_args(["--help"])
    out = capsys.readouterr().out
    assert "presets (flags given on the command line win)" in out and "--queue-size 64" in out


def help_text(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse's line wrapping undone


@pytest.mark.parametrize("script", list(TRIGGERS), ids=lambda m: m.__name__)
def test_help_shows_the_values_the_run_uses(script, capsys):
    """--help shows every default but None (an input not given: its help says what happens then), and
    lists no flag the script does not read."""
    text = help_text(script, capsys)
    assert "(default: " in text and "(default: None)" not in text
    if script is tubelet_contrast:  # pretraining reads no validation list
        assert "--train-list" in text and "--val-list" not in text
    if script is distill_modality:  # issue 14, section 3
        assert "backbone.pt" not in text and "--transfer-epochs TRANSFER_EPOCHS Sec 2.4.3 (skeleton preset: 120) " \
            "(default: 400)" in text
        assert "--val-list VAL_LIST --source kinetics: the teacher's held-out videos" in text
        assert "--student-checkpoint STUDENT_CHECKPOINT --init transfer from this student.pt (default " \
            "OUT_DIR/transfer/student.pt) --per-class" in text
        assert distill_modality.parse_args(["--data-root", "x"]).transfer_epochs == 400


def test_distill_epochs_sets_every_stage_over_the_preset():
    """The bug: --epochs 1 on the synthetic data trained the teacher 24 epochs and finetuned 60."""
    args = distill_modality.parse_args(["--epochs", "1"])
    assert (args.teacher_epochs, args.transfer_epochs, args.finetune_epochs) == (1, 1, 1)
    args = distill_modality.parse_args(["--epochs", "1", "--finetune-epochs", "3"])
    assert (args.teacher_epochs, args.transfer_epochs, args.finetune_epochs) == (1, 1, 3)
    args = distill_modality.parse_args(["--target", "skeleton", "--data-root", "x"])  # Sec 2.4.3, no None left
    assert (args.batch_size, args.transfer_epochs, args.finetune_epochs, args.weight_decay) == (100, 120, 70, 1e-5)


def test_severe_without_a_checkpoint_is_recorded_as_the_scratch_run_it_is(capsys):
    """--init pretrained (the default) without --checkpoint trained from random weights and wrote
    init: pretrained into its result file."""
    assert severe_eval.parse_args(["--setup", "ucf101", "--data-root", "x"]).init == "scratch"
    assert severe_eval.parse_args(["--setup", "ucf101", "--checkpoint", "c.pt"]).init == "pretrained"
    with pytest.raises(SystemExit):
        severe_eval.parse_args(["--setup", "ucf101", "--init", "pretrained"])
    assert "--init pretrained needs --checkpoint" in capsys.readouterr().err


def test_no_default_is_left_none_for_the_schedule():
    for argv in (["--data-root", "x"], ["--data-root", "x", "--setup", "charades"], ["--setup", "all", "--data-root", "x"]):
        args = severe_eval.parse_args(argv)
        assert None not in (args.batch_size, args.epochs, args.lr, args.clip_len, args.weight_decay, args.milestones)
    all_setups = severe_eval.parse_args(["--setup", "all", "--data-root", "x", "--lr", "0.5"])
    charades = engine.apply_presets(argparse.Namespace(**{**vars(all_setups), "setup": "charades"}), severe_eval.PRESETS)
    assert (charades.batch_size, charades.epochs, charades.lr) == (16, 57, 0.5)  # the setup's, --lr given wins


# ============ resume and out-dir ============

def _saved_run(tmp_path, **flags):
    args = argparse.Namespace(lr=0.1, granularity="clip2clip", workers=4, resume="", given_flags=[], presets=[],
                              epochs=2, **flags)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    d = engine.Dist("cpu")
    engine.save_epoch(d, str(tmp_path), dict(epoch=0), model, opt, sched, scaler, 0, args)
    return args, (d, model, opt, sched, scaler)


def test_resume_refuses_a_changed_method_flag_and_accepts_a_changed_worker_count(tmp_path, capsys):
    args, parts = _saved_run(tmp_path)
    changed = argparse.Namespace(**{**vars(args), "granularity": "video2clip", "resume": "auto"})
    with pytest.raises(SystemExit, match=r"--resume: cannot continue .*--granularity 'clip2clip' there, "
                                         r"'video2clip' now"):
        engine.resume_training(changed, str(tmp_path), *parts, 5)
    fresh = argparse.Namespace(**{**vars(args), "lr": 0.2})  # no --resume: would overwrite another run
    with pytest.raises(SystemExit, match=r"--out-dir: would overwrite .*--lr 0.1 there, 0.2 now"):
        engine.resume_training(fresh, str(tmp_path), *parts, 5)
    ok = argparse.Namespace(**{**vars(args), "workers": 16, "resume": "auto", "epochs": 5, "given_flags": ["workers"]})
    ckpt = engine.resume_training(ok, str(tmp_path), *parts, 5)
    assert ckpt["epoch"] == 0 and "checkpoint.pt: epoch 2 of 5 next" in capsys.readouterr().out
    # a finished run resumed says so, rather than naming an epoch past the end
    ckpt = engine.resume_training(argparse.Namespace(**{**vars(ok), "epochs": 1}), str(tmp_path), *parts, 1)
    assert "epoch 1 of 1 was the last, nothing is left to train" in capsys.readouterr().out


# ============ torchrun: --batch-size is the global batch ============

def test_local_batch_splits_the_global_batch():
    d = engine.Dist("cpu")
    d.world_size = 4
    assert d.local_batch(128) == 32
    with pytest.raises(SystemExit, match="--batch-size 30 is the global batch: it must be a multiple of the 4"):
        d.local_batch(30)


# ============ missing and corrupt files ============

def test_missing_files_are_dropped_and_reported_once(tmp_path, capsys):
    for name in ("a.avi", "c.avi"):
        (tmp_path / name).write_bytes(b"x")
    samples = [(str(tmp_path / n), k) for k, n in enumerate(["a.avi", "b.avi", "c.avi", "d.avi"])]
    assert drop_missing(samples, "list.txt") == [samples[0], samples[2]]
    err = capsys.readouterr().err
    assert err.count("2 of 4 files are not on disk") == 1 and "b.avi" in err and "d.avi" in err
    with pytest.raises(FileNotFoundError, match="none of its 1 files is on disk"):
        drop_missing([(str(tmp_path / "zz.avi"), 0)], "list.txt")


def _ucf101_miniature(root, ann, train_videos=32, test_videos=26, missing=4, train_classes=2):
    """The official UCF101 split files (../shared) and the first videos of two classes of each split
    (`train_classes` in the training split) written as tiny .avi files in the released
    <Class>/v_<Class>_gXX_cYY.avi layout: `missing` test videos not on disk and one truncated. The
    other ~13,000 listed videos are missing as well."""
    os.makedirs(ann / "ucf101")
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        src = os.path.join(ANNOTATIONS, "ucf101", name)
        (ann / "ucf101" / name).write_bytes(open(src, "rb").read())

    def listed(name, count, classes=2):
        """The first videos of the first `classes` classes of the list, `count` in all, split evenly."""
        lines = [l.split()[0] for l in open(os.path.join(ANNOTATIONS, "ucf101", name)) if l.strip()]
        class_names = [l.split()[1] for l in open(os.path.join(ANNOTATIONS, "ucf101", "classInd.txt")) if l.strip()]
        chosen = []
        for c, class_name in enumerate(class_names[:classes]):
            of_class = [l for l in lines if l.startswith(class_name + "/")]
            chosen += of_class[:count // classes + (c < count % classes)]
        return chosen

    rng = np.random.default_rng(0)
    written = []
    for k, rel in enumerate(listed("trainlist01.txt", train_videos, train_classes) + listed("testlist01.txt", test_videos)[missing:]):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        frames = rng.integers(0, 255, (12, 32, 40, 3), dtype=np.uint8)
        frames[:, :, : 20 if "Eye" in rel else 40] //= 4  # the two classes differ a little
        write_avi(str(path), frames)
        written.append(path)
    truncated = written[-1]
    truncated.write_bytes(truncated.read_bytes()[:300])
    return listed("testlist01.txt", test_videos)[:missing], truncated


@pytest.mark.skipif(not os.path.isdir(os.path.join(ANNOTATIONS, "ucf101")), reason="needs ../shared annotations")
def test_severe_readme_command_on_a_ucf101_miniature(tmp_path):
    """The README's Table 4.4 / 5.8 command for UCF (10^3) ("${CK[@]}" --amp, no --batch-size: the setup's
    32), only size flags added, on the real split files with videos missing and one truncated: the 10^3
    subset is drawn from the videos on disk, it trains, evaluates and writes its result file."""
    root, ann = tmp_path / "ucf101", tmp_path / "annotations"
    missing, truncated = _ucf101_miniature(root, ann, train_videos=48, train_classes=4)
    backbone = tmp_path / "tc_k400" / "backbone.pt"  # a backbone.pt of tubelet_contrast.py (R(2+1)D-18, no fc)
    backbone.parent.mkdir()
    torch.save({k: v for k, v in torchvision.models.video.r2plus1d_18().state_dict().items()
                if not k.startswith("fc.")}, backbone)
    command = ["--setup", "ucf_1000", "--data-root", str(root), "--ann-root", str(ann), "--checkpoint", str(backbone),
               "--format", "ours", "--name", "Tubelet contrast", "--amp", "--out-dir", str(tmp_path / "run"),
               "--epochs", "1", "--clip-len", "4", "--crop-size", "32"]
    proc = run("severe_eval.py", command)
    assert "test split" in proc.stderr and missing[0] in proc.stderr  # dropped when the list was read
    assert f"skipping unreadable video {truncated}" in proc.stderr
    r = json.load(open(tmp_path / "run" / "results_ucf_1000_finetune.json"))
    assert r["train_videos"] == 40  # 10 per class (ceil(1000 / 101)) of the 4 classes on disk, not 0 or 1,010
    assert r["test_videos_listed"] == 22 and r["unreadable_test_videos"] == 1 and r["test_videos"] == 21
    assert r["args"]["batch_size"] == 32 and r["epochs"] == 1 and r["name"] == "Tubelet contrast"
    # resuming with another method flag is refused before any training; another --workers resumes
    refused = run("severe_eval.py", [*command, "--lr", "0.1", "--resume", "auto"], check=False)
    assert refused.returncode != 0 and "--lr 0.0001 there, 0.1 now" in refused.stderr


def test_severe_checks_every_setup_before_training(tmp_path):
    """--setup all: a missing annotation file of a later setup stops the run before the first trains."""
    proc = run_main(severe_eval, ["--setup", "all", "--data-root", str(tmp_path), "--ann-root", str(tmp_path),
                                  "--device", "cpu"], check=False)
    assert proc.returncode == 1 and "something-something-v2-labels.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "epoch 0 [" not in proc.stdout


# ============ distill_modality.py: inputs checked first, unreadable files ============

def test_distill_refuses_missing_target_folders_before_the_teacher_trains(tmp_path):
    (tmp_path / "rgb").mkdir()
    (tmp_path / "flow").mkdir()
    proc = run_main(distill_modality, ["--rgb-dir", str(tmp_path / "rgb"), "--flow-dir", str(tmp_path / "flow"),
                                       "--depth-dir", str(tmp_path / "nodepth"), "--out-dir", str(tmp_path / "o"),
                                       "--device", "cpu"], check=False)
    assert proc.returncode != 0 and f"--depth-dir {tmp_path / 'nodepth'}: no such folder" in proc.stderr
    proc = run_main(distill_modality, ["--target", "skeleton", "--rgb-dir", str(tmp_path / "rgb"), "--flow-dir",
                                       str(tmp_path / "flow"), "--out-dir", str(tmp_path / "o"), "--device", "cpu"],
               check=False)
    assert proc.returncode != 0 and "--skeleton-dir is needed for the skeleton student" in proc.stderr
    assert not (tmp_path / "o" / "teacher").exists()
    (tmp_path / "skeleton").mkdir()  # a folder without the protocol's files: named before the teacher trains
    proc = run_main(distill_modality, ["--target", "skeleton", "--rgb-dir", str(tmp_path / "rgb"), "--flow-dir",
                                       str(tmp_path / "flow"), "--skeleton-dir", str(tmp_path / "skeleton"),
                                       "--out-dir", str(tmp_path / "o"), "--device", "cpu"], check=False)
    assert proc.returncode != 0 and "--skeleton-dir: " in proc.stderr and "train_data_joint.npy" in proc.stderr
    assert not (tmp_path / "o" / "teacher").exists()


def test_distill_clips_replace_a_truncated_video_in_training_and_leave_it_out_in_evaluation(tmp_path, capsys):
    from common.video import BadVideoCounter
    rng = np.random.default_rng(0)
    paths = []
    for k in range(3):
        path = tmp_path / f"S001C001P001R001A06{k + 1}_rgb.avi"
        write_avi(str(path), rng.integers(0, 255, (10, 24, 32, 3), dtype=np.uint8))
        paths.append(path)
    paths[1].write_bytes(paths[1].read_bytes()[:300])  # truncated
    items = [(str(p), k) for k, p in enumerate(paths)]
    counter = BadVideoCounter(max_fraction=0.5, min_reads=100)
    train = distill_modality.Clips(items, "rgb", 4, 24, train=True, counter=counter)
    item = train[1]
    assert item["index"] != 1 and item["clip"].shape == (4, 24, 24, 3) and counter.failures == 1
    evaluation = distill_modality.Clips(items, "rgb", 4, 24, train=False)
    assert evaluation[1]["clip"].numel() == 0 and evaluation[0]["clip"].shape[1:] == (4, 24, 24, 3)
    assert f"skipping unreadable video {paths[1]}" in capsys.readouterr().err


def test_tubelet_readme_command_on_a_kinetics_csv_miniature(tmp_path, capfd):
    """The README's Mini-Kinetics command (batch 32, queue 16,384, --workers 8 --amp) with only size
    flags added, on the official Kinetics-400 CSV layout (the list of the README's Kinetics-400
    command, whose batch of 128 would need four times the videos): <label>/<youtube_id>_<start>_<end>.mp4,
    two listed videos not downloaded and one truncated."""
    from common.synthetic import write_mp4
    root = tmp_path / "kinetics"
    rows, rng = [], np.random.default_rng(0)
    for k in range(34):
        label, vid = ("abseiling", "air drumming")[k % 2], f"vid{k:08d}xyz"
        rows.append(f"{label},{vid},{10 * k},{10 * k + 10},train")
        if k in (5, 6):  # deleted from YouTube
            continue
        path = root / label / f"{vid}_{10 * k:06d}_{10 * k + 10:06d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(str(path), rng.integers(0, 255, (12, 32, 40, 3), dtype=np.uint8))
    truncated = path
    truncated.write_bytes(truncated.read_bytes()[:400])
    (root / "kinetics400").mkdir()
    csv = root / "kinetics400" / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    proc = run("tubelet_contrast.py", ["--data-root", str(root), "--train-list", str(csv), "--batch-size", "32",
                                       "--queue-size", "16384", "--workers", "8", "--amp", "--out-dir", str(out),
                                       "--epochs", "1", "--clip-len", "4", "--crop-size", "32"])
    assert "2 of 34 videos not found" in proc.stderr and f"skipping unreadable video {truncated}" in proc.stderr
    log = [json.loads(line) for line in open(out / "log.jsonl")]
    assert len(log) == 1 and log[0]["bad_videos"] >= 1 and np.isfinite(log[0]["loss"])
    assert (out / "backbone.pt").is_file()


def test_skeleton_readme_commands_on_raw_ntu_skeleton_files(tmp_path):
    """The README's commands on a miniature NTU RGB+D 60 download: --prepare on raw .skeleton files
    (one listed among the official missing-skeleton samples, one truncated), then the NTU-60
    cross-view pretraining command (batch 64, queue 16,384) and --eval linear, adding only size flags."""
    from tests.test_skeleton_data import moving_sequence, write_ntu
    rng = np.random.default_rng(0)
    raw = tmp_path / "nturgb+d_skeletons"
    raw.mkdir()
    names = [f"S001C00{c}P00{p}R001A0{a:02d}" for c in (2, 3) for p in (1, 2, 3, 4) for a in range(1, 10)]  # 72
    names += [f"S001C001P001R001A0{a:02d}" for a in range(1, 9)]  # camera 1: the cross-view val split
    for name in names:
        seq = moving_sequence(rng, 30, 0.1 * (1 + int(name[-2:]) % 3))
        write_ntu(raw / f"{name}.skeleton", [[seq[t]] for t in range(30)])
    write_ntu(raw / "S001C002P005R002A008.skeleton", [[moving_sequence(rng, 30, 0.1)[t]] for t in range(30)])
    (raw / "S001C003P003R002A001.skeleton").write_text("30\r\n1\r\n")  # truncated download
    data = tmp_path / "ntu60" / "xview"
    prep = run("skeleton_contrast.py", ["--prepare", "ntu60", "--raw-dir", str(raw), "--data-root", str(data),
                                        "--protocol", "xview"])
    assert "1 with missing skeletons skipped" in prep.stderr
    assert "skipping unreadable skeleton file S001C003P003R002A001.skeleton" in prep.stderr
    out = tmp_path / "runs" / "ntu60_xview"
    size = ["--epochs", "1", "--frames", "32"]  # --frames: the skeleton scripts' --clip-len
    run("skeleton_contrast.py", ["--data-root", str(data), "--workers", "8", "--amp", "--out-dir", str(out),
                                 *size, "--width", "0.125"])
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["args"]["batch_size"] == 64 and ckpt["args"]["queue_size"] == 16384
    proc = run("skeleton_contrast.py", ["--data-root", str(data), "--eval", "linear", "--checkpoint",
                                        str(out / "checkpoint.pt"), "--out-dir", str(out), *size])
    assert "linear top-1:" in proc.stdout
    result = json.load(open(out / "eval_linear_seq.json"))
    assert result["val_samples"] == 8 and result["args"]["lr"] == 0.1  # the --eval linear preset (App. A.1)


def test_severe_test_views_keep_their_clip_axis_with_one_test_clip():
    """--num-test-clips 1 gave (B, T, 3, S, S) test batches and an IndexError in predict."""
    class OneVideo:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return dict(clip=torch.zeros(4, 20, 24, 3, dtype=torch.uint8), label=0, index=0,
                        frames=torch.arange(4))

    test = severe_eval.Clips(OneVideo(), [3], crop_size=16, train=False)
    train = severe_eval.Clips(OneVideo(), [3], crop_size=16, train=True)
    assert test[0][0].shape == (1, 4, 3, 16, 16) and train[0][0].shape == (4, 3, 16, 16)


def test_preset_lines_print_booleans_as_flags_a_user_can_type():
    """The Charades preset turns colour jitter off: its line must read --no-colour-jitter, not
    '--colour-jitter False', so that it can be copied onto a command line."""
    line = next(p for p in severe_eval.parse_args(["--setup", "charades", "--data-root", "x"]).presets
                if p.startswith("preset --setup charades"))
    assert "--no-colour-jitter" in line and "False" not in line
    ucf = next(p for p in severe_eval.parse_args(["--setup", "ucf101", "--data-root", "x"]).presets
               if p.startswith("preset --setup ucf101"))
    assert "--colour-jitter " in ucf + " " and "True" not in ucf


# ============ bad values: one line naming the flag, before anything runs ============

def test_bad_values_and_files_are_refused_with_one_line(tmp_path):
    """Found by running bad command lines in process: each of these was a traceback or, worse, a run
    (--batch-size 0 trained; --patch-size 20 10 and a crop larger than its frames were used)."""
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"junk")  # torch.load raises struct.error on it
    tub = ["--epochs", "1", "--batch-size", "4", "--queue-size", "16", "--device", "cpu", "--out-dir", str(tmp_path)]
    cases = [
        (severe_eval, ["--setup", "ucf101", "--batch-size", "0"], "argument --batch-size: 0 is below 1"),
        (severe_eval, ["--setup", "ucf101", "--subset-size", "-5"], "argument --subset-size: -5 is below 0"),
        (severe_eval, ["--setup", "ucf101", "--checkpoint", str(garbage), "--device", "cpu"],
         f"--checkpoint {garbage}: torch.load cannot read it"),
        (severe_eval, ["--summary", str(tmp_path / "nope")], "--summary .*nope: no such folder"),
        (tubelet_contrast, [*tub, "--patch-size", "20", "10"], "--patch-size 20 10: MIN is larger than MAX"),
        (tubelet_contrast, [*tub, "--crop-size", "64", "--short-side", "36"], "--crop-size 64 is larger than"),
        (tubelet_contrast, [*tub, "--clip-len", "1"], "--clip-len 1: a tubelet moves over at least two frames"),
        (tubelet_contrast, [*tub, "--num-tubelets", "0"], "argument --num-tubelets: 0 is below 1"),
        (tubelet_contrast, [*tub, "--resume", str(garbage)], f"--resume {garbage}: not a checkpoint"),
        (tubelet_contrast, [*tub, "--queue-size", "0"], "--queue-size 0 is not a whole number of global batches"),
        (tubelet_contrast, [*tub, "--strides", "0"], "argument --strides: 0 is below 1"),
        (tubelet_contrast, [*tub, "--data-fraction", "0.001"], "--data-fraction 0.001: 0 of the"),
        (severe_eval, ["--setup", "ucf101", "--video-fps", "-1"], "--video-fps -1.0: give a frame rate"),
        (skeleton_contrast, ["--frames", "0"], "argument --frames: 0 is below 2"),
        (skeleton_contrast, ["--eval", "linear", "--init", "scratch", "--epochs", "0"],
         "--epochs 0: --eval linear trains at least one epoch"),  # it wrote 'linear top-1: -100.00'
        (skeleton_contrast, ["--epochs", "0"], "--epochs 0: pretraining trains at least one epoch"),
        (skeleton_contrast, ["--queue-size", "0"], "--queue-size 0 is not a whole number of global batches"),
        (skeleton_contrast, ["--eval", "linear", "--checkpoint", str(garbage), "--device", "cpu"],
         f"--checkpoint {garbage}: not a checkpoint"),
        (distill_modality, ["--epochs", "0"], "--epochs 0: every stage trains at least one epoch"),
        (distill_modality, ["--teacher-checkpoint", str(garbage), "--device", "cpu", "--out-dir", str(tmp_path)],
         f"--teacher-checkpoint {garbage}: not a checkpoint"),
        # float ranges (a second probe): a NaN loss after some steps, a traceback, or a run that ignored them
        (tubelet_contrast, [*tub, "--temperature", "0"], r"argument --temperature: 0 is not in \(0, inf\)"),
        (tubelet_contrast, [*tub, "--moco-momentum", "1.5"], r"argument --moco-momentum: 1.5 is not in \[0, 1\]"),
        (tubelet_contrast, [*tub, "--lr", "-1"], r"argument --lr: -1 is not in \[0, inf\)"),
        (tubelet_contrast, [*tub, "--jitter-prob", "2"], r"argument --jitter-prob: 2 is not in \[0, 1\]"),
        (tubelet_contrast, [*tub, "--scale-range", "0", "1"], r"argument --scale-range: 0 is not in \(0, inf\)"),
        (tubelet_contrast, [*tub, "--temperature", "nan"], r"argument --temperature: nan is not in"),
        (skeleton_contrast, ["--l-min", "2"], r"argument --l-min: 2 is not in \[0, 1\]"),
        (skeleton_contrast, ["--jitter-joints", "30"], "--jitter-joints 30: the skeletons have 25 joints"),
        (skeleton_contrast, ["--init", "scratch"], "--init is a flag of the downstream protocols: give --eval"),
        (skeleton_contrast, ["--select-on-test"], "--select-on-test is a flag of the downstream protocols"),
        (skeleton_contrast, ["--center-crop", "0.8"], "--center-crop is a flag of the downstream protocols"),
        (skeleton_contrast, ["--downstream-l-min", "0.5"], "--downstream-l-min is a flag of the downstream protocols"),
        (skeleton_contrast, ["--width", "-1"], r"argument --width: -1 is not in \(0, inf\)"),
        (skeleton_contrast, ["--eval", "linear", "--checkpoint", "c.pt", "--width", "0.25"],
         "--width: the encoders of --eval linear are built as --checkpoint holds them"),  # it was ignored
        (skeleton_contrast, ["--center-crop", "0"], r"argument --center-crop: 0 is not in \(0, 1\]"),
        (severe_eval, ["--setup", "ucf101", "--weight-decay", "-1"], r"argument --weight-decay: -1 is not in"),
        (severe_eval, ["--setup", "ucf101", "--dropout", "2"], r"argument --dropout: 2 is not in \[0, 1\]"),
        (distill_modality, ["--dampening", "2"], r"argument --dampening: 2 is not in \[0, 1\]"),
        (distill_modality, ["--train-list", "k400.csv"], "--train-list names the Kinetics teacher's data: it needs "
         "--source kinetics"),  # it was ignored, and the NTU teacher trained
        (distill_modality, ["--skeleton-frames", "0"], "argument --skeleton-frames: 0 is below 1"),
        (distill_modality, ["--stgcn-width", "0"], r"argument --stgcn-width: 0 is not in \(0, inf\)"),
    ]
    if not torch.cuda.is_available():
        cases.append((tubelet_contrast, [*tub[:-4], "--device", "cuda"], "--device cuda: CUDA is not available"))
    assert distill_modality.parse_args(["--per-class", "0"]).per_class == 0  # 0 = all labels (Fig. 2.3)
    assert severe_eval.parse_args(["--epochs", "0"]).epochs == 0  # evaluates the initial network
    edges = tubelet_contrast.parse_args(["--moco-momentum", "1", "--jitter-prob", "0", "--lr", "0"])
    assert (edges.moco_momentum, edges.jitter_prob, edges.lr) == (1.0, 0.0, 0.0)  # the ends of the ranges parse
    for module, argv, message in cases:
        proc = run_main(module, argv, check=False)
        assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, (argv, proc.stderr[-2000:])
        assert re.search(message, proc.stderr.strip().splitlines()[-1]), (argv, proc.stderr[-500:])


@pytest.mark.skipif(not os.path.isdir(os.path.join(ANNOTATIONS, "ucf101")), reason="needs ../shared annotations")
def test_severe_retrieval_leaves_an_unreadable_test_video_out_and_counts_it(tmp_path):
    """--task retrieval on the UCF101 miniature: the truncated test video is not scored (the reader's stand-in
    copy of another video does not count twice) and the result file counts it."""
    root, ann = tmp_path / "ucf101", tmp_path / "annotations"
    _, truncated = _ucf101_miniature(root, ann)
    out = tmp_path / "run"
    proc = run("severe_eval.py", ["--setup", "ucf101", "--task", "retrieval", "--init", "scratch", "--data-root",
                                  str(root), "--ann-root", str(ann), "--out-dir", str(out), "--clip-len", "4",
                                  "--crop-size", "32", "--num-test-clips", "2", "--workers", "0", "--device", "cpu"])
    assert f"skipping unreadable video {truncated}" in proc.stderr
    r = json.load(open(out / "results_ucf101_retrieval.json"))
    assert r["test_videos_listed"] == 22 and r["unreadable_test_videos"] == 1 and r["test_videos"] == 21
    # another checkpoint's retrieval into the same folder would overwrite this result: refused first
    other = tmp_path / "other.pt"
    torch.save(torchvision.models.video.r2plus1d_18().state_dict(), other)
    proc = run("severe_eval.py", ["--setup", "ucf101", "--task", "retrieval", "--checkpoint", str(other), "--data-root",
                                  str(root), "--ann-root", str(ann), "--out-dir", str(out), "--clip-len", "4",
                                  "--crop-size", "32", "--num-test-clips", "2", "--workers", "0", "--device", "cpu"],
               check=False)
    assert proc.returncode != 0 and "give another --out-dir" in proc.stderr
    assert json.load(open(out / "results_ucf101_retrieval.json"))["args"]["init"] == "scratch"
