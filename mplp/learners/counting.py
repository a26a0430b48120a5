"""Meta-parameter counts of a learner configuration."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mplp.graphcore import LearnerParams


def count_parameters(learner_params: LearnerParams) -> dict[str, int]:
    """Count the scalars of learner parameters, by entry.

    Returns:
        ``{"rules": n, "output_scales": n, "frozen": n, "trainable": n, "total": n}`` for a
        learned learner, where ``trainable = rules + output_scales`` and ``frozen`` counts the
        standardiser statistics and output means; ``{"total": n, "trainable": n}`` otherwise.
    """
    if not (isinstance(learner_params, dict) and "rules" in learner_params):
        total = _size(learner_params)
        return {"total": total, "trainable": total}

    rules = _size(learner_params["rules"])
    output_scales = sum(1 for entry in learner_params["outputs"].values() if "scale" in entry)
    output_means = sum(1 for entry in learner_params["outputs"].values() if "mean" in entry)
    frozen = _size(learner_params["standardisers"]) + output_means
    trainable = rules + output_scales
    return {
        "rules": rules,
        "output_scales": output_scales,
        "frozen": frozen,
        "trainable": trainable,
        "total": trainable + frozen,
    }


def _size(tree: Any) -> int:
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))
