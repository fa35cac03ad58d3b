"""Encoder stems, projector shapes, optimiser schedules."""

import math

import pytest
import torch
import torchvision

from mvmr.errors import ConfigError
from mvmr.methods.optim import LARS, SCHEDULES, ScheduleLengths
from mvmr.models import build_backbone, build_projector, parse_widths


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet50", 2048)])
def test_backbone_feature_dim(name, dim):
    net, d = build_backbone(name, in_channels=1, small_kernel=True)
    assert d == dim
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, dim)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)


def test_standard_stem_keeps_maxpool():
    net, _ = build_backbone("resnet18")
    assert net.conv1.kernel_size == (7, 7) and isinstance(net.maxpool, torch.nn.MaxPool2d)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_trunk_is_torchvision_resnet_at_width_64(name):
    """Same parameter names and shapes as torchvision's model, and the same function once given its weights."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    reference.fc = torch.nn.Identity()
    ours, dim = build_backbone(name, small_map_matmul=False)  # bit-exact (tests/models/test_small_map_conv.py: with it)
    theirs = reference.state_dict()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    ours.load_state_dict(theirs)
    ours.eval(), reference.eval()
    x = torch.randn(2, 3, 64, 64)
    expected = reference(x)
    assert dim == expected.shape[1]
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=0)


def test_trunk_initialisation_and_width():
    net, dim = build_backbone("resnet18", in_channels=1, small_kernel=True, maxpool=True, width=32)
    assert dim == 256 and net(torch.randn(2, 1, 28, 28)).shape == (2, 256)
    assert isinstance(net.maxpool, torch.nn.MaxPool2d) and net.conv1.out_channels == 32
    assert torch.count_nonzero(net.layer1[0].bn2.weight) == 0  # zero-init residual: each block starts as identity
    assert torch.all(net.bn1.weight == 1)
    std = net.layer2[0].conv1.weight.std().item()  # kaiming normal, fan_out: std = sqrt(2 / (64 * 3 * 3))
    assert abs(std - (2 / (64 * 9)) ** 0.5) < 0.1 * std
    full = sum(p.numel() for p in build_backbone("resnet18", in_channels=1, small_kernel=True)[0].parameters())
    quarter = sum(p.numel() for p in net.parameters())
    assert 0.24 < quarter / full < 0.26  # weights scale with width squared


def test_projector_layout():
    proj = build_projector(512, "64-64-32")
    kinds = [type(m).__name__ for m in proj]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert proj(torch.randn(4, 512)).shape == (4, 32)
    assert parse_widths("8192-8192-8192") == [8192] * 3
    with pytest.raises(ConfigError):
        parse_widths("0-3")


def test_warmup_cosine_schedule_values():
    f = SCHEDULES.get("warmup_cosine")(ScheduleLengths(total=110, warmup=10))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    mid = 10 + 50
    assert f(mid) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(1e-3)


def test_multistep_schedule():
    f = SCHEDULES.get("multistep")(ScheduleLengths(total=100, warmup=0, milestones=(10, 20)))
    assert (f(9), f(10), f(25)) == (1.0, pytest.approx(0.1), pytest.approx(0.01))


def test_lars_trust_ratio_step():
    p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    p.grad = torch.tensor([0.6, 0.8])
    opt = LARS([p], lr=1.0, momentum=0.0, weight_decay=0.0, eta=0.1)
    opt.step()
    # ratio = 0.1 * ||w|| / ||g|| = 0.1 * 5 / 1 = 0.5
    assert torch.allclose(p.detach(), torch.tensor([3.0 - 0.3, 4.0 - 0.4]))


def test_compile_option_compiles_in_place_and_keeps_checkpoint_keys():
    from mvmr.config import load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    eager = MVMRPretrainModule(load_config(None, ["encoder.backbone=resnet18", "encoder.out_dim=32-32"]), info)
    compiled = MVMRPretrainModule(
        load_config(None, ["encoder.backbone=resnet18", "encoder.out_dim=32-32", "compile=true"]), info
    )
    assert eager.backbone._compiled_call_impl is None
    assert compiled.backbone._compiled_call_impl is not None  # torch.compile'd forward (compiled on first call)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no '_orig_mod.' prefixes


def test_training_step_draws_x_prime_and_the_augmented_copy_in_one_call():
    """augmented_pixels gets the second half of one batched train-view call: an independent copy, not x'."""
    from mvmr.config import load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    cfg = load_config(
        None,
        [
            "encoder.backbone=resnet18",
            "encoder.out_dim=32-32",
            "dataset.size=16",
            "representations=[{name: augmented_pixels, weight: 1.0}, {name: pixels, weight: 1.0}]",
            "probe.enabled=false",
        ],
    )
    module = MVMRPretrainModule(cfg, info)
    module.log = module.log_dict = lambda *a, **k: None
    calls, seen = [], {}

    class RecordingView(torch.nn.Module):
        def __init__(self, view):
            super().__init__()
            self.view = view

        def forward(self, images):
            calls.append(images.shape[0])
            return self.view(images)

    def recording_reps(x_bar, index, augmented=None):
        seen.update(augmented or {})
        return compute(x_bar, index, augmented)

    compute = module.compute_representations
    module.train_view, module.compute_representations = RecordingView(module.train_view), recording_reps
    images = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    module.training_step((images, torch.full((6,), -1), torch.arange(6)), 0)
    assert calls == [12]  # one call for x' and the copy
    ((key, copy),) = seen.items()
    assert key.startswith("augmented_pixels") and copy.shape == (6, 1, 16, 16)
    reps = compute(module.eval_view(images), torch.arange(6), {key: copy})
    torch.testing.assert_close(reps[key], copy.reshape(6, -1))


