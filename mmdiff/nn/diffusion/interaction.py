r"""A reusable "diffusion over interaction rows" component: one
:class:`~mmdiff.nn.diffusion.GaussianDiffusion` plus any denoiser (the
contract is :class:`~mmdiff.nn.denoisers.Denoiser`), with DiffMM's training
loss (docs/algorithms.md §2.6), the reverse process that denoises clean
rows, and graph regeneration from the denoised rows.

It needs no DiffMM model: any recommender can denoise its users' rows or
build a modality-aware graph with :func:`regenerate_graph`::

    diff = InteractionDiffusion(MyDenoiser(num_items), GaussianDiffusion())
    out = diff.loss(rows)
    out['loss'].backward()
    ...
    edge_index, edge_weight = regenerate_graph(
        diff, interaction_csr(data), U, I, k=1, batch_size=1024,
        keep_rate=0.5)
    adj = to_adj(edge_index, edge_weight, U + I)     # for the layers
"""
from __future__ import annotations

import contextlib
from typing import Dict, FrozenSet, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from mmdiff.checks import check_int
from mmdiff.data.hetero import csr_entries
from mmdiff.errors import ConfigError, DataError
from mmdiff.graph import (
    dropout_normalized_edges,
    normalized_edges,
)
from mmdiff.nn.denoisers.base import denoiser_capabilities
from mmdiff.nn.diffusion._fused import LinearOutputLoss, fused_denoise
from mmdiff.nn.diffusion.gaussian import GaussianDiffusion
from mmdiff.nn.diffusion.step_sampler import ImportanceStepSampler
from mmdiff.nn.precision import check_bf16


