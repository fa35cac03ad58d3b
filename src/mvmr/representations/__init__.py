"""Non-learnable representations φ_k of the normalised view x̄ (one module per family).

Importing this package imports each of its modules, which registers every family in
``REPRESENTATIONS``: a new family is one new file with ``@register_representation``.
"""

from mvmr.registry import import_submodules
from mvmr.representations.base import Representation
from mvmr.representations.registry import REPRESENTATIONS, build_representation, describe_representations

import_submodules(__name__, __path__)  # every module registers its families (the teacher loads its network lazily)

__all__ = ["Representation", "REPRESENTATIONS", "build_representation", "describe_representations"]
