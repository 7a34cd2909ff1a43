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
        {"client": 0, "test_accuracy": 0.9, "test_loss": 0.3, "personal_accuracy": 1.0, "num-examples": 5},
        {"client": 1, "test_accuracy": 0.0, "test_loss": 0.0, "personal_accuracy": 0.0, "num-examples": 0},
    ])
    rows = RoundRecorder._client_rows(4, train, test)
    assert [r["client"] for r in rows] == [0, 1]
    assert rows[0]["test_accuracy"] == 0.9 and rows[0]["num_train"] == 20
    assert rows[1]["num_test"] == 0 and rows[1]["test_accuracy"] != rows[1]["test_accuracy"]  # NaN
