"""On-device views of uint8 batches: the augmented x' (per-sample random) and the deterministic x̄.

Batches arrive as (B, C, H, W) uint8 (C in {1, 3}); every view converts to float in [0, 1] once, resizes to
``size`` itself and normalises with the dataset's mean/std. All views are parameter-free ``nn.Module``s that
run under ``torch.no_grad()`` on CPU or CUDA and are reproducible under ``torch.manual_seed``.
"""

from mvmr.data.views.evaluation import (
    EvalTransform,
    EvalView,
    MirroredView,
    TenCropView,
    build_eval_view,
    build_feature_view,
    build_ten_crop_view,
    build_test_view,
    eval_transform,
)
from mvmr.data.views.policies import (
    VIEW_POLICIES,
    CustomKnobs,
    LoaderCrops,
    TrainView,
    build_train_view,
    can_crop_in_loader,
    split_geometry,
    train_view_from_config,
)

__all__ = [
    "VIEW_POLICIES",
    "CustomKnobs",
    "LoaderCrops",
    "can_crop_in_loader",
    "split_geometry",
    "EvalTransform",
    "EvalView",
    "MirroredView",
    "TenCropView",
    "TrainView",
    "build_eval_view",
    "build_feature_view",
    "build_ten_crop_view",
    "build_test_view",
    "build_train_view",
    "eval_transform",
    "train_view_from_config",
]
