"""Tests of the pretrained learners shipped inside the package."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from mplp import pretrained
from mplp.meta.config import EXPERIMENTS
from mplp.meta.evaluation import MPLP_LABEL, evaluate
from mplp.meta.setup import build_experiment
from mplp.meta.trainer import load_run

SHIPPED = pretrained.available_pretrained()


def test_every_experiment_has_a_learner() -> None:
    assert set(SHIPPED) == set(EXPERIMENTS)


@pytest.mark.parametrize("name", [name for name in SHIPPED if name != "mnist"])
def test_sinusoid_learners_load_finite(name: str) -> None:
    config, step, meta_state = load_run(pretrained.pretrained_dir(name))

    assert config.name == name
    assert step > 0
    for leaf in jax.tree.leaves(meta_state.trainable):
        assert np.isfinite(np.asarray(leaf)).all()


def test_mnist_learner_beats_untuned_sgd(mnist_dir: Path) -> None:
    config, step, meta_state = load_run(pretrained.pretrained_dir("mnist"), data_dir=mnist_dir)
    assert config.name == "mnist"
    assert step > 0

    # SGD at lr 0.1 reached 13.35 +- 4.24% after 20 steps over 100 runs of this learner's
    # evaluation. Eight runs keep the test short, so the bounds leave room for their spread.
    sgd_only = config.model_copy(update={"baselines": config.baselines[:1]})
    experiment = build_experiment(sgd_only, mnist_dir)
    result = evaluate(experiment, meta_state, runs=8, seed=0, data_dir=mnist_dir)

    learned = result.method(MPLP_LABEL).final()
    sgd = result.method(sgd_only.baselines[0].label).final()
    assert learned["metric_mean"] > 25.0
    assert learned["metric_mean"] > sgd["metric_mean"] + 10.0
