r"""Data: the canonical :class:`~torch_geometric.data.HeteroData` layout,
readers (DiffMM pickles, MMRec ``.inter``, DataFrames), dataset classes,
the synthetic generator and noise injection."""
from mmdiff.data.hetero import (
    EDGE_TYPE,
    SPLITS,
    add_modality,
    describe,
    edge_index_of,
    edges_to_csr,
    get_modalities,
    interaction_csr,
    make_interaction_data,
    modality_names,
    num_items,
    num_users,
    summary,
    validate_features,
)
from mmdiff.data.safe_pickle import safe_load_npy, safe_load_pickle
from mmdiff.data.readers import (
    detect_layout,
    feature_files,
    from_dataframe,
    load_folder,
    read_diffmm_folder,
    read_mmrec_folder,
    split_per_user,
)
from mmdiff.data.datasets import (
    AmazonBaby,
    AmazonSports,
    InteractionDataset,
    TikTok,
    get_dataset,
)
from mmdiff.data.synthetic import make_synthetic
from mmdiff.data.noise import add_noise_interactions

from mmdiff.data.samplers import (
    TripletSampler,
    UserRowSampler,
    dense_rows,
    sample_negatives,
)

__all__ = [
    'TripletSampler',
    'UserRowSampler',
    'dense_rows',
    'sample_negatives',
    'EDGE_TYPE',
    'SPLITS',
    'add_modality',
    'describe',
    'edge_index_of',
    'edges_to_csr',
    'get_modalities',
    'interaction_csr',
    'make_interaction_data',
    'modality_names',
    'num_items',
    'num_users',
    'summary',
    'validate_features',
    'safe_load_npy',
    'safe_load_pickle',
    'detect_layout',
    'feature_files',
    'from_dataframe',
    'load_folder',
    'read_diffmm_folder',
    'read_mmrec_folder',
    'split_per_user',
    'InteractionDataset',
    'TikTok',
    'AmazonBaby',
    'AmazonSports',
    'get_dataset',
    'make_synthetic',
    'add_noise_interactions',
]
