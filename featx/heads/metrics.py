"""How well predictions match the truth."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred) -> dict:
    """Test accuracy, balanced accuracy and macro-F1 of predictions."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    return {
        "test_accuracy": float(np.mean(y_true == y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }
