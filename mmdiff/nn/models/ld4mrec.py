r"""LD4MRec (Yu et al., WWW 2024): a light diffusion model for multimedia
recommendation with forward-free one-step inference (docs/algorithms.md §4).

There is no official code; this follows the paper (Eqs. 1-22, Algorithms 1
and 2) and resolves its gaps with the decisions D10-D20 of
docs/algorithms.md §7, each noted where it is implemented.
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from mmdiff.sharding import draw_rows
from mmdiff.checks import (
    check_choice,
    check_float,
    check_optional_int,
)
from mmdiff.data.relevance import (
    ModalityRelevance,
    describe_relevance,
    modality_relevance,
    relevant_modalities,
)
from mmdiff.data.hetero import (
    edge_index_of,
    get_modalities,
    num_items,
    num_users,
)
from mmdiff.errors import ConfigError
from mmdiff.graph.norm import sym_norm_weights
from mmdiff.nn.conv.modality_preference import ModalityPreference
from mmdiff.nn.denoisers.cnet import BG_MODES, CNet
from mmdiff.nn.diffusion import (
    LOSS_WEIGHTINGS,
    GaussianDiffusion,
    ImportanceStepSampler,
    timestep_embedding,
)
from mmdiff.nn.models.base import RowDiffusionRecommender, UserBatch
from mmdiff.nn.svd import SCALINGS, svd_user_factors
INFERENCE_TIMES = ('input', 'first_step')

#: Pre-compute all users' preferences :math:`\tilde{R} X_m` at construction
#: when :math:`U \cdot \sum_m d_m` is at most this many floats (64 MB).
PRECOMPUTE_LIMIT = 1 << 24


def soft_reconstruct(x: Tensor, prob: float, gamma: float,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    r"""Soft behaviour reconstruction :math:`f_s` (LD4MRec Eq. 12,
    docs/algorithms.md §4.3, D16).

    Every entry of the 0/1 rows ``x`` is selected independently with
    probability :math:`p`; selected ones become :math:`1-\gamma`, selected
    zeros become :math:`\gamma`, unselected entries keep their value.

    .. math::
        f_s(x)_{ui} = \begin{cases} 1 - \gamma & (u,i) \in S^+ \\
        \gamma & (u,i) \in S^- \\ x_{ui} & \text{otherwise}\end{cases}
    """
    if prob <= 0.0:
        return x
    mask = draw_rows(x.size(0), lambda m: torch.rand(
        (m,) + tuple(x.shape[1:]), device=x.device,
        generator=generator)) < prob
    return torch.where(mask, x * (1.0 - 2.0 * gamma) + gamma, x)


class LD4MRec(RowDiffusionRecommender):
    r"""LD4MRec: one-step conditional diffusion on user interaction rows.

    **Conditions** (fixed, computed once from the training matrix :math:`R`):
    the collaborative signal :math:`\mathbf{c}_u = (U_k\Sigma_k)[u]` of the
    truncated SVD of :math:`\tilde{R} = D_U^{-1/2} R D_I^{-1/2}` (D18) and
    the user modality preferences :math:`\mathbf{e}_{u,m} = (\tilde{R}
    X_m)[u]` of Eq. 14 on the raw item features (:class:`ModalityPreference`,
    D19).

    **Training** (Algorithm 1), per batch of users :math:`b` with rows
    :math:`x_{in} = R[b]`:

    .. math::
        \tilde{x}_0 = f_s(x_{in}),\quad
        t \sim p_t \text{ (importance sampling, Eq. 13)},\quad
        x_t = \sqrt{\bar\alpha_t}\,\tilde{x}_0 + \sqrt{1-\bar\alpha_t}\,
        \epsilon,

    .. math::
        \hat{x} = \text{C-Net}(x_t, \mathbf{t}_f = \mathbf{z}_t +
        \mathbf{z}_{in}[u], \mathbf{c}_u, \{\mathbf{e}_{u,m}\}),\qquad
        \mathcal{L} = \frac{1}{B}\sum_{u \in b} \frac{(C^{(1)}_t)^2\,
        \mathrm{mean}_i (\tilde{x}_0 - \hat{x})^2}{p_t T},

    the posterior-mean matching loss of Eqs. 10-11 (the :math:`x_t` terms of
    :math:`\tilde\mu` and :math:`\mu_\theta` cancel; D14).  The schedule is
    Eq. 3, :math:`1 - \bar\alpha_t = s[\alpha_{min} + \frac{t-1}{T-1}(1 -
    \alpha_{min})]`, :math:`\mathbf{z}_t` the interleaved sinusoid of Eq. 15
    at the 1-based step, :math:`\mathbf{z}_{in}` a per-user table
    initialised to zeros (D13).

    **Inference** (Algorithm 2, Eq. 20): one deterministic pass from the
    clean training row, :math:`\hat{x} = \text{C-Net}(x_{in},
    \mathbf{t}_f = \mathbf{z}_{in}[u], \mathbf{c}_u, \{\mathbf{e}_{u,m}\})`;
    :math:`\hat{x}` is the score (D20; the posterior mean ranks identically
    once training items are masked).

    Build it with :meth:`from_data`; the constructor takes tensors.

    Args:
        num_users (int): :math:`U`.
        num_items (int): :math:`I`.
        edge_index (Tensor): ``[2, E]`` training (user, item) edges.
        modalities (dict, optional): Ordered ``{name: [I, d_m]}`` raw item
            features (any number, any sizes); the BG blocks use this order.
        steps (int): :math:`T` (D18 rec. 5).
        noise_scale (float): :math:`s`.  (paper: ``0.01``)
        noise_min (float): :math:`\alpha_{min}`.  (paper: ``0.05``)
        hidden_dim (int): :math:`d`, C-Net width and size of
            :math:`\mathbf{z}_t`, :math:`\mathbf{z}_{in}`.  (rec. ``256``)
        svd_dim (int): Rank of the SVD encoder.  (rec. ``64``)
        num_blocks (int): :math:`L` BD/BG pairs.  (rec. ``2``, D10)
        smooth_prob (float): :math:`p` of :math:`f_s`.  (paper: ``0.01``)
        smooth_gamma (float): :math:`\gamma` of :math:`f_s`.
            (paper: ``0.01``)
        lr (float): Adam learning rate.  (rec. ``1e-3``)
        weight_decay (float): Adam weight decay.  (rec. ``0``)
        batch_size (int, optional): Users per batch of the diffusion phase;
            :obj:`None` (default) uses the trainer's batch size, so a preset
            or ``--set batch_size=...`` is never silently overridden (the
            presets set the recommended ``400``, D18).
        dropout (float): Dropout on the C-Net input.  (rec. ``0``)
        loss_weighting (str): ``'posterior_mean'`` (:math:`(C^{(1)}_t)^2`,
            literal Eq. 11), ``'snr'`` (DiffRec's
            :math:`\mathrm{SNR}(t-1) - \mathrm{SNR}(t)`, 1 at :math:`t=0`)
            or ``'none'`` (plain :math:`x_0` MSE).
        importance_sampling (bool): Eq. 13 / DiffRec importance sampling of
            :math:`t` (uniform during warm-up, D17); else uniform :math:`t`.
        noise_raw_input (bool): Noise :math:`x_{in}` instead of
            :math:`f_s(x_{in})` (Algorithm 1's wording; D15).
        use_bd (bool): BD blocks (:obj:`False`: "w/o BD").
        use_bg (bool): BG blocks (:obj:`False`: "w/o BG"; needed when the
            data has no modality features).
        use_sr (bool): Soft behaviour reconstruction (:obj:`False`: "w/o
            SR", :math:`\tilde{x}_0 = x_{in}`).
        shared_input_time (bool): One shared :math:`\mathbf{z}_{in}` instead
            of a per-user table (D13).
        time_concat (bool): Concatenate :math:`\mathbf{t}_f` in Eq. 16 (D12).
        bg_mode (str): ``'channel'`` or ``'full'`` (D11).
        preference_norm (bool): Parameter-free LayerNorm of each
            :math:`\mathbf{e}_{u,m}` (D19, off in the paper).
        svd_normalized (bool): SVD of :math:`\tilde{R}` (default) or of raw
            :math:`R`.
        svd_scaling (str): ``'sigma'`` (:math:`U_k\Sigma_k`),
            ``'sqrt_sigma'`` or ``'none'``.
        svd_seed (int): Seed of the randomised SVD.
        precompute_preferences (bool, optional): Keep :math:`\tilde{R} X_m`
            for all users in memory (:obj:`None`: only when it has at most
            ``PRECOMPUTE_LIMIT`` floats); otherwise it is computed per
            batch from the batch rows of :math:`\tilde{R}`.
        inference_time (str): :math:`\mathbf{t}_f` of the one-step
            inference.  ``'input'`` (default) is Eq. 20 as written,
            :math:`\mathbf{t}_f = \mathbf{z}_{in}[u]`; note that C-Net never
            sees :math:`\mathbf{z}_{in}` without an added :math:`\mathbf{z}_t`
            in training (D13), and on TikTok this reading gives unstable
            validation recall.  ``'first_step'`` uses
            :math:`\mathbf{t}_f = \mathbf{z}_1 + \mathbf{z}_{in}[u]`, i.e.
            treats :math:`x_{in}` as a sample of the least-noised step the
            network was trained on (our variant, not in the paper).
        modality_screening (bool): Before anything is built, test every
            modality with :func:`~mmdiff.data.relevance.modality_relevance`
            (do its features predict the items' collaborative factors
            better than the same features on permuted items?) and give BG
            blocks only to those that pass; when none passes the model is
            "w/o BG".  A modality without signal otherwise only adds a
            per-user random projection of the interaction row to C-Net, which
            lowers test recall on TikTok (docs/algorithms.md D24,
            ``benchmarks/results/modalities.md``).  The result is kept in
            :attr:`modality_relevance`; the torch random state is not used,
            so with every modality kept the model is the one without
            screening.  (default: :obj:`False`, the paper; the presets turn
            it on)
        screening_alpha (float): Level :math:`\alpha` of that test.
    """
    name = 'ld4mrec'
    requires_modalities = False
    hparam_aliases = {'hidden': 'hidden_dim'}

    def __init__(
        self,
        num_users: int,
        num_items: int,
        edge_index: Tensor,
        modalities: Optional[Mapping[str, Tensor]] = None,
        steps: int = 5,
        noise_scale: float = 0.01,
        noise_min: float = 0.05,
        hidden_dim: int = 256,
        svd_dim: int = 64,
        num_blocks: int = 2,
        smooth_prob: float = 0.01,
        smooth_gamma: float = 0.01,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        batch_size: Optional[int] = None,
        dropout: float = 0.0,
        loss_weighting: str = 'posterior_mean',
        importance_sampling: bool = True,
        noise_raw_input: bool = False,
        use_bd: bool = True,
        use_bg: bool = True,
        use_sr: bool = True,
        shared_input_time: bool = False,
        time_concat: bool = True,
        bg_mode: str = 'channel',
        preference_norm: bool = False,
        svd_normalized: bool = True,
        svd_scaling: str = 'sigma',
        svd_seed: int = 0,
        precompute_preferences: Optional[bool] = None,
        inference_time: str = 'input',
        modality_screening: bool = False,
        screening_alpha: float = 0.01,
    ):
        super().__init__()
        modalities = dict(modalities or {})
        self.modality_screening = bool(modality_screening)
        #: ``{name: ModalityRelevance}`` of the screening (empty without).
        self.modality_relevance: Dict[str, ModalityRelevance] = {}
        if self.modality_screening and modalities and use_bg:
            self.modality_relevance = modality_relevance(
                edge_index, num_users, num_items, modalities,
                alpha=screening_alpha, seed=svd_seed)
            keep = relevant_modalities(self.modality_relevance)
            if not keep:
                warnings.warn(
                    f"LD4MRec: no modality passed the relevance test "
                    f"({describe_relevance(self.modality_relevance)}); "
                    f"training the 'w/o BG' variant", stacklevel=2)
                use_bg = False
            modalities = {m: modalities[m] for m in keep}
        check_choice('loss_weighting', loss_weighting, LOSS_WEIGHTINGS)
        check_choice('bg_mode', bg_mode, BG_MODES)
        check_choice('inference_time', inference_time, INFERENCE_TIMES)
        check_choice('svd_scaling', svd_scaling, SCALINGS)
        check_float('smooth_prob (p)', smooth_prob, 0, 1)
        check_float('smooth_gamma (gamma)', smooth_gamma, 0, 0.5)
        check_float('lr', lr, 0, lo_open=True)
        check_optional_int('batch_size', batch_size, 1)
        if use_bg and not modalities:
            raise ConfigError(
                "LD4MRec: use_bg=True needs at least one item modality, but "
                "no modality features were given (this dataset has none?). "
                "Pass use_bg=False to train the 'w/o BG' variant, or add "
                "features with mmdiff.data.hetero.add_modality")
        if not use_bg:
            modalities = {}  # preferences are only consumed by BG blocks
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.hidden_dim, self.svd_dim = hidden_dim, svd_dim
        self.smooth_prob, self.smooth_gamma = smooth_prob, smooth_gamma
        self.lr, self.weight_decay = lr, weight_decay
        self.batch_size = batch_size
        self.loss_weighting = loss_weighting
        self.importance_sampling = importance_sampling
        self.noise_raw_input = noise_raw_input
        self.use_bd, self.use_bg, self.use_sr = use_bd, use_bg, use_sr
        self.shared_input_time = shared_input_time
        self.preference_norm = preference_norm
        self.inference_time = inference_time
        self.modality_names: List[str] = list(modalities)

        # --- training matrix (persistent: scoring needs the rows) ---------
        edge_index = edge_index.cpu().long()
        self.register_interactions(edge_index)
        # R~ values aligned with (crow, col): 1 / sqrt(|N_u| |N_i|).
        row = torch.repeat_interleave(torch.arange(self.num_users),
                                      (self.crow[1:] - self.crow[:-1]))
        self.register_buffer('norm_weight', sym_norm_weights(
            row, self.col, self.num_users, self.num_items), persistent=False)

        # --- collaborative condition c_u (fixed; D18) ---------------------
        self.register_buffer('cf_signal', svd_user_factors(
            edge_index, self.num_users, self.num_items, rank=svd_dim,
            normalized=svd_normalized, scaling=svd_scaling, seed=svd_seed))

        # --- modality preferences e_{u,m} (Eq. 14; D19) -------------------
        self.preference = ModalityPreference(normalize=False)
        total = self.num_users * sum(int(x.size(1))
                                     for x in modalities.values())
        self.precompute_preferences = (total <= PRECOMPUTE_LIMIT
                                       if precompute_preferences is None
                                       else bool(precompute_preferences))
        if self.precompute_preferences:
            adj_t = torch.sparse_csr_tensor(
                self.crow, self.col, self.norm_weight,
                size=(self.num_users, self.num_items))
        for m, x in modalities.items():
            x = x.detach().float().cpu()
            if self.precompute_preferences:
                self.register_buffer(f'pref_{m}', self.preference(x, adj_t),
                                     persistent=False)
            else:
                self.register_buffer(f'feat_{m}', x, persistent=False)

        # --- diffusion (Eq. 3 schedule) and step sampler (Eq. 13) ---------
        self.diffusion = GaussianDiffusion(noise_scale=noise_scale,
                                           noise_min=noise_min,
                                           noise_max=1.0, steps=steps,
                                           beta_fixed=None)
        self.step_sampler = ImportanceStepSampler(steps)

        # --- learnable input time z_in (zeros; D13) and C-Net -------------
        self.input_time = nn.Parameter(torch.zeros(
            1 if shared_input_time else self.num_users, hidden_dim))
        self.cnet = CNet(self.num_items,
                         {m: int(x.size(1)) for m, x in modalities.items()},
                         hidden_dim=hidden_dim, svd_dim=svd_dim,
                         num_blocks=num_blocks, use_bd=use_bd, use_bg=use_bg,
                         dropout=dropout, time_concat=time_concat,
                         bg_mode=bg_mode)

    # ------------------------------------------------------------------
    @classmethod
    def from_data(cls, data: HeteroData,
                  modalities: Optional[Sequence[str]] = None,
                  **hparams) -> 'LD4MRec':
        r"""Builds the model from the canonical :class:`HeteroData`.

        Args:
            data: Training interactions and item modalities.
            modalities (list, optional): Names (and order) of the modalities
                to use (default: all, in the data's order; ``[]``: none).
            **hparams: The keyword arguments of :class:`LD4MRec` (unknown
                names raise :class:`~mmdiff.errors.ConfigError`).
        """
        hparams = cls.validated_hparams(hparams)
        if modalities is not None and isinstance(modalities, str):
            modalities = [modalities]
        feats = get_modalities(data, list(modalities)
                               if modalities is not None else None)
        return cls(num_users(data), num_items(data), edge_index_of(data),
                   feats, **hparams)

    def reset_parameters(self):
        self.cnet.reset_parameters()
        nn.init.zeros_(self.input_time)
        self.step_sampler.loss_history.zero_()
        self.step_sampler.count.zero_()

    # ------------------------------------------------------------------
    def preferences(self, users: Tensor) -> Dict[str, Tensor]:
        r"""The Eq. 14 preferences ``{m: [B, d_m]}`` of ``users``, from the
        cache or as :math:`\tilde{R}[b] X_m` with the batch rows of
        :math:`\tilde{R}` (never the dense :math:`U \times I` matrix)."""
        if not self.modality_names:
            return {}
        users = users.to(self.crow.device)
        if self.precompute_preferences:
            out = {m: getattr(self, f'pref_{m}')[users]
                   for m in self.modality_names}
        else:
            start, end = self.crow[users], self.crow[users + 1]
            counts = end - start
            crow_b = torch.zeros(users.numel() + 1, dtype=torch.long,
                                 device=users.device)
            crow_b[1:] = torch.cumsum(counts, 0)
            idx = torch.repeat_interleave(start - crow_b[:-1], counts) + \
                torch.arange(int(crow_b[-1]), device=users.device)
            adj_b = torch.sparse_csr_tensor(
                crow_b, self.col[idx], self.norm_weight[idx],
                size=(users.numel(), self.num_items))
            out = {m: self.preference(getattr(self, f'feat_{m}'), adj_b)
                   for m in self.modality_names}
        if self.preference_norm:
            out = {m: F.layer_norm(e, e.shape[-1:]) for m, e in out.items()}
        return out

    def input_time_of(self, users: Tensor) -> Tensor:
        r""":math:`\mathbf{z}_{in}[u]`, ``[B, d]``."""
        if self.shared_input_time:
            return self.input_time.expand(users.numel(), -1)
        return self.input_time[users.to(self.input_time.device)]

    def denoise(self, x_t: Tensor, t_f: Tensor, users: Tensor) -> Tensor:
        r"""C-Net with the conditions of ``users``."""
        users = users.to(self.crow.device)
        return self.cnet(x_t, t_f, self.cf_signal[users],
                         self.preferences(users))

    def loss(self, batch: UserBatch) -> Dict[str, Tensor]:
        r"""One training step of Algorithm 1 on a batch of users
        (:meth:`GaussianDiffusion.training_loss` with the C-Net of the
        batch's users as the denoiser)."""
        device = self.crow.device
        users = batch.users.to(device)
        x_in = batch.rows.to(device=device, dtype=torch.float32)
        x0 = soft_reconstruct(x_in, self.smooth_prob, self.smooth_gamma) \
            if self.use_sr else x_in
        z_in = self.input_time_of(users)

        def predict(x_t: Tensor, t: Tensor) -> Tensor:
            z_t = timestep_embedding(t + 1, self.hidden_dim, interleaved=True)
            return self.denoise(x_t, z_t + z_in, users)

        out = self.diffusion.training_loss(
            x0, predict, x_start=x_in if self.noise_raw_input else None,
            weighting=self.loss_weighting,
            step_sampler=self.step_sampler if self.importance_sampling
            else None)
        return {'loss': out['loss'], 'mse': out['mse'].mean()}

    @torch.no_grad()
    def score(self, users: Tensor) -> Tensor:
        r"""One-step inference (Algorithm 2): :math:`\hat{x}` from the clean
        training rows with :math:`\mathbf{t}_f = \mathbf{z}_{in}[u]` (or
        :math:`\mathbf{z}_1 + \mathbf{z}_{in}[u]`, see
        ``inference_time``)."""
        users = users.to(self.crow.device)
        t_f = self.input_time_of(users)
        if self.inference_time == 'first_step':
            first = torch.ones(users.numel(), dtype=torch.long,
                               device=users.device)
            t_f = t_f + timestep_embedding(first, self.hidden_dim,
                                           interleaved=True)
        return self.denoise(self.rows(users), t_f, users)

    def __repr__(self) -> str:
        mods = ', '.join(self.modality_names) or 'none'
        return (f'{self.__class__.__name__}({self.num_users}, '
                f'{self.num_items}, modalities=[{mods}], '
                f'steps={self.diffusion.steps}, hidden_dim={self.hidden_dim}, '
                f'svd_dim={self.svd_dim}, '
                f'num_blocks={self.cnet.num_blocks}, use_bd={self.use_bd}, '
                f'use_bg={self.use_bg}, use_sr={self.use_sr})')

    @property
    def dropped_modalities(self) -> List[str]:
        r"""The modalities the screening left out (in data order)."""
        return [m for m, r in self.modality_relevance.items() if not r.keep]
