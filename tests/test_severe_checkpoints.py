"""severe_eval.py's checkpoint loading: every public layout of Table 4.2, written here the way each
method's own code saves it (with heads, key encoders, queues, optimizer state, audio networks), is
read back into torchvision's R(2+1)D-18 tensor for tensor."""
import argparse
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.video import r2plus1d_18

import severe_eval as se


# ============ torchvision state dict -> each method's layout (written independently of the loader) ============

def randomized(state):
    """Same keys and shapes, fresh random values (distinct per tensor, so a swapped mapping shows)."""
    g = torch.Generator().manual_seed(0)
    return {k: (torch.randint(1, 10 ** 6, v.shape, generator=g, dtype=v.dtype) if not v.is_floating_point()
                else torch.randn(v.shape, generator=g)) for k, v in state.items()}


def cheap_copy(v, value=0.0):
    """A tensor of v's shape stored as a single number (stride 0): stands for key encoders in files."""
    return torch.full((), value, dtype=v.dtype).expand(v.shape)


def pyvrl_key(key):
    """torchvision key -> the name CtP's pyvrl R2Plus1D (and Tubelet Contrast's code) gives it."""
    p = key.split(".")
    if p[0] == "stem":
        return ".".join(["stem", {"0": "conv_s", "1": "bn_s", "3": "conv_t", "4": "bn_t"}[p[1]]] + p[2:])
    layer, block, module = p[:3]
    if module in ("conv1", "conv2"):
        if p[3] == "0":  # the (2+1)D conv itself
            return ".".join([layer, block, module, {"0": "conv_s", "1": "bn_s", "3": "conv_t"}[p[4]]] + p[5:])
        assert p[3] == "1"  # the BN after it
        return ".".join([layer, block, "bn" + module[-1]] + p[4:])
    assert module == "downsample"
    return ".".join([layer, block, "downsample.conv" if p[3] == "0" else "downsample_bn"] + p[4:])


def numbered_key(key):
    """torchvision key -> one Sequential: stem = 0, layerN = N (RSPNet, Pretext-Contrast)."""
    stage, rest = key.split(".", 1)
    return ("0" if stage == "stem" else stage[len("layer"):]) + "." + rest


def optimizer_state():
    return {"state": {0: {"momentum_buffer": torch.randn(4)}}, "param_groups": [{"lr": 0.01, "params": [0]}]}


def heads(prefix, dims=((512, 512), (128, 512))):
    return {f"{prefix}{i}.weight": torch.randn(*d) for i, d in zip((0, 2), dims)} | \
           {f"{prefix}{i}.bias": torch.randn(d[0]) for i, d in zip((0, 2), dims)}


