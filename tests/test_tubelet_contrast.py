"""tubelet_contrast.py driven the way a user drives it: command lines (in process) with tiny flags on videos
written in the real formats (mp4 + list file)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torchvision.io import decode_png, read_file
from torchvision.models.video import r2plus1d_18, r3d_18

import tubelet_contrast
from common.synthetic import synthetic_video_dataset
from tests.script_run import run_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny everything: 4 frames of 32 x 32, batch 4, patches of 4-12 px, a 16-key queue.
TINY = ["--batch-size", "4", "--clip-len", "4", "--crop-size", "32", "--short-side", "36",
        "--patch-size", "4", "12", "--delta", "6", "12", "--queue-size", "16", "--workers", "0",
        "--strides", "1", "2", "--print-freq", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    return synthetic_video_dataset(root=str(root / "synthetic"), num_classes=4, videos_per_class=4,
                                   num_frames=12, size=(40, 54), seed=1)


def run(args, cwd=REPO, check=True):
    """`python tubelet_contrast.py ARGS` from cwd, in process (tests/script_run.py)."""
    return run_main(tubelet_contrast, args, check, cwd=cwd)


def data_flags(videos):
    return ["--data-root", videos["root"], "--train-list", videos["train_list"]]


def read_log(out_dir):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_pretrain_resume_and_backbone_loads_into_torchvision(videos, tmp_path):
    out = str(tmp_path / "run")
    # an interrupted run: the cosine schedule spans 2 epochs, the process stops after the first
    run([*TINY, *data_flags(videos), "--epochs", "2", "--stop-epoch", "1", "--out-dir", out, "--save-examples"])
    assert [r["epoch"] for r in read_log(out)] == [0]
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "args"}
    assert ckpt["epoch"] == 0

    proc = run([*TINY, *data_flags(videos), "--epochs", "2", "--out-dir", out, "--resume", "auto"])
    assert "resumed from" in proc.stdout
    log = read_log(out)
    assert [r["epoch"] for r in log] == [0, 1]
    assert all(r["loss"] > 0 and r["lr"] >= 0 and 0 <= r["batch_top1"] <= 1 and 0 <= r["pos_top1"] <= 1 for r in log)
    # the cosine schedule continued instead of restarting: half-way, then zero
    assert log[0]["lr"] == pytest.approx(0.005) and log[1]["lr"] == pytest.approx(0.0, abs=1e-12)

    net = r2plus1d_18()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(os.path.join(out, "backbone.pt"), weights_only=True), strict=True)
    image = decode_png(read_file(os.path.join(out, "examples.png")))
    assert image.shape[0] == 3 and image.shape[1] >= 32 and image.shape[2] >= 2 * 32
    # the picture shows the trained batch: without --save-examples the run draws the same numbers
    plain = str(tmp_path / "plain")
    run([*TINY, *data_flags(videos), "--epochs", "2", "--stop-epoch", "1", "--out-dir", plain])
    assert read_log(plain)[0]["loss"] == pytest.approx(log[0]["loss"], rel=1e-6)


def test_in_batch_negatives_with_the_small_backbone(videos, tmp_path):
    """--negatives batch (the CPU miniature of Table 5.2): one encoder and no queue in the checkpoint, the
    logged top-1s are both the in-batch one, and backbone.pt is the quarter-width R(2+1)D-18."""
    from common.backbones import video_encoder
    out = str(tmp_path / "run")
    run([*TINY, *data_flags(videos), "--epochs", "1", "--negatives", "batch", "--backbone", "r2plus1d_18_small",
         "--out-dir", out])
    [record] = read_log(out)
    assert record["pos_top1"] == record["batch_top1"]
    state = torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]
    assert not any(k.startswith(("encoder_k.", "queue")) for k in state)
    net, width = video_encoder("r2plus1d_18_small")
    net.load_state_dict(torch.load(os.path.join(out, "backbone.pt"), weights_only=True))  # strict
    assert width == 128


def test_in_batch_contrast_learns_a_fixed_batch():
    """A real training assertion: 40 SGD steps on one fixed batch of 8 tubelet pairs (16 x 16 crops of
    4 frames) take the in-batch InfoNCE loss from about chance (ln 8 = 2.08) to under half of it, and the
    queries then pick their own keys."""
    torch.manual_seed(0)
    args = tubelet_contrast.parse_args(["--crop-size", "16", "--short-side", "20", "--clip-len", "4",
                                        "--patch-size", "4", "8", "--delta", "4", "8"])
    v1, v2 = (torch.randint(0, 256, (8, 4, 20, 20, 3), dtype=torch.uint8) for _ in "12")
    q, k = tubelet_contrast.make_views(v1, v2, args)
    model = tubelet_contrast.InBatchContrast(tubelet_contrast.EncoderWithHead("r2plus1d_18_small"), 0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        logits, labels, in_batch = model(q, k)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 1.8 and max(losses[-5:]) < 1.0, losses
    assert in_batch > 0.6


def test_temporal_baseline_with_r3d(videos, tmp_path):
    out = str(tmp_path / "temporal")
    run([*TINY, *data_flags(videos), "--epochs", "1", "--out-dir", out, "--mode", "temporal",
         "--backbone", "r3d_18"])
    assert read_log(out)[0]["epoch"] == 0
    net = r3d_18()
    net.fc = nn.Identity()
    net.load_state_dict(torch.load(os.path.join(out, "backbone.pt"), weights_only=True), strict=True)


def test_data_fraction_uses_a_subset(videos, tmp_path):
    proc = run([*TINY, *data_flags(videos), "--epochs", "1", "--out-dir", str(tmp_path / "f"),
                "--data-fraction", "0.5", "--motion", "linear", "--transform", "scale,shear"])
    n_train = len(open(videos["train_list"]).read().split("\n")) - 1
    assert f"{round(0.5 * n_train)} pretraining videos" in proc.stdout


@pytest.mark.parametrize("negatives", ["queue", "batch"])
def test_torchrun_two_processes(videos, tmp_path, negatives):
    out = str(tmp_path / "ddp")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
         "tubelet_contrast.py", *TINY, *data_flags(videos), "--epochs", "1", "--batch-size", "2",
         "--bn", "shuffle", "--negatives", negatives, "--out-dir", out],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = read_log(out)
    assert len(log) == 1  # only rank 0 writes
    assert os.path.exists(os.path.join(out, "backbone.pt"))
    if negatives == "batch":
        # one clip per process: with the global batch as N the loss is about ln 2; a process's own batch
        # alone would hold no negative and give a loss of exactly 0
        assert log[0]["loss"] > 0.3, log


def test_benchmark_prints_its_figures(videos, tmp_path):
    proc = run([*TINY, *data_flags(videos), "--benchmark", "--benchmark-iters", "2",
                "--out-dir", str(tmp_path / "b")])
    for name in ("tubelet pairs/s:", "tubelets alone pairs/s:", "loader pairs/s:", "step pairs/s:",
                 "tubelets / step time:"):
        line = next(l for l in proc.stdout.splitlines() if l.startswith(name))
        assert float(line.split(":")[1].split()[0].rstrip("%")) > 0


# ============ bad input ============

def test_missing_list_file_is_named(videos, tmp_path):
    missing = str(tmp_path / "nope.txt")
    proc = run([*TINY, "--data-root", videos["root"], "--train-list", missing, "--out-dir",
                str(tmp_path / "x")], check=False)
    assert proc.returncode != 0
    assert missing in proc.stderr


def test_malformed_line_is_named(videos, tmp_path):
    bad = tmp_path / "bad.txt"
    lines = open(videos["train_list"]).read().splitlines()
    bad.write_text("\n".join(lines[:3] + ["a b c d e"] + lines[3:]) + "\n")
    proc = run([*TINY, "--data-root", videos["root"], "--train-list", str(bad), "--out-dir",
                str(tmp_path / "x")], check=False)
    assert proc.returncode != 0
    assert f"{bad}:4" in proc.stderr


def test_corrupt_video_is_reported_and_skipped(videos, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(3000))
    lst = tmp_path / "with_corrupt.txt"
    # absolute path: os.path.join(root, abs) is the absolute path
    # 1 bad video among 48 good ones: about 2% of reads fail, under the 5% that stops a run
    lst.write_text(4 * open(videos["train_list"]).read() + f"{corrupt} 0\n")
    proc = run([*TINY, "--data-root", videos["root"], "--train-list", str(lst), "--epochs", "2",
                "--out-dir", str(tmp_path / "x")])
    out = proc.stdout + proc.stderr
    assert str(corrupt) in out
    reports = [line for line in out.splitlines() if str(corrupt) in line]
    assert len(reports) == 1 and "skipping" in reports[0]  # reported once, not once per read
    assert sum(r["bad_videos"] for r in read_log(str(tmp_path / "x"))) >= 1


def test_queue_not_divisible_by_batch(videos, tmp_path):
    proc = run([*TINY, *data_flags(videos), "--queue-size", "18", "--out-dir", str(tmp_path / "x")],
               check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr  # one line, before anything runs
    assert "--queue-size 18 is not a whole number of global batches of 4" in proc.stderr
