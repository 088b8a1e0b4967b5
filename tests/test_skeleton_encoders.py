"""Skeleton representations and encoders of skeleton_contrast.py (thesis Sec 3.3.3, 3.4.2, Table A.4)."""
import numpy as np
import pytest
import torch
from torch import nn

import skeleton_contrast as sc

L, V, M = 64, 25, 2


def _view(batch=2, length=L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, length, V, M, generator=g)


def _gru_params(in_dim, hidden):
    """Parameters of one direction of one GRU layer: three gates, W_ih, W_hh, b_ih, b_hh."""
    return 3 * (hidden * in_dim + hidden * hidden + 2 * hidden)


def test_to_sequence_is_joint_major_then_coordinate_then_person():
    x = torch.zeros(1, 3, 4, V, M)
    for c in range(3):
        for v in range(V):
            for m in range(M):
                x[0, c, :, v, m] = 1000 * m + 10 * v + c + 0.1 * torch.arange(4.0)
    seq = sc.to_sequence(x)
    assert seq.shape == (1, 4, 150)
    for t in range(4):
        for v in range(V):
            for c in range(3):
                for m in range(M):
                    assert seq[0, t, 6 * v + 2 * c + m].item() == pytest.approx(1000 * m + 10 * v + c + 0.1 * t)


def _copy_into_bidirectional_gru(model, ref):
    """Copies BiGRU's per-layer, per-direction weights into one nn.GRU(bidirectional=True)."""
    with torch.no_grad():
        for k, (f, b) in enumerate(zip(model.fwd, model.bwd)):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{k}").copy_(getattr(f, f"{name}_l0"))
                getattr(ref, f"{name}_l{k}_reverse").copy_(getattr(b, f"{name}_l0"))


def test_bigru_equals_the_authors_frame_by_frame_loop():
    # moco/GRU.py EncoderRNN: a bidirectional 3-layer nn.GRU called on one frame at a time with the
    # hidden state carried over; the feature is the output at the last frame.
    torch.manual_seed(0)
    model = sc.BiGRU(hidden=8, layers=3).double().eval()
    ref = nn.GRU(150, 8, num_layers=3, bidirectional=True, batch_first=True).double()
    _copy_into_bidirectional_gru(model, ref)
    x = _view(batch=3, length=12).double()
    seq = sc.to_sequence(x)
    hidden = None
    with torch.no_grad():
        for t in range(seq.size(1)):
            out, hidden = ref(seq[:, t:t + 1], hidden)
        expected = out[:, 0]
        got = model(x)
    assert got.shape == (3, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse_backward", [False, True])
def test_bigru_equals_a_gru_cell_loop(reverse_backward):
    torch.manual_seed(1)
    H, T = 6, 10
    model = sc.BiGRU(hidden=H, layers=3, reverse_backward=reverse_backward).double().eval()
    x = _view(batch=2, length=T, seed=3).double()
    h_in = sc.to_sequence(x)
    with torch.no_grad():
        for f, b in zip(model.fwd, model.bwd):
            outs = []
            for gru, reverse in ((f, False), (b, reverse_backward)):
                cell = nn.GRUCell(gru.input_size, H).double()
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(gru, f"{name}_l0"))
                h = torch.zeros(2, H, dtype=torch.float64)
                out = [None] * T
                for t in (reversed(range(T)) if reverse else range(T)):
                    h = cell(h_in[:, t], h)
                    out[t] = h
                outs.append(torch.stack(out, dim=1))
            h_in = torch.cat(outs, dim=2)
        fwd_last = outs[0][:, -1]
        bwd_final = outs[1][:, 0] if reverse_backward else outs[1][:, -1]
        expected = torch.cat([fwd_last, bwd_final], dim=1)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bigru_widths_and_full_width_parameter_count():
    assert sc.build_encoder("seq", width=1 / 128).feature_dim == 2 * 8
    assert sc.build_encoder("seq", width=1e-4).feature_dim == 2 * 8      # H is at least 8
    small = sc.build_encoder("seq", width=12 / 1024)
    assert small.feature_dim == 2 * 12
    assert small(_view()).shape == (2, 24)
    full = sc.build_encoder("seq")
    H = 1024
    expected = 2 * (_gru_params(150, H) + 2 * _gru_params(2 * H, H))   # 2 directions, 3 layers
    assert full.feature_dim == 2 * H == 2048
    n = sc.count_parameters(full)
    assert n == expected
    # Table A.4 lists 10.0M for X^SEQ; the authors' configuration (options_pretraining.py:
    # en_hidden_size 1024, 3 layers, bidirectional, input 150) has 45.0M (H = 512 would give 11.5M).
    print(f"\nf^SEQ params {n / 1e6:.2f}M (Table A.4: 10.0M), head {sc.count_parameters(sc.ProjectionHead(2048)) / 1e6:.2f}M")


