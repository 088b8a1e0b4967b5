import os

import pytest
import torch

from common.backbones import encoder_state_dict, load_encoder_weights, video_encoder
from common.engine import check_finite, load_checkpoint, resume_path, save_atomic


def test_save_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    save_atomic({"epoch": 1, "w": torch.ones(2)}, path)
    save_atomic({"epoch": 2, "w": torch.zeros(2), "args": {"lr": 0.1, "sizes": [1, 2]}}, path)
    ckpt = load_checkpoint(path)  # weights_only=True: plain dicts of tensors and built-ins
    assert ckpt["epoch"] == 2 and ckpt["args"]["sizes"] == [1, 2]
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_resume_path(tmp_path):
    assert resume_path("", str(tmp_path)) is None
    assert resume_path("auto", str(tmp_path)) is None  # nothing to resume yet: start fresh
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    assert resume_path("auto", str(tmp_path)) == str(tmp_path / "checkpoint.pt")
    with pytest.raises(SystemExit, match="--resume .*nope.pt: no such checkpoint"):
        resume_path(str(tmp_path / "nope.pt"), str(tmp_path))


def test_non_finite_loss_stops_with_message():
    check_finite(1.5, 0, 0)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(FloatingPointError, match="epoch 3, iteration 7"):
            check_finite(bad, 3, 7)
    with pytest.raises(FloatingPointError, match="Lower --teacher-lr,"):  # the stage's own lr flag
        check_finite(float("nan"), 0, 0, "--teacher-lr")


@pytest.mark.parametrize("name", ["r2plus1d_18", "r3d_18"])
def test_encoder_is_torchvision_without_fc(name):
    encoder, dim = video_encoder(name)
    assert dim == 512
    assert encoder(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 512)
    assert not any(k.startswith("fc.") for k in encoder.state_dict())


def test_strict_loading_names_mismatched_keys():
    encoder, _ = video_encoder("r3d_18")
    weights = encoder_state_dict(encoder)
    weights["fc.weight"] = torch.zeros(400, 512)  # a classifier in the file is fine: ignored
    load_encoder_weights(encoder, weights)
    del weights["layer4.1.conv2.1.weight"]
    weights["head.bias"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"missing \(1\): layer4.1.conv2.1.weight[\s\S]*unexpected \(1\): head.bias"):
        load_encoder_weights(encoder, weights)


def test_depth_and_flow_encoders_take_other_channel_counts():
    encoder, _ = video_encoder("r3d_18", in_channels=1)
    assert encoder(torch.zeros(1, 1, 4, 32, 32)).shape == (1, 512)


def test_a_corrupt_checkpoint_is_refused_with_one_line_naming_it(tmp_path):
    from common.engine import load_checkpoint
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match=r"checkpoint.pt: not a checkpoint torch.load\(weights_only=True\) can read"):
        load_checkpoint(str(bad))
    from common.engine import checkpoint_args  # a fresh run that would overwrite it reads its flags first
    with pytest.raises(SystemExit, match=r"checkpoint.pt: not a checkpoint .* give another --out-dir"):
        checkpoint_args(str(bad))
