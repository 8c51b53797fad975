r"""Layers, diffusion machinery, denoisers and models.

* :mod:`mmdiff.nn.conv` — ``MessagePassing`` layers;
* :mod:`mmdiff.nn.diffusion` — the Gaussian process, step sampling,
  interaction-row diffusion and graph regeneration;
* :mod:`mmdiff.nn.denoisers` — the denoiser contract and networks;
* :mod:`mmdiff.nn.models` — full recommenders.
"""
from mmdiff.graph import Graph, to_adj, user_item_to_item_user
from mmdiff.nn.contrastive import info_nce
from mmdiff.nn.conv import (
    ModalityPreference,
    MultiModalAggregation,
    NormalizedPropagation,
)
from mmdiff.nn.denoisers import (
    BDBlock,
    BGBlock,
    CNet,
    Denoiser,
    DiffMMDenoiser,
    denoiser_capabilities,
)
from mmdiff.nn.diffusion import (
    GaussianDiffusion,
    ImportanceStepSampler,
    InteractionDiffusion,
    linear_var_betas,
    regenerate_graph,
    timestep_embedding,
)
from mmdiff.nn.svd import svd_user_factors, truncated_svd

__all__ = [
    'BDBlock', 'BGBlock', 'CNet', 'info_nce', 'ModalityPreference',
    'MultiModalAggregation', 'NormalizedPropagation', 'Denoiser',
    'DiffMMDenoiser', 'denoiser_capabilities', 'GaussianDiffusion',
    'ImportanceStepSampler', 'linear_var_betas', 'timestep_embedding',
    'InteractionDiffusion', 'regenerate_graph', 'svd_user_factors',
    'truncated_svd', 'Graph', 'to_adj', 'user_item_to_item_user',
]
