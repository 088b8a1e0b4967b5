"""The encoders the scripts share, without their classification layer: torchvision's video ResNets
and the skeleton graph networks.

The thesis uses R(2+1)D-18 (Ch. 4, 5), R3D-18 (App. C.2) and Hara et al.'s 3D-ResNet-18 (Ch. 2). The
first two are not re-implemented: the encoders here *are* `torchvision.models.video.r2plus1d_18` /
`r3d_18` with `fc` replaced by an identity, so state-dict keys stay torchvision's and any torchvision
checkpoint loads with `strict=True` once its `fc.*` entries are dropped. Hara's network is assembled
from torchvision's video ResNet parts (`hara_r3d_18`), with torchvision's keys too, and so is a
quarter-width R(2+1)D-18 for CPU miniatures (`SmallR2Plus1D18`, 'r2plus1d_18_small').

The skeleton encoders at the end (ST-GCN, the Ch. 2 student; 2s-AGCN joint stream, the graph
encoder f^STG of Ch. 3) have no torchvision counterpart and are written out here.
"""
import math
import re

import torch
from torch import nn
from torchvision.models import video as tv_video

# Normalisation of torchvision's Kinetics-400 video models (their transforms' mean/std).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


class ZeroPadShortcut(nn.Module):
    """Hara et al.'s type-A shortcut: the input subsampled by `stride` in time and space, its new
    channels zero. No parameters (their ResNet-18 and -34 use it; ResNet-50 and deeper use type B)."""

    def __init__(self, planes, stride):
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride, ::self.stride]
        return torch.cat([x, x.new_zeros((x.shape[0], self.planes - x.shape[1]) + x.shape[2:])], 1)


def hara_r3d_18():
    """3D-ResNet-18 of Hara et al. ("Can spatiotemporal 3D CNNs retrace the history of 2D CNNs and
    ImageNet?", CVPR 2018; github.com/kenshohara/3D-ResNets-PyTorch), the network of thesis Ch. 2,
    built from torchvision's video ResNet parts: a 7x7x7 stem with stride (1, 2, 2) and a 3x3x3 max-pool
    of stride 2, then torchvision's R3D basic blocks with type-A shortcuts. At 16 x 112 x 112 its last
    block's map is 1 x 4 x 4 (torchvision's r3d_18, 3x7x7 stem and no pool: 2 x 7 x 7, and 4.9x the
    multiply-accumulates).
    State-dict keys are torchvision's (`convert_hara_state_dict` reads Hara's released files)."""
    def stem():
        return nn.Sequential(nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3, bias=False), nn.BatchNorm3d(64),
                             nn.ReLU(inplace=True), nn.MaxPool3d(3, stride=2, padding=1))
    net = tv_video.VideoResNet(tv_video.resnet.BasicBlock, [tv_video.resnet.Conv3DSimple] * 4, [2, 2, 2, 2], stem)
    for layer, planes in ((net.layer2, 128), (net.layer3, 256), (net.layer4, 512)):
        layer[0].downsample = ZeroPadShortcut(planes, 2)
    return net


def convert_hara_state_dict(state):
    """Hara et al.'s released ResNet-18 checkpoint ({'state_dict': {'module.conv1.weight', ...}} or the
    bare dict) -> torchvision keys for `hara_r3d_18`: conv1/bn1 -> stem.0/stem.1, layerX.Y.convK ->
    layerX.Y.convK.0, layerX.Y.bnK -> layerX.Y.convK.1. Their files predate BatchNorm's
    num_batches_tracked, which is filled in with 0; fc.* is kept (callers drop it)."""
    state = state.get("state_dict", state)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("conv1."):
            key = "stem.0." + key.removeprefix("conv1.")
        elif key.startswith("bn1."):
            key = "stem.1." + key.removeprefix("bn1.")
        else:  # layerX.Y.convK -> layerX.Y.convK.0, layerX.Y.bnK -> layerX.Y.convK.1
            key = re.sub(r"^(layer\d\.\d)\.conv(\d)\.", r"\1.conv\2.0.", key)
            key = re.sub(r"^(layer\d\.\d)\.bn(\d)\.", r"\1.conv\2.1.", key)
        out[key] = value
    for key in [k for k in out if k.endswith(".running_var")]:
        out.setdefault(key[:-len("running_var")] + "num_batches_tracked", torch.tensor(0))
    return out