# ------------------------------------------------------------------ bf16 on 1x1 maps
def test_strided_convs_on_single_pixels_finds_layer4_at_16px():
    from mvmr.models import build_backbone
    from mvmr.models.encoder import strided_convs_on_single_pixels

    backbone, _ = build_backbone("resnet18", in_channels=3, small_map_matmul=False)
    backbone.train()
    assert strided_convs_on_single_pixels(backbone, 3, 16) == [
        "layer4.0.conv1"
    ]  # 16 -> 4 after the stem: 1x1 at layer4
    assert strided_convs_on_single_pixels(backbone, 3, 32) == []  # 2x2 there
    assert backbone.training  # mode restored
    small, _ = build_backbone("resnet18", in_channels=3, small_kernel=True, small_map_matmul=False)
    assert strided_convs_on_single_pixels(small, 3, 16) == []
    as_matmul, _ = build_backbone("resnet18", in_channels=3)  # that layer runs as a matrix product (right in bf16)
    assert strided_convs_on_single_pixels(as_matmul, 3, 16) == []


def test_bf16_on_cpu_with_single_pixel_strided_conv_is_a_config_error():
    from mvmr.errors import ConfigError
    from mvmr.hardware import check_precision_fits_model
    from mvmr.models import build_backbone

    backbone, _ = build_backbone("resnet18", in_channels=1, small_map_matmul=False)
    with pytest.raises(ConfigError, match=r"dataset.size=16 .*'layer4.0.conv1'.*small_map_matmul=true.*fp16=false"):
        check_precision_fits_model(backbone, 1, 16, "bf16-mixed", "cpu")
    check_precision_fits_model(backbone, 1, 16, "32-true", "cpu")  # float32 is right
    check_precision_fits_model(backbone, 1, 16, "bf16-mixed", "gpu")  # not the CPU kernel
    check_precision_fits_model(backbone, 1, 32, "bf16-mixed", "cpu")
    as_matmul, _ = build_backbone("resnet18", in_channels=1)  # the default: that layer is a matrix product
    check_precision_fits_model(as_matmul, 1, 16, "bf16-mixed", "cpu")


def test_representation_standardize_and_power_options_reach_the_objective_by_key():
    from mvmr.config import load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    cfg = load_config(
        None,
        [
            "encoder.backbone=resnet18",
            "encoder.out_dim=32-32",
            "dataset.size=16",
            "representations=[{name: pixels, weight: 1.0, standardize: true}, "
            "{name: pixels, weight: 1.0, power: 0.5}, {name: local_std, weight: 1.0, standardize: true}]",
        ],
    )
    module = MVMRPretrainModule(cfg, info)
    keys = list(module.objective.representation_weights)
    assert module.objective.standardized == {keys[0], keys[2]}
    assert keys[1] not in module.objective.standardized
    assert module.objective.powers == {keys[1]: 0.5}  # power 1 (the default) is no transform


def test_channels_last_config_stores_the_backbone_weights_channels_last():
    """Only channels_last inputs with default-layout weights make oneDNN reorder every weight on every call."""
    from mvmr.config import load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    for enabled in (True, False):
        module = MVMRPretrainModule(
            load_config(
                None, ["encoder.backbone=resnet18", "encoder.out_dim=32-32", f"channels_last={str(enabled).lower()}"]
            ),
            info,
        )
        weight = module.backbone.layer1[0].conv1.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) is enabled
        assert weight.is_contiguous() is not enabled


