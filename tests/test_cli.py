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
        (["--norm", "foo"], "unknown norm 'foo'; valid choices: none, bn, gn, ln, in, ws, fn"),
        (["--partition", "classes-0"], "at least 1 class"),
        (["--clients", "5000"], "5000 clients but only 4000 training samples"),
        (["--model", "vgg"], "valid choices: cnn, resnet18, mlp"),
        (["--strategy", "fedsgd"], "valid choices: fedavg, fedavg-pooled, fedbn, silobn, fixbn, precisebn, local, fedprox, fedadam, fedyogi"),
        (["--bn-eval", "precise"], "bn-eval precise needs --strategy precisebn"),
        (["--dataset", "imagenet"], "valid choices: mnist5k, digits, digits-real, mnist, fmnist, cifar10, cifar100"),
        (["--rounds", "0"], "rounds must be a positive integer"),
        (["--num-gpus", "0.5"], "no CUDA device is visible"),
        (["--norm", "gn", "--gn-groups", "3"], "GroupNorm with 3 groups cannot split 64 channels"),
        (["--num-cpus", "999"], "num-cpus=999 per client, but Ray has"),
        (["--resume"], "config.json does not exist"),
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


def test_deploy_helper_writes_certificates_keys_and_connection(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from flnorm.cli import main

    assert main(["deploy", "certs", "--out", str(tmp_path / "pki"), "--host", "link.example.org",
                 "--host", "10.0.0.5"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "pki" / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "link.example.org"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.5"}
    ca = x509.load_pem_x509_certificate((tmp_path / "pki" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)

    assert main(["deploy", "node-key", "site1", "--out", str(tmp_path / "keys")]) == 0
    private = load_ssh_private_key((tmp_path / "keys" / "site1").read_bytes(), None)
    public = load_ssh_public_key((tmp_path / "keys" / "site1.pub").read_bytes())
    assert private.public_key().public_numbers() == public.public_numbers()
    assert (tmp_path / "keys" / "site1").stat().st_mode & 0o077 == 0  # private key not readable by others

    assert main(["deploy", "connection", "--flwr-home", str(tmp_path / "home"), "--address", "10.0.0.5:9092",
                 "--root-certificates", str(tmp_path / "pki" / "ca.crt")]) == 0
    text = (tmp_path / "home" / "config.toml").read_text()
    assert 'address = "10.0.0.5:9092"' in text and "root-certificates" in text and "insecure" not in text


def test_deploy_refuses_auth_without_tls(capsys):
    from flnorm.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["deploy", "superlink", "--auth"])
    assert exc.value.code == 2
    assert "needs TLS" in capsys.readouterr().err


def test_unwritable_out_fails_before_anything_starts(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = _flnorm("--out", str(blocker / "run"))
    assert proc.returncode == 2, proc.stderr
    assert f"cannot write the run directory {blocker / 'run'}" in proc.stderr
    assert blocker.read_text() == "not a directory" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.slow
def test_readme_resume_command_continues_and_refuses_a_finished_run(tmp_path):
    """The README's commands, as a user types them: a run with non-default flags, the state a
    kill after round 2 leaves (the previous checkpoint), ``--resume --out DIR``."""
    import shutil

    import torch

    run = tmp_path / "r"
    first = _flnorm("--clients", "3", "--rounds", "3", "--local-steps", "2", "--out", str(run))
    assert first.returncode == 0, first.stderr
    whole = torch.load(run / "model.pt")
    finished = _flnorm("--resume", "--out", str(run))
    assert finished.returncode == 2 and "finished all 3 rounds; nothing to resume" in finished.stderr

    cut = tmp_path / "cut"  # as if killed after round 2: round 2's checkpoint, rows up to round 3
    shutil.copytree(run, cut)
    (cut / "checkpoint.pt").unlink()
    (cut / "model.pt").unlink()
    shutil.move(cut / "checkpoint.prev.pt", cut / "checkpoint.pt")
    resumed = _flnorm("--resume", "--out", str(cut))
    assert resumed.returncode == 0, resumed.stderr
    again = torch.load(cut / "model.pt")
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    changed = _flnorm("--resume", "--out", str(run), "--lr", "0.5")
    assert changed.returncode == 2 and "other lr" in changed.stderr


def test_corrupt_checkpoint_is_named_in_one_line_with_its_fallback(tmp_path):
    import torch

    from flnorm.runner.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint

    state = {"w": torch.ones(2).numpy()}
    save_checkpoint(tmp_path, Checkpoint(1, state))
    save_checkpoint(tmp_path, Checkpoint(2, state))
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage" * 10)
    assert load_checkpoint(tmp_path).round == 1  # falls back to the round before
    (tmp_path / "checkpoint.prev.pt").write_bytes(b"PK\x03\x04truncated")
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path)
    message = str(exc.value)
    assert str(tmp_path / "checkpoint.pt") in message and "no earlier checkpoint" in message
    assert "weights_only" not in message and "\n" not in message
