r"""Layers, diffusion machinery, denoisers and models."""
from mmdiff.nn.cnet import BDBlock, BGBlock, CNet
from mmdiff.nn.contrastive import info_nce
from mmdiff.nn.conv import (
    ModalityPreference,
    MultiModalAggregation,
    NormalizedPropagation,
)
from mmdiff.nn.denoiser import DiffMMDenoiser
from mmdiff.nn.diffusion import (
    GaussianDiffusion,
    ImportanceStepSampler,
    linear_var_betas,
    timestep_embedding,
)
from mmdiff.nn.interaction_diffusion import (
    InteractionDiffusion,
    regenerate_graph,
)
from mmdiff.nn.svd import svd_user_factors, truncated_svd

__all__ = [
    'BDBlock', 'BGBlock', 'CNet', 'info_nce', 'ModalityPreference',
    'MultiModalAggregation', 'NormalizedPropagation', 'DiffMMDenoiser',
    'GaussianDiffusion', 'ImportanceStepSampler', 'linear_var_betas',
    'timestep_embedding', 'InteractionDiffusion', 'regenerate_graph',
    'svd_user_factors', 'truncated_svd',
]
