"""distill_modality.py driven the way a user drives it: command lines (in process) with tiny flags on a small
synthetic NTU RGB+D (RGB avi, 16-bit masked depth PNGs, flow JPEGs, skeleton .npy/.pkl)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torchvision.models.video import r3d_18

import distill_modality as dm
from common.synthetic import synthetic_paired_dataset
from tests.script_run import run_main, run_process

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny everything: 4-frame clips of 16 x 16, one epoch per stage, 1 label per class.
TINY = ["--clip-len", "4", "--short-side", "18", "--crop-size", "16", "--batch-size", "4", "--workers", "0",
        "--teacher-epochs", "1", "--transfer-epochs", "1", "--finetune-epochs", "1", "--per-class", "1",
        "--seeds", "0", "--eval-batch-size", "8", "--stgcn-width", "0.125", "--print-freq", "1",
        "--device", "cpu", "--lr", "0.01"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    syn = synthetic_paired_dataset(root=str(root / "ntu"), target_actions=3, source_actions=2, subjects=2,
                                   replications=1, num_frames=(10, 12), rgb_size=(24, 32), depth_size=(24, 28))
    return syn


def flags(data):
    return ["--rgb-dir", data["rgb_dir"], "--depth-dir", data["depth_dir"], "--flow-dir", data["flow_dir"],
            "--skeleton-dir", data["skeleton_dir"]]


# One thread per process: on a loaded 2-core machine two threads per tiny step are several times slower.
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(args, check=True):
    """`OMP_NUM_THREADS=1 python distill_modality.py ARGS`, in process (tests/script_run.py); the
    per-process folder listings are forgotten first, as a new process would start without them."""
    dm.depth_files.cache_clear()
    dm.flow_files.cache_clear()
    return run_main(dm, args, check, threads=1)


def read_log(path):
    with open(os.path.join(path, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """One flow teacher trained by --stage teacher on the source actions (A061, A062), shared by the tests.
    It trains on the cross-view training videos (cameras 2, 3) and is evaluated on the held-out camera 1."""
    out = str(tmp_path_factory.mktemp("teacher"))
    proc = run([*TINY, *flags(data), "--stage", "teacher", "--teacher-modality", "flow", "--out-dir", out])
    assert "teacher: 8 source videos (ntu120_minus_60, flow), 2 classes, 4 held out" in proc.stdout
    log = read_log(os.path.join(out, "teacher"))
    assert [r["epoch"] for r in log[:-1]] == [0]
    assert log[-1]["held_out_videos"] == 4 and log[-1]["held_out_top1"] in (0, 25, 50, 75, 100)
    assert f"video-level top-1 {log[-1]['held_out_top1']:.2f}% on 4 held-out source videos" in proc.stdout
    saved = torch.load(os.path.join(out, "teacher", "teacher.pt"), weights_only=True)
    assert saved["modality"] == "flow" and saved["num_classes"] == 2 and saved["arch"] == "hara_r3d_18"
    assert saved["encoder"]["stem.0.weight"].shape[1:] == (2, 7, 7, 7)  # Hara et al.'s stem
    return os.path.join(out, "teacher", "teacher.pt")


def val_videos(data):
    """Depth folders of camera 1 (the cross-view validation split), counted here from the file names."""
    return sorted(n for n in os.listdir(data["depth_dir"]) if n[4:8] == "C001")


def test_video2clip_transfer_with_mse(data, teacher, tmp_path):
    out = str(tmp_path / "video2clip")
    proc = run([*TINY, *flags(data), "--stage", "transfer", "--teacher-checkpoint", teacher,
                "--granularity", "video2clip", "--loss", "mse", "--out-dir", out])
    # 12 training depth folders (cameras 2, 3) of the 3 target actions, all with their flow
    assert "transfer: 12 unlabeled (flow, depth) pairs, granularity video2clip, mse loss" in proc.stdout
    log = read_log(os.path.join(out, "transfer"))
    assert len(log) == 1 and log[0]["loss"] > 0
    feats = torch.load(os.path.join(out, "transfer", "teacher_features.pt"), weights_only=True)["features"]
    assert len(feats) == 1 and feats[0].shape == (12, 512)
    assert feats[0].abs().sum(1).gt(0).all()  # every video got its feature
    student = torch.load(os.path.join(out, "transfer", "student.pt"), weights_only=True)
    assert student["encoder"]["stem.0.weight"].shape[1] == 1 and student["granularity"] == "video2clip"


def test_depth_pipeline_resume_seeds_and_fuse(data, teacher, tmp_path):
    out = str(tmp_path / "depth")
    # combined granularity (the default for depth), every ResNet block matched (Sec 2.5.1.4)
    transfer = [*TINY, *flags(data), "--stage", "transfer", "--teacher-checkpoint", teacher, "--out-dir", out,
                "--match-layers", "all"]
    run(transfer)
    proc = run([*transfer, "--transfer-epochs", "2", "--resume", "auto"])
    assert "resumed from" in proc.stdout and "teacher video features from" in proc.stdout
    assert "granularity combined, cosine loss, layers all" in proc.stdout
    assert [r["epoch"] for r in read_log(os.path.join(out, "transfer"))] == [0, 1]
    feats = torch.load(os.path.join(out, "transfer", "teacher_features.pt"), weights_only=True)["features"]
    assert [f.shape for f in feats] == [(12, 64), (12, 128), (12, 256), (12, 512)]

    run([*TINY, *flags(data), "--stage", "finetune", "--seeds", "0,1", "--out-dir", out])
    proc = run([*TINY, *flags(data), "--stage", "eval", "--seeds", "0,1", "--out-dir", out])
    result = json.load(open(os.path.join(out, "results_transfer_k1.json")))
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    assert result["val_videos"] == len(val_videos(data)) == 6
    values = [s["top1"] for s in result["seeds"]]
    assert result["top1_mean"] == pytest.approx(sum(values) / 2)
    assert result["top1_std"] == pytest.approx(abs(values[0] - values[1]) / 2)
    for s in result["seeds"]:
        model = torch.load(os.path.join(out, f"finetune_transfer_k1/seed{s['seed']}", "model.pt"), weights_only=True)
        assert len(model["rows"]) == 3  # 1 labeled example of each of the 3 classes
        pred = torch.load(os.path.join(out, s["predictions"]), weights_only=True)
        assert pred["scores"].shape == (6, 3)
        assert torch.allclose(pred["scores"].sum(1), torch.ones(6), atol=1e-4)  # averaged softmax
        assert s["top1"] == pytest.approx(100 * (pred["scores"].argmax(1) == pred["labels"]).float().mean().item())
    # the two samples of seeds 0 and 1 differ
    rows = [torch.load(os.path.join(out, f"finetune_transfer_k1/seed{s}", "model.pt"), weights_only=True)["rows"]
            for s in (0, 1)]
    assert rows[0] != rows[1]

    # baselines of Table 2.4 in the same out-dir, then the two-stream fusion of Table 2.1
    proc = run([*TINY, *flags(data), "--init", "scratch", "--out-dir", out])
    assert "init scratch, training every layer" in proc.stdout and "stages finetune, eval" in proc.stdout
    proc = run([*TINY, *flags(data), "--init", "teacher", "--teacher-checkpoint", teacher, "--out-dir", out])
    assert "init teacher, training the last block and fc" in proc.stdout and "stages finetune, eval" in proc.stdout
    # a given student: the run needs neither a teacher nor a transfer, and trains neither
    student = os.path.join(out, "transfer", "student.pt")
    proc = run([*TINY, *flags(data), "--student-checkpoint", student, "--out-dir", str(tmp_path / "given")])
    assert "done: stages finetune, eval" in proc.stdout and not os.path.exists(tmp_path / "given" / "teacher")
    a, b = os.path.join(out, "results_transfer_k1.json"), os.path.join(out, "results_scratch_k1.json")
    proc = run(["--fuse", a, b, "--out-dir", str(tmp_path / "fused")])
    fused = json.load(open(tmp_path / "fused" / "results_fused.json"))
    pa = torch.load(os.path.join(out, "finetune_transfer_k1/seed0/predictions.pt"), weights_only=True)
    pb = torch.load(os.path.join(out, "finetune_scratch_k1/seed0/predictions.pt"), weights_only=True)
    assert pa["names"] == pb["names"]
    expected = 100 * ((pa["scores"] + pb["scores"]).argmax(1) == pa["labels"]).float().mean().item()
    assert [s["seed"] for s in fused["seeds"]] == [0]
    assert fused["seeds"][0]["top1"] == pytest.approx(expected)


def test_skeleton_student_video2video(data, teacher, tmp_path):
    out = str(tmp_path / "skeleton")
    proc = run([*TINY, *flags(data), "--target", "skeleton", "--teacher-checkpoint", teacher, "--out-dir", out])
    assert "granularity video2video" in proc.stdout
    assert "transfer: 12 unlabeled (flow, skeleton) pairs" in proc.stdout
    result = json.load(open(os.path.join(out, "results_transfer_k1.json")))
    assert result["target"] == "skeleton" and result["val_videos"] == 6
    assert 0 <= result["top1_mean"] <= 100


def test_rgb_teacher_from_a_torchvision_state_dict(data, tmp_path):
    path = str(tmp_path / "r3d_18_kinetics.pth")
    torch.save(r3d_18().state_dict(), path)  # the layout of torchvision's Kinetics-400 weights
    out = str(tmp_path / "rgb")
    proc = run([*TINY, *flags(data), "--stage", "transfer", "--teacher-modality", "rgb", "--granularity",
                "clip2clip", "--teacher-checkpoint", path, "--arch", "r3d_18", "--out-dir", out])
    assert "transfer: 12 unlabeled (rgb, depth) pairs" in proc.stdout
    # the same 3-channel file as a flow teacher: a message naming the flag and the file
    proc = run([*TINY, *flags(data), "--stage", "transfer", "--teacher-modality", "flow", "--arch", "r3d_18",
                "--teacher-checkpoint", path, "--out-dir", out + "_flow"], check=False)
    assert proc.returncode != 0
    assert f"--teacher-checkpoint {path}: its first convolution takes 3 input channel(s)" in proc.stderr


def test_torchrun_two_processes(data, teacher, tmp_path):
    out = str(tmp_path / "ddp")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29521",
         "distill_modality.py", *TINY, *flags(data), "--batch-size", "4", "--per-class", "2",
         "--teacher-checkpoint", teacher, "--granularity", "combined", "--out-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(read_log(os.path.join(out, "transfer"))) == 1  # only rank 0 writes
    feats = torch.load(os.path.join(out, "transfer", "teacher_features.pt"), weights_only=True)["features"][0]
    assert feats.abs().sum(1).gt(0).all()  # both processes' halves were gathered
    result = json.load(open(os.path.join(out, "results_transfer_k2.json")))
    assert result["val_videos"] == 6
    pred = torch.load(os.path.join(out, result["seeds"][0]["predictions"]), weights_only=True)
    assert torch.allclose(pred["scores"].sum(1), torch.ones(6), atol=1e-4)  # every video scored once


def test_readme_table_2_1_command_on_an_ntu_miniature(data, tmp_path):
    """The README's Table 2.1 RGB-teacher row with its $NTU flags (--data-root in the NTU layout,
    --workers 8 --amp, no --batch-size: the thesis's 128), as a process, adding only size flags, with
    two target RGB videos missing and one source video truncated: every stage trains, the evaluation
    writes its result file, the missing and the truncated files are reported."""
    import shutil
    root = tmp_path / "ntu"
    shutil.copytree(os.path.dirname(data["rgb_dir"]), root)
    rgb = root / os.path.basename(data["rgb_dir"])
    videos = sorted(rgb.iterdir())
    missing = [p for p in videos if "C002" in p.name and "A001" in p.name][:2]  # cross-view training pairs
    truncated = next(p for p in videos if "A061" in p.name)
    for path in missing:
        path.unlink()
    truncated.write_bytes(truncated.read_bytes()[:2000])
    out = tmp_path / "t21_rgb"
    ntu = ["--data-root", str(root), "--workers", "8", "--amp", "--seeds", "0,1,2,3,4"]
    proc = run_process("distill_modality.py", [*ntu, "--teacher-modality", "rgb", "--granularity", "video2clip",
                                               "--per-class", "20", "--out-dir", str(out),
                                               "--epochs", "1", "--clip-len", "4", "--short-side", "18",
                                               "--crop-size", "16"])
    assert f"skipping unreadable video {truncated}" in proc.stderr
    assert "unmatched pairs" in proc.stderr and all(p.name.split("_")[0] in proc.stderr for p in missing)
    r = json.load(open(out / "results_transfer_k20.json"))
    assert len(r["seeds"]) == 5 and r["args"]["batch_size"] == 128 and r["args"]["teacher_epochs"] == 1
    assert r["granularity"] == "video2clip"


def test_resume_refuses_another_granularity(data, teacher, tmp_path):
    """The bug: clip2clip, then --granularity video2clip --loss mse --resume auto into the same
    --out-dir 'resumed', trained nothing and labelled the old student video2clip / mse."""
    out = str(tmp_path / "run")
    common = [*TINY, *flags(data), "--teacher-checkpoint", teacher,
              "--teacher-modality", "flow", "--stage", "transfer", "--out-dir", out]
    run([*common, "--granularity", "clip2clip"])
    proc = run([*common, "--granularity", "video2clip", "--loss", "mse", "--resume", "auto"], check=False)
    assert proc.returncode != 0
    assert "--granularity 'clip2clip' there, 'video2clip' now" in proc.stderr and "--loss 'cosine'" in proc.stderr
    run([*common, "--granularity", "clip2clip", "--resume", "auto", "--workers", "1"])  # run flags may change


def test_stage_all_of_another_configuration_is_refused_before_the_teacher_retrains(data, tmp_path):
    """Two README rows into one --out-dir: the second (another --granularity) trained a new teacher
    before its transfer stage found the first row's student checkpoint and refused."""
    out = str(tmp_path / "run")
    common = [*TINY, *flags(data), "--teacher-modality", "flow", "--out-dir", out]
    run([*common, "--granularity", "clip2clip"])
    teacher = os.path.join(out, "teacher", "checkpoint.pt")
    written = os.stat(teacher).st_mtime_ns
    proc = run([*common, "--granularity", "video2clip"], check=False)
    assert proc.returncode != 0 and "teacher:" not in proc.stdout
    assert "--out-dir: would overwrite" in proc.stderr and os.path.join("transfer", "checkpoint.pt") in proc.stderr
    assert "--granularity 'clip2clip' there, 'video2clip' now" in proc.stderr
    assert os.stat(teacher).st_mtime_ns == written


def test_a_diverging_stage_names_its_own_learning_rate_flag(data, tmp_path):
    """A non-finite loss stops the run; the teacher's message named --lr, which the teacher stage
    does not use (its rate is --teacher-lr)."""
    proc = run([*TINY, *flags(data), "--stage", "teacher", "--teacher-lr", "1e8", "--teacher-epochs", "4",
                "--batch-size", "2", "--out-dir", str(tmp_path)], check=False)
    assert proc.returncode == 1 and "stopping. Lower --teacher-lr," in proc.stderr.strip().splitlines()[-1]