def to_format(tv, fmt):
    """A checkpoint object as method `fmt` saves it, holding the torchvision state dict `tv`
    (tv may include fc.*; layouts whose networks have no fc leave it out)."""
    body = {k: v for k, v in tv.items() if not k.startswith("fc.")}
    fc = {k: v for k, v in tv.items() if k.startswith("fc.")}
    if fmt == "ours":  # tubelet_contrast.py backbone.pt
        return dict(body)
    if fmt == "ours_moco":  # tubelet_contrast.py checkpoint.pt: the whole MoCo model
        model = {f"encoder_q.backbone.{k}": v for k, v in body.items()} | heads("encoder_q.head.")
        model |= {f"encoder_k.backbone.{k}": cheap_copy(v) for k, v in body.items()} | heads("encoder_k.head.")
        model |= {"queue": torch.randn(128, 16), "queue_ptr": torch.zeros(1, dtype=torch.long)}
        return dict(model=model, optimizer=optimizer_state(), scheduler={"last_epoch": 3}, scaler={},
                    epoch=3, args={"lr": 0.01, "backbone": "r2plus1d_18"})
    if fmt == "supervised":
        return dict(body) | fc
    if fmt in ("moco", "video_moco"):  # MoCo's main_moco.py: DataParallel MoCo, mlp head in fc
        sd = {f"module.encoder_q.{k}": v for k, v in body.items()} | heads("module.encoder_q.fc.")
        sd |= {f"module.encoder_k.{k}": cheap_copy(v) for k, v in body.items()} | heads("module.encoder_k.fc.")
        sd |= {"module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
        return {"epoch": 200, "arch": "r2plus1d_18", "state_dict": sd, "optimizer": optimizer_state()}
    if fmt == "selavi":
        model = {f"module.video_network.base.{k}": v for k, v in body.items()}
        model |= {"module.audio_network.base.conv1.weight": torch.randn(64, 1, 7, 7)} | heads("module.mlp_v.")
        return {"model": model, "optimizer": optimizer_state(), "epoch": 200,
                "args": argparse.Namespace(arch="r2plus1d_18", epochs=200)}  # needs weights_only=False
    if fmt == "avid_cma":
        model = {f"module.video_model.{k}": v for k, v in body.items()}
        model |= {"module.audio_model.conv1.0.weight": torch.randn(64, 1, 3, 3)} | heads("module.video_proj.")
        return {"model": model, "optimizer": optimizer_state(), "epoch": 20,
                "train_criterion": {"memory": torch.randn(16, 128)}}
    if fmt == "gdt":  # no 'module.'; audio network and both MLPs beside the video base
        model = {f"video_network.base.{k}": v for k, v in body.items()}
        model |= {"audio_network.base.conv1.weight": torch.randn(64, 1, 7, 7)}
        model |= heads("mlp_v.") | heads("mlp_a.")
        return {"model": model, "optimizer": optimizer_state(), "epoch": 100,
                "args": argparse.Namespace(vid_base_arch="r2plus1d_18")}
    if fmt == "rspnet":
        model = {f"encoder_q.encoder.base_network.{numbered_key(k)}": v for k, v in body.items()}
        model |= heads("encoder_q.fc1.") | heads("encoder_q.fc2.")
        model |= {f"encoder_k.encoder.base_network.{numbered_key(k)}": cheap_copy(v) for k, v in body.items()}
        model |= {"queue_A": torch.randn(128, 16), "queue_M": torch.randn(128, 16)}
        return {"model": model, "optimizer": optimizer_state(), "epoch": 200}
    if fmt == "pretext_contrast":  # a bare state dict with the classifier beside the base network
        return {f"module.base_network.{numbered_key(k)}": v for k, v in body.items()} | heads("module.head.")
    if fmt in ("ctp", "tubelet_contrast"):  # mmcv checkpoint of a pyvrl model
        sd = {f"backbone.{pyvrl_key(k)}": v for k, v in body.items()}
        sd |= {"head.fc.weight": torch.randn(8, 512), "head.fc.bias": torch.randn(8)}
        return {"meta": {"epoch": 90, "mmcv_version": "1.2.0"}, "state_dict": sd, "optimizer": optimizer_state()}
    if fmt == "tclr":  # DataParallel(Sequential(backbone with fc, mlp))
        sd = {f"module.0.{k}": v for k, v in body.items()} | {f"module.0.{k}": v for k, v in fc.items()}
        sd |= heads("module.1.")
        return {"epoch": 400, "state_dict": sd, "optimizer": optimizer_state(),
                "learning_rate": np.float64(1e-3)}
    raise ValueError(fmt)


# ============ fixtures: one random state dict per network, one encoder per network ============

@pytest.fixture(scope="module")
def tv_state():
    torch.manual_seed(0)
    return randomized(r2plus1d_18(num_classes=400).state_dict())  # with fc, as torchvision ships it


@pytest.fixture(scope="module")
def tclr_parts():
    net, dim = se.build_backbone("r2plus1d_18_tclr")
    state = randomized(net.state_dict())
    state |= {"fc.weight": torch.randn(400, 512), "fc.bias": torch.randn(400)}
    return net, dim, state


@pytest.fixture(scope="module")
def encoder():
    net, dim = se.build_backbone("r2plus1d_18")
    assert dim == 512
    return net


def zero_(net):
    with torch.no_grad():
        for v in net.state_dict().values():
            v.zero_()


def assert_loaded(net, expected):
    got = net.state_dict()
    expected = {k: v for k, v in expected.items() if not k.startswith("fc.")}
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def save(tmp_path, obj, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


# the name guess_format gives a layout: identical layouts share one name
GUESS = {"ours": "ours", "ours_moco": "ours", "supervised": "supervised", "moco": "moco", "video_moco": "moco",
         "selavi": "selavi", "avid_cma": "avid_cma", "gdt": "gdt", "rspnet": "rspnet",
         "pretext_contrast": "pretext_contrast", "ctp": "ctp", "tubelet_contrast": "ctp", "tclr": "tclr"}
STANDARD = [f for f in GUESS if f != "tclr"]


def test_every_format_is_covered():
    assert set(se.CHECKPOINT_FORMATS) == set(GUESS) - {"ours_moco"}


# ============ round trips ============

@pytest.mark.parametrize("written_as", STANDARD)
def test_round_trip_standard(written_as, tv_state, encoder, tmp_path):
    raw = to_format(tv_state, written_as)
    fmt = "ours" if written_as == "ours_moco" else written_as
    assert se.guess_format(raw) == GUESS[written_as]
    path = save(tmp_path, raw)
    zero_(encoder)
    info = se.load_pretrained(path, fmt, encoder)
    assert_loaded(encoder, tv_state)
    assert info["format"] == fmt
    assert info["tensors"] == len(encoder.state_dict()) == 222
    assert len(info["sha256"]) == 64 and int(info["sha256"], 16) >= 0


def test_round_trip_tclr_and_auto(tclr_parts, tmp_path):
    net, dim, state = tclr_parts
    assert dim == 512
    raw = to_format(state, "tclr")
    path = save(tmp_path, raw)
    zero_(net)
    info = se.load_pretrained(path, "auto", net)
    assert info["format"] == "tclr"
    assert_loaded(net, state)
    assert se.backbone_variant(info["format"]) == "r2plus1d_18_tclr"


def test_auto_on_a_file(tv_state, encoder, tmp_path):
    path = save(tmp_path, to_format(tv_state, "rspnet"))
    zero_(encoder)
    assert se.load_pretrained(path, "auto", encoder)["format"] == "rspnet"
    assert_loaded(encoder, tv_state)


def test_converted_dicts_drop_fc_and_heads(tv_state):
    for written_as in ("supervised", "moco", "gdt", "selavi"):
        state = se.convert_checkpoint(to_format(tv_state, written_as), GUESS[written_as])
        assert not any(k.startswith(("fc.", "mlp", "audio", "encoder_k", "queue")) for k in state), written_as
        assert len(state) == 222


# ============ the key surgery, spelled out on a few names ============

def test_pyvrl_names():
    t = torch.zeros(1)
    raw = {"state_dict": {f"backbone.{k}": t for k in (
        "stem.conv_s.weight", "stem.bn_t.num_batches_tracked", "layer1.0.conv1.conv_s.weight",
        "layer1.0.conv1.bn_s.running_mean", "layer1.0.conv1.conv_t.weight", "layer3.1.bn2.running_var",
        "layer2.0.downsample.conv.weight", "layer2.0.downsample_bn.bias", "layer4.0.downsample.weight")}}
    raw["state_dict"]["head.fc.weight"] = t
    assert sorted(se.convert_checkpoint(raw, "tubelet_contrast")) == sorted([
        "stem.0.weight", "stem.4.num_batches_tracked", "layer1.0.conv1.0.0.weight",
        "layer1.0.conv1.0.1.running_mean", "layer1.0.conv1.0.3.weight", "layer3.1.conv2.1.running_var",
        "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias", "layer4.0.downsample.0.weight"])


def test_numbered_stage_names():
    t = torch.zeros(1)
    raw = {"module.base_network.0.3.weight": t, "module.base_network.4.1.conv2.0.0.weight": t,
           "module.fc8.weight": t}
    assert sorted(se.convert_checkpoint(raw, "pretext_contrast")) == ["layer4.1.conv2.0.0.weight", "stem.3.weight"]


# ============ failures name the key ============

def test_missing_backbone_key_is_named(tv_state, encoder, tmp_path):
    raw = to_format(tv_state, "moco")
    del raw["state_dict"]["module.encoder_q.layer3.1.conv2.0.3.weight"]
    with pytest.raises(RuntimeError, match=r"missing \(1\): layer3\.1\.conv2\.0\.3\.weight"):
        se.load_pretrained(save(tmp_path, raw), "moco", encoder)


def test_unexpected_backbone_key_is_named(tv_state, encoder, tmp_path):
    raw = to_format(tv_state, "ctp")
    raw["state_dict"]["backbone.layer2.0.conv1.conv_x.weight"] = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"unexpected \(1\): layer2\.0\.conv1\.conv_x\.weight"):
        se.load_pretrained(save(tmp_path, raw), "ctp", encoder)


def test_tclr_weights_need_the_tclr_network(tclr_parts, encoder, tmp_path):
    raw = to_format(tclr_parts[2], "tclr")
    with pytest.raises(RuntimeError, match="r2plus1d_18_tclr") as e:
        se.load_pretrained(save(tmp_path, raw), "tclr", encoder)
    assert "layer4.0.conv1.0.weight" in str(e.value)


def test_wrong_format_and_unknown_layouts():
    with pytest.raises(ValueError, match="module.video_model."):
        se.convert_checkpoint({"model": {"module.video_network.base.stem.0.weight": torch.zeros(1)}}, "avid_cma")
    with pytest.raises(ValueError, match="pass --format"):
        se.guess_format({"weights": {"a.b": torch.zeros(1)}})
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        se.convert_checkpoint({}, "simclr")


def test_unsafe_pickle_only_as_fallback(tmp_path):
    path = save(tmp_path, {"model": {"x": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)})
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)  # what the fallback exists for
    assert se.read_checkpoint(path)["args"].lr == 0.1
    safe = save(tmp_path, {"model": {"x": torch.ones(2)}}, "safe.pth")
    assert torch.equal(se.read_checkpoint(safe)["model"]["x"], torch.ones(2))


