"""benchmarks/ablation.py builds its rows from the config's representations without dropping any key."""
from conftest import load_benchmark
from mvmr.config import load_config


def test_rows_keep_weights_params_standardize_and_power():
    cfg = load_config(None, ["representations=[{name: hog, weight: 6.0, standardize: true, power: 0.25, params: {nbins: 9, pool: 4}}, "
                             "{name: pixels, weight: 3.0}]"])
    rows = dict(load_benchmark("ablation").representation_rows(cfg))
    for name, value in rows.items():  # every row is a valid `representations` override
        load_config(None, [f"representations={value}"])
    hog_only = load_config(None, [f"representations={rows['hog only']}"]).representations
    assert [(r.name, r.weight, r.standardize, r.power, r.params) for r in hog_only] == [
        ("hog", 6.0, True, 0.25, {"nbins": 9, "pool": 4})]
    signed = [v for k, v in rows.items() if k.startswith("all, authors' sign")]
    reps = load_config(None, [f"representations={signed[0]}"]).representations
    assert [(r.weight, r.standardize, r.power) for r in reps] == [(-6.0, True, 0.25), (-3.0, False, 1.0)]
    assert rows["no representation terms"] == "[]"
    assert not any("|" in name for name in rows)  # row names go into Markdown table cells
