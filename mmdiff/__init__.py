r"""mmdiff: multi-modal diffusion recommenders on PyTorch Geometric."""
__version__ = '0.1.0'