def test_a_corrupt_checkpoint_is_one_line_naming_the_flag(tmp_path):
    """A truncated download (zip archive cut short) and a file that is not a torch file at all."""
    good = save(tmp_path, {"model": {"x": torch.ones(1000)}, "args": argparse.Namespace(lr=0.1)})
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(good, "rb").read()[:2000])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x80\x02not a pickle at all")
    for path in (truncated, garbage):
        with pytest.raises(SystemExit, match=f"--checkpoint {path}: torch.load cannot read it"):
            se.read_checkpoint(str(path))


# ============ TCLR's network ============

def test_tclr_layer4_keeps_time():
    torch.manual_seed(0)
    net, _ = se.build_backbone("r2plus1d_18_tclr")  # fresh: the fixture's random BN statistics give NaNs
    conv, shortcut = net.layer4[0].conv1[0], net.layer4[0].downsample[0]
    assert isinstance(conv, nn.Conv3d) and conv.weight.shape == (512, 256, 3, 3, 3)
    assert (conv.stride, conv.dilation, conv.padding) == ((1, 2, 2), (2, 1, 1), (2, 1, 1)) and conv.bias is None
    assert shortcut.kernel_size == (1, 1, 1) and shortcut.stride == (1, 2, 2)
    assert net.layer4[0].conv1[1].num_features == 512
    sizes = {}
    hooks = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: sizes.__setitem__(n, tuple(o.shape)))
             for n in ("layer3", "layer4")]
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 8, 32, 32))
    for h in hooks:
        h.remove()
    assert out.shape == (1, 512) and torch.isfinite(out).all()
    assert sizes == {"layer3": (1, 256, 2, 4, 4), "layer4": (1, 512, 2, 2, 2)}  # torchvision's: (1, 512, 1, 2, 2)
