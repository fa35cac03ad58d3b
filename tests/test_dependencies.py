"""Every runtime dependency declared in pyproject.toml is used by the package, and the ranges admit the next minor
releases of the main libraries (the Makefile keeps the exact, tested pins)."""

import re

import tomllib
from conftest import ROOT

IMPORT_NAMES = {
    "pytorch-lightning": "pytorch_lightning",
    "pyyaml": "yaml",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "open_clip_torch": "open_clip",
}
USED_THROUGH = {"tensorboard": "TensorBoardLogger"}  # Lightning's logger writes with it


def declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"]


def test_every_runtime_dependency_is_imported_by_the_package():
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "mvmr").rglob("*.py"))
    for requirement in declared():
        name = re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0]
        if name in USED_THROUGH:
            assert USED_THROUGH[name] in source, f"{name} is declared but {USED_THROUGH[name]} is never used"
            continue
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {module}\b", source, re.M), f"{name} is declared but never imported"


def test_ranges_admit_the_next_minor_releases():
    ranges = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0]: r for r in declared()}
    for name, next_minor in (("torch", "2.15"), ("pytorch-lightning", "2.7"), ("kornia", "0.10")):
        upper = re.search(r"<\s*([0-9.]+)", ranges[name])
        assert upper is None or tuple(map(int, upper.group(1).split("."))) > tuple(map(int, next_minor.split("."))), (
            f"{ranges[name]} excludes {name} {next_minor}"
        )