def _autocast(enabled: bool, device: torch.device):
    if not enabled:
        return contextlib.nullcontext()
    check_bf16(device, 'autocast_bf16 (precision bf16)')
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class InteractionDiffusion(torch.nn.Module):
    r"""Gaussian diffusion of user interaction rows with any
    :math:`x_0`-predicting denoiser (DiffRec / DiffMM, docs/algorithms.md
    §1, §2.6).

    Training (:meth:`loss`), for clean rows :math:`x_0` (``[B, I]``, 0/1):
    :meth:`GaussianDiffusion.training_loss` with SNR weights
    :math:`w(t) = \mathrm{SNR}(t-1) - \mathrm{SNR}(t)`, :math:`w(0) = 1`,
    and uniform steps (DiffMM, docs/algorithms.md D4) or importance-sampled
    ones (DiffRec), plus DiffMM's modality-aware signal injection:

    .. math::
        \mathcal{L}_{elbo} &= \tfrac{1}{B}\textstyle\sum_b w(t_b)\,
        \tfrac{1}{I}\lVert x_{0,b} - \hat{x}_b\rVert^2 \\
        \mathcal{L}_{msi} &= \tfrac{1}{B}\textstyle\sum_b \tfrac{1}{d}
        \lVert \hat{x}_b F - x_{0,b} \bar{E}_I \rVert^2 \\
        \mathcal{L} &= \mathcal{L}_{elbo} + \lambda_{msi}\,\mathcal{L}_{msi}

    :math:`\mathcal{L}_{msi}` (DiffMM's ``gc_loss``) aggregates the modality
    features :math:`F` (``[I, d]``) over predicted interactions and the ID
    embeddings :math:`\bar{E}_I` over observed ones; both are taken as
    constants (docs/algorithms.md D6).

    Denoising (:meth:`denoise`): start from :math:`x_0` (or
    :math:`q(x_{s-1}|x_0)` with ``sampling_steps`` :math:`= s > 0`) and run
    all :math:`T` posterior-mean steps with the denoiser in evaluation mode
    (D5).

    **Fast paths** (detected from the denoiser's declared capabilities,
    :func:`~mmdiff.nn.denoisers.base.denoiser_capabilities`; never assumed).
    With ``'linear_output'`` (:math:`\hat{x} = H W^\top + \mathbf{1}b^\top`)
    both loss terms and their gradients are computed without the ``[B, I]``
    matrix :math:`\hat{x}`: the squared error uses the Gram matrix
    :math:`W^\top W` and the sparse clean rows, the MSI term uses
    :math:`W^\top F`.  With ``'linear_input'`` too, and without
    ``sampling_noise``, the reverse process avoids all but one
    ``[B, h] x [h, I]`` product per row batch: the first layer sees
    :math:`x` only through :math:`a = W^{(x)}_1 x`, so with the posterior
    mean :math:`x_{t-1} = C^{(1)}_t \hat{x}_t + C^{(2)}_t x_t`

    .. math::
        a_{t-1} = C^{(1)}_t\,(M h_t + W^{(x)}_1 b_{out}) + C^{(2)}_t\, a_t,
        \qquad M = W^{(x)}_1 W_{out}\ \ ([h \times h]),

    while :math:`C^{(2)}_0 = 0` gives :math:`x_{final} = C^{(1)}_0
    \hat{x}_0`.  The start :math:`a_{T} = W^{(x)}_1 x_0` is a sparse
    product (clean rows are 0/1 with few ones).  Both rearrangements are
    exact in exact arithmetic and tested against the plain computation.

    Args:
        denoiser (torch.nn.Module): Maps ``(x_t [B, I], t [B])`` to
            :math:`\hat{x}_0` ``[B, I]`` (:class:`~mmdiff.nn.denoisers.
            Denoiser`).
        diffusion (GaussianDiffusion): The noise schedule.
        sampling_steps (int): :math:`s`; 0 starts the reverse process at the
            clean row.  (default: ``0``)
        sampling_noise (bool): Add posterior noise in the reverse process.
            (default: :obj:`False`)
        autocast_bf16 (bool): Run the denoiser under
            ``torch.autocast(dtype=torch.bfloat16)`` (training and reverse
            process; losses stay float32).  (default: :obj:`False`)
        importance_sampling (bool): Draw the training steps from the loss
            history (DiffRec's ``'importance'`` sampling,
            :class:`~mmdiff.nn.diffusion.ImportanceStepSampler`; uniform
            until every step has a full history) instead of uniformly
            (DiffMM).  (default: :obj:`False`)
    """

    def __init__(self, denoiser: torch.nn.Module,
                 diffusion: GaussianDiffusion, sampling_steps: int = 0,
                 sampling_noise: bool = False, autocast_bf16: bool = False,
                 importance_sampling: bool = False):
        super().__init__()
        check_int('sampling_steps', sampling_steps, 0, diffusion.steps)
        if not isinstance(denoiser, torch.nn.Module):
            raise ConfigError(f"the denoiser must be a torch.nn.Module "
                              f"mapping (x_t, t) to x0_hat, got "
                              f"{type(denoiser).__name__}")
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.sampling_steps = sampling_steps
        self.sampling_noise = bool(sampling_noise)
        self.autocast_bf16 = bool(autocast_bf16)
        self.step_sampler = ImportanceStepSampler(diffusion.steps) \
            if importance_sampling else None
        # Test oracle only: False forces the plain computation.
        self._allow_fused = True

    @classmethod
    def diffmm(cls, num_items: int, hidden_dims: Sequence[int] = (1000,),
               time_dim: int = 10, dropout: float = 0.5, norm: bool = False,
               noise_scale: float = 0.1, noise_min: float = 1e-4,
               noise_max: float = 0.02, steps: int = 5,
               beta_fixed: Optional[float] = 1e-4, **kwargs
               ) -> 'InteractionDiffusion':
        r"""The DiffMM configuration: a :class:`~mmdiff.nn.denoisers.
        DiffMMDenoiser` and the variance-linear schedule with
        :math:`\beta_0 = 10^{-4}` (docs/algorithms.md §2.6, D3).
        ``kwargs`` go to the constructor."""
        from mmdiff.nn.denoisers.mlp import DiffMMDenoiser
        return cls(DiffMMDenoiser(num_items, hidden_dims, time_dim, dropout,
                                  norm),
                   GaussianDiffusion(noise_scale, noise_min, noise_max, steps,
                                     beta_fixed=beta_fixed), **kwargs)

    @property
    def num_items(self) -> int:
        return getattr(self.denoiser, 'num_items', -1)

    def _device(self) -> torch.device:
        for p in self.denoiser.parameters():
            return p.device
        return self.diffusion.betas.device

    def capabilities(self) -> FrozenSet[str]:
        r"""The denoiser capabilities the fast paths may use now."""
        if not self._allow_fused:
            return frozenset()
        return denoiser_capabilities(self.denoiser)

    def _can_fuse_reverse(self) -> bool:
        caps = self.capabilities()
        return ('linear_input' in caps and 'linear_output' in caps
                and not self.sampling_noise
                and float(self.diffusion.posterior_mean_coef2[0]) == 0.0)

    # ------------------------------------------------------------------
    def loss(self, x0: Tensor, *, feature_proj: Optional[Tensor] = None,
             item_emb: Optional[Tensor] = None,
             msi_weight: float = 0.0) -> Dict[str, Tensor]:
        r"""One diffusion training step's loss on clean rows ``x0``
        (``[B, I]``).

        Args:
            x0 (Tensor): Clean interaction rows (dense or sparse CSR, 0/1).
                With a ``'linear_output'`` denoiser sparse CSR rows are
                never densified (the noisy rows are built from the stored
                entries, :meth:`GaussianDiffusion.q_sample`); the loss is
                the same as for the dense rows.
            feature_proj (Tensor, optional): :math:`F` ``[I, d]`` (treated as
                a constant).
            item_emb (Tensor, optional): :math:`\bar{E}_I` ``[I, d]``
                (treated as a constant).
            msi_weight (float): :math:`\lambda_{msi}`; the MSI term is
                computed when it is non-zero and both matrices are given.

        Returns:
            ``{'loss', 'elbo', 'msi'}`` (scalars; ``msi`` is 0 when
            skipped).
        """
        fused_output = 'linear_output' in self.capabilities()
        if x0.layout != torch.strided and not (
                fused_output and x0.layout == torch.sparse_csr):
            x0 = x0.to_dense()
        B = x0.size(0)
        use_msi = (msi_weight != 0 and feature_proj is not None
                   and item_emb is not None)
        if use_msi and (feature_proj.size(0) != x0.size(1) or
                        item_emb.size(0) != x0.size(1)):
            raise DataError(f"feature_proj and item_emb need {x0.size(1)} "
                            f"rows (one per item), got "
                            f"{feature_proj.size(0)} and {item_emb.size(0)}")
        bf16 = self.autocast_bf16

        def predict(x_t: Tensor, t: Tensor) -> Tensor:
            with _autocast(bf16, x0.device):
                return self.denoiser(x_t.to(torch.bfloat16) if bf16
                                     else x_t, t)

        def linear_output_loss(x_t: Tensor, t: Tensor,
                               step_weights: Tensor):
            with _autocast(bf16, x0.device):
                h = self.denoiser.hidden_state(
                    x_t.to(torch.bfloat16) if bf16 else x_t, t)
            if x0.layout == torch.sparse_csr:
                rows, cols, vals = csr_entries(x0)
            else:
                rows, cols = x0.nonzero(as_tuple=True)
                vals = x0[rows, cols]
            target = None
            if use_msi:
                e = item_emb.detach().float()
                target = torch.zeros(B, e.size(1), device=x0.device) \
                    .index_add_(0, rows, e[cols] * vals[:, None])
            last = self.denoiser.output_layer
            elbo, msi, sq = LinearOutputLoss.apply(
                h.float(), last.weight, last.bias, rows, cols, vals,
                step_weights, feature_proj.detach().float() if use_msi
                else None, target, bf16)
            return elbo, sq, {'msi': msi}

        fused = linear_output_loss if fused_output else None
        out = self.diffusion.training_loss(
            x0, predict, step_sampler=self.step_sampler, fused=fused)
        elbo = out['loss']
        if not use_msi:
            msi = elbo.new_zeros(())
        elif fused is not None:
            msi = out['msi']
        else:
            pred = out['x_hat'] @ feature_proj.detach()
            target = x0 @ item_emb.detach()
            msi = (pred - target).pow(2).mean(dim=1).mean()
        loss = elbo + msi_weight * msi if use_msi else elbo
        return {'loss': loss, 'elbo': elbo.detach(),
                'msi': msi.detach() if use_msi else elbo.new_zeros(())}

    # ------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, x0: Tensor) -> Tensor:
        r"""Runs the full reverse process from the clean rows ``x0``
        (``[B, I]``, dense or sparse CSR) with the denoiser in evaluation
        mode and returns the generated rows ``[B, I]`` (dense, float32)."""
        with _autocast(self.autocast_bf16, x0.device):
            if self._can_fuse_reverse():
                out = fused_denoise(self, x0)
            else:
                if x0.layout != torch.strided:
                    x0 = x0.to_dense()
                out = self._plain_denoise(x0)
        return out.float()

    @torch.no_grad()
    def denoise_topk(self, x0: Tensor, k: int,
                     exclude: Optional[Tensor] = None,
                     refine: int = 16) -> Tuple[Tensor, Tensor]:
        r"""The ``k`` highest entries of every generated row,
        ``(values [B, k], items [B, k])``, as :meth:`denoise` followed by
        ``topk`` (``exclude``: ``[B, I]`` boolean mask of items that may not
        be chosen).

        Under ``autocast_bf16`` the generated rows carry ~3 significant
        digits, so near-equal items would tie and ``topk`` would pick by
        index.  With a denoiser of both capabilities the ``k + refine`` best
        items of the bfloat16 rows are re-scored exactly (float32 output
        layer on those candidates only), which restores the float32 ranking
        unless more than ``refine`` items sit within bfloat16 rounding of
        the ``k``-th."""
        I = x0.size(1)
        check_int('k', k, 1, I)
        if not (self.autocast_bf16 and self._can_fuse_reverse()):
            gen = self.denoise(x0)
            if exclude is not None:
                gen = gen.masked_fill(exclude, float('-inf'))
            return gen.topk(k, dim=1)
        with _autocast(True, x0.device):
            h = fused_denoise(self, x0, return_hidden=True)
            approx = self.denoiser.output(h).float()
        if exclude is not None:
            approx.masked_fill_(exclude, float('-inf'))
        cand = approx.topk(min(k + max(int(refine), 0), I), dim=1).indices
        last = self.denoiser.output_layer
        w = last.weight.float()[cand]                            # [B, c, h]
        exact = torch.bmm(w, h.float().unsqueeze(2)).squeeze(2) \
            + last.bias.float()[cand]
        exact.mul_(float(self.diffusion.posterior_mean_coef1[0]))
        if exclude is not None:
            exact.masked_fill_(exclude.gather(1, cand), float('-inf'))
        vals, pos = exact.topk(k, dim=1)
        return vals, cand.gather(1, pos)

    def _plain_denoise(self, x0: Tensor) -> Tensor:
        was_training = self.denoiser.training
        self.denoiser.eval()
        try:
            return self.diffusion.reverse(self.denoiser, x0,
                                          self.sampling_steps,
                                          self.sampling_noise)
        finally:
            self.denoiser.train(was_training)

    def clear_cache(self) -> None:
        r"""Frees the cached reverse-process constants."""
        self._rev_cache = None

    def extra_repr(self) -> str:
        return (f'sampling_steps={self.sampling_steps}, '
                f'sampling_noise={self.sampling_noise}, '
                f'autocast_bf16={self.autocast_bf16}')


