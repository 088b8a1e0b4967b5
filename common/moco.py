"""Momentum contrast (He et al., CVPR 2020), in the shape of the original MoCo builder.

Used by the tubelet (Eq. 5.1) and skeleton (Eq. 3.5) contrast scripts. The thesis's
InfoNCE loss (Eq. 5.1) needs many negatives; MoCo keeps them in a queue of keys produced by a
slowly moving copy of the query encoder, so the number of negatives |N| (16,384 or 65,536 in
Sec 5.4.1) does not depend on the batch size.
"""
import copy

import torch
import torch.distributed as dist
import torch.distributed.nn  # all_gather with gradients (global_keys)
import torch.nn.functional as F
from torch import nn


def check_queue_size(queue_size, global_batch_size):
    """The queue is filled in whole batches, so it must hold a whole number of them (at least one)."""
    if queue_size < global_batch_size or queue_size % global_batch_size != 0:
        raise ValueError(
            f"--queue-size {queue_size} is not a whole number of global batches of {global_batch_size} "
            f"(--batch-size x number of processes); pick e.g. --queue-size "
            f"{max(global_batch_size, queue_size // global_batch_size * global_batch_size)}")


class MoCo(nn.Module):
    """Query encoder, momentum key encoder and a queue of negative keys.

    encoder:     any module mapping an input batch to (B, dim) embeddings (backbone + projection
                 head); the key encoder is a copy of it that is never trained by gradients.
    dim:         embedding width (128 in the thesis).
    queue_size:  number of negatives |N| kept from previous batches (Eq. 5.1).
    momentum:    m in  theta_k <- m * theta_k + (1 - m) * theta_q; 0.999 as in MoCo.
    temperature: tau in Eq. 5.1 (0.2 for tubelet contrast, 0.07 for skeleton contrast).
    shuffle_bn:  keep BatchNorm from carrying the batch into the contrast (MoCo Sec 3.3): under
                 torchrun the key batch is shuffled across processes; in one process it is shuffled
                 and encoded in `bn_splits` groups, queries in the same number of groups in order
                 (MoCo's single-GPU demo). Turn it off when the encoders use SyncBatchNorm instead.
    """

    def __init__(self, encoder, dim=128, queue_size=65536, momentum=0.999, temperature=0.2,
                 shuffle_bn=True, bn_splits=1):
        super().__init__()
        self.momentum, self.temperature = momentum, temperature
        self.shuffle_bn, self.bn_splits = shuffle_bn, bn_splits
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def forward(self, x_q, x_k):
        """x_q, x_k: the two views of each positive pair, (B, ...) each.

        Returns (logits, labels, in-batch top-1): logits (B, 1 + queue_size) with the positive first, so
        the InfoNCE loss of Eq. 5.1 is `F.cross_entropy(logits, labels)` with labels all zero; the
        in-batch top-1 (`batch_top1`) tells a learned contrast from the queue's freshness shortcut.
        """
        splits = self.bn_splits if self.shuffle_bn else 1
        q = F.normalize(encode_queries(self.encoder_q, x_q, splits).float(), dim=1)
        with torch.no_grad():
            momentum_update(self.encoder_q, self.encoder_k, self.momentum)
            k = F.normalize(encode_keys([self.encoder_k], x_k, self.shuffle_bn, splits)[0].float(), dim=1)
        logits = contrast_logits(q, k, self.queue, self.temperature)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self.queue_ptr[0] = enqueue(self.queue, int(self.queue_ptr), k)
        return logits, labels, batch_top1(q.detach(), k)


# ============ the pieces, also for models with one queue per representation ============

@torch.no_grad()
def batch_top1(q, k):
    """Fraction of queries whose own key scores highest among the keys of the *batch* (B, dim) each.

    The loss contrasts the positive with the queue, keys made by earlier key encoders. A query can
    therefore pick its positive by its freshness (the key encoder's drift over the queue's age) without
    telling its inputs apart; then the queue top-1 rises while this stays at chance (1 / B), since all
    keys of a batch are equally fresh. Logged next to the queue top-1 to tell the two apart."""
    return ((q @ k.T).argmax(dim=1) == torch.arange(len(q), device=q.device)).float().mean()


