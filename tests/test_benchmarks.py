"""The benchmarks in experiments/ run offline and print their figures (tiny sizes; slow)."""

import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _invoke(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EXPERIMENTS / script), *args],
                          capture_output=True, text=True, timeout=600)


def _run(script: str, *args: str) -> str:
    proc = _invoke(script, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _figure(out: str, label: str) -> list[float]:
    line = next(ln for ln in out.splitlines() if ln.startswith(label))
    return [float(x) for x in re.findall(r"\d+\.\d+", line[len(label):])]


def test_overhead_benchmark_prints_ratio_and_both_startups():
    out = _run("benchmark_overhead.py", "--rounds", "3", "--clients", "2", "--local-steps", "2")
    fl, plain, ratio = _figure(out, "steady s/round")
    assert fl > 0 and plain > 0 and ratio == pytest.approx(fl / plain, abs=0.01)
    in_process, _plain_start = _figure(out, "start-up s (in process)")
    (command,) = _figure(out, "start-up s (command)")
    assert in_process > 0 and command > 0
    assert "messages queued per Ray actor: 2" in out
    overhead = float(next(ln for ln in out.splitlines() if ln.startswith("overhead ms/round")).split()[-1])
    # the overhead is rounded to 1 ms from the unrounded times; fl and plain are printed to 0.5 ms each
    assert overhead == pytest.approx(1000 * (fl - plain), abs=1.5)
    flwr_run, plain_again, flwr_ratio = _figure(out, "flwr run . s/round")
    assert flwr_run > 0 and plain_again == plain and flwr_ratio == pytest.approx(flwr_run / plain, abs=0.01)
    phases = {ln[9:53].strip(): float(ln[53:]) for ln in out.splitlines() if ln.startswith("  flnorm ")}
    assert phases["train: clients' compute / 2 actors"] > 0 and phases["server test-set evaluation"] > 0
    assert sum(phases.values()) == pytest.approx(1000 * fl, abs=len(phases))  # the phases make up the round
    plain_phases = [ln for ln in out.splitlines() if ln.startswith("  plain ")]
    assert len(plain_phases) == 4


def test_scale_benchmark_writes_memory_trace(tmp_path):
    trace = tmp_path / "rss.csv"
    out = _run("benchmark_scale.py", "--clients", "4", "--rounds", "6", "--fraction", "0.5",
               "--rss-csv", str(trace))
    assert "MiB/round from round 3" in out and "peak GiB" in out
    rss = pd.read_csv(trace)
    assert set(rss["clients"]) == {4}
    assert rss["round"].is_monotonic_increasing and rss["round"].max() >= 5
    assert (rss["rss_gib"] > 0.1).all()  # the whole tree: driver, Ray daemons, actors


def test_startup_timeline_marks_every_phase_in_order():
    out = _run("startup_timeline.py", "--", "--clients", "2", "--local-steps", "2", "--rounds", "2")
    labels = ["torch, flnorm imported", "ray.init: start", "ray.init: end", "Ray actors created: end",
              "reply 1 stored", "round 1 ended", "round 2 ended"]
    lines = out.splitlines()
    at = {label: next(float(ln.split()[0]) for ln in lines if label in ln) for label in labels}
    assert [at[label] for label in labels] == sorted(at[label] for label in labels)
    assert "start-up (command to the end of round 1" in out


def test_deploy_benchmark_runs_superlink_and_supernodes_and_splits_the_round():
    out = _run("benchmark_deploy.py", "--nodes", "2", "--rounds", "2", "--local-steps", "2", "--supernodes", "warm")
    (wall,) = _figure(out, "steady s/round")
    (compute,) = _figure(out, "  clients compute")
    (rest,) = _figure(out, "  the rest")
    assert wall > 0 and 0 < compute < wall and rest == pytest.approx(wall - compute, abs=0.02)
    (imports,) = _figure(out, "import clients.client_app")
    assert imports > 0


def test_regimes_reproduction_keeps_cells_and_reports_both_regimes(tmp_path):
    """The feature-shift reproduction on a tiny grid: one CSV per cell (three seeds under
    feature shift), the regimes table, per-domain and per-seed figures in the report, and a
    second invocation that runs nothing."""
    args = ["--clients", "4", "--rounds", "2", "--eval-every", "1", "--window", "1", "--methods", "FedBN",
            "--regimes", "iid", "feature shift", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "kept")]
    out = _run("reproduce_regimes.py", *args, "--max-rounds", "2")
    kept = sorted(p.name for p in (tmp_path / "kept").iterdir())
    assert kept == [f"FedBN,partition=domains,seed={s}.csv" for s in range(3)] + ["FedBN,partition=iid,seed=0.csv"]
    rows = [ln for ln in out.splitlines() if ln.startswith("| FedBN |")]
    assert len(rows) == 3, out  # the regimes, per-domain and per-seed tables
    acc, sd = r"\d+\.\d\*?", r" ± \d+\.\d"  # a figure (* if not flat); the std over seeds
    regimes = rf"\| FedBN \| {acc} / {acc} \| - / - \| {acc}{sd} / {acc}{sd} \|"  # iid, label shift (not run), domains
    assert re.fullmatch(regimes, rows[0]), rows[0]
    assert re.fullmatch(r"\| FedBN \|" + r" \d+\.\d / \d+\.\d \|" * 5, rows[1]), rows[1]  # 4 domains and the mean
    assert re.fullmatch(r"\| FedBN \|" + rf" {acc} / {acc} \|" * 3, rows[2]), rows[2]  # 3 seeds
    curve = pd.read_csv(tmp_path / "kept" / kept[-1])
    assert {"test_accuracy_mnist", "personal_accuracy_synth"} <= set(curve.columns)
    again = _invoke("reproduce_regimes.py", *args, "--max-rounds", "2")
    assert again.returncode == 0 and "kept" not in again.stderr  # nothing left to run


def test_regimes_reproduction_runs_a_cell_again_until_flat(tmp_path):
    """A kept cell that is not flat runs again from the start at twice its rounds (up to
    --max-rounds) and replaces its CSV; a flat one is left as it is."""
    path = tmp_path / "kept" / "FedBN,partition=iid,seed=0.csv"
    args = ["--clients", "4", "--rounds", "2", "--eval-every", "1", "--window", "1", "--methods", "FedBN",
            "--regimes", "iid", "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "kept")]
    _run("reproduce_regimes.py", *args, "--max-rounds", "2")
    curve = pd.read_csv(path)
    curve["test_accuracy"] = [0.0, 0.5]  # +50 points from round 1 to round 2: not flat
    curve.to_csv(path, index=False)

    proc = _invoke("reproduce_regimes.py", *args, "--max-rounds", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not flat at 2 rounds (+50.0 points): again at 4" in proc.stderr
    longer = pd.read_csv(path)
    assert longer["round"].tolist() == [1, 2, 3, 4] and longer["test_accuracy"].iloc[0] > 0  # a new run
    assert "- 4: 1 cells: FedBN iid (seed 0)" in proc.stdout

    longer["test_accuracy"] = [0.1, 0.2, 0.3, 0.305]  # +0.5 points over the last round: flat
    longer.to_csv(path, index=False)
    before = path.read_bytes()
    proc = _invoke("reproduce_regimes.py", *args, "--max-rounds", "8")
    assert proc.returncode == 0 and "again at" not in proc.stderr and path.read_bytes() == before
