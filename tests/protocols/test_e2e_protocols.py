"""End to end: semi-supervised fine-tuning, distillation (mvmr and open_clip teachers) and VOC07, on tiny
real-format data, each reusing the tiny pretraining run of conftest.py."""

import json

import pytest
import torch
from conftest import ROOT, tiny_args
from fixtures_clip import write_tiny_open_clip
from fixtures_voc import write_voc

from mvmr.errors import CheckpointError, ConfigError

SEMI = str(ROOT / "configs" / "digits_semi_supervised.yaml")
VOC = str(ROOT / "configs" / "imagenet_voc.yaml")
CLIP_DIGITS = str(ROOT / "configs" / "digits_clip_self_supervised.yaml")


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


SEMI_TINY = (
    "epochs=2",
    "batch_size=32",
    "dataset.size=16",
    "dataset.to_rgb=true",
    "trainer.limit_train_batches=3",
    "trainer.progress_bar=false",
    "log_every=1",
    "fp16=false",
)  # 1x1 maps at 16 px: see conftest.TINY


def test_semi_supervised_loads_pretrained_backbone_trains_and_evaluates(pretrained_run, tmp_path, capsys):
    from mvmr.cli.semi import evaluate, train
    from mvmr.methods.semi_supervised import SemiSupervisedModule

    pre, _ = pretrained_run
    run = train(["--config", SEMI, "--path_ckpt", str(pre.best)] + sets(*SEMI_TINY, f"run_dir={tmp_path}", "name=semi"))
    out = capsys.readouterr().out
    assert "fine-tuned" in out and run.best.is_file() and run.last.is_file()
    assert "(130 labelled training images)" in out  # 10% of the 1,294 labelled digits, class-balanced
    res = evaluate(
        ["--config", SEMI, "--ckpt", str(run.best), "--no_progress"] + sets("dataset.size=16", "dataset.to_rgb=true")
    )
    assert 10 < res["top1"] <= 100 and res["top5"] >= res["top1"]
    # the fine-tuning started from the pretrained weights: a fresh module built from them holds them exactly
    from mvmr.config import SemiSupervisedConfig, load_config
    from mvmr.data import MVMRDataModule

    cfg = load_config(SEMI, list(SEMI_TINY), schema=SemiSupervisedConfig)
    dm = MVMRDataModule(cfg.dataset, 32, 0, seed=0)
    dm.setup("fit")
    module = SemiSupervisedModule.from_pretrained(cfg, dm.info, str(pre.best))
    state = torch.load(pre.best, weights_only=False)["state_dict"]
    assert torch.equal(module.backbone.conv1.weight, state["backbone.conv1.weight"])


def test_semi_supervised_refuses_a_checkpoint_of_another_encoder(pretrained_run, tmp_path):
    from mvmr.cli.semi import train

    pre, _ = pretrained_run
    with pytest.raises(CheckpointError, match=r"does not match the configured encoder: backbone\..* is"):
        train(
            ["--config", SEMI, "--path_ckpt", str(pre.best)]
            + sets(*SEMI_TINY, f"run_dir={tmp_path}", "encoder={backbone: resnet18, small_kernel: true}")
        )


def test_distillation_of_a_checkpoint_of_this_project(pretrained_run, tmp_path, capsys):
    from mvmr.cli.pretrain import distill

    pre, _ = pretrained_run
    teacher = json.dumps({"name": "teacher", "weight": 1.0, "params": {"kind": "mvmr", "pretrained": str(pre.best)}})
    run = distill(tiny_args(tmp_path, "distill", [f"representations=[{teacher}]"]))
    header = (run.path / "metrics.csv").read_text().splitlines()[0]
    assert "train/dcor/teacher" in header
    assert run.best.is_file()
    # the teacher's embeddings were computed once into the cache, not stored in the checkpoint
    state = torch.load(run.last, weights_only=False)["state_dict"]
    assert not any("teacher" in key for key in state)
    cached = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert any("teacher" in name for name in cached), cached


def test_distillation_refuses_a_config_without_teacher(tmp_path):
    from mvmr.cli.pretrain import distill

    with pytest.raises(ConfigError, match="teacher"):
        distill(tiny_args(tmp_path, "no_teacher"))


def test_distillation_of_an_open_clip_image_tower_from_a_local_file(tmp_path, voc_root):
    from mvmr.cli.pretrain import distill
    from mvmr.cli.voc import train

    name = "mvmr-e2e-tiny-vit"
    _, weights = write_tiny_open_clip(tmp_path, name)
    teacher = json.dumps(
        {
            "name": "teacher",
            "weight": 1.0,
            "params": {"kind": "open_clip", "model_name": name, "pretrained": str(weights)},
        }
    )
    run = distill(tiny_args(tmp_path, "clip", [f"representations=[{teacher}]", "epochs=1"]))
    assert "train/dcor/teacher" in (run.path / "metrics.csv").read_text().splitlines()[0]

    weights.unlink()  # the distilled student is used without its teacher
    from mvmr.cli.evaluate import evaluate

    for mode in (["--retrain", "--epochs", "2"], []):  # retrained head, then the online probe
        result = evaluate(tiny_args(tmp_path, "clip", ["epochs=1"]) + ["--ckpt", str(run.last), "--no_progress"] + mode)
        assert 0 <= result["knn_top1"] <= 100
    voc = train(
        [
            "--config_voc",
            VOC,
            "--config_self",
            str(ROOT / "configs" / "digits_clip_self_supervised.yaml"),
            "--path_self",
            str(run.last),
            "--no_progress",
        ]
        + sets(
            f"dataset.path={voc_root}",
            "dataset.size=16",
            "n_workers=0",
            "protocol=svm",
            f"run_dir={tmp_path}",
            "name=voc_distilled",
        )
    )
    assert (voc.checkpoints / "best.ckpt").is_file()


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, n_train=40, n_test=20, size=30)
    return root


@pytest.mark.parametrize("protocol", ["linear", "svm"])
def test_voc_trains_on_frozen_features_and_reports_ap(pretrained_run, voc_root, tmp_path, capsys, protocol):
    from mvmr.cli.voc import evaluate, train

    pre, pre_args = pretrained_run
    overrides = sets(f"dataset.path={voc_root}", "dataset.size=16", "n_workers=0", "epochs=20", f"protocol={protocol}")
    run = train(
        ["--config_voc", VOC, "--config_self", pre_args[1], "--path_self", str(pre.best), "--no_progress"]
        + overrides
        + sets(f"run_dir={tmp_path}", f"name=voc_{protocol}")
    )
    ckpt = run.checkpoints / "best.ckpt"
    assert ckpt.is_file()
    res = evaluate(["--config", VOC, "--ckpt", str(ckpt), "--no_progress"] + overrides)
    out = capsys.readouterr().out
    assert "VOC2007 test: 20 images" in out and "| aeroplane" in out and "| mAP" in out
    assert 0 < res["mAP"] <= 100


def test_voc_refuses_a_grayscale_encoder(tmp_path, voc_root):
    from mvmr.cli.pretrain import pretrain
    from mvmr.cli.voc import train

    grey = pretrain(tiny_args(tmp_path, "grey", ["dataset.to_rgb=false", "epochs=1", "trainer.limit_train_batches=1"]))
    with pytest.raises(CheckpointError, match="VOC07 is RGB"):
        train(
            [
                "--config_voc",
                VOC,
                "--config_self",
                str(ROOT / "configs" / "digits_self_supervised.yaml"),
                "--path_self",
                str(grey.last),
            ]
            + sets(f"dataset.path={voc_root}", f"run_dir={tmp_path}")
        )