def _row_batches(source, num_users: int, batch_size: int,
                 device: torch.device, batches: Optional[range] = None
                 ) -> Iterator[Tuple[Tensor, Tensor]]:
    r"""``(users [B], rows [B, I] as a 0/1 sparse CSR tensor)`` for
    consecutive user batches (only the batch numbers in ``batches``, if
    given), sliced from the CSR structure (no dense ``[U, I]``, no Python
    loop over users)."""
    from mmdiff.data.samplers import UserRowSampler
    if isinstance(source, UserRowSampler):
        crow, col = source.crow, source.col
        n_rows, num_items = source.num_users, source.num_items
    elif isinstance(source, Tensor) and source.layout == torch.sparse_csr:
        crow, col = source.crow_indices(), source.col_indices()
        n_rows, num_items = source.shape
    else:
        raise DataError("expected a [U, I] sparse CSR interaction matrix or "
                        "a UserRowSampler")
    if n_rows != num_users:
        raise DataError(f"the interaction matrix has {n_rows} rows, expected "
                        f"{num_users} users")
    crow, col = crow.to(device), col.to(device)
    starts = range(0, num_users, batch_size)
    for start in (starts if batches is None else starts[batches.start:
                                                        batches.stop]):
        end = min(start + batch_size, num_users)
        lo, hi = int(crow[start]), int(crow[end])
        rows = torch.sparse_csr_tensor(
            crow[start:end + 1] - lo, col[lo:hi],
            torch.ones(hi - lo, device=device), size=(end - start, num_items))
        yield torch.arange(start, end, device=device), rows


