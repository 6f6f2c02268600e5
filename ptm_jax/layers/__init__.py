"""Building blocks shared by every model family: masks, attention, positions, MLPs, norms."""
from ptm_jax.layers import attention, blocks, embeddings, masks, mlp, norms, positions

__all__ = ['attention', 'blocks', 'embeddings', 'masks', 'mlp', 'norms', 'positions']
