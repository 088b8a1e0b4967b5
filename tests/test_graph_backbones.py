"""Tests of the skeleton graph encoders in common/backbones.py: the NTU graph, ST-GCN and 2s-AGCN."""
import pytest
import torch
from torch import nn

from common.backbones import (AGCN, NTU_CENTER, NTU_EDGES, NTU_NUM_JOINTS, STGCN, GraphConv, STGCNBlock,
                              ntu_adjacency)

N, T, V, M = 2, 16, NTU_NUM_JOINTS, 2
TINY = 0.25  # width multiplier of the small networks: 16, 32, 64 channels


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are too small for intra-op threads; on a busy 2-core machine 1 thread is ~4x faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def skeletons(n=N, t=T, m=M, seed=0):
    """(n, 3, t, 25, m) random joint coordinates."""
    return torch.randn(n, 3, t, V, m, generator=torch.Generator().manual_seed(seed))


def undirected():
    """(V, V) 0/1 matrix of the bones, without self-loops."""
    a = torch.zeros(V, V)
    for i, j in NTU_EDGES:
        a[i, j] = a[j, i] = 1.0
    return a


def same(a, b):
    """allclose relative to the features' scale (ST-GCN's N(0, 0.02) init gives features ~1e-5)."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))


def randomise_data_bn(model, seed=0):
    """Running statistics of the data BN that differ per channel (and per person slot for AGCN)."""
    g = torch.Generator().manual_seed(seed)
    bn = model.data_bn
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
    bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)


# ----- the NTU RGB+D skeleton graph -----

def test_ntu_edges_form_a_tree_rooted_at_joint_21():
    assert NTU_CENTER == 21 - 1
    assert len(NTU_EDGES) == 24 and len(set(NTU_EDGES)) == 24
    assert all(0 <= i < V and 0 <= j < V and i != j for i, j in NTU_EDGES)
    children = [i for i, _ in NTU_EDGES]
    assert sorted(children) == [v for v in range(V) if v != NTU_CENTER]  # one parent each, the centre none
    # connected: 25 nodes, 24 edges and every joint reachable from the centre -> a tree
    reach = torch.zeros(V, dtype=torch.bool)
    reach[NTU_CENTER] = True
    a = undirected() > 0
    for _ in range(V):
        reach = reach | (a & reach.view(V, 1)).any(0)
    assert reach.all()


def test_agcn_spatial_adjacency():
    A = ntu_adjacency("spatial")
    assert A.shape == (3, V, V) and A.dtype == torch.float32
    assert torch.equal(A[0], torch.eye(V))
    inward, outward = A[1] > 0, A[2] > 0
    assert torch.equal(inward, outward.t())  # outward = inward transposed
    assert torch.equal((inward | outward).float(), undirected())
    assert int(inward.sum()) == 24
    # each subset column-normalised on its own: every joint but the centre takes its one parent with
    # weight 1; every joint with children averages over them; empty columns stay 0
    in_cols, out_cols = A[1].sum(0), A[2].sum(0)
    has_children = outward.any(0)
    assert torch.allclose(in_cols[torch.arange(V) != NTU_CENTER], torch.ones(V - 1))
    assert in_cols[NTU_CENTER] == 0
    assert torch.allclose(out_cols[has_children], torch.ones(int(has_children.sum())))
    assert (out_cols[~has_children] == 0).all()
    assert torch.allclose(A[2][:, NTU_CENTER], outward[:, NTU_CENTER].float() / 4)  # 21 has children 2, 3, 5, 9


def test_stgcn_adjacency():
    neighbourhood = undirected() + torch.eye(V)
    for strategy in ("stgcn", "stgcn_geodesic"):
        A = ntu_adjacency(strategy)
        assert A.shape == (3, V, V)
        # normalised once over the neighbourhood incl. the joint itself: weights 1 / (deg + 1)
        assert torch.allclose(A.sum(0), neighbourhood / neighbourhood.sum(0, keepdim=True))
        assert ((A > 0).sum(0) <= 1).all()  # the subsets partition the neighbourhood
        assert torch.equal(A[0] > 0, torch.eye(V, dtype=torch.bool))
    spatial = ntu_adjacency("spatial") > 0
    geodesic = ntu_adjacency("stgcn_geodesic") > 0
    # the paper's partition on this tree: subset 1 = children, subset 2 = parent (2s-AGCN: the reverse order)
    assert torch.equal(geodesic[1], spatial[2]) and torch.equal(geodesic[2], spatial[1])
    released = ntu_adjacency("stgcn") > 0
    # the released code's truncated hop distance: joint 7 (left wrist, 3 bones from 21) puts both of
    # its neighbours in subset 1, while joint 2 (next to 21) still takes 21 in subset 2
    wrist, spine_mid = 7 - 1, 2 - 1
    assert not released[2][:, wrist].any() and released[1][:, wrist].sum() == 2
    assert released[2][NTU_CENTER, spine_mid] and released[1][1 - 1, spine_mid]


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown graph strategy"):
        ntu_adjacency("uniform")


# ----- units -----

@pytest.mark.parametrize("adaptive", [False, True])
def test_graph_conv_and_block_shapes(adaptive):
    A = ntu_adjacency("spatial" if adaptive else "stgcn")
    x = torch.randn(N, 8, T, V)
    assert GraphConv(8, 12, A, adaptive=adaptive)(x).shape == (N, 12, T, V)
    assert STGCNBlock(8, 12, A, stride=2, adaptive=adaptive)(x).shape == (N, 12, T // 2, V)
    assert STGCNBlock(8, 8, A, adaptive=adaptive)(x).shape == (N, 8, T, V)


def test_agcn_data_dependent_graph_changes_with_the_input():
    gcn = GraphConv(3, 16, ntu_adjacency("spatial"), adaptive=True)
    x1, x2 = torch.randn(2, N, 3, T, V)
    c1, c2 = gcn.data_dependent_graph(x1), gcn.data_dependent_graph(x2)
    assert c1.shape == (N, 3, V, V)
    assert torch.allclose(c1.sum(dim=2), torch.ones(N, 3, V))  # softmax over source joints
    assert not torch.allclose(c1, c2, atol=1e-4)
    assert not torch.allclose(c1[0], c1[1], atol=1e-4)  # differs between the samples of one batch too
    # B_k is a learned graph (every entry, not only the bones) and receives gradients
    gcn(x1).sum().backward()
    assert isinstance(gcn.B, nn.Parameter) and gcn.B.shape == (3, V, V)
    assert (gcn.B.grad != 0).float().mean() > 0.9


def test_stgcn_edge_importance_is_learned():
    net = STGCN(width=TINY).train()
    net(skeletons()).pow(2).sum().backward()
    A = ntu_adjacency("stgcn")
    for block in net.blocks:
        M_k = block.gcn.edge_importance
        assert isinstance(M_k, nn.Parameter) and torch.equal(M_k.detach(), torch.ones(3, V, V))
        assert M_k.grad is not None
        assert (M_k.grad[A > 0] != 0).all()  # M only acts on the edges of A (M ⊙ A) ...
        assert (M_k.grad[A == 0] == 0).all()  # ... and gets no gradient elsewhere
    assert not hasattr(net.blocks[0].gcn, "B")


# ----- networks -----

@pytest.mark.parametrize("cls", [STGCN, AGCN])
def test_feature_shapes(cls):
    net = cls().eval()
    assert net.feature_dim == 256
    with torch.no_grad():
        assert net(skeletons()).shape == (N, 256)
    tiny = cls(width=TINY)
    assert tiny.feature_dim == 64 and tiny(skeletons(t=9)).shape == (N, 64)


def test_layouts():
    stgcn, agcn = STGCN(), AGCN()
    widths = [b.tcn[0].out_channels for b in stgcn.blocks]
    assert widths == [64, 64, 64, 64, 128, 128, 128, 256, 256, 256]
    assert [b.tcn[0].stride[0] for b in agcn.blocks] == [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert [b.tcn[2].p for b in stgcn.blocks] == [0.0] + [0.5] * 9
    assert all(b.tcn[2].p == 0 for b in agcn.blocks)
    assert stgcn.blocks[0].residual is None and agcn.blocks[0].residual is None
    assert stgcn.data_bn.num_features == V * 3 and agcn.data_bn.num_features == M * V * 3


def test_parameter_counts():
    """With a 60-way linear head: ST-GCN ~3.1M, 2s-AGCN joint stream ~3.45M (6.9M for two streams).

    The exact numbers are those of the released codes' NTU models (yysijie/st-gcn net.st_gcn.Model with
    edge importance; lshiwjx/2s-AGCN model.agcn.Model), counted once by instantiating them.
    """
    for name, cls, paper, released in [("ST-GCN", STGCN, 3.1e6, 3_098_832),
                                       ("2s-AGCN joint", AGCN, 3.45e6, 3_469_510)]:
        net = cls()
        encoder = sum(p.numel() for p in net.parameters())
        n = encoder + sum(p.numel() for p in nn.Linear(net.feature_dim, 60).parameters())
        print(f"{name}: {n:,} parameters with a 60-way head ({encoder:,} without)")
        assert abs(n - paper) / paper < 0.15
        assert n == released


def test_person_slots_are_averaged_zero_slots_included():
    x = skeletons(t=8)
    p1, p2 = x[..., :1], x[..., 1:]
    alone = torch.cat([p1, p1], dim=-1)
    padded = torch.cat([p1, torch.zeros_like(p1)], dim=-1)  # single actor, second slot all zeros
    swapped = torch.cat([p2, p1], dim=-1)
    with torch.no_grad():
        stgcn = STGCN(width=TINY).eval()
        randomise_data_bn(stgcn)
        f = stgcn(x)
        # ST-GCN: one network for every slot (shared data BN), features averaged over the slots
        assert same(f, (stgcn(alone) + stgcn(torch.cat([p2, p2], dim=-1))) / 2)
        assert same(stgcn(swapped), f)
        assert not same(stgcn(padded), stgcn(alone))

        agcn = AGCN(width=TINY).eval()
        assert not same(agcn(padded), agcn(alone))
        # 2s-AGCN normalises each slot with its own data-BN statistics: slot order matters once they differ
        assert same(agcn(swapped), agcn(x))  # identical statistics at initialisation
        randomise_data_bn(agcn)
        assert not same(agcn(swapped), agcn(x))


def test_agcn_needs_its_number_of_person_slots():
    with pytest.raises(RuntimeError):
        AGCN(width=TINY).eval()(skeletons(m=1))
    assert STGCN(width=TINY).eval()(skeletons(m=1)).shape == (N, 64)  # ST-GCN takes any M