class SmallR2Plus1D18(tv_video.VideoResNet):
    """R(2+1)D-18 at a quarter of its width, for CPU miniatures (README, Chapter 5): stages of 16, 32,
    64 and 128 channels, stem 3 -> 12 -> 16, 2.0M parameters instead of 31.3M, about 11x faster on a CPU.
    torchvision's blocks, forward and initialisation; its keys, with the shapes of this width."""

    def __init__(self, widths=(16, 32, 64, 128), num_classes=400):
        nn.Module.__init__(self)  # VideoResNet.__init__ fixes the widths at 64 ... 512
        self.stem = nn.Sequential(nn.Conv3d(3, 12, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False),
                                  nn.BatchNorm3d(12), nn.ReLU(inplace=True),
                                  nn.Conv3d(12, widths[0], (3, 1, 1), padding=(1, 0, 0), bias=False),
                                  nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        self.inplanes = widths[0]
        for i, planes in enumerate(widths):
            layer = self._make_layer(tv_video.resnet.BasicBlock, tv_video.resnet.Conv2Plus1D, planes, 2,
                                     stride=1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight), nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01), nn.init.zeros_(m.bias)


BACKBONES = {"r2plus1d_18": tv_video.r2plus1d_18, "r3d_18": tv_video.r3d_18, "hara_r3d_18": hara_r3d_18,
             "r2plus1d_18_small": SmallR2Plus1D18}


def is_hara_state_dict(state):
    """True for a checkpoint in the layout of Hara et al.'s released files (conv1.weight at the top)."""
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    return isinstance(state, dict) and any(k in state for k in ("conv1.weight", "module.conv1.weight"))


def video_encoder(name="r2plus1d_18", in_channels=3):
    """Returns (encoder, feature_dim): the torchvision network with `fc = Identity()`.

    encoder: (B, C, T, H, W) float -> (B, feature_dim) globally pooled features.
    in_channels != 3 replaces the first convolution (depth: 1, optical flow: 2).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    net = BACKBONES[name]()
    feature_dim = net.fc.in_features
    net.fc = nn.Identity()
    if in_channels != 3:
        old = net.stem[0]
        net.stem[0] = nn.Conv3d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                old.padding, bias=False)
    return net, feature_dim


def encoder_state_dict(encoder):
    """The encoder's weights in torchvision key format, without `fc` (which is an Identity)."""
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}


def load_encoder_weights(encoder, state_dict, source="checkpoint"):
    """Strict load into an encoder made by `video_encoder`; `fc.*` entries in the file are ignored.

    Raises a RuntimeError that lists missing and unexpected keys instead of silently training
    from random weights (what `strict=False` does).
    """
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{source}: weights do not match the {type(encoder).__name__} encoder"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys[:10]) + (" ..." if len(keys) > 10 else ""))
        raise RuntimeError("\n".join(lines))
    encoder.load_state_dict(state_dict, strict=True)


# ============ skeleton graphs: NTU 25 joints, ST-GCN, AGCN ============
#
# ST-GCN: Yan et al., "Spatial Temporal Graph Convolutional Networks for Skeleton-Based Action
#   Recognition", AAAI 2018 (code: github.com/yysijie/st-gcn). The Ch. 2 skeleton student.
# 2s-AGCN: Shi et al., "Two-Stream Adaptive Graph Convolutional Networks for Skeleton-Based Action
#   Recognition", CVPR 2019 (code: github.com/lshiwjx/2s-AGCN). Its joint stream is the graph
#   encoder f^STG of Ch. 3 (Sec 3.3.3, 3.4.2), taken unchanged by the author's code
#   (github.com/fmthoker/skeleton-contrast, moco/AGCN.py).
#
# Shapes: N sequences, C channels (3 = x, y, z for the input), T frames, V = 25 joints, M = 2 person
# slots (Sec 3.4.2: "the second actor being all zeros for single actor actions"), K = 3 graph subsets.
#
# Adjacency convention (that of both released codes): A[k, v, w] is the weight with which joint v
# sends to joint w, i.e. a graph convolution is y[..., w] = sum_v x[..., v] A[k, v, w] (x @ A_k).
# "Column-normalised" therefore means every joint w averages over its neighbours in a subset.