def global_keys(k):
    """In-batch negatives over the global batch: (the keys (B, dim) of every process, concatenated with
    their gradients, and the index of this process's own B keys in them). In one process: (k, 0..B-1)."""
    labels = torch.arange(len(k), device=k.device)
    if single_process():
        return k, labels
    return torch.cat(torch.distributed.nn.functional.all_gather(k)), labels + dist.get_rank() * len(k)


@torch.no_grad()
def momentum_update(encoder_q, encoder_k, momentum):
    """theta_k <- m * theta_k + (1 - m) * theta_q, on the real parameters."""
    for p_q, p_k in zip(encoder_q.parameters(), encoder_k.parameters()):
        p_k.mul_(momentum).add_(p_q.detach(), alpha=1.0 - momentum)


@torch.no_grad()
def enqueue(queue, ptr, keys):
    """Writes the keys of every process (B_global, dim) into queue (dim, K) at ptr; returns the new ptr."""
    keys = concat_all_gather(keys)
    assert queue.shape[1] % keys.shape[0] == 0, "queue size must be divisible by the global batch"
    queue[:, ptr:ptr + keys.shape[0]] = keys.T.to(queue.dtype)
    return (ptr + keys.shape[0]) % queue.shape[1]


def contrast_logits(q, k, queue, temperature):
    """InfoNCE logits (B, 1 + K), positive first: [q.k, q.queue] / tau for L2-normalised q, k (B, dim).

    Always fp32: under autocast q @ queue would come out bf16 (3 significant digits), coarser than
    the gaps between the similarities of 65,536 negatives at tau = 0.07."""
    with torch.autocast(q.device.type, enabled=False):
        q, k = q.float(), k.float()
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ queue.clone().detach().float()
        return torch.cat([l_pos, l_neg], dim=1) / temperature


def batch_logits(q, keys, temperature):
    """In-batch InfoNCE logits (B, N) = q . keys^T / tau (`--negatives batch`), fp32 as contrast_logits."""
    with torch.autocast(q.device.type, enabled=False):
        return q.float() @ keys.float().T / temperature


def single_process():
    return not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1


def has_batchnorm(module):
    """Groups matter only for BatchNorm: an encoder without it (a GRU) runs on the whole batch."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def encode_queries(encoder_q, x_q, bn_splits=1):
    """encoder_q(x_q); in one process with bn_splits > 1 in that many groups, in order, so that
    BatchNorm sees the groups a key group is shuffled against (one group = one simulated GPU)."""
    if bn_splits > 1 and single_process() and len(x_q) > 1 and has_batchnorm(encoder_q):
        return torch.cat([encoder_q(part) for part in x_q.chunk(bn_splits)])
    return encoder_q(x_q)


@torch.no_grad()
def encode_keys(encoders_k, x_k, shuffle_bn=True, bn_splits=1):
    """[encoder(x_k) for encoder in encoders_k] with shuffle-BN (MoCo Sec 3.3), one shuffle for all:
    across processes under torchrun; in one process, where shuffling alone changes nothing for
    BatchNorm, the shuffled batch is encoded in bn_splits groups (MoCo's single-GPU demo)."""
    if not shuffle_bn or (single_process() and (bn_splits <= 1 or len(x_k) < 2)):
        return [encoder(x_k) for encoder in encoders_k]
    if single_process():
        perm = torch.randperm(len(x_k), device=x_k.device)
        unshuffle = torch.argsort(perm)
        return [torch.cat([encoder(part) for part in x_k[perm].chunk(bn_splits)])[unshuffle]
                if has_batchnorm(encoder) else encoder(x_k) for encoder in encoders_k]
    x_k, idx_unshuffle = batch_shuffle(x_k)
    return [concat_all_gather(encoder(x_k))[idx_unshuffle] for encoder in encoders_k]


@torch.no_grad()
def batch_shuffle(x):
    """Shuffle a batch across all processes (shuffle-BN, MoCo Sec 3.3, under torchrun); returns (this
    process's part, its rows of the index that undoes the shuffle on the gathered batch)."""
    x_all = concat_all_gather(x)
    n = x.shape[0]
    idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
    dist.broadcast(idx_shuffle, src=0)  # every process uses rank 0's permutation
    idx_unshuffle = torch.argsort(idx_shuffle)
    return x_all[idx_shuffle.view(-1, n)[dist.get_rank()]], idx_unshuffle.view(-1, n)[dist.get_rank()]


@torch.no_grad()
def concat_all_gather(x):
    """All-gather along the batch dimension (no gradient); the identity in a single process."""
    if single_process():
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)
