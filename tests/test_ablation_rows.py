"""benchmarks/ablation.py builds its rows from the config's representations without dropping any key."""
import importlib.util
from pathlib import Path

from mvmr.config import load_config


def _ablation():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_keep_weights_params_and_standardize():
    cfg = load_config(None, ["representations=[{name: hog, weight: 6.0, standardize: true, params: {nbins: 9, pool: 4}}, "
                             "{name: pixels, weight: 3.0}]"])
    rows = dict(_ablation().representation_rows(cfg))
    for name, value in rows.items():  # every row is a valid `representations` override
        load_config(None, [f"representations={value}"])
    hog_only = load_config(None, [f"representations={rows['hog only']}"]).representations
    assert [(r.name, r.weight, r.standardize, r.params) for r in hog_only] == [("hog", 6.0, True, {"nbins": 9, "pool": 4})]
    signed = [v for k, v in rows.items() if k.startswith("all, authors' sign")]
    reps = load_config(None, [f"representations={signed[0]}"]).representations
    assert [(r.weight, r.standardize) for r in reps] == [(-6.0, True), (-3.0, False)]
    assert rows["no representation terms"] == "[]"
