r"""Message-passing layers: LD4MRec's modality preference (Eq. 14) and
DiffMM's multi-modal graph aggregation."""
from mmdiff.nn.conv.modality_preference import ModalityPreference
from mmdiff.nn.conv.multimodal_aggregation import (
    MultiModalAggregation,
    NormalizedPropagation,
)

__all__ = ['ModalityPreference', 'MultiModalAggregation',
           'NormalizedPropagation']
