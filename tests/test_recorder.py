"""Server-side bookkeeping: failures are counted, a round with no survivor fails the run."""

import pytest

from flnorm.config import ExperimentConfig
from flnorm.runner.monitor import PhaseReplies
from flnorm.runner.recorder import RoundFailed, RoundRecorder


def test_partial_failures_are_tolerated_and_total_failure_raises():
    recorder = RoundRecorder.__new__(RoundRecorder)
    recorder.cfg = ExperimentConfig()
    partial = PhaseReplies(sent=3, metrics=[{"client": 0}], errors=["node 7: boom"])
    assert partial.failures == 2 and partial.missing == 1
    recorder._check(1, "train", partial)  # logged, not raised
    with pytest.raises(RoundFailed, match="every client failed in train: node 7: boom"):
        recorder._check(1, "train", PhaseReplies(sent=2, errors=["node 7: boom"]))
    with pytest.raises(RoundFailed, match="no reply before the timeout"):
        recorder._check(1, "evaluate", PhaseReplies(sent=2))


def test_client_rows_merge_train_and_eval():
    train = PhaseReplies(sent=2, metrics=[
        {"client": 1, "train_loss": 0.5, "num-examples": 10, "fit_seconds": 0.1},
        {"client": 0, "train_loss": 0.7, "num-examples": 20, "fit_seconds": 0.2},
    ])
    test = PhaseReplies(sent=2, metrics=[
        {"client": 0, "test_accuracy": 0.9, "test_loss": 0.3, "personal_accuracy": 1.0, "num-examples": 5,
         "eval_seconds": 0.05},
        {"client": 1, "test_accuracy": 0.0, "test_loss": 0.0, "personal_accuracy": 0.0, "num-examples": 0},
    ])
    rows = RoundRecorder._client_rows(4, train, test)
    assert [r["client"] for r in rows] == [0, 1]
    assert rows[0]["test_accuracy"] == 0.9 and rows[0]["num_train"] == 20 and rows[0]["eval_seconds"] == 0.05
    assert rows[1]["num_test"] == 0 and rows[1]["test_accuracy"] != rows[1]["test_accuracy"]  # NaN


