"""Two of seed 004's stabilisers (Salimans et al. 2016, "Improved techniques for training
GANs") as layers of the networks models.py builds: minibatch discrimination in D, virtual
batch normalisation in G. Both are layers of the one network definition, so every execution
of the iteration (eager, packed under vmap, compiled) runs them.

Minibatch discrimination mixes the samples of a batch: D's output for one sample depends on
the others. The iteration (iteration.py) tells the layer how much each sample of the batch it
sees counts in D's minibatch, as alpha makes it (`counts`): see MinibatchDiscrimination.

Virtual batch normalisation keeps each example independent of its batch: it is normalised
with the statistics of a reference batch, fixed at the start of the trial, plus itself. The
reference batch is G's input noise, a buffer of the generator (VirtualBatchGenerator), so the
trial state and its checkpoints carry it (state.py keeps buffers).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

MINIBATCH_INIT_STD = 0.05  # T ~ N(0, 0.05), as Salimans et al.'s code
VBN_EPS = 1e-5  # nn.BatchNorm's default


class MinibatchDiscrimination(nn.Module):
    """f (N, A) -> cat(f, o) (N, A + B): Salimans et al.'s minibatch features.

    T (A, B, C) is learned; M_i = f(x_i) T (B, C); c_b(x_i, x_j) = exp(-||M_i,b - M_j,b||_1);
    o(x_i)_b = sum over j != i of c_b(x_i, x_j). j = i is left out, as Salimans et al.'s code
    does (it adds 1e6 to the diagonal's distance; the paper's formula sums over every j, which
    only adds 1 to every feature): o then measures closeness to the *other* samples.

    The sum is over D's minibatch of `batch_size` m samples. Where the batch the layer sees is
    not that minibatch, each sample j counts `counts[j]` (the iteration's alpha weights: the
    weight mode's m real and m fake samples weighted alpha and 1 - alpha, the bernoulli mode's
    unchosen samples 0, real and fake batches of a batch-norm D each on its own), and o is
    their weighted mean over the others, scaled to the m - 1 others of a minibatch of m:

        o(x_i)_b = (m - 1) sum_{j != i} counts_j c_b(x_i, x_j) / sum_{j != i} counts_j

    With unit counts on a batch of m (the compose mode's joint minibatch, G's batch) that is
    Salimans et al.'s sum exactly; a batch of another size (an evaluation's, D's AUC) gives
    features on the scale D was trained on, not N - 1 times the mean.
    """

    def __init__(self, in_features: int, kernels: int, dim: int, batch_size: int) -> None:
        super().__init__()
        self.kernels, self.dim, self.batch_size = kernels, dim, batch_size
        self.T = nn.Parameter(torch.randn(in_features, kernels * dim) * MINIBATCH_INIT_STD)  # (A, B * C)

    def forward(self, f: Tensor, counts: Tensor | None = None) -> Tensor:
        n = f.shape[0]
        dtype = torch.promote_types(f.dtype, torch.float32)  # at least float32 under bf16 autocast
        m = (f.to(dtype) @ self.T.to(dtype)).unflatten(-1, (self.kernels, self.dim))  # (N, B, C)
        # (N, N, B), summed one kernel coordinate at a time: (N, N, B) in memory, not (N, N, B, C)
        distance = sum((m[:, None, :, c] - m[None, :, :, c]).abs() for c in range(self.dim))
        closeness = torch.exp(-distance)
        others = 1.0 - torch.eye(n, device=f.device, dtype=closeness.dtype)  # (N, N): j != i
        weights = others if counts is None else others * counts.to(closeness.dtype).unsqueeze(0)
        total = weights.sum(1, keepdim=True).clamp_min(torch.finfo(closeness.dtype).tiny)  # (N, 1)
        o = (self.batch_size - 1) * (closeness * weights.unsqueeze(-1)).sum(1) / total  # (N, B)
        return torch.cat((f, o.to(f.dtype)), dim=1)

    def extra_repr(self) -> str:
        return f"kernels={self.kernels}, dim={self.dim}, batch_size={self.batch_size}"


class Discriminator(nn.Sequential):
    """D's Sequential, whose forward passes the minibatch counts to its minibatch layer (the
    other layers take one input, as in nn.Sequential)."""

    def forward(self, x: Tensor, counts: Tensor | None = None) -> Tensor:
        for layer in self:
            x = layer(x, counts) if isinstance(layer, MinibatchDiscrimination) else layer(x)
        return x


class VirtualBatchNorm(nn.Module):
    """Virtual batch normalisation of (R + B, C, ...) activations whose first R rows are the
    reference batch's: the reference rows are normalised with the reference batch's own
    statistics, each other row x with those of the reference batch plus x itself (mean and
    mean square of the R + 1 examples, over the batch and any spatial dimensions, per
    channel), so that an example's output is independent of the rest of its batch. A learned
    scale and shift per channel, as batch norm's. Statistics in float32."""

    def __init__(self, num_features: int, reference_size: int) -> None:
        super().__init__()
        self.reference_size = reference_size
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, h: Tensor) -> Tensor:
        r = self.reference_size
        x = h.to(torch.promote_types(h.dtype, torch.float32))
        spatial = tuple(range(2, x.dim()))
        own_mean = x.mean(spatial) if spatial else x  # (R + B, C): each example's own
        own_square = (x * x).mean(spatial) if spatial else x * x
        ref_mean, ref_square = own_mean[:r].mean(0), own_square[:r].mean(0)  # (C,)
        new = 1.0 / (r + 1.0)  # the example's share of the R + 1 examples
        mean = torch.cat((ref_mean.expand(r, -1), new * own_mean[r:] + (1.0 - new) * ref_mean))  # (R + B, C)
        square = torch.cat((ref_square.expand(r, -1), new * own_square[r:] + (1.0 - new) * ref_square))
        var = (square - mean * mean).clamp_min(0.0)
        shape = mean.shape + (1,) * len(spatial)
        scale = (self.weight / torch.sqrt(var + VBN_EPS)).view(shape)
        out = (x - mean.view(shape)) * scale + self.bias.view((1, -1) + (1,) * len(spatial))
        return out.to(h.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, reference_size={self.reference_size}"


class VirtualBatchGenerator(nn.Sequential):
    """G's Sequential with virtual batch norm: its buffer `reference` (R, noise_dim) is the
    reference batch's noise, run through the layers ahead of each batch and dropped from the
    output. Zeros until the unit draws it (run.build_unit, from the trial's own stream)."""

    def __init__(self, *layers: nn.Module, reference_size: int, noise_dim: int) -> None:
        super().__init__(*layers)
        self.register_buffer("reference", torch.zeros(reference_size, noise_dim))

    def forward(self, z: Tensor) -> Tensor:
        r = self.reference.shape[0]
        h = torch.cat((self.reference.to(z.dtype), z))
        for layer in self:
            h = layer(h)
        return h[r:]


def minibatch_counts(w_real: Tensor, w_fake: Tensor, joint: bool, p: int, n_real: int, n_fake: int) -> tuple[Tensor, ...]:
    """The alpha weights of D's minibatch ((P or 1, n_real or 1) and the same for the fakes)
    as the counts of the batches D is called on: one (P, n_real + n_fake) for a joint call,
    else (P, n_real) and (P, n_fake)."""
    real, fake = w_real.expand(p, n_real), w_fake.expand(p, n_fake)
    return (torch.cat((real, fake), dim=1),) if joint else (real, fake)
