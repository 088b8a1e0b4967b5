"""severe_eval.py driven as a user drives it: subprocesses with tiny flags on the built-in
synthetic videos (mp4 files and list files), for every protocol and task that is implemented."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torchvision.models.video import r2plus1d_18

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANNOTATIONS = os.path.join(REPO, "..", "shared", "data", "annotations")
TINY = ["--epochs", "1", "--batch-size", "4", "--clip-len", "4", "--crop-size", "32", "--num-test-clips", "2",
        "--workers", "0", "--device", "cpu", "--print-freq", "100"]


def run(args, check=True):
    proc = subprocess.run([sys.executable, "severe_eval.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}")
    return proc


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
    out = str(tmp_path / "lin")
    run(["--setup", "ucf_1000", "--protocol", "linear", *TINY, "--checkpoint", pretrained, "--out-dir", out])
    model = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]
    original = torch.load(pretrained, weights_only=True)
    # weights and BatchNorm statistics of the backbone did not move; only fc was trained
    assert all(torch.equal(model[f"backbone.{k}"], v) for k, v in original.items())
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
    run(["--setup", "ucf101", "--task", task, *TINY, "--checkpoint", pretrained, "--out-dir", out])
    r = result(out, "ucf101")
    assert r["metric_name"] == metric and 0 <= r["value"] <= 100


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


def test_print_split_lists_the_official_files():
    lines = run(["--setup", "ucf_1000", "--print-split", "train", "--ann-root", ANNOTATIONS]).stdout.split()
    assert len(lines) == 1010 and all(line.endswith(".avi") for line in lines)
    assert len(run(["--setup", "hmdb51", "--print-split", "test", "--ann-root", ANNOTATIONS]).stdout.split()) == 1530


def test_torchrun_two_processes(tmp_path):
    out = str(tmp_path / "ddp")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29519",
         "severe_eval.py", "--setup", "ucf101", *TINY, "--batch-size", "2", "--out-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = result(out, "ucf101")
    assert r["test_videos"] == r["test_videos_listed"]  # predictions of both ranks gathered, no repeats