def test_hcn_full_width_output_and_parameter_count():
    model = sc.build_encoder("img").eval()
    with torch.no_grad():
        out = model(_view())
    assert model.feature_dim == 4096 and out.shape == (2, 4096)
    c, W = 64, 64
    stream = (3 * c + c) + (c * W * 3 + W) + (V * (c // 2) * 9 + c // 2) + ((c // 2) * c * 9 + c)
    fuse = (2 * c * 2 * c * 9 + 2 * c) + (2 * c * 4 * c * 9 + 4 * c)
    n = sc.count_parameters(model)
    assert n == 2 * stream + fuse == 519_424
    # Table A.4 lists 1.0M for X^IMG: the backbone above plus a 4096 -> 128 linear layer (1.04M).
    print(f"\nf^IMG params {n / 1e6:.2f}M (+ 4096x128 fc: {(n + 4096 * 128 + 128) / 1e6:.2f}M; Table A.4: 1.0M), "
          f"head {sc.count_parameters(sc.ProjectionHead(4096)) / 1e6:.2f}M")
    with pytest.raises(ValueError, match="64 frames"):
        model(_view(length=32))


def test_agcn_full_width_output():
    model = sc.build_encoder("stg").eval()
    with torch.no_grad():
        out = model(_view(batch=1))
    assert model.feature_dim == 256 and out.shape == (1, 256)
    print(f"\nf^STG params {sc.count_parameters(model) / 1e6:.2f}M (Table A.4: 3.0M), "
          f"head {sc.count_parameters(sc.ProjectionHead(256)) / 1e6:.3f}M")


def test_hcn_motion_is_the_frame_difference_resized_to_length():
    T = 8
    t = torch.arange(T, dtype=torch.float64)
    offsets = torch.randn(3, 1, V, M, dtype=torch.float64)
    x = (t.view(1, T, 1, 1) ** 2 * offsets + offsets)[None]             # (1, 3, T, V, M)
    motion = sc.hcn_motion(x)
    assert motion.shape == x.shape
    diff = 2 * np.arange(T - 1) + 1                                     # (t+1)^2 - t^2
    src = (np.arange(T) + 0.5) * (T - 1) / T - 0.5                      # align_corners=False sampling
    expected = np.interp(src, np.arange(T - 1), diff)                   # linear, clamped at the ends
    torch.testing.assert_close(motion[0], torch.from_numpy(expected).view(1, T, 1, 1) * offsets)


def test_hcn_treats_both_persons_alike():
    torch.manual_seed(0)
    model = sc.HCN(width=0.25).eval()
    x = _view(batch=3)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.flip(-1)))   # shared weights, max over persons


@pytest.mark.parametrize("name", sc.REPRESENTATIONS)
def test_encoder_with_head_gives_128_d_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    width = {"seq": 16 / 1024, "img": 0.25, "stg": 0.125}[name]
    model = sc.EncoderWithHead(sc.build_encoder(name, width)).train()
    assert [type(m) for m in model.head.net] == [nn.Linear, nn.ReLU, nn.Linear]
    B = 12 if name == "img" else 4   # 24 person slots: HCN's Dropout2d never drops a channel from all of them
    z = model(_view(batch=B))
    assert z.shape == (B, 128)
    z.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"


def test_reverse_backward_bigru_gives_every_parameter_a_gradient():
    model = sc.BiGRU(hidden=8, reverse_backward=True)
    model(_view()).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_build_encoder_rejects_unknown_names_and_benchmark_reports_every_encoder():
    with pytest.raises(ValueError, match="unknown skeleton representation"):
        sc.build_encoder("rgb")
    times = sc.encoder_benchmark(sc.REPRESENTATIONS, "cpu", batch_size=2, width=0.02, repeats=1)
    assert set(times) == set(sc.REPRESENTATIONS) and all(s > 0 for s in times.values())