NTU_NUM_JOINTS = 25
# Joint 21 (1-based, "spine at the shoulders") is the centre of the graph: ST-GCN's `center = 21 - 1`,
# and the root of 2s-AGCN's inward edges (it is the only joint without an outgoing inward edge).
NTU_CENTER = 20
# The 24 bones, 1-based as in both codes, each as (joint, neighbour one step closer to joint 21).
# Note the hand chains 22-23-8 and 24-25-12: hand tip -> thumb -> hand, as in both released codes
# (the NTU RGB+D joint layout itself hangs tip and thumb on the hand: 22-8, 23-8, 24-12, 25-12).
# We keep the codes' edges so that their trained graphs (B_k, edge importance) mean the same here.
_NTU_EDGES_1BASED = ((1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                     (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                     (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12))
NTU_EDGES = tuple((i - 1, j - 1) for i, j in _NTU_EDGES_1BASED)  # 0-based (child, parent)

GRAPH_STRATEGIES = ("spatial", "stgcn", "stgcn_geodesic")


def _hop_distance(edges, num_nodes, source, max_hop=None):
    """Number of bones between `source` and every joint, (V,) float; beyond `max_hop` it is inf."""
    neighbours = [[] for _ in range(num_nodes)]
    for i, j in edges:
        neighbours[i].append(j)
        neighbours[j].append(i)
    dist = torch.full((num_nodes,), math.inf)
    dist[source] = 0
    frontier, hop = [source], 0
    while frontier and (max_hop is None or hop < max_hop):
        hop += 1
        frontier = [n for v in frontier for n in neighbours[v] if math.isinf(dist[n])]
        for n in frontier:
            dist[n] = hop
    return dist


def _column_normalise(a):
    """A Lambda^-1 with Lambda_ww = sum_v A_vw (0 for empty columns): the codes' `normalize_digraph`."""
    col = a.sum(0, keepdim=True)
    return torch.where(col > 0, a / col.clamp(min=1e-12), torch.zeros_like(a))


def ntu_adjacency(strategy="spatial"):
    """(3, 25, 25) float: the three-subset partition of the NTU skeleton graph (see the convention above).

    Both papers use ST-GCN's *spatial configuration partitioning* (Yan et al., "Partition strategies",
    K = 3): for a joint w, subset 0 = w itself, and its neighbours split by whether they are closer to
    the centre than w or not. The released codes compute it differently:

    "spatial" (2s-AGCN, `graph/ntu_rgb_d.py` + `tools.get_spatial_graph`; used by `AGCN`):
        A_0 = I (not normalised), A_1 = column-normalised inward edges (w gathers from its parent,
        the neighbour closer to joint 21), A_2 = column-normalised outward edges (w averages over its
        children). Each subset is normalised on its own: a non-empty column of A_1 / A_2 sums to 1.
    "stgcn" (ST-GCN, `net/utils/graph.py`, strategy 'spatial', max_hop 1; used by `STGCN`):
        normalised once over the whole neighbourhood including w (weights 1 / (deg(w) + 1), so that
        sum_k A_k has unit columns), then split into A_0 = self, A_1 = neighbours *not closer* to the
        centre, A_2 = neighbours closer to the centre -- subsets 1 and 2 in the opposite order to
        2s-AGCN's. The distance to the centre is the code's hop distance truncated at max_hop = 1
        (inf for joints two or more bones away); inf == inf then puts *both* neighbours of every such
        joint into A_1, so only joint 21 and its neighbours get a real centripetal subset. This is
        what the released ST-GCN models were trained with (reported in open-mmlab/mmskeleton#367).
    "stgcn_geodesic": ST-GCN's normalisation and subset order with untruncated hop distances, i.e.
        the partition as described in the paper (on this tree: self, children, parent).
    """
    if strategy not in GRAPH_STRATEGIES:
        raise ValueError(f"unknown graph strategy {strategy!r}; choose from {GRAPH_STRATEGIES}")
    V = NTU_NUM_JOINTS
    identity = torch.eye(V)
    if strategy == "spatial":
        inward = torch.zeros(V, V)
        for child, parent in NTU_EDGES:
            inward[parent, child] = 1.0  # the parent's features reach the child (codes' edge2mat)
        return torch.stack([identity, _column_normalise(inward), _column_normalise(inward.t())])

    dist = _hop_distance(NTU_EDGES, V, NTU_CENTER, max_hop=1 if strategy == "stgcn" else None)
    neighbours = identity.clone()
    for i, j in NTU_EDGES:
        neighbours[i, j] = neighbours[j, i] = 1.0
    normalised = _column_normalise(neighbours)
    closer = dist.view(V, 1) < dist.view(1, V)  # [v, w]: source v is closer to the centre than target w
    is_edge = (neighbours > 0) & ~identity.bool()
    return torch.stack([normalised * identity,
                        torch.where(is_edge & ~closer, normalised, 0.0),
                        torch.where(is_edge & closer, normalised, 0.0)])


class GraphConv(nn.Module):
    """Spatial graph convolution over K subsets followed by BN and ReLU: (N, C, T, V) -> (N, C', T, V).

    adaptive=False, ST-GCN (Yan et al., graph convolution with "learnable edge importance weighting"):
        y = ReLU(BN(sum_k W_k x (A_k ⊙ M_k))), M_k learned and initialised to ones; all W_k in one
        1x1 conv, as in the code's ConvTemporalGraphical. ST-GCN applies this BN + ReLU at the start of
        its temporal unit; here they end the graph unit instead, which computes the same function.
    adaptive=True, 2s-AGCN (Shi et al., adaptive graph convolutional layer):
        y = ReLU(BN(sum_k W_k x (A_k + B_k + C_k)) + res(x)), B_k learned (initialised to 1e-6 as in
        the code), C_k data-dependent (`data_dependent_graph`), res a 1x1 conv + BN when C != C' and
        the identity otherwise.
    """

    def __init__(self, in_channels, out_channels, A, adaptive=False, embed_factor=4):
        super().__init__()
        K = A.size(0)
        self.adaptive, self.num_subsets = adaptive, K
        self.register_buffer("A", A.clone().float(), persistent=False)  # the fixed graph, (K, V, V)
        if adaptive:
            inter = max(1, out_channels // embed_factor)  # embedding channels C_e: C' / 4 in the code
            self.B = nn.Parameter(torch.full_like(self.A, 1e-6))
            self.theta = nn.ModuleList(nn.Conv2d(in_channels, inter, 1) for _ in range(K))
            self.phi = nn.ModuleList(nn.Conv2d(in_channels, inter, 1) for _ in range(K))
            self.conv = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(K))
            self.down = (nn.Identity() if in_channels == out_channels else
                         nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.BatchNorm2d(out_channels)))
        else:
            self.edge_importance = nn.Parameter(torch.ones_like(self.A))  # M of ST-GCN's M ⊙ A
            self.conv = nn.Conv2d(in_channels, K * out_channels, 1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()

    def data_dependent_graph(self, x):
        """C_k of 2s-AGCN: softmax over source joints of the embedded similarity; (N, K, V, V).

        C_k[n, v, w] = softmax_v( theta_k(x)_v . phi_k(x)_w / (C_e T) ), theta_k / phi_k 1x1 convs to C_e
        channels flattened with time. The 1 / (C_e T) scale is the code's; each column sums to 1.
        """
        N, _, T, V = x.shape
        graphs = []
        for theta, phi in zip(self.theta, self.phi):
            q = theta(x).permute(0, 3, 1, 2).reshape(N, V, -1)  # (N, V, C_e T)
            k = phi(x).reshape(N, -1, V)                        # (N, C_e T, V)
            graphs.append(torch.softmax(q @ k / q.size(-1), dim=-2))
        return torch.stack(graphs, dim=1)

    def forward(self, x):
        """x: (N, C, T, V) -> (N, C', T, V)."""
        N, C, T, V = x.shape
        if self.adaptive:
            graph = (self.A + self.B).unsqueeze(0) + self.data_dependent_graph(x)  # (N, K, V, V)
            y = 0
            for k, conv in enumerate(self.conv):
                y = y + conv((x.reshape(N, C * T, V) @ graph[:, k]).view(N, C, T, V))
            return self.relu(self.bn(y) + self.down(x))
        y = self.conv(x).view(N, self.num_subsets, -1, T, V)
        y = torch.einsum("nkctv,kvw->nctw", y, self.A * self.edge_importance)
        return self.relu(self.bn(y))


class STGCNBlock(nn.Module):
    """Graph conv, temporal conv (9 x 1, stride s) + BN + dropout, residual, ReLU: (N, C, T, V) -> (N, C', T/s, V).

    residual: none (first block of both networks), identity when C == C' and s == 1, else a strided
    1x1 conv + BN (both codes). ST-GCN drops out at the end of the temporal unit; 2s-AGCN has no dropout.
    """

    def __init__(self, in_channels, out_channels, A, stride=1, residual=True, dropout=0.0, adaptive=False):
        super().__init__()
        self.gcn = GraphConv(in_channels, out_channels, A, adaptive=adaptive)
        self.tcn = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, (9, 1), (stride, 1), (4, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout))
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, (stride, 1)),
                                          nn.BatchNorm2d(out_channels))
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.tcn(self.gcn(x))
        return self.relu(y if self.residual is None else y + self.residual(x))


