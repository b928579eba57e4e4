"""The label oracle: reveals true labels only for rows that were asked for, and counts them."""

from __future__ import annotations

import numpy as np


class LabelBudgetExceeded(RuntimeError):
    """More labels were asked for than the budget allows."""


class LabelOracle:
    def __init__(self, labels: np.ndarray, budget: int) -> None:
        self._labels = np.asarray(labels, dtype=np.int64)
        self.budget = budget
        self.revealed: set[int] = set()

    @property
    def labels_used(self) -> int:
        return len(self.revealed)

    @property
    def remaining(self) -> int:
        return self.budget - self.labels_used

    def reveal(self, rows: np.ndarray) -> np.ndarray:
        """Labels of `rows` (batch positions); asking again for a row costs nothing more."""
        rows = np.asarray(rows, dtype=np.int64)
        new = set(rows.tolist()) - self.revealed
        if len(new) > self.remaining:
            raise LabelBudgetExceeded(f"asked for {len(new)} new labels with {self.remaining} left of {self.budget}")
        self.revealed |= new
        return self._labels[rows].copy()