@torch.no_grad()
def generate_topk_edges(diffusion: InteractionDiffusion, csr_or_sampler,
                        num_users: int, num_items: int, k: int,
                        batch_size: int = 1024,
                        exclude_observed: bool = False,
                        batches: Optional[range] = None) -> Tensor:
    r"""Denoises every user's training row (in batches of ``batch_size``,
    in user order) and keeps the top-``k`` items of each generated row:
    ``[2, U * k]`` (user, item) edges on the denoiser's device
    (docs/algorithms.md §2.6 steps 1-2).  Observed items are candidates unless
    ``exclude_observed`` (DiffMM keeps them, D5).

    ``batches`` (a range of batch numbers) restricts the pass to those user
    batches, e.g. one rank's share of a sharded regeneration; the edges of
    consecutive ranges concatenated in order are those of the full pass."""
    check_int('rebuild k', k, 1, num_items)
    device = diffusion._device()
    parts = []
    try:
        for users, rows in _row_batches(csr_or_sampler, num_users,
                                        batch_size, device, batches):
            if rows.size(1) != num_items:
                raise DataError(f"interaction rows have {rows.size(1)} "
                                f"columns, expected {num_items}")
            exclude = rows.to_dense() > 0 if exclude_observed else None
            _, items = diffusion.denoise_topk(rows, k, exclude=exclude)
            parts.append(torch.stack([users.repeat_interleave(k),
                                      items.reshape(-1)]))
    finally:
        diffusion.clear_cache()
    if not parts:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    return torch.cat(parts, dim=1)


