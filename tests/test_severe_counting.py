"""UCFRep repetition counting (Zhang et al. 2020) of severe_eval.py: labels, targets, counting, a tiny run."""
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

import severe_eval as se
from common.engine import Dist
from common.synthetic import synthetic_repetition_videos


def test_local_cycle_lengths_hand_checked():
    # cycles of 10, 10, 20 frames: boundaries 1, 11, 21, 41 -> span of 41 frames
    pre, nxt = se.local_cycle_lengths((1, 11, 21, 41))
    assert len(pre) == len(nxt) == 41
    # frame 1 (first cycle, phase 0): the next cycle's start is 10 frames later; no previous cycle
    assert nxt[0] == 10 and np.isnan(pre[0])
    # frame 6 (phase 0.5 of cycle 0): corresponds to frame 16 of cycle 1
    assert nxt[5] == 10
    # frame 11 is the start of cycle 1 (a boundary belongs to the later cycle): pre = 11 - 1 = 10
    assert pre[10] == 10
    # cycle 1 (10 frames) and cycle 2 (20 frames) differ by > 2 frames and a ratio > 1.3: next undefined
    assert np.isnan(nxt[10]) and np.isnan(nxt[15])
    # frame 16 of cycle 1: pre = 16 - 1 - 0.5 * 10 = 10
    assert pre[15] == 10
    # cycle 2 (the last): no next; its previous cycle (10) is too different: pre undefined too
    assert np.isnan(nxt[30]) and np.isnan(pre[30]) and np.isnan(pre[40])


def test_local_cycle_lengths_interpolates_between_similar_cycles():
    # cycles 10 and 12 (within 2 frames): frame 6 (phase 0.5 of the first) -> 11 + 0.5 * 12 - 6 = 11
    pre, nxt = se.local_cycle_lengths((1, 11, 23))
    assert nxt[5] == 11
    # frame 17 (phase 0.5 of the second cycle): pre = 17 - 1 - 0.5 * 10 = 11
    assert pre[16] == 11
    with pytest.raises(ValueError):
        se.local_cycle_lengths((5, 5))


def test_anchor_targets():
    # true cycle 10 under hypothesis 10: anchors 5, 6.7, 8, 10, 12.5, 15, 20 -> min/max all >= 0.5
    cls, box = se.anchor_targets(torch.tensor([10.0]), torch.tensor([10.0]))
    assert cls.tolist() == [[1, 1, 1, 1, 1, 1, 1]]
    assert box[0, 3] == 0 and box[0, 0] == pytest.approx(math.log(2)) and box[0, 6] == pytest.approx(math.log(0.5))
    # hypothesis 4: anchors 2, 2.68, 3.2, 4, 5, 6, 8 -> overlap .2 .268 .32 .4 .5 .6 .8
    cls, box = se.anchor_targets(torch.tensor([10.0]), torch.tensor([4.0]))
    assert cls.tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    assert box[0, 4:].tolist() == pytest.approx([math.log(2), math.log(10 / 6), math.log(10 / 8)], rel=1e-5)
    assert box[0, :4].tolist() == [0, 0, 0, 0]
    # undefined true cycle -> every anchor ignored
    cls, _ = se.anchor_targets(torch.tensor([float("nan")]), torch.tensor([4.0]))
    assert cls.tolist() == [[-1] * 7]


def test_counting_loss_ignores_and_weights():
    logits = torch.zeros(1, 2, 7)
    boxes = torch.zeros(1, 2, 7)
    cls = torch.full((1, 2, 7), -1.0)
    cls[0, 0, 3] = 1
    box = torch.zeros(1, 2, 7)
    box[0, 0, 3] = 0.5
    # BCE at logit 0 = log 2 (one anchor kept); smooth-L1(0, 0.5) = 0.5 * 0.25 = 0.125 over 7 entries, x 50
    loss = se.counting_loss(logits, boxes, cls, box)
    assert float(loss) == pytest.approx(math.log(2) + 50 * 0.125 / 7, rel=1e-5)


