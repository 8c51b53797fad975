r"""Gaussian diffusion over user interaction rows.

* :class:`GaussianDiffusion` — schedule, forward noising, posterior mean,
  the shared training loss, the multi-step reverse loop.
* :class:`ImportanceStepSampler` — importance sampling of the step.
* :func:`timestep_embedding` — sinusoidal step embeddings.
* :class:`InteractionDiffusion` — a diffusion schedule plus any denoiser
  (see :class:`~mmdiff.nn.denoisers.Denoiser`): training loss, denoising of
  user rows, top-:math:`k` generation; :func:`regenerate_graph` builds
  DiffMM's modality-aware user-item graph from it.
"""
from mmdiff.nn.diffusion.gaussian import (
    LOSS_WEIGHTINGS,
    GaussianDiffusion,
    linear_var_betas,
)
from mmdiff.nn.diffusion.interaction import (
    InteractionDiffusion,
    generate_topk_edges,
    regenerate_graph,
)
from mmdiff.nn.diffusion.step_sampler import ImportanceStepSampler
from mmdiff.nn.diffusion.timestep import timestep_embedding

__all__ = [
    'GaussianDiffusion', 'linear_var_betas', 'LOSS_WEIGHTINGS',
    'ImportanceStepSampler', 'timestep_embedding', 'InteractionDiffusion',
    'generate_topk_edges', 'regenerate_graph',
]
