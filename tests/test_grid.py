"""Grid runner: cells, resumability, failure isolation, combined tables; plots from runs."""

import os

import pandas as pd
import pytest

from flnorm import ExperimentConfig, plot_runs, run_grid
from flnorm.errors import ConfigError
from flnorm.runner.grid import grid_cells


def test_cells_are_variants_times_axes(tmp_path):
    base = ExperimentConfig(rounds=2)
    variants = [{"norm": "bn", "strategy": "fedbn"}, {"norm": "ln", "strategy": "fedavg"}]
    cells = grid_cells(base, {"partition": ["classes-1", "iid"], "seed": [0, 1]}, tmp_path, variants)
    assert len(cells) == 8
    assert cells[0].name == "norm=bn,strategy=fedbn,partition=classes-1,seed=0"
    assert cells[0].cfg.out == str(tmp_path.resolve() / cells[0].name)
    assert {c.cfg.strategy for c in cells} == {"fedbn", "fedavg"} and all(c.cfg.rounds == 2 for c in cells)


@pytest.mark.parametrize(
    "axes, variants, message",
    [
        ({"epochs": [1, 2]}, [{}], "unknown grid axis 'epochs'"),
        ({"norm": "bn"}, [{}], "non-empty list"),
        ({"norm": ["bn", "bn"]}, [{}], "repeat"),
        ({"norm": ["bn"]}, [{"norm": "ln"}], "both a grid axis"),
        ({"norm": ["bn", "foo"]}, [{}], "unknown norm 'foo'"),
    ],
)
def test_bad_grids_fail_before_anything_runs(tmp_path, axes, variants, message):
    with pytest.raises(ConfigError, match=message):
        grid_cells(ExperimentConfig(), axes, tmp_path, variants)
    with pytest.raises(ConfigError, match=message):
        run_grid(ExperimentConfig(), out=tmp_path / "grid", variants=variants, **axes)
    assert not (tmp_path / "grid").exists()  # nothing written


@pytest.mark.slow
def test_grid_runs_resumes_and_records_failures(tmp_path):
    base = ExperimentConfig(clients=2, rounds=2, local_steps=2, download=False, data_dir=str(tmp_path / "nodata"),
                            diagnostics=True)
    out = tmp_path / "grid"
    first = run_grid(base, out=out, parallel=2, dataset=["mnist5k", "cifar10"])
    assert list(first["status"]) == ["finished", "failed"]
    assert "could not load cifar10" in first.loc[1, "error"]
    assert (out / "dataset=cifar10" / "error.txt").exists()
    assert first.loc[0, "rounds"] == 2 and 0 <= first.loc[0, "test_accuracy"] <= 1
    rounds = pd.read_csv(out / "rounds.csv")
    assert list(rounds["round"]) == [1, 2] and set(rounds["dataset"]) == {"mnist5k"}
    assert rounds["feature_norm"].notna().all()

    finished = out / "dataset=mnist5k" / "metrics.csv"
    stamp = os.stat(finished).st_mtime_ns
    again = run_grid(base, out=out, dataset=["mnist5k", "cifar10"])  # resume, in process
    assert os.stat(finished).st_mtime_ns == stamp  # the finished cell was not re-run
    assert list(again["status"]) == ["finished", "failed"]
    assert again.loc[0, "test_accuracy"] == first.loc[0, "test_accuracy"]

    written = plot_runs([out], tmp_path / "plots")
    assert {p.name for p in written} == {"accuracy.png", "loss.png", "clients.png", "features.png"}
    assert all(p.stat().st_size > 10_000 for p in written)