@torch.no_grad()
def regenerate_graph(diffusion: InteractionDiffusion, csr_or_sampler,
                     num_users: int, num_items: int, k: int,
                     batch_size: int = 1024, keep_rate: float = 1.0,
                     add_self_loops: bool = True,
                     exclude_observed: bool = False,
                     generator: Optional[torch.Generator] = None
                     ) -> Tuple[Tensor, Tensor]:
    r"""DiffMM's modality-aware graph regeneration (docs/algorithms.md §2.6):
    denoised rows :math:`\to` top-:math:`k` items per user :math:`\to`
    :math:`\hat{G} = D^{-1/2}(A + I)D^{-1/2}` over the :math:`U + I` joint
    nodes :math:`\to` edge dropout with rescaling (keep probability
    ``keep_rate``, self-loops included, the two directions independently).

    Args:
        diffusion (InteractionDiffusion): A trained diffusion component.
        csr_or_sampler: ``[U, I]`` training interactions (sparse CSR) or a
            :class:`~mmdiff.data.samplers.UserRowSampler`.
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        k (int): Items kept per user (``rebuild_k``).
        batch_size (int): Users per denoising batch.
        keep_rate (float): Edge keep probability :math:`\rho` (1 = none
            dropped).
        add_self_loops (bool): Add :math:`I_N` before normalising.
        exclude_observed (bool): Never pick a user's training items.
        generator (torch.Generator, optional): Randomness of the dropout.

    Returns:
        ``(edge_index [2, E], edge_weight [E])`` in the source-to-target
        convention of :mod:`mmdiff.graph` (``out = G @ x`` with
        :math:`G_{ij}` the weight of the edge :math:`j \to i`), on the
        denoiser's device; before dropout :math:`E = 2Uk + (U + I)` with
        self-loops.  Pass them straight to the layers of
        :mod:`mmdiff.nn.conv`, or through :func:`mmdiff.graph.to_adj` for
        a faster layout.
    """
    edges = generate_topk_edges(diffusion, csr_or_sampler, num_users,
                                num_items, k, batch_size, exclude_observed)
    ei, w = normalized_edges(edges, num_users, num_items,
                             add_self_loops=add_self_loops)
    return dropout_normalized_edges(ei, w, keep_rate, generator)
