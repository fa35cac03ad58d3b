"""Every seed-named config runs end to end on a tiny tree in its dataset's real format (STL10 binary, ImageNet
folders, CIFAR pickles, VOC), overriding only sizes that do not change the code path (network width, projector
width, batch size, number of steps, the teacher's size), and its checkpoint is evaluated."""

import pytest
import torch
from conftest import ROOT
from fixtures_clip import write_tiny_open_clip
from fixtures_data import write_cifar100, write_image_folder, write_stl10
from fixtures_voc import write_voc

# sizes only: a width-8 ResNet keeps the config's block type, stem, max-pool and stride pattern
SMALL = [
    "encoder.width=8",
    "encoder.out_dim=32-32-32",
    "batch_size=8",
    "trainer.max_steps=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "n_workers=0",
    "fp16=false",
    "compile_view_ops=false",
    "trainer.progress_bar=false",
    "log_every=1",
    "eval.batch_size=16",
]
WNIDS = ("n01601694", "n01669191", "n01755581")


def IMAGENET_3(data) -> list[str]:
    """The three-class ImageNet tree through the authors' subset-file format."""
    return [
        f"dataset.classes_file={data / 'imagenet_3.txt'}",
        "dataset.n_classes=3",
        "dataset.val_fraction=0.2",
        "batch_size=4",
    ]


