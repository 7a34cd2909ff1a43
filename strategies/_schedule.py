"""Evaluating on some rounds only (``--eval-every``).

Evaluation is a whole round trip to every client; runs that only need the curve every
few rounds skip it in between. ``configure_evaluate`` sends no message on skipped rounds
(Flower's loop then moves on at once), and the server-side evaluation is skipped there too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid


def every_round(server_round: int) -> bool:
    return True


class EvaluationSchedule:
    """Mixin placed before a Flower strategy: evaluate only where ``evaluates(round)``.

    Parameters
    ----------
    evaluates
        Which rounds evaluate (``ExperimentConfig.evaluates``); default every round.
    """

    def __init__(self, *, evaluates: Callable[[int], bool] = every_round, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluates = evaluates

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self.evaluates(server_round):
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]