def test_semi_supervised_module_stores_the_backbone_weights_channels_last():
    from mvmr.config import EncoderConfig, SemiSupervisedConfig, load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.semi_supervised import SemiSupervisedModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    module = SemiSupervisedModule(
        load_config(None, [], schema=SemiSupervisedConfig), info, EncoderConfig(backbone="resnet18"), 10
    )
    assert module.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_pool_grid_flattens_the_last_map_pooled_to_a_grid():
    from mvmr.models import build_backbone

    torch.manual_seed(0)
    x = torch.randn(3, 1, 28, 28)
    for grid, expected_dim in [(1, 256), (2, 1024)]:
        net, dim = build_backbone("resnet18", in_channels=1, small_kernel=True, maxpool=True, width=32, pool_grid=grid)
        net.eval()
        with torch.no_grad():
            last = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
            assert last.shape[-2:] == (2, 2)  # 28 -> 28 (stem) -> 14 (max-pool) -> 14, 7, 4, 2
            # grid 2 on a 2x2 map is the map itself, flattened channel-major; grid 1 the mean over it
            expected = last.flatten(1) if grid == 2 else last.mean(dim=(2, 3))
            assert dim == expected_dim == net(x).shape[1]
            torch.testing.assert_close(net(x), expected)


def test_pool_grid_survives_a_checkpoint_round_trip(tmp_path):
    from mvmr.api import load_frozen_backbone
    from mvmr.config import load_config
    from mvmr.data import DatasetInfo
    from mvmr.methods.pretrain import MVMRPretrainModule

    info = DatasetInfo(n_classes=10, channels=1, mean=(0.5,), std=(0.25,))
    cfg = load_config(
        None,
        [
            "encoder.backbone=resnet18",
            "encoder.width=16",
            "encoder.out_dim=32-32",
            "encoder.small_kernel=true",
            "encoder.maxpool=true",
            "encoder.pool_grid=2",
            "dataset.size=28",
        ],
    )
    module = MVMRPretrainModule(cfg, info).eval()
    assert module.feature_dim == 4 * 128 and module.projector[0].in_features == 4 * 128
    path = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    frozen = load_frozen_backbone(path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(frozen.backbone(x), module(x))
    assert frozen.backbone.feature_dim == 512


@pytest.mark.parametrize("small_kernel, maxpool", [(True, True), (True, None), (False, None), (False, False)])
@pytest.mark.parametrize("size", [8, 16, 28, 32, 33, 96])
def test_last_map_side_matches_a_forward_pass(size, small_kernel, maxpool):
    from mvmr.config import last_map_side
    from mvmr.models import build_backbone

    net, _ = build_backbone("resnet18", in_channels=1, small_kernel=small_kernel, maxpool=maxpool, width=8)
    net.eval()
    with torch.no_grad():
        x = net.maxpool(net.relu(net.bn1(net.conv1(torch.zeros(1, 1, size, size)))))
        last = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    assert last.shape[-1] == last.shape[-2] == last_map_side(size, small_kernel, maxpool)


def test_pool_grid_larger_than_the_last_map_is_a_config_error():
    from mvmr.config import load_config
    from mvmr.errors import ConfigError

    base = ["dataset.size=28", "encoder.small_kernel=true", "encoder.maxpool=true"]
    load_config(None, base + ["encoder.pool_grid=2"])  # 2x2 last map: fine
    with pytest.raises(ConfigError, match=r"encoder.pool_grid=3 is larger than the 2x2 last feature map.*<= 2"):
        load_config(None, base + ["encoder.pool_grid=3"])


def _reference_step(name, w, g, state, lr, wd, momentum, t, betas=(0.9, 0.999), eps=1e-8):
    """One float64 update of torch's documented Adam (L2), AdamW (decoupled) or SGD (momentum) formulas."""
    if name == "sgd":
        d = g + wd * w
        state["buf"] = d if t == 1 else momentum * state["buf"] + d
        return w - lr * state["buf"]
    if name == "adam":
        g = g + wd * w
    else:
        w = w * (1 - lr * wd)
    state["m"] = betas[0] * state.get("m", 0 * w) + (1 - betas[0]) * g
    state["v"] = betas[1] * state.get("v", 0 * w) + (1 - betas[1]) * g * g
    m_hat, v_hat = state["m"] / (1 - betas[0] ** t), state["v"] / (1 - betas[1] ** t)
    return w - lr * m_hat / (v_hat.sqrt() + eps)


def optimiser_cfg(**overrides):
    """The config keys build_optimizer reads: a multistep schedule without milestones (a constant rate)."""
    from types import SimpleNamespace

    base = dict(
        optimizer="adam",
        wd=0.05,
        momentum=0.9,
        warmup_epochs=0,
        milestones=[],
        scheduler="multistep",
        schedule_epoch="run",
        epochs=10,
        min_lr=None,
        lr=0.01,
        accumulate_grad_batches=1,
        gradient_clip_val=None,
    )
    return SimpleNamespace(**{**base, **overrides})


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_built_optimiser_is_fused_on_cpu_and_follows_the_float64_formula(name):

    from mvmr.methods.optim import build_optimizer

    torch.manual_seed(0)
    w0 = torch.randn(7, 5, dtype=torch.float64)
    p = torch.nn.Parameter(w0.float().clone())
    cfg = optimiser_cfg(optimizer=name)
    opt = build_optimizer(cfg, [{"params": [p], "weight_decay": 0.05}], 0.01, 100, 10)["optimizer"]
    assert opt.defaults["fused"] is True and all(group["fused"] for group in opt.param_groups)
    w, state = w0.clone(), {}
    for t in range(1, 6):
        g = torch.randn(7, 5, dtype=torch.float64)
        p.grad = g.float()
        opt.step()
        w = _reference_step(name, w, g, state, 0.01, 0.05, 0.9, t)
    assert torch.allclose(p.detach().double(), w, atol=1e-6), (p.detach().double() - w).abs().max()


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
@pytest.mark.parametrize("clip", [None, 1.0])
def test_no_fused_optimiser_where_lightning_must_unscale_before_clipping(precision, clip):
    """Under 16-mixed Lightning unscales the gradients before clipping them and refuses an optimiser that unscales
    inside its own step (a fused one) at the first step; everywhere else the fused kernels stay."""

    from pytorch_lightning.plugins.precision.amp import _optimizer_handles_unscaling

    from mvmr.methods.optim import build_optimizer

    cfg = optimiser_cfg(optimizer="adamw", gradient_clip_val=clip)
    params = [{"params": [torch.nn.Parameter(torch.zeros(3))]}]
    opt = build_optimizer(cfg, params, 0.01, 100, 10, precision=precision)["optimizer"]
    refused_by_lightning = clip is not None and precision == "16-mixed"
    assert _optimizer_handles_unscaling(opt) is not refused_by_lightning


def test_fused_kernels_only_where_the_device_has_them():
    from mvmr.methods.optim import fused_supported

    assert fused_supported([{"params": [torch.nn.Parameter(torch.zeros(3))]}])
    assert not fused_supported([{"params": [torch.nn.Parameter(torch.zeros(3, device="meta"))]}])
    assert not fused_supported([{"params": []}])


@pytest.mark.parametrize("compile_view_ops", [True, False])
def test_both_trainers_build_x_prime_from_the_config(compile_view_ops):
    """Pretraining and fine-tuning modules get the config's policy, crop range and compile_view_ops in their x'."""
    from mvmr.config import EncoderConfig, SemiSupervisedConfig, load_config
    from mvmr.data import DatasetInfo
    from mvmr.data.views.geometric import ResizedCropFlip
    from mvmr.data.views.photometric import ColourJitter
    from mvmr.methods.pretrain import MVMRPretrainModule
    from mvmr.methods.semi_supervised import SemiSupervisedModule

    info = DatasetInfo(n_classes=10, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    overrides = [
        "encoder.backbone=resnet18",
        "encoder.out_dim=32-32",
        "dataset.size=32",
        "dataset.aug_policy=custom",
        "dataset.crop_scale=[0.3,0.4]",
        f"compile_view_ops={str(compile_view_ops).lower()}",
    ]
    modules = [
        MVMRPretrainModule(load_config(None, overrides + ["representations=[]"]), info),
        SemiSupervisedModule(
            load_config(None, overrides[2:], schema=SemiSupervisedConfig), info, EncoderConfig(backbone="resnet18"), 10
        ),
    ]
    for module in modules:
        jitters = [m for m in module.train_view.modules() if isinstance(m, ColourJitter)]
        crops = [m for m in module.train_view.modules() if isinstance(m, ResizedCropFlip)]
        assert [j.compiled for j in jitters] == [compile_view_ops]
        assert [c.scale for c in crops] == [(0.3, 0.4)]
