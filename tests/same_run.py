"""Two runs of one config that must agree to the bit, timings and placement aside."""

from pathlib import Path

import pandas as pd
import torch

TIMING = {"seconds", "elapsed", "timestamp"}
PLACEMENT_AND_TIME = ["fit_seconds", "eval_seconds", "ray_node"]


def assert_same_run(a: Path, b: Path) -> None:
    """metrics.csv, clients.csv and model.pt of run directories ``a`` and ``b`` are equal to the bit."""
    ma, mb = (pd.read_csv(run / "metrics.csv") for run in (a, b))
    columns = [c for c in ma.columns if c not in TIMING]
    pd.testing.assert_frame_equal(ma[columns], mb[columns], check_exact=True)
    clients = [pd.read_csv(run / "clients.csv").drop(columns=PLACEMENT_AND_TIME) for run in (a, b)]
    pd.testing.assert_frame_equal(*clients, check_exact=True)
    sa, sb = (torch.load(run / "model.pt") for run in (a, b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