# (output channels, temporal stride) of the ten blocks, identical in both papers' code.
GCN_LAYOUT = ((64, 1), (64, 1), (64, 1), (64, 1), (128, 2), (128, 1), (128, 1), (256, 2), (256, 1), (256, 1))


class _SkeletonGCN(nn.Module):
    """Data BN, ten `STGCNBlock`s, mean over T, V and person slots: (N, C, T, V, M) -> (N, feature_dim).

    Every person slot goes through the network on its own (slots are folded into the batch) and the
    pooled features are averaged over the M slots, all-zero slots included (as in both codes): a
    single actor padded with a zero second person is *not* the same as that actor alone.
    """

    def __init__(self, in_channels, num_persons, width, adaptive, dropout, strategy, bn_per_person):
        super().__init__()
        A = ntu_adjacency(strategy)
        V = A.size(-1)
        self.bn_per_person = bn_per_person
        self.data_bn = nn.BatchNorm1d((num_persons if bn_per_person else 1) * V * in_channels)
        blocks, c_in = [], in_channels
        for i, (c, stride) in enumerate(GCN_LAYOUT):
            c_out = max(1, round(c * width))
            blocks.append(STGCNBlock(c_in, c_out, A, stride, residual=i > 0, dropout=dropout if i > 0 else 0.0,
                                     adaptive=adaptive))
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.feature_dim = c_in

    def forward(self, x):
        """x: (N, C, T, V, M) joint coordinates -> (N, feature_dim) features."""
        N, C, T, V, M = x.shape
        x = x.permute(0, 4, 3, 1, 2)  # (N, M, V, C, T): normalise each (person,) joint and coordinate over N, T
        x = self.data_bn(x.reshape(N, M * V * C, T) if self.bn_per_person else x.reshape(N * M, V * C, T))
        x = x.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).reshape(N * M, C, T, V)
        x = self.blocks(x)                      # (N M, C', T', V)
        return x.view(N, M, x.size(1), -1).mean(dim=3).mean(dim=1)


