"""Your own images, end to end: a flat folder pretrains, is plotted and embedded; a labelled layout gets the probe
and the evaluations. The shipped configs/image_folder_self_supervised.yaml, shrunk in size only."""

import numpy as np
import pytest
from conftest import ROOT
from fixtures_data import write_image_folder

from mvmr.errors import DataError

CONFIG = str(ROOT / "configs" / "image_folder_self_supervised.yaml")
SMALL = [
    "dataset.size=32",
    "encoder.width=8",
    "encoder.out_dim=32-32",
    "batch_size=8",
    "epochs=2",
    "warmup_epochs=1",
    "n_workers=0",
    "fp16=false",
    "compile_view_ops=false",
    "trainer.progress_bar=false",
    "log_every=1",
    "eval.epochs=2",
    "hog.pool=4",
]


def sets(*items):
    return [arg for item in items for arg in ("--set", item)]


def flat_folder(root, n=24):
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(n):
        sub = root / ("a" if i % 2 else "b") / "nested"  # any nesting, no class meaning
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(50 + i, 60, 3), dtype=np.uint8)).save(sub / f"photo{i}.jpg")
    return root


def test_a_folder_without_labels_pretrains_plots_and_embeds(tmp_path, capsys):
    from mvmr.cli.embed import embed
    from mvmr.cli.evaluate import evaluate
    from mvmr.cli.plots import main as plot
    from mvmr.cli.pretrain import pretrain

    folder = flat_folder(tmp_path / "photos")
    args = ["--config", CONFIG] + sets(
        *SMALL,
        "representations=[{name: pixels, weight: 3.0, standardize: true}, "
        "{name: augmented_pixels, weight: 3.0, standardize: true}, "
        "{name: hog, weight: 6.0, standardize: true, params: {nbins: 9, pool: 4}}]",
        f"dataset.path={folder}",
        f"run_dir={tmp_path / 'runs'}",
    )
    run = pretrain(args)
    out = capsys.readouterr().out
    assert "has no labels: no online probe and no test report" in out and run.last.is_file()
    written = plot([str(run.path), "--tsne_points", "20", "--no_progress"])
    assert sorted(p.name for p in written) == ["run.png", "tsne.png"]
    npz = embed(
        [
            "--ckpt",
            str(run.last),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "emb.npz"),
            "--workers",
            "0",
            "--no_progress",
        ]
    )
    saved = np.load(npz)
    assert saved["features"].shape == (24, 8 * 8) and saved["features"].dtype == np.float32
    assert sorted(saved["paths"]) == sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg"))
    assert np.isfinite(saved["features"]).all() and saved["features"].std(0).max() > 0
    with pytest.raises(DataError, match="linear evaluation needs labelled train and test images"):
        evaluate(["--config", CONFIG, "--ckpt", str(run.last)] + args[2:])


def test_embeddings_are_the_backbone_features_of_x_bar(tmp_path):
    """embed writes, in file order, what the run's backbone gives for the run's x̄ of each file."""
    import torch
    from PIL import Image

    from mvmr.api import embed_images, load_encoder
    from mvmr.cli.pretrain import pretrain

    folder = flat_folder(tmp_path / "photos", n=8)
    run = pretrain(
        ["--config", CONFIG]
        + sets(
            *SMALL,
            "representations=[]",
            "epochs=1",
            "warmup_epochs=0",
            f"dataset.path={folder}",
            f"run_dir={tmp_path / 'runs'}",
        )
    )
    paths = sorted(folder.rglob("*.jpg"))
    features = embed_images(run.last, paths, progress=False)
    backbone, transform = load_encoder(run.last)
    with torch.no_grad():
        expected = backbone(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_a_labelled_layout_gets_the_probe_and_the_evaluations(tmp_path, capsys):
    from mvmr.cli.evaluate import evaluate
    from mvmr.cli.pretrain import pretrain

    write_image_folder(
        tmp_path / "labelled", classes=("cat", "dog"), per_class=8, splits=("train", "val"), ext="jpg", size=(60, 50)
    )
    args = ["--config", CONFIG] + sets(
        *SMALL,
        "representations=[{name: pixels, weight: 3.0, standardize: true}]",
        f"dataset.path={tmp_path / 'labelled'}",
        f"run_dir={tmp_path / 'runs'}",
    )
    run = pretrain(args)
    assert "online probe (test)" in capsys.readouterr().out
    results = evaluate(["--config", CONFIG, "--ckpt", str(run.last), "--retrain", "--no_progress"] + args[2:])
    assert {"linear_top1", "knn_top1"} <= set(results)
