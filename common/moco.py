"""Momentum contrast (He et al., CVPR 2020), in the shape of the original MoCo builder.

Used by tubelet_contrast.py (Eq. 5.1) and skeleton_contrast.py (Eq. 3.5). The thesis's
InfoNCE loss (Eq. 5.1) needs many negatives; MoCo keeps them in a queue of keys produced by a
slowly moving copy of the query encoder, so the number of negatives |N| (16,384 or 65,536 in
Sec 5.4.1) does not depend on the batch size.
"""
import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def check_queue_size(queue_size, global_batch_size):
    """The queue is filled in whole batches, so it must hold a whole number of them."""
    if queue_size % global_batch_size != 0:
        raise ValueError(
            f"--queue-size {queue_size} is not divisible by the global batch size {global_batch_size} "
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
    shuffle_bn:  shuffle the key batch across processes before the key encoder so BatchNorm
                 cannot use batch statistics to cheat (MoCo Sec 3.3). A no-op in one process;
                 turn it off when the encoders use SyncBatchNorm instead.
    """

    def __init__(self, encoder, dim=128, queue_size=65536, momentum=0.999, temperature=0.2,
                 shuffle_bn=True):
        super().__init__()
        self.queue_size, self.momentum, self.temperature = queue_size, momentum, temperature
        self.shuffle_bn = shuffle_bn
        self.encoder_q = encoder
        self.encoder_k = copy.deepcopy(encoder)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.mul_(self.momentum).add_(p_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = concat_all_gather(keys)
        batch_size = keys.shape[0]
        ptr = int(self.queue_ptr)
        assert self.queue_size % batch_size == 0, "queue size must be divisible by the global batch"
        self.queue[:, ptr:ptr + batch_size] = keys.T
        self.queue_ptr[0] = (ptr + batch_size) % self.queue_size

    def forward(self, x_q, x_k):
        """x_q, x_k: the two views of each positive pair, (B, ...) each.

        Returns (logits, labels): logits (B, 1 + queue_size) with the positive first, so the
        InfoNCE loss of Eq. 5.1 is `F.cross_entropy(logits, labels)` with labels all zero.
        """
        q = F.normalize(self.encoder_q(x_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            if self.shuffle_bn:
                x_k, idx_unshuffle = batch_shuffle(x_k)
            k = F.normalize(self.encoder_k(x_k), dim=1)
            if self.shuffle_bn:
                k = batch_unshuffle(k, idx_unshuffle)
        l_pos = (q * k).sum(dim=1, keepdim=True)
        l_neg = q @ self.queue.clone().detach()
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels


@torch.no_grad()
def batch_shuffle(x):
    """Shuffle a batch across all processes (shuffle-BN, MoCo Sec 3.3); returns (this process's
    part, the index that undoes it with `batch_unshuffle`). In a single process it permutes the
    batch locally, which changes nothing for BatchNorm but keeps one code path."""
    x_all = concat_all_gather(x)
    n_all, n = x_all.shape[0], x.shape[0]
    idx_shuffle = torch.randperm(n_all, device=x.device)
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(idx_shuffle, src=0)  # every process uses rank 0's permutation
    idx_unshuffle = torch.argsort(idx_shuffle)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    return x_all[idx_shuffle.view(-1, n)[rank]], idx_unshuffle.view(-1, n)[rank]


@torch.no_grad()
def batch_unshuffle(x, idx_unshuffle):
    return concat_all_gather(x)[idx_unshuffle]


@torch.no_grad()
def concat_all_gather(x):
    """All-gather along the batch dimension (no gradient); the identity in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    gathered = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, x.contiguous())
    return torch.cat(gathered, dim=0)