class STGCN(_SkeletonGCN):
    """ST-GCN (Yan et al. 2018) without its classifier: (N, C, T, V, M) -> (N, 256); the Ch. 2 student.

    As in the released NTU configuration: graph `ntu_adjacency("stgcn")`, learnable edge importance in
    every block, dropout 0.5 in blocks 2-10, data BN over V*C shared by the person slots (the slots are
    folded into the batch first), so the network treats both slots alike. Weights are initialised as
    in the code's `weights_init`: convs N(0, 0.02), BN gamma N(1, 0.02), biases 0.
    width scales every block's channels (tests use tiny networks); the papers' network is width=1.
    """

    def __init__(self, in_channels=3, num_persons=2, width=1.0, dropout=0.5, strategy="stgcn"):
        super().__init__(in_channels, num_persons, width, adaptive=False, dropout=dropout,
                         strategy=strategy, bn_per_person=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)


class AGCN(_SkeletonGCN):
    """Joint stream of 2s-AGCN (Shi et al. 2019) without its classifier: (N, C, T, V, M) -> (N, 256).

    The graph encoder f^STG of thesis Sec 3.3.3 / 3.4.2, taking M = 2 person slots. As in the code:
    graph `ntu_adjacency("spatial")`, adaptive graph convolutions in all ten blocks, no dropout, data
    BN over M*V*C (each person slot has its own statistics). Initialisation as in the code: convs
    Kaiming-normal (fan_out), the per-subset W_k N(0, sqrt(2 / (C' C K))), BN gamma 1 except the graph
    conv's BN at 1e-6 (each block starts close to its residual path), biases 0.
    """

    def __init__(self, in_channels=3, num_persons=2, width=1.0, strategy="spatial"):
        super().__init__(in_channels, num_persons, width, adaptive=True, dropout=0.0,
                         strategy=strategy, bn_per_person=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, GraphConv):
                nn.init.constant_(m.bn.weight, 1e-6)
                for conv in m.conv:
                    c_out, c_in = conv.weight.shape[:2]
                    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (c_out * c_in * m.num_subsets)))
