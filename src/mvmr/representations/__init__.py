"""Non-learnable representations φ_k of the normalised view x̄ (one module per family).

Importing this package registers every family in ``REPRESENTATIONS``.
"""
from mvmr.representations.base import Representation
from mvmr.representations.registry import REPRESENTATIONS, build_representation, describe_representations
from mvmr.representations import color_histogram, dct, gabor, hog, local_std, pixels, scatnet  # noqa: F401  (registration)
from mvmr.representations import teacher  # noqa: F401  (registration; loads its network lazily)

__all__ = ["Representation", "REPRESENTATIONS", "build_representation", "describe_representations"]
