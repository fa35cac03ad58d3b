"""The MV-MR loss: distance correlation and covariance, the objective, and global-batch gathering under DDP."""

from mvmr.losses.dcor import (
    centred_distances,
    correlation_from_centred,
    covariance_from_centred,
    distance_correlation,
    distance_covariance_sqr,
    double_centre,
    pairwise_distances,
    u_centre,
)
from mvmr.losses.distributed import gather_with_grad
from mvmr.losses.objective import MVMRObjective

__all__ = [
    "distance_correlation",
    "distance_covariance_sqr",
    "pairwise_distances",
    "double_centre",
    "u_centre",
    "centred_distances",
    "correlation_from_centred",
    "covariance_from_centred",
    "MVMRObjective",
    "gather_with_grad",
]
