"""PreciseBN in a real Ray simulation against centralized statistics (the other strategies' runs
are checked message by message in test_contract.py)."""

import numpy as np
import pytest
import torch

from bn_reference import layerwise_population_stats
from flnorm import ExperimentConfig, run_experiment
from flnorm.bn import bn_modules
from flnorm.data import load_dataset, load_partition
from flnorm.task import new_model

pytestmark = pytest.mark.slow


def _run(tmp_path, strategy, **changes):
    settings = {"partition": "classes-1", "clients": 2, "rounds": 2, "local_steps": 2, **changes}
    cfg = ExperimentConfig(norm="bn", strategy=strategy, out=str(tmp_path / strategy), **settings)
    return cfg, run_experiment(cfg)


def test_precisebn_installs_population_statistics_of_the_union(tmp_path):
    cfg, _ = _run(tmp_path, "precisebn", partition="dirichlet-0.5", clients=3, rounds=1)
    state = torch.load(tmp_path / "precisebn" / "model.pt")
    data = load_dataset(cfg.dataset)
    part = load_partition(cfg.dataset, cfg.data_dir, cfg.download, cfg.partition, cfg.clients, cfg.seed)
    union = data.train_x[torch.from_numpy(np.concatenate(part.train))]
    x = (union.float() / 255 - data.mean[0]) / data.std[0]
    model = new_model(cfg)
    model.load_state_dict(state)
    trained = {name: (bn.running_mean.double(), bn.running_var.double()) for name, bn in bn_modules(model).items()}
    reference = layerwise_population_stats(model, x)  # centralized, whole union
    for name, (mean, var) in reference.items():
        torch.testing.assert_close(trained[name][0], mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(trained[name][1], var, rtol=1e-5, atol=1e-6)