def test_context_indices_cover_two_cycles_each_side():
    pos = se.context_indices(torch.tensor([40.0]), torch.tensor([10.0]), torch.tensor([5.0]), clip_len=32)
    assert pos.shape == (1, 32)
    assert pos[0, 0] == 21 and pos[0, 15] == 40   # (40 - 20, 40]
    assert pos[0, 16] == 41 and pos[0, 31] == 50  # (40, 40 + 10]
    assert (pos[0, 1:] >= pos[0, :-1]).all()


def test_integrate_count():
    assert se.integrate_count(torch.full((32,), 12.5), 100) == pytest.approx(8.0)
    # first half cycle 10, second half 20: 50 / 10 + 50 / 20 = 7.5
    cycles = torch.tensor([10.0] * 16 + [20.0] * 16)
    assert se.integrate_count(cycles, 100) == pytest.approx(7.5)


class OracleCounter(nn.Module):
    """Stands in for the network: reads the true period off the input's frame positions, which
    the test encodes in the pixels (frame value = its index), and answers like a perfect model."""

    def __init__(self, period):
        super().__init__()
        self.period = period

    def forward(self, x):
        pos = x[:, 0, :, 0, 0] - 1  # (B, T) frame index from the pixels; -1 = padding (zeroed)
        half = pos.shape[1] // 2
        hyps = []
        for side in (pos[:, :half], pos[:, half:]):  # 16 evenly spread frames over 2 cycles: h = (span * 15 / j + 1) / 2
            j = torch.arange(half, dtype=pos.dtype).expand_as(side)
            valid = side >= 0
            first = torch.where(valid, j, torch.full_like(j, 1e9)).min(1).values
            last = torch.where(valid, j, torch.full_like(j, -1e9)).max(1).values
            p_first = side.gather(1, first.clamp(0, half - 1).long()[:, None])[:, 0]
            p_last = side.gather(1, last.clamp(0, half - 1).long()[:, None])[:, 0]
            hyps.append(((p_last - p_first) / (last - first).clamp_min(1) * (half - 1) + 1) / 2)
        left, right = hyps
        logits, boxes = [], []
        for hyp in (left, right):
            anchor = torch.tensor(se.COUNTING_ANCHORS) * hyp[:, None]
            overlap = torch.minimum(anchor, torch.tensor(self.period)) / torch.maximum(anchor, torch.tensor(self.period))
            logits.append(10 * (overlap - 0.9))  # the closest anchor scores highest
            boxes.append(torch.log(self.period / anchor))
        return torch.stack(logits, 1), torch.stack(boxes, 1)


def test_count_repetitions_with_an_oracle_network():
    period, count = 13, 7
    length = period * count + 1
    frames = torch.arange(1, length + 1, dtype=torch.float32).view(-1, 1, 1, 1).expand(length, 3, 4, 4)
    frames = frames.clone().to(torch.uint8)
    # identity normalisation (mean 0, std 1/255): the model sees frame index + 1, padding 0
    norm = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), False)
    out = se.count_repetitions(OracleCounter(period), frames, torch.device("cpu"), norm, clip_len=32, batch_size=16)
    assert out["count"] == count
    assert out["cycle"] == pytest.approx(period, rel=0.1)


def test_synthetic_repetition_videos(tmp_path):
    videos = synthetic_repetition_videos(str(tmp_path / "rep"), num_videos=3, size=32)
    assert len(videos) == 3
    for path, bounds in videos:
        assert 2 <= len(bounds) - 1 <= 8
        period = bounds[1] - bounds[0]
        assert all(b - a == period for a, b in zip(bounds, bounds[1:]))
        assert se.count_frames(path) >= bounds[-1]
    # reused on a second call, not written again
    written = os.path.getmtime(videos[0][0])
    assert synthetic_repetition_videos(str(tmp_path / "rep"), num_videos=3, size=32) == videos
    assert os.path.getmtime(videos[0][0]) == written
    samples = se.RepetitionSamples(videos, clip_len=8, crop_size=16, short_side=32, samples_per_video=2)
    clip, valid, cls, box, index = samples[0]
    assert clip.shape == (8, 3, 16, 16) and clip.dtype == torch.uint8
    assert valid.shape == (8,) and cls.shape == box.shape == (2, 7) and index == 0


