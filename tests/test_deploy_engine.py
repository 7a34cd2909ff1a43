"""flnorm's SuperNode runtime: its scripts, its poll setting, its waits.

End to end (a real TLS deployment with warm nodes beside a cold one) in ``test_deploy.py``;
the split of a round, warm and cold, in ``experiments/benchmark_deploy.py``.
"""

import shutil
import subprocess
import sys
import time

import pytest

from flnorm import deploy, deploy_engine


def test_a_warm_supernode_finds_flnorms_superexec_first(tmp_path):
    runtime = deploy_engine.runtime_bin(tmp_path / "node")
    env = deploy.flower_env(tmp_path / "node", runtime_bin=runtime)
    assert shutil.which("flower-superexec", path=env["PATH"]) == str(runtime / "flower-superexec")
    cold = deploy.flower_env(tmp_path / "node")
    assert shutil.which("flower-superexec", path=cold["PATH"]) == str(deploy._bin("flower-superexec"))
    cmd = deploy.supernode_command("127.0.0.1:9092", 9094, "partition-id=0", runtime_bin=runtime)
    assert cmd[0] == str(runtime / "flower-supernode")


@pytest.mark.parametrize("command", ["flower-superexec", "flower-supernode"])
def test_a_script_imports_nothing_as_a_fork_server_childs_main(tmp_path, command):
    script = deploy_engine.runtime_bin(tmp_path) / command
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='__mp_main__'); "
            "print(sorted(m for m in ('flnorm', 'torch', 'flwr') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(script)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # a forked ClientApp loads flnorm from the FAB, not a preloaded copy


@pytest.mark.parametrize(("command", "flag"), [("flower-superexec", "--runtime-api-address"),
                                                ("flower-supernode", "--superlink")])
def test_a_script_runs_flowers_command(tmp_path, command, flag):
    script = deploy_engine.runtime_bin(tmp_path) / command
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert flag in out.stdout


def test_node_clock_shortens_only_flowers_two_waits():
    clock = deploy_engine.NodeClock(poll=0.01)
    for flower_wait in (3, 0.5):
        start = time.monotonic()
        clock.sleep(flower_wait)
        assert time.monotonic() - start < 0.4
    start = time.monotonic()
    clock.sleep(0.2)  # any other wait is kept
    assert time.monotonic() - start >= 0.2
    assert clock.monotonic is time.monotonic


def test_bad_poll_is_refused_with_the_valid_range(tmp_path, monkeypatch):
    monkeypatch.setenv(deploy_engine.POLL_ENV, "soon")
    with pytest.raises(SystemExit, match="in seconds"):
        deploy_engine.node_poll()
    monkeypatch.setenv(deploy_engine.POLL_ENV, "0")
    with pytest.raises(SystemExit, match=r"\(0, 60\]"):
        deploy_engine.node_poll()
    monkeypatch.delenv(deploy_engine.POLL_ENV)
    assert deploy_engine.node_poll() == deploy_engine.DEFAULT_POLL
    out = subprocess.run([sys.executable, "-m", "flnorm.cli", "deploy", "supernode", "--superlink", "127.0.0.1:1",
                          "--partition-id", "0", "--num-partitions", "1", "--poll", "-1",
                          "--flwr-home", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--poll -1.0: give seconds in (0, 60]" in out.stderr


def test_only_supernodes_get_a_short_superexec_task_poll(tmp_path, monkeypatch):
    """A SuperNode's SuperExec launches a ClientApp per message: flnorm shortens its task poll. A
    SuperLink's launches one ServerApp per run: it keeps Flower's (polling costs CPU all run long)."""
    from flnorm import cli, deploy_cli

    launched = {}
    monkeypatch.setattr(deploy_cli, "_exec", lambda cmd, env: launched.setdefault(cmd[0].rsplit("/", 1)[-1], env))
    monkeypatch.delenv(deploy.TASK_POLL_ENV, raising=False)
    home = ["--flwr-home", str(tmp_path)]
    assert cli.main(["deploy", "superlink", *home]) == 0
    assert cli.main(["deploy", "supernode", "--superlink", "127.0.0.1:1", "--partition-id", "0",
                     "--num-partitions", "1", *home]) == 0
    assert deploy.TASK_POLL_ENV not in launched["flower-superlink"]
    assert launched["flower-supernode"][deploy.TASK_POLL_ENV] == str(deploy.SUPERNODE_TASK_POLL)
    monkeypatch.setenv(deploy.TASK_POLL_ENV, "0.5")  # the user's setting wins
    assert deploy.flower_env(tmp_path, task_poll=deploy.SUPERNODE_TASK_POLL)[deploy.TASK_POLL_ENV] == "0.5"