def config(name: str) -> str:
    return str(ROOT / "configs" / f"{name}.yaml")


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed_data")
    write_stl10(root / "stl10", n_train=8, n_test=4, n_unlabeled=8)
    write_cifar100(root / "cifar", n_train=20, n_test=8)
    write_image_folder(
        root / "imagenet", classes=WNIDS, per_class=3, splits=("train", "val"), ext="JPEG", size=(300, 240)
    )
    # a class subset in the authors' format (their data/imagenet_subsets/*.txt: "<wnid> <class name>")
    (root / "imagenet_3.txt").write_text("n01601694 Dipper\nn01669191 Box Turtle\nn01755581 Diamondback Snake")
    write_voc(root / "voc", n_train=20, n_test=10, size=40)
    return root


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(model name, weights file) of a tiny open_clip model standing in for ViT-B/16 (sizes only)."""
    name = "mvmr-seed-tiny-vit"
    _, weights = write_tiny_open_clip(tmp_path_factory.mktemp("tiny_clip"), name)
    return name, str(weights)


def pretrain_tiny(name: str, data, tmp_path, extra=(), distill: bool = False):
    from mvmr.cli.pretrain import distill as run_distill
    from mvmr.cli.pretrain import pretrain

    paths = {"stl10": data / "stl10", "imagenet": data / "imagenet", "cifar": data / "cifar"}
    dataset = next(key for key in paths if key in name)
    argv = ["--config", config(name)] + sets(
        *SMALL, f"dataset.path={paths[dataset]}", f"run_dir={tmp_path}", f"name={name}", *extra
    )
    return (run_distill if distill else pretrain)(argv), argv


def evaluate_both_protocols(argv, run):
    from mvmr.cli.evaluate import evaluate

    base = argv[2:]  # the same --set overrides as the run
    ours = evaluate(["--config", argv[1], "--ckpt", str(run.last), "--no_progress"] + base)
    theirs = evaluate(
        [
            "--config",
            argv[1],
            "--ckpt",
            str(run.last),
            "--no_progress",
            "--protocol",
            "authors",
            "--retrain",
            "--epochs",
            "1",
        ]
        + base
    )
    assert 0 <= ours["probe_top1"] <= 100 and 0 <= theirs["authors_retrain_top1"] <= 100
    return ours, theirs


@pytest.fixture(scope="module")
def stl10_run(data, tmp_path_factory):
    return pretrain_tiny("stl10_self_supervised", data, tmp_path_factory.mktemp("stl10_run"))


@pytest.mark.parametrize("name", ["stl10_self_supervised", "cifar20_self_supervised"])
def test_self_supervised_seed_config_trains_and_evaluates(name, data, tmp_path, stl10_run):
    run, argv = stl10_run if name == "stl10_self_supervised" else pretrain_tiny(name, data, tmp_path)
    header = (run.path / "metrics.csv").read_text().splitlines()[0]
    for term in ("dcor/pixels", "dcor/scatnet", "dcor/augmented_pixels", "dcor/hog", "dcor/local_std", "probe_loss"):
        assert f"train/{term}" in header, header
    evaluate_both_protocols(argv, run)


def as_authors_files(ckpt_path, folder):
    """A run's weights saved in the two layouts of the authors' code: their Lightning .ckpt
    (SelfSupervisedModule's names) and their exported .pth (scripts/save_self_weights.py)."""
    state = torch.load(ckpt_path, weights_only=True)["state_dict"]
    pick = lambda prefix: {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    encoder = {
        **{f"backbone.{k}": v for k, v in pick("backbone.").items()},
        **{f"projector.{k}": v for k, v in pick("projector.").items()},
    }
    probe = pick("probe.")
    lightning = {
        "state_dict": {
            **{f"_encoder.{k}": v for k, v in encoder.items()},
            **{f"online_finetuner.{k}": v for k, v in probe.items()},
            "_hog.weight": torch.zeros(2, 1, 3, 3),
        },
        "epoch": 0,
        "global_step": 2,
        "pytorch-lightning_version": "1.5.10",
        "hyper_parameters": {"batch_size": 256, "lr": 1e-4},
    }
    torch.save(lightning, folder / "their.ckpt")
    torch.save({"encoder": encoder, "online_finetuner": probe}, folder / "their.pth")
    return folder / "their.ckpt", folder / "their.pth"


def test_checkpoints_saved_by_the_authors_code_evaluate_like_ours(stl10_run, tmp_path):
    from mvmr.cli.evaluate import evaluate

    run, argv = stl10_run
    ours = evaluate(["--config", argv[1], "--ckpt", str(run.last), "--no_progress", "--protocol", "authors"] + argv[2:])
    for theirs in as_authors_files(run.last, tmp_path):
        got = evaluate(["-c", argv[1], "--ckpt", str(theirs), "--no_progress", "--protocol", "authors"] + argv[2:])
        assert got == ours


@pytest.mark.parametrize("name", ["stl10_clip_self_supervised", "cifar100_clip_self_supervised"])
def test_distillation_seed_config_trains_and_evaluates(name, data, tmp_path, tiny_clip):
    model, weights = tiny_clip
    run, argv = pretrain_tiny(
        name, data, tmp_path, [f"clip.model_name={model}", f"clip.pretrained={weights}"], distill=True
    )
    assert "train/dcor/teacher" in (run.path / "metrics.csv").read_text().splitlines()[0]
    evaluate_both_protocols(argv, run)


@pytest.fixture(scope="module")
def imagenet_run(data, tmp_path_factory):
    """A tiny run of the ImageNet seed config (224-px JPEG folders, accumulation 8, no cache)."""
    return pretrain_tiny("imagenet_self_supervised", data, tmp_path_factory.mktemp("imagenet_run"), IMAGENET_3(data))


def test_imagenet_seed_config_trains_and_evaluates(imagenet_run):
    run, argv = imagenet_run
    assert run.last.is_file()
    evaluate_both_protocols(argv, run)


def test_imagenet_clip_seed_config_trains(data, tmp_path, tiny_clip):
    model, weights = tiny_clip
    run, _ = pretrain_tiny(
        "imagenet_clip_self_supervised",
        data,
        tmp_path,
        [f"clip.model_name={model}", f"clip.pretrained={weights}", *IMAGENET_3(data)],
        distill=True,
    )
    assert run.last.is_file()


@pytest.mark.parametrize("source", ["mvmr", "authors"])
def test_imagenet_semi_supervised_seed_config_fine_tunes_and_evaluates(imagenet_run, data, tmp_path, source):
    from mvmr.cli.semi import evaluate, train

    pre, _ = imagenet_run
    start = pre.last if source == "mvmr" else as_authors_files(pre.last, tmp_path)[1]
    overrides = sets(
        "encoder.width=8",
        "encoder.out_dim=32-32-32",
        "num_features=256",
        "batch_size=4",
        "epochs=1",
        "trainer.limit_train_batches=2",
        "n_workers=0",
        "fp16=false",
        "trainer.progress_bar=false",
        "dataset.percentage=50",
        f"dataset.path={data / 'imagenet'}",
        *IMAGENET_3(data),
    )
    run = train(
        [
            "--config",
            config("imagenet_semi_supervised"),
            "--path_ckpt",
            str(start),
            "--set",
            f"run_dir={tmp_path}",
            "--set",
            "name=semi",
        ]
        + overrides
    )
    result = evaluate(
        ["--config", config("imagenet_semi_supervised"), "--ckpt", str(run.last), "--no_progress"] + overrides
    )
    assert 0 <= result["top1"] <= 100


@pytest.mark.parametrize("source", ["mvmr", "authors"])
def test_imagenet_voc_seed_config_trains_and_evaluates(imagenet_run, data, tmp_path, source):
    from mvmr.cli.voc import evaluate, train

    pre, _ = imagenet_run
    start = pre.last if source == "mvmr" else as_authors_files(pre.last, tmp_path)[0]
    overrides = sets(
        f"dataset.path={data / 'voc'}",
        "n_workers=0",
        "batch_size=8",
        "epochs=3",
        "encoder.width=8",
        "encoder.out_dim=32-32-32",
    )
    run = train(
        ["-c", config("imagenet_voc"), "-p", str(start), "--no_progress", "--set", f"run_dir={tmp_path}"] + overrides
    )
    result = evaluate(
        ["--config", config("imagenet_voc"), "--ckpt", str(run.checkpoints / "best.ckpt"), "--no_progress"] + overrides
    )
    assert 0 <= result["mAP"] <= 100