def test_checkpoint_round_trip_and_truncate(tmp_path):
    import numpy as np

    from flnorm.runner.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from flnorm.runner.rundir import RunDirectory

    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(7, dtype=np.int64)}
    moments = {"m_t": {"w": np.ones((2, 3))}}
    save_checkpoint(tmp_path, Checkpoint(2, arrays, moments))
    got = load_checkpoint(tmp_path)
    assert got.round == 2 and got.arrays["n"].dtype == np.int64
    np.testing.assert_array_equal(got.arrays["w"], arrays["w"])
    np.testing.assert_array_equal(got.strategy_state["m_t"]["w"], moments["m_t"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary file left

    rundir = RunDirectory(tmp_path / "run")
    for rnd in (1, 2, 3):
        rundir.append_metrics({"round": rnd, "x": rnd / 10})
        rundir.append_clients([{"round": rnd, "client": c} for c in (0, 1)])
    (tmp_path / "run" / "config.json").write_text("{}")
    resumed = RunDirectory(tmp_path / "run", resume=True)
    resumed.truncate(2)
    resumed.append_metrics({"round": 3, "x": 0.5})
    text = (tmp_path / "run" / "metrics.csv").read_text().split()
    assert text == ["round,x", "1,0.1", "2,0.2", "3,0.5"]
    assert len((tmp_path / "run" / "clients.csv").read_text().split()) == 1 + 2 * 2


def test_resumed_run_with_more_columns_widens_the_file(tmp_path):
    """A run written by a version with fewer clients.csv columns resumes: old rows get empty cells."""
    import pandas as pd

    from flnorm.runner.rundir import RunDirectory

    rundir = RunDirectory(tmp_path)
    rundir.append_clients([{"round": 1, "client": c, "fit_seconds": 0.1} for c in (0, 1)])
    (tmp_path / "config.json").write_text("{}")
    resumed = RunDirectory(tmp_path, resume=True)
    resumed.truncate(1)
    resumed.append_clients([{"round": 2, "client": c, "fit_seconds": 0.2, "eval_seconds": 0.3} for c in (0, 1)])
    resumed.append_clients([{"round": 3, "client": 0, "fit_seconds": 0.4, "eval_seconds": 0.5}])
    df = pd.read_csv(tmp_path / "clients.csv")
    assert list(df.columns) == ["round", "client", "fit_seconds", "eval_seconds"]
    assert list(df["round"]) == [1, 1, 2, 2, 3] and list(df["fit_seconds"]) == [0.1, 0.1, 0.2, 0.2, 0.4]
    assert df["eval_seconds"].isna().tolist() == [True, True, False, False, False]
    assert not list(tmp_path.glob("*.tmp"))


def test_diagnostics_columns_are_nan_in_rounds_without_evaluation():
    recorder = RoundRecorder.__new__(RoundRecorder)
    recorder.cfg = ExperimentConfig(diagnostics=True, eval_every=5)
    quiet = recorder._diagnostics(PhaseReplies(sent=1, metrics=[{"client": 0, "train_loss": 1.0}]))
    assert set(quiet) == {"feature_norm", "diag_client", "sv1", "sv2", "sv3", "sv4", "sv5"}
    assert all(v != v for v in quiet.values())  # NaN: the same columns in every metrics row
    reported = recorder._diagnostics(PhaseReplies(sent=2, metrics=[
        {"client": 3, "feature_norm": 2.0, **{f"sv{i}": 1.0 for i in range(1, 6)}},
        {"client": 1, "feature_norm": 4.0, **{f"sv{i}": 6.0 - i for i in range(1, 6)}},
    ]))
    assert reported["feature_norm"] == 3.0 and reported["diag_client"] == 1 and reported["sv1"] == 5.0


@pytest.mark.parametrize("verbose", [False, True])
def test_flower_log_shows_only_warnings_unless_verbose(verbose):
    import logging

    from flnorm.runner.progress import FLOWER_NOTICE, flower_log

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    flower = logging.getLogger("flwr")
    flower.addHandler(handler)
    try:
        with flower_log(verbose):
            flower.info("configure_train: Sampled 3 nodes")
            flower.warning(FLOWER_NOTICE + " is deprecated")
            flower.warning("a real warning")
    finally:
        flower.removeHandler(handler)
    shown = ["configure_train: Sampled 3 nodes", FLOWER_NOTICE + " is deprecated"] if verbose else []
    assert seen == [*shown, "a real warning"]


def test_a_polling_reader_never_sees_a_torn_table(tmp_path):
    """A reader polling metrics.csv as rounds land sees a whole table every time: never an empty
    file (a created-then-filled CSV did that, and a signal test's poll failed on it), never a half row."""
    import threading

    import pandas as pd

    from flnorm.runner.rundir import RunDirectory

    runs, seen, torn, done, current = 100, [], [], threading.Event(), [tmp_path / "0" / "metrics.csv"]

    def poll() -> None:
        while not done.is_set():
            file = current[0]  # the file being written: polled as fast as the reader can
            if not file.exists():
                continue
            try:
                df = pd.read_csv(file)
            except pd.errors.EmptyDataError as err:
                torn.append(repr(err))
                continue
            seen.append(len(df))
            if df.isna().any().any() or list(df["round"]) != list(range(1, len(df) + 1)):
                torn.append(df.to_csv(index=False))

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for i in range(runs):
            current[0] = tmp_path / str(i) / "metrics.csv"
            rundir = RunDirectory(tmp_path / str(i))
            for rnd in range(1, 11):
                rundir.append_metrics({"round": rnd, "loss": 1 / rnd, "accuracy": 0.5, "note": "x" * 200})
    finally:
        done.set()
        reader.join()
    assert seen and not torn, torn[:3]
