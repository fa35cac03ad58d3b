"""Reading checkpoints safely (torch.load(weights_only=True), nothing else) and reading the authors' files.

The authors' layouts (vkinakh/mv-mr) are rebuilt here from their code's key names with real shapes:
src/model/resnet.py ResnetMultiProj (a torchvision ResNet with fc = Identity, the small_kernel stem a 3x3
stride-1 conv with the max-pool kept, a projector of Linear(bias=False) / BatchNorm1d / ReLU),
src/model/self_supervised_module.py (``_encoder``, ``online_finetuner``, ``_scatnet``, ``_hog``),
src/model/semi_supervised_module.py (``encoder``, ``classifier``) and scripts/save_*_weights.py (the .pth
exports).
"""

import dataclasses
import os
import pickle

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from conftest import ROOT
from torch import nn

from mvmr.api import load_encoder, load_frozen_backbone, load_online_probe
from mvmr.checkpoint import AtomicCheckpointIO, load_checkpoint, read_checkpoint, resolved_maxpool
from mvmr.checkpoint_formats import AUTHORS_MEAN, AUTHORS_STD, infer_encoder_config, read_weights
from mvmr.config import EncoderConfig, SemiSupervisedConfig, load_config
from mvmr.data import DatasetInfo
from mvmr.errors import CheckpointError

SELF_SUPERVISED = ("authors-lightning-self-supervised", "authors-export-self-supervised")
FINETUNED = ("authors-lightning-finetuned", "authors-export-finetuned")
N_CLASSES = 10
PROJECTOR = (32, 16)  # widths of the projector's two Linear layers


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm affine and running statistics (the zero-initialised residual BNs included), so that every
    weight and buffer changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def authors_nets(name: str, small_kernel: bool, seed: int = 0) -> dict:
    """Their ResnetMultiProj parts: backbone, projector, online_finetuner (probe) and a fine-tuned classifier."""
    torch.manual_seed(seed)
    backbone = getattr(torchvision.models, name)(weights=None, zero_init_residual=True)
    if small_kernel:
        backbone.conv1 = nn.Conv2d(3, backbone.conv1.out_channels, 3, 1, 1, bias=False)
    backbone.fc = nn.Identity()
    features = 2048 if name == "resnet50" else 512
    projector = nn.Sequential(
        nn.Linear(features, PROJECTOR[0], bias=False),
        nn.BatchNorm1d(PROJECTOR[0]),
        nn.ReLU(inplace=True),
        nn.Linear(PROJECTOR[0], PROJECTOR[1], bias=False),
    )
    return {
        "backbone": _randomise(backbone, seed),
        "projector": _randomise(projector, seed + 1),
        "probe": nn.Linear(features, N_CLASSES),
        "classifier": nn.Linear(features, N_CLASSES),
    }


def _prefixed(prefix: str, module: nn.Module) -> dict:
    return {prefix + k: v for k, v in module.state_dict().items()}


def lightning_file(state_dict: dict) -> dict:
    """A Lightning 1.5 checkpoint as their trainers wrote it (hparams set as self.hparams.batch_size / lr)."""
    key = "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max', 'every_n_train_steps': 0, 'every_n_epochs': 1}"
    return {
        "epoch": 99,
        "global_step": 12300,
        "pytorch-lightning_version": "1.5.10",
        "state_dict": state_dict,
        "hyper_parameters": {"batch_size": 256, "lr": "1e-4"},
        "callbacks": {
            key: {
                "monitor": "val/acc",
                "best_model_score": torch.tensor(0.71),
                "best_model_path": "/runs/x/best_epoch=98.ckpt",
                "dirpath": "/runs/x",
            }
        },
    }


