"""Pretrained learners shipped with the package.

Each pretrained learner is a folder ``mplp/pretrained/<name>/`` laid out like a run folder of
`mplp.meta.trainer.train`: ``config.json`` (the experiment) and ``checkpoint.npz`` (the
meta-trained state), so `mplp.meta.trainer.load_run` reads it.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from mplp.meta.config import ConfigError

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.npz"


def available_pretrained() -> tuple[str, ...]:
    """Return the names of the pretrained learners in the installed package, sorted."""
    root = _package_root()
    names = [
        entry.name
        for entry in root.iterdir()
        if entry.is_dir()
        and entry.joinpath(CONFIG_FILE).is_file()
        and entry.joinpath(CHECKPOINT_FILE).is_file()
    ]
    return tuple(sorted(names))


def pretrained_dir(name: str) -> Path:
    """Return the folder of the pretrained learner ``name``.

    Raises:
        ConfigError: when no pretrained learner has that name; the message lists the names.
    """
    if name not in available_pretrained():
        names = ", ".join(available_pretrained()) or "none in this installation"
        raise ConfigError(f"unknown pretrained learner '{name}'; available: {names}")
    # NOTE: this assumes the package is installed as plain files; a package imported from a
    # zip archive has no real folder to return.
    return Path(str(_package_root().joinpath(name)))


def _package_root() -> Traversable:
    return resources.files(__name__)
