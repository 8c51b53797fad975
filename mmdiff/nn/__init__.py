r"""Layers, diffusion machinery and models."""
from mmdiff.nn.diffusion import (
    GaussianDiffusion,
    ImportanceStepSampler,
    linear_var_betas,
    timestep_embedding,
)

__all__ = ['GaussianDiffusion', 'ImportanceStepSampler', 'linear_var_betas',
           'timestep_embedding']