def save_authors(fmt: str, nets: dict, path) -> str:
    """Write ``nets`` in the authors' layout ``fmt``; returns the path."""
    if fmt == "authors-lightning-self-supervised":  # SelfSupervisedModule / CLIPSelfSupervisedModule .ckpt
        state = {
            **_prefixed("_encoder.backbone.", nets["backbone"]),
            **_prefixed("_encoder.projector.", nets["projector"]),
            **_prefixed("online_finetuner.", nets["probe"]),
            "_hog.weight": torch.randn(9, 1, 8, 8),
            "_scatnet.tensor0": torch.randn(7, 7),
            "clip.conv1.weight": torch.randn(4, 3, 2, 2),
        }
        obj = lightning_file(state)
    elif fmt == "authors-lightning-finetuned":  # SemiSupervisedModule / VocLinearEvalModule .ckpt
        obj = lightning_file(
            {**_prefixed("encoder.", nets["backbone"]), **_prefixed("classifier.", nets["classifier"])}
        )
    elif fmt == "authors-export-self-supervised":  # scripts/save_self_weights.py, save_clip_weights.py
        obj = {
            "encoder": {**_prefixed("backbone.", nets["backbone"]), **_prefixed("projector.", nets["projector"])},
            "online_finetuner": nets["probe"].state_dict(),
        }
    else:  # scripts/save_semi_weights.py, save_voc_weights.py
        obj = {"encoder": nets["backbone"].state_dict(), "classifier": nets["classifier"].state_dict()}
    torch.save(obj, path)
    return str(path)


def same_function(ours: nn.Module, theirs: nn.Module, size: int = 64) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.double()(x), theirs.double().eval()(x))


@pytest.fixture(scope="module")
def resnet18_nets():
    return {small: authors_nets("resnet18", small) for small in (False, True)}


# ------------------------------------------------------------------ the authors' files
@pytest.mark.parametrize("small_kernel", [False, True])
@pytest.mark.parametrize("fmt", SELF_SUPERVISED + FINETUNED)
def test_authors_files_give_their_backbone_and_heads(fmt, small_kernel, resnet18_nets, tmp_path):
    nets = resnet18_nets[small_kernel]
    path = save_authors(fmt, nets, tmp_path / "authors.pt")
    backbone, transform = load_encoder(path)
    same_function(backbone, nets["backbone"])
    assert backbone.feature_dim == 512 and not backbone.training
    assert not any(p.requires_grad for p in backbone.parameters())
    # the assumed input: 224 px, ImageNet mean/std (their STL10 / ImageNet statistics)
    image = torch.randint(0, 256, (3, 240, 300), dtype=torch.uint8)
    assert transform(image).shape == (3, 224, 224)
    frozen = load_frozen_backbone(path)
    assert frozen.format == fmt and frozen.weights == "online" and frozen.image_size == 224
    assert (frozen.info.channels, frozen.info.mean, frozen.info.std, frozen.info.n_classes) == (
        3,
        AUTHORS_MEAN,
        AUTHORS_STD,
        N_CLASSES,
    )
    assert (
        frozen.encoder.backbone,
        frozen.encoder.small_kernel,
        frozen.encoder.maxpool,
        frozen.encoder.width,
        frozen.encoder.pool_grid,
    ) == ("resnet18", small_kernel, True, 64, 1)
    found = read_weights(read_checkpoint(path), path)
    probe = load_online_probe(path)
    if fmt in SELF_SUPERVISED:
        assert torch.equal(probe.weight, nets["probe"].weight) and torch.equal(probe.bias, nets["probe"].bias)
        assert found.classifier is None
        assert frozen.encoder.out_dim == "32-16" and frozen.encoder.projector_last_bias is False
        assert all(torch.equal(found.projector[k], v) for k, v in nets["projector"].state_dict().items())
    else:
        assert probe is None and found.projector is None
        assert torch.equal(found.classifier["weight"], nets["classifier"].weight)
        assert torch.equal(found.classifier["bias"], nets["classifier"].bias)


def test_authors_resnet50_is_recognised_and_gives_their_features(tmp_path):
    nets = authors_nets("resnet50", small_kernel=False, seed=3)
    path = save_authors("authors-lightning-self-supervised", nets, tmp_path / "r50.ckpt")
    frozen = load_frozen_backbone(path)
    assert frozen.encoder.backbone == "resnet50" and not frozen.encoder.small_kernel
    assert frozen.backbone.feature_dim == 2048
    same_function(frozen.backbone, nets["backbone"])


