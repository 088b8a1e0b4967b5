import pytest
import torch
from torch import nn

from common.moco import MoCo, check_queue_size


def tiny_moco(queue_size=12, dim=4, momentum=0.9):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, dim))
    return MoCo(encoder, dim=dim, queue_size=queue_size, momentum=momentum, temperature=0.2)


def test_logits_and_labels():
    moco = tiny_moco()
    logits, labels, _ = moco(torch.randn(3, 6), torch.randn(3, 6))
    assert logits.shape == (3, 1 + 12)
    assert labels.shape == (3,) and labels.dtype == torch.long and (labels == 0).all()
    # the positive logit is q.k / tau with both L2-normalised, so it is bounded by 1 / tau
    assert logits.abs().max() <= 1 / 0.2 + 1e-5


def test_positive_is_first_and_uses_key_encoder():
    moco = tiny_moco()
    x = torch.randn(3, 6)
    logits, _, _ = moco(x, x)  # identical views: the key encoder is still a copy of the query encoder
    assert torch.allclose(logits[:, 0], torch.full((3,), 1 / 0.2), atol=1e-4)


def test_queue_wraps_around():
    moco = tiny_moco(queue_size=12)
    keys = []
    for step in range(5):  # 5 batches of 3 into a queue of 12: pointer 3, 6, 9, 0, 3
        x = torch.randn(3, 6)
        moco(torch.randn(3, 6), x)
        with torch.no_grad():
            keys.append(nn.functional.normalize(moco.encoder_k(x), dim=1))
        assert int(moco.queue_ptr) == 3 * (step + 1) % 12
    # the 5th batch overwrote slots 0..2, slots 3..11 hold batches 2..4
    assert torch.allclose(moco.queue[:, 0:3].T, keys[4], atol=1e-6)
    assert torch.allclose(moco.queue[:, 3:6].T, keys[1], atol=1e-6)
    assert torch.allclose(moco.queue[:, 9:12].T, keys[3], atol=1e-6)


def test_key_encoder_follows_momentum_rule():
    moco = tiny_moco(momentum=0.9)
    with torch.no_grad():  # make query and key encoders differ
        for p in moco.encoder_q.parameters():
            p.add_(1.0)
    before_q = [p.clone() for p in moco.encoder_q.parameters()]
    before_k = [p.clone() for p in moco.encoder_k.parameters()]
    moco(torch.randn(3, 6), torch.randn(3, 6))
    for q, k0, k1 in zip(before_q, before_k, moco.encoder_k.parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q, atol=1e-6)
    assert all(not p.requires_grad for p in moco.encoder_k.parameters())


def test_gradient_reaches_query_encoder_only():
    moco = tiny_moco()
    logits, labels, _ = moco(torch.randn(3, 6), torch.randn(3, 6))
    nn.functional.cross_entropy(logits, labels).backward()
    assert all(p.grad is not None for p in moco.encoder_q.parameters())
    assert all(p.grad is None for p in moco.encoder_k.parameters())


def test_queue_size_must_be_divisible_by_global_batch():
    check_queue_size(65536, 128)
    with pytest.raises(ValueError, match="--queue-size 100 is not a whole number of global batches of 8"):
        check_queue_size(100, 8)
    with pytest.raises(ValueError, match="--queue-size 0 is not a whole number"):  # an empty queue: no negatives
        check_queue_size(0, 8)


def test_logits_are_fp32_under_autocast():
    from common.moco import contrast_logits
    torch.manual_seed(0)
    q, k = nn.functional.normalize(torch.randn(4, 16), dim=1), nn.functional.normalize(torch.randn(4, 16), dim=1)
    queue = nn.functional.normalize(torch.randn(16, 64), dim=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = contrast_logits(q, k, queue, 0.07)
        bf16 = (q @ queue) / 0.07  # what the autocast matmul gives
    exact = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / 0.07
    assert logits.dtype == torch.float32 and torch.allclose(logits, exact, atol=1e-5)
    assert bf16.dtype == torch.bfloat16 and (bf16.float() - exact[:, 1:]).abs().max() > 1e-3


def test_one_process_shuffle_bn_encodes_keys_in_groups():
    """In one process shuffling alone changes nothing for BatchNorm: the keys are encoded in groups."""
    from common.moco import encode_keys, encode_queries
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3, affine=False, eps=1e-8).train()
    x = torch.randn(8, 3)
    whole = encode_keys([bn], x, shuffle_bn=True, bn_splits=1)[0]
    pairs = encode_keys([bn], x, shuffle_bn=True, bn_splits=4)[0]
    assert torch.allclose(whole, bn(x))
    assert torch.allclose(pairs.abs(), torch.ones_like(pairs), atol=1e-4)  # BatchNorm over 2 samples: +-1
    assert not torch.allclose(whole.abs(), torch.ones_like(whole), atol=1e-2)
    ordered = encode_queries(bn, x, bn_splits=4)  # queries: the same number of groups, in order
    assert torch.allclose(ordered[:2], bn(x[:2]), atol=1e-5)


def test_moco_reports_the_in_batch_top1():
    """common.moco.batch_top1: 1 when every query matches its own key best, 1 / B when all queries are one."""
    from common.moco import batch_top1
    k = torch.nn.functional.normalize(torch.randn(8, 16), dim=1)
    assert float(batch_top1(k, k)) == 1.0
    assert float(batch_top1(k[:1].expand(8, 16), k)) == 1 / 8
    moco = tiny_moco()
    x = torch.randn(3, 6)
    assert float(moco(x, x)[2]) == 1.0  # identical views, key encoder still a copy: own key first


def test_in_batch_logits_are_fp32_under_autocast_in_both_scripts(monkeypatch):
    """--negatives batch: tubelet's InBatchContrast and skeleton's in_batch give fp32 logits under autocast,
    equal to the exact similarities (the autocast matmul would give bf16)."""
    import skeleton_contrast as sc
    import tubelet_contrast as tc
    from common.moco import batch_logits
    torch.manual_seed(0)
    q, keys = nn.functional.normalize(torch.randn(4, 16), dim=1), nn.functional.normalize(torch.randn(6, 16), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = batch_logits(q, keys, 0.07)
        bf16 = q @ keys.T / 0.07
    assert logits.dtype == torch.float32 and torch.allclose(logits, q @ keys.T / 0.07, atol=1e-5)
    assert bf16.dtype == torch.bfloat16
    x = torch.randn(4, 3, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, labels, _ = tc.InBatchContrast(nn.Sequential(nn.Flatten(), nn.Linear(96, 8)), 0.2)(x, x + 0.1)
    assert logits.dtype == torch.float32 and logits.shape == (4, 4) and labels.tolist() == [0, 1, 2, 3]
    model = sc.SkeletonContrast(["seq", "img"], width=0.125, dim=8, queue_size=8, frames=32, negatives="batch")
    s, seen = torch.randn(4, 3, 32, 25, 2), []
    cross_entropy = nn.functional.cross_entropy
    monkeypatch.setattr(sc.F, "cross_entropy", lambda logits, *a, **k: seen.append(logits.dtype) or
                        cross_entropy(logits, *a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(s, s + 0.01)
    assert seen == [torch.float32, torch.float32]  # the logits of seq->img and img->seq
