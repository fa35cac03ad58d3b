"""VOC2007 data (XML parsing, difficult handling, decoding, errors) and metrics (AP, mAP, per-class SVMs)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_voc import CLASSES, COLOURS, write_voc
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC
from torch.utils.data import DataLoader
from torchvision import transforms

from mvmr.data.voc import (
    VOC_CLASSES,
    VOCMultiLabel,
    available_splits,
    parse_annotation,
    resolve_eval_split,
    voc2007_dir,
)
from mvmr.errors import DataError
from mvmr.evaluation.voc import average_precision, fit_linear_svms, mean_average_precision


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("voc")
    return root, write_voc(root, n_train=40, n_test=20, size=30)


def assert_one_line_data_error(excinfo, *parts: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message


# ------------------------------------------------------------------------------------------ data
def test_classes_are_the_20_standard_names_in_order():
    assert VOC_CLASSES == CLASSES and len(set(VOC_CLASSES)) == 20


def test_parse_annotation_difficult_handling(tmp_path):
    xml = """<annotation><filename>x.jpg</filename>
      <object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin></bndbox></object>
      <object><name>cat</name><difficult>1</difficult></object>
      <object><name>person</name><difficult>1</difficult></object>
      <object><name> person </name><difficult>0</difficult></object>
      <object><name>horse</name></object>
      <object><name>dog</name><difficult>1</difficult></object>
      <object><name>cat</name><difficult>1</difficult></object>
    </annotation>"""
    (tmp_path / "a.xml").write_text(xml)
    positive, difficult_only = parse_annotation(tmp_path / "a.xml")
    names = list(CLASSES)
    assert sorted(np.array(names)[positive]) == ["dog", "horse", "person"]
    assert list(np.array(names)[difficult_only]) == ["cat"]
    assert positive.dtype == bool and positive.shape == difficult_only.shape == (20,)


@pytest.mark.parametrize(
    "xml, part",
    [
        ("<annotation><object><name>unicorn</name></object></annotation>", "unicorn"),
        ("<annotation><object>", "cannot read"),
    ],
)
def test_parse_annotation_errors_are_one_line(tmp_path, xml, part):
    (tmp_path / "bad.xml").write_text(xml)
    with pytest.raises(DataError) as excinfo:
        parse_annotation(tmp_path / "bad.xml")
    assert_one_line_data_error(excinfo, part, "bad.xml")


def test_dataset_labels_match_what_was_written(voc_root):
    root, truth = voc_root
    assert available_splits(root) == ["trainval", "train", "val", "test"]
    for split in ("trainval", "train", "val", "test"):
        ds = VOCMultiLabel(root, split, load_size=16)
        assert ds.ids == truth[split].ids and len(ds) == len(truth[split].ids)
        assert ds.targets.dtype == np.float32 and ds.targets.shape == (len(ds), 20)
        assert ds.difficult_only.dtype == bool and ds.difficult_only.shape == (len(ds), 20)
        np.testing.assert_array_equal(ds.targets, truth[split].targets)
        np.testing.assert_array_equal(ds.difficult_only, truth[split].difficult_only)
        assert not (ds.difficult_only & (ds.targets == 1)).any()
        if split != "trainval":
            assert (ds.targets.sum(0) > 0).all(), "every class positive in every split"
    ds = VOCMultiLabel(root, "trainval", 16)
    assert ds.difficult_only.any()
    # image j % 3 == 2 of a split also holds a difficult copy of its positive class j % 20: still positive
    assert ds.targets[2, 2] == 1 and not ds.difficult_only[2, 2]
    assert ds.difficult_only[1, 11] and ds.targets[1, 11] == 0


def test_items_are_resized_center_crops(voc_root):
    root, truth = voc_root
    ds = VOCMultiLabel(root, "test", load_size=16)
    reference = transforms.Compose([transforms.Resize(16), transforms.CenterCrop(16), transforms.PILToTensor()])
    for index in (0, 1):  # portrait, landscape
        image, target, i = ds[index]
        assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
        assert target.dtype == torch.float32 and target.shape == (20,) and i == index
        np.testing.assert_array_equal(target.numpy(), truth["test"].targets[index])
        path = voc2007_dir(root) / "JPEGImages" / f"{truth['test'].ids[index]}.jpg"
        with Image.open(path) as pil:
            assert (pil.height > pil.width) == (index == 0)
            expected = reference(pil.convert("RGB"))
        assert torch.equal(image, expected)
    images, targets, indices = next(iter(DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and targets.shape == (4, 20) and indices.tolist() == [0, 1, 2, 3]


def test_strip_colour_survives_decoding(voc_root):
    root, _ = voc_root
    image, _, _ = VOCMultiLabel(root, "train", load_size=16)[3]  # image 3: class 3 as the left strip
    assert np.abs(image[:, 8, 0].numpy().astype(int) - np.array(COLOURS[3])).max() < 12


def test_missing_data_errors_are_one_line(tmp_path):
    with pytest.raises(DataError) as excinfo:
        VOCMultiLabel(tmp_path / "nowhere", "trainval", 16)
    assert_one_line_data_error(
        excinfo,
        str(tmp_path / "nowhere" / "VOCdevkit" / "VOC2007"),
        "VOCtrainval_06-Nov-2007.tar",
        "VOCtest_06-Nov-2007.tar",
        "set dataset.path",
    )
    write_voc(tmp_path / "partial", n_train=4, n_test=0, with_test=False)
    with pytest.raises(DataError) as excinfo:
        VOCMultiLabel(tmp_path / "partial", "test", 16)
    assert_one_line_data_error(excinfo, "test.txt", "VOCtest_06-Nov-2007.tar")
    (voc2007_dir(tmp_path / "partial") / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataError) as excinfo:
        VOCMultiLabel(tmp_path / "partial", "train", 16)
    assert_one_line_data_error(excinfo, "000002.jpg", "dataset.path")
    with pytest.raises(ValueError):
        VOCMultiLabel(tmp_path / "partial", "training", 16)


def test_resolve_eval_split_falls_back_to_val(tmp_path, voc_root):
    assert resolve_eval_split(voc_root[0]) == ("test", None)
    write_voc(tmp_path, n_train=4, n_test=0, with_test=False)
    assert available_splits(tmp_path) == ["trainval", "train", "val"]
    split, note = resolve_eval_split(tmp_path)
    assert split == "val" and "VOC2007 test split not found under" in note and "reporting on 'val' instead" in note
    (voc2007_dir(tmp_path) / "ImageSets" / "Main" / "val.txt").unlink()
    with pytest.raises(DataError) as excinfo:
        resolve_eval_split(tmp_path)
    assert_one_line_data_error(excinfo, "test.txt", "set dataset.path")


# ------------------------------------------------------------------------------------------ AP
def reference_ap(scores: np.ndarray, targets: np.ndarray) -> tuple[Fraction, Fraction]:
    """(11-point AP, area AP) in exact fractions, devkit-style: precision/recall after every ranked sample."""
    order = np.argsort(-scores, kind="stable")
    n_pos, tp, points = int(targets.sum()), 0, []
    for rank, i in enumerate(order, start=1):
        tp += int(targets[i])
        points.append((Fraction(tp, n_pos), Fraction(tp, rank)))
    eleven = sum(max(p for r, p in points if r >= Fraction(t, 10)) for t in range(11)) / 11
    area, previous = Fraction(0), Fraction(0)
    for k, (r, _) in enumerate(points):
        area += (r - previous) * max(p for _, p in points[k:])
        previous = r
    return eleven, area


def test_perfect_ranking_is_one():
    scores, targets = np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 1, 0, 0])
    assert average_precision(scores, targets) == 1.0 and average_precision(scores, targets, method="area") == 1.0


def test_hand_worked_examples():
    # ranked labels 1 0 1 0 0 1: precision at the positives 1, 2/3, 1/2 at recall 1/3, 2/3, 1
    # 11-point: levels 0-0.3 -> 1, 0.4-0.6 -> 2/3, 0.7-1 -> 1/2: (4 + 2 + 2) / 11; area: (1 + 2/3 + 1/2) / 3
    scores, targets = np.array([6.0, 5, 4, 3, 2, 1]), np.array([1, 0, 1, 0, 0, 1])
    assert average_precision(scores, targets) == pytest.approx(8 / 11, abs=1e-12)
    assert average_precision(scores, targets, method="area") == pytest.approx(13 / 18, abs=1e-12)
    # ranked 0 1 1: interpolation lifts the first positive's precision 1/2 to 2/3 -> area 2/3, sklearn 7/12
    scores, targets = np.array([3.0, 2, 1]), np.array([0, 1, 1])
    assert average_precision(scores, targets) == pytest.approx(2 / 3, abs=1e-12)
    assert average_precision(scores, targets, method="area") == pytest.approx(2 / 3, abs=1e-12)
    assert average_precision_score(targets, scores) == pytest.approx(7 / 12, abs=1e-12)
    # recall exactly 0.3 (3 of 10 positives first) counts as reaching the 0.3 level: (4 * 1 + 7 * 1/2) / 11
    targets = np.r_[np.ones(3), np.zeros(10), np.ones(7)]
    assert average_precision(-np.arange(20.0), targets) == pytest.approx(7.5 / 11, abs=1e-12)


def test_matches_exact_devkit_reference_on_tie_free_scores():
    rng = np.random.default_rng(0)
    for n, rate in ((7, 0.5), (40, 0.2), (60, 0.5)):
        scores, targets = rng.normal(size=n), (rng.random(n) < rate).astype(int)
        targets[0] = 1
        eleven, area = reference_ap(scores, targets)
        assert average_precision(scores, targets) == pytest.approx(float(eleven), abs=1e-12)
        assert average_precision(scores, targets, method="area") == pytest.approx(float(area), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_area_is_sklearn_ap_with_interpolated_precision(ties):
    """area = sum dR * (running max of sklearn's precision) >= sklearn's non-interpolated AP."""
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(20):
        scores, targets = rng.normal(size=50), (rng.random(50) < 0.3).astype(int)
        targets[:2] = [1, 0]
        if ties:
            scores = np.round(scores, 1)
        precision, recall, _ = precision_recall_curve(targets, scores)
        interpolated_area = -np.sum(np.diff(recall) * np.maximum.accumulate(precision)[:-1])
        area, sk = average_precision(scores, targets, method="area"), average_precision_score(targets, scores)
        assert area == pytest.approx(interpolated_area, abs=1e-12)
        assert area >= sk - 1e-12
        gaps.append(area - sk)
    assert max(gaps) > 1e-3  # they differ in general


def test_ties_do_not_depend_on_order():
    rng = np.random.default_rng(2)
    scores, targets = rng.integers(0, 4, 30).astype(float), (rng.random(30) < 0.4).astype(int)
    for method in ("11point", "area"):
        orders = [rng.permutation(30) for _ in range(5)]
        values = [average_precision(scores[p], targets[p], method=method) for p in orders]
        assert max(values) - min(values) < 1e-12


def test_ignored_entries_are_ignored():
    rng = np.random.default_rng(3)
    scores, targets = rng.normal(size=40), (rng.random(40) < 0.3).astype(int)
    targets[0] = 1
    ignore = rng.random(40) < 0.25
    ignore[0] = False
    for method in ("11point", "area"):
        expected = average_precision(scores[~ignore], targets[~ignore], method=method)
        assert average_precision(scores, targets, ignore, method=method) == expected
        worst = np.where(ignore, 100.0, scores)  # ignored negatives ranked first would lower AP if counted
        assert average_precision(worst, targets * ~ignore, ignore, method=method) == expected
        assert average_precision(worst, targets * ~ignore, method=method) < expected


def test_mean_average_precision_per_class():
    rng = np.random.default_rng(4)
    scores, targets = rng.normal(size=(30, 4)), (rng.random((30, 4)) < 0.4).astype(np.float32)
    targets[0] = 1
    ignore = rng.random((30, 4)) < 0.1
    ignore[0] = False
    targets[:, 3] = 0  # no positive: AP undefined, left out of the mean
    mean_ap, per_class = mean_average_precision(scores, targets, ignore)
    expected = [average_precision(scores[:, k], targets[:, k], ignore[:, k]) for k in range(3)]
    assert per_class[:3] == expected and np.isnan(per_class[3])
    assert mean_ap == pytest.approx(np.mean(expected), abs=1e-12)
    with pytest.raises(ValueError):
        mean_average_precision(scores, targets[:, :3])


# ------------------------------------------------------------------------------------------ SVMs
def separable_features(n: int, n_classes: int, dim: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, dim) = labels @ prototypes + small noise; labels (n, n_classes), each class >= 6 positives."""
    labels = (rng.random((n, n_classes)) < 0.3).astype(np.float32)
    labels[np.arange(n), np.arange(n) % n_classes] = 1
    features = labels @ rng.normal(size=(n_classes, dim)) + 0.05 * rng.normal(size=(n, dim))
    return features.astype(np.float32), labels


def test_svms_reach_high_map_and_choose_costs_by_cv():
    rng = np.random.default_rng(5)
    x, y = separable_features(120, 4, 16, rng)
    ignore = (rng.random(y.shape) < 0.1) & (y == 0)
    grid = (0.01, 0.1, 1.0, 10.0)
    svms = fit_linear_svms(x[:80], y[:80], ignore[:80], costs=grid, folds=3, seed=0)
    scores = svms.decision_function(x[80:])
    assert scores.shape == (40, 4)
    mean_ap, _ = mean_average_precision(scores, y[80:])
    assert mean_ap > 0.95
    assert svms.cv_ap.shape == (4, 4) and list(svms.costs) == [grid[i] for i in svms.cv_ap.argmax(1)]
    # independent recomputation of class 0: sklearn's cross_val_score and a plain refit
    keep = ~ignore[:80, 0]
    xn, y0 = normalize(x[:80][keep].astype(np.float64)), y[:80, 0][keep].astype(int)
    cv = StratifiedKFold(3, shuffle=True, random_state=0)
    for j, cost in enumerate(grid):
        svc = LinearSVC(C=cost, class_weight={1: 2, 0: 1}, dual="auto", max_iter=10_000)
        expected = cross_val_score(svc, xn, y0, cv=cv, scoring="average_precision").mean()
        assert svms.cv_ap[0, j] == pytest.approx(expected, abs=1e-9)
    refit = LinearSVC(C=svms.costs[0], class_weight={1: 2, 0: 1}, dual="auto", max_iter=10_000).fit(xn, y0)
    np.testing.assert_allclose(scores[:, 0], refit.decision_function(normalize(x[80:].astype(np.float64))), atol=1e-6)


def test_svm_training_drops_ignored_entries():
    rng = np.random.default_rng(6)
    x, y = separable_features(60, 2, 8, rng)
    ignore = np.zeros(y.shape, bool)
    ignore[::5, 0] = True
    flipped = y.copy()
    flipped[::5, 0] = 1 - flipped[::5, 0]  # labels of ignored entries must not matter
    a = fit_linear_svms(x, y, ignore, costs=(0.1, 1.0))
    b = fit_linear_svms(x, flipped, ignore, costs=(0.1, 1.0))
    np.testing.assert_allclose(a.decision_function(x), b.decision_function(x), atol=1e-9)
    c = fit_linear_svms(x, y, costs=(0.1, 1.0))
    assert not np.allclose(a.decision_function(x)[:, 0], c.decision_function(x)[:, 0])


def test_svm_class_without_enough_positives_is_one_line_error():
    rng = np.random.default_rng(7)
    x, y = separable_features(30, 2, 8, rng)
    y[:, 1] = 0
    y[0, 1] = 1
    with pytest.raises(DataError) as excinfo:
        fit_linear_svms(x, y, costs=(1.0,), class_names=["cat", "dog"])
    assert_one_line_data_error(excinfo, "'dog'", "1 positive")