def test_infer_encoder_config_tells_the_resnets_apart_and_refuses_other_layouts():
    def state(name, **kw):
        net = getattr(torchvision.models, name)(weights=None, **kw)
        net.fc = nn.Identity()
        return net.state_dict()

    r18, r34, r50 = state("resnet18"), state("resnet34"), state("resnet50")
    assert [infer_encoder_config(s).backbone for s in (r18, r34, r50)] == ["resnet18", "resnet34", "resnet50"]
    assert infer_encoder_config(r18).small_kernel is False
    from mvmr.models import build_backbone

    narrow = infer_encoder_config(build_backbone("resnet34", width=32, small_kernel=True)[0].state_dict())
    assert (narrow.backbone, narrow.width, narrow.small_kernel, narrow.maxpool) == ("resnet34", 32, True, True)
    no_layer4 = {k: v for k, v in r18.items() if not k.startswith("layer4.")}  # e.g. their resnet8x4
    with pytest.raises(CheckpointError, match=r"BasicBlock blocks 2-2-2-0 per stage are none of resnet18") as err:
        infer_encoder_config(no_layer4)
    assert "\n" not in str(err.value) and "layer4" in str(err.value)
    with pytest.raises(CheckpointError, match=r"expected torchvision ResNet-18/34/50 weights \(conv1.weight"):
        infer_encoder_config({"stem.weight": torch.zeros(1)})


def test_a_mismatching_encoder_is_one_line(resnet18_nets, tmp_path):
    path = save_authors("authors-lightning-self-supervised", resnet18_nets[False], tmp_path / "r18.ckpt")
    with pytest.raises(
        CheckpointError,
        match=r"does not match the configured encoder: _encoder\.backbone\.layer1\.0"
        r"\.conv1\.weight is \(64, 64, 3, 3\) in the checkpoint, \(64, 64, 1, 1\)",
    ) as err:
        load_encoder(path, encoder=EncoderConfig(backbone="resnet50"))
    assert "\n" not in str(err.value)
    with pytest.raises(
        CheckpointError, match=r"_encoder\.backbone\.conv1\.weight is \(64, 3, 7, 7\) in the checkpoint"
    ):
        load_frozen_backbone(path, encoder=EncoderConfig(backbone="resnet18", small_kernel=True, maxpool=True))
    # a resnet34 file read as resnet18: every resnet18 weight is there with its shape, the extra blocks are not
    r34 = torchvision.models.resnet34(weights=None)
    r34.fc = nn.Identity()
    with pytest.raises(
        CheckpointError,
        match=r"holds backbone weight 'encoder/layer1\.2\.conv1\.weight' that the "
        r"configured encoder lacks",
    ):
        load_frozen_backbone(
            "r34.pth", checkpoint={"encoder": r34.state_dict()}, encoder=EncoderConfig(backbone="resnet18")
        )
    # the given architecture, info and size are used when they fit
    info = DatasetInfo(5, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    frozen = load_frozen_backbone(path, encoder=EncoderConfig(backbone="resnet18", width=64), info=info, image_size=96)
    assert frozen.info == info and frozen.image_size == 96
    same_function(frozen.backbone, resnet18_nets[False]["backbone"])


def test_unknown_layout_and_ema_on_an_authors_file_are_one_line(resnet18_nets, tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"model": resnet18_nets[False]["backbone"].state_dict()}, path)
    with pytest.raises(
        CheckpointError,
        match=r"has a layout mvmr does not know \(top-level keys \['model'\]\); "
        r"expected 'state_dict' with backbone\.\* \(mvmr\)",
    ) as err:
        load_encoder(path)
    assert "\n" not in str(err.value) and "_encoder.backbone.*" in str(err.value) and "conv1.weight" in str(err.value)
    with pytest.raises(CheckpointError, match=r"state_dict keys \['net.w'\]"):
        load_frozen_backbone("x.ckpt", checkpoint={"state_dict": {"net.w": torch.zeros(1)}})
    authors = save_authors("authors-export-finetuned", resnet18_nets[False], tmp_path / "semi.pth")
    with pytest.raises(
        CheckpointError, match="authors' code .*holds no moving-average weights; use weights=online or auto"
    ):
        load_encoder(authors, weights="ema")


