r"""The fit loop, checkpoints, seeding, presets."""
from mmdiff.train.checkpoint import atomic_save, load_checkpoint
from mmdiff.train.config import preset, split_config
from mmdiff.train.seed import resolve_device, seed_everything
from mmdiff.train.trainer import FitResult, Trainer

__all__ = ['Trainer', 'FitResult', 'atomic_save', 'load_checkpoint',
           'preset', 'split_config', 'resolve_device', 'seed_everything']