def test_run_counting_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("VEF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(se, "COUNTING_SAMPLES_PER_VIDEO", 2)  # 4 videos x 2 inputs: 2 steps of 4
    args = se.parse_args(["--setup", "ucf_rc", "--epochs", "1", "--batch-size", "4", "--clip-len", "8",
                          "--crop-size", "16", "--short-side", "16", "--workers", "0", "--out-dir",
                          str(tmp_path / "out"), "--init", "scratch", "--device", "cpu"])
    d = Dist(args.device)
    setup = se.SETUPS["ucf_rc"]
    train, test = se.counting_data(args, d, num_synthetic=6, num_synthetic_test=2)
    assert len(train) == 4 and len(test) == 2
    backbone, feature_dim = se.build_backbone()
    args.input_norm = se.INPUT_NORMALIZATION["kinetics"]
    os.makedirs(args.out_dir, exist_ok=True)
    result = se.run_counting(args, d, setup, args.out_dir, train, test, dict(checkpoint=None, format="scratch"),
                             0.0, backbone, feature_dim)
    assert result["metric_name"] == "mean_count_error"
    assert math.isfinite(result["value"]) and result["value"] >= 0
    assert 0 <= result["off_by_one"] <= 1 and result["test_videos"] == 2
    assert [p["count"] for p in result["predictions"]] == [len(b) - 1 for _, b in test]
    assert os.path.isfile(os.path.join(args.out_dir, "checkpoint.pt"))
    assert os.path.isfile(os.path.join(args.out_dir, "results_ucf_rc_finetune.json"))


def test_counting_training_replaces_a_truncated_video_and_evaluation_leaves_it_out(tmp_path, capsys):
    """The contract's bad-file policy for UCFRep: a truncated training video is reported, counted and
    replaced (read_or_replace); a truncated test video is left out and counted, and when no test video
    is readable the run still ends with a result (NaN metrics), not a traceback after training."""
    from common.video import BadVideoCounter
    videos = synthetic_repetition_videos(str(tmp_path / "rep"), num_videos=3, size=32)
    bad = videos[1][0]
    with open(bad, "rb") as f:
        head = f.read(300)
    with open(bad, "wb") as f:
        f.write(head)
    counter = BadVideoCounter(max_fraction=0.5, min_reads=100)
    samples = se.RepetitionSamples(videos, clip_len=8, crop_size=16, short_side=32, samples_per_video=1,
                                   counter=counter)
    clip, valid, cls, box, index = samples[1]
    assert index != 1 and clip.shape == (8, 3, 16, 16) and counter.failures == 1
    samples[1]  # a known bad file is replaced without reading or counting it again
    assert counter.failures == 1
    assert f"skipping unreadable video {bad}" in capsys.readouterr().err

    args = se.parse_args(["--setup", "ucf_rc", "--clip-len", "8", "--crop-size", "16", "--short-side", "16",
                          "--batch-size", "4", "--device", "cpu"])
    args.input_norm = se.INPUT_NORMALIZATION["kinetics"]
    d = Dist("cpu")
    model = se.CountingHead(*se.build_backbone())
    result = se.evaluate_counting(model, videos[:2], args, d)
    assert result["test_videos"] == 1 and result["unreadable_test_videos"] == 1
    assert [p["path"] for p in result["predictions"]] == [videos[0][0]] and math.isfinite(result["value"])
    result = se.evaluate_counting(model, [videos[1]], args, d)
    assert result["test_videos"] == 0 and math.isnan(result["value"]) and math.isnan(result["off_by_one"])