def test_semi_supervised_and_mvmr_teacher_start_from_an_authors_file(resnet18_nets, tmp_path):
    from mvmr.methods.semi_supervised import SemiSupervisedModule
    from mvmr.representations.teacher import TEACHER_LOADERS

    nets = resnet18_nets[True]
    path = save_authors("authors-export-self-supervised", nets, tmp_path / "self.pth")
    cfg = load_config(
        ROOT / "configs" / "digits_semi_supervised.yaml", ["dataset.size=32"], schema=SemiSupervisedConfig
    )
    info = DatasetInfo(10, 3, (0.5,) * 3, (0.25,) * 3)
    module = SemiSupervisedModule.from_pretrained(cfg, info, path)  # no encoder section: inferred
    assert (module.encoder_cfg.backbone, module.encoder_cfg.small_kernel, module.encoder_cfg.maxpool) == (
        "resnet18",
        True,
        True,
    )
    same_function(module.backbone.eval(), nets["backbone"])
    cfg.encoder = EncoderConfig(backbone="resnet18")  # an encoder section: used, and checked
    with pytest.raises(CheckpointError, match=r"encoder/backbone\.conv1\.weight is \(64, 3, 3, 3\) in the checkpoint"):
        SemiSupervisedModule.from_pretrained(cfg, info, path)
    teacher = TEACHER_LOADERS.get("mvmr")(None, path, None, 48)
    assert (teacher.size, teacher.channels, teacher.dim) == ((48, 48), 3, 512)
    assert torch.allclose(teacher.mean.flatten(), torch.tensor(AUTHORS_MEAN))
    same_function(teacher.encoder, nets["backbone"])


# ------------------------------------------------------------------ safe loading
class RunsACommand:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_project_checkpoints_need_nothing_but_tensors_and_plain_types(pretrained_run):
    run, _ = pretrained_run
    for path in (run.best, run.last):  # with optimiser, scheduler, loops, callbacks and RNG states
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        ckpt = load_checkpoint(path)
        assert ckpt["mvmr_rng_state"]["numpy"][1].dtype == torch.int64  # NumPy's generator, as a tensor
    frozen = load_frozen_backbone(run.best)
    assert frozen.format == "mvmr"
    # the run's own settings are used: a given encoder / info / image size is ignored
    other = load_frozen_backbone(
        run.best, encoder=EncoderConfig(backbone="resnet50"), image_size=224, info=DatasetInfo(3, 1, (0.5,), (0.5,))
    )
    assert (other.encoder, other.info, other.image_size) == (frozen.encoder, frozen.info, frozen.image_size)
    # fine-tuning: an encoder section is used and checked, also for what no weight shape shows (the max-pool)
    from mvmr.methods.semi_supervised import SemiSupervisedModule

    cfg = load_config(
        ROOT / "configs" / "digits_semi_supervised.yaml", ["dataset.size=16"], schema=SemiSupervisedConfig
    )
    cfg.encoder = frozen.encoder
    module = SemiSupervisedModule.from_pretrained(cfg, frozen.info, str(run.best))
    assert torch.equal(module.backbone.conv1.weight, frozen.backbone.conv1.weight)
    cfg.encoder = dataclasses.replace(frozen.encoder, maxpool=not resolved_maxpool(frozen.encoder))
    with pytest.raises(CheckpointError, match=r"does not match the configured encoder: encoder\.maxpool is "):
        SemiSupervisedModule.from_pretrained(cfg, frozen.info, str(run.best))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_file_that_runs_code_is_refused_in_one_line_and_nothing_runs(writer, tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    if writer == "torch.save":
        torch.save(
            {"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "hyper_parameters": RunsACommand(marker)}, path
        )
    else:  # a plain pickle (a tensor pickled this way would itself be refused: torch.storage._load_from_bytes)
        with open(path, "wb") as f:
            pickle.dump({"state_dict": {"backbone.conv1.weight": [0.0]}, "hyper_parameters": RunsACommand(marker)}, f)
    blocked = f"'{os.system.__module__}.system'"
    trainer = pl.Trainer(
        accelerator="cpu",
        plugins=[AtomicCheckpointIO()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    readers = [
        read_checkpoint,
        load_checkpoint,
        load_encoder,
        load_online_probe,
        lambda p: AtomicCheckpointIO().load_checkpoint(p, weights_only=False),  # even when asked for unsafe
        trainer.strategy.load_checkpoint,
    ]  # Lightning's resume path (trainer.fit(ckpt_path=...))
    for read in readers:
        with pytest.raises(CheckpointError) as err:
            read(path)
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"'{path}' is not a checkpoint mvmr can load safely")
        assert blocked in message, message
    assert not marker.exists()
