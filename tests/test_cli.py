"""The ``flnorm run`` command: bad input fails at once, with the valid choices."""

import subprocess
import sys
import time

import pytest

from flnorm.cli import main
from flnorm.config import ExperimentConfig
from flnorm.errors import ConfigError


def _flnorm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flnorm.cli", "run", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--norm", "foo"], "unknown norm 'foo'; valid choices: none, bn, gn, ln, in, fn"),
        (["--partition", "classes-0"], "at least 1 class"),
        (["--clients", "5000"], "5000 clients but only 4000 training samples"),
        (["--model", "vgg"], "valid choices: cnn, resnet18, mlp"),
        (["--strategy", "fedsgd"], "valid choices: fedavg, fedavg-pooled, fedbn, silobn, fixbn, precisebn, fedprox, fedadam, fedyogi"),
        (["--bn-eval", "precise"], "bn-eval precise needs --strategy precisebn"),
        (["--dataset", "imagenet"], "valid choices: mnist5k, mnist, fmnist, cifar10, cifar100"),
        (["--rounds", "0"], "rounds must be a positive integer"),
        (["--num-gpus", "0.5"], "no CUDA device is visible"),
    ],
)
def test_bad_input_fails_fast_with_clear_message(args, message, tmp_path):
    start = time.perf_counter()
    proc = _flnorm(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_existing_run_directory_is_not_overwritten(tmp_path):
    (tmp_path / "metrics.csv").write_text("round\n1\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert (tmp_path / "metrics.csv").read_text() == "round\n1\n"


def test_config_round_trips_through_flower_run_config():
    cfg = ExperimentConfig(norm="gn+fn", gn_groups=4, partition="dirichlet-0.1", lr=0.05, bias=True)
    flat = cfg.to_flat()
    assert flat["local-steps"] == 10 and flat["gn-groups"] == 4
    assert ExperimentConfig.from_flat(flat) == cfg
    assert ExperimentConfig.from_flat({"bias": "false", "clients": 3.0}).clients == 3
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        ExperimentConfig.from_flat({"epochs": 3})
    with pytest.raises(ConfigError, match="clients must be an integer"):
        ExperimentConfig.from_flat({"clients": 2.5})


def test_pyproject_run_config_matches_cli_defaults():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert ExperimentConfig.from_flat(app_config) == ExperimentConfig()
    assert set(app_config) == set(ExperimentConfig().to_flat())


def test_unloadable_dataset_fails_without_traceback(tmp_path):
    proc = _flnorm("--dataset", "cifar10", "--no-download", "--data-dir", str(tmp_path / "none"),
                   "--out", str(tmp_path / "run"))
    assert proc.returncode == 1
    assert "could not load cifar10" in proc.stderr and "--dataset mnist5k" in proc.stderr
    assert "Traceback" not in proc.stderr
