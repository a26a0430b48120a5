"""Graph inspection: JSON files, the text summary, the drawing, the public API and its docs."""

from __future__ import annotations
import __future__

import importlib
import inspect
import re
import types
from pathlib import Path

import jax
import numpy as np
import pytest

import mplp
from helpers import chain_arrows, forward_arrow, random_batch, residual_graph
from mplp import Arrow, Graph, Group
from mplp.builders import mlp_graph
from mplp.meta.config import EXPERIMENTS
from mplp.meta.setup import build_learner

REPO_ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PUBLIC_PACKAGES = (
    "mplp",
    "mplp.graphcore",
    "mplp.nodes",
    "mplp.learners",
    "mplp.builders",
    "mplp.meta",
    "mplp.tasks",
    "mplp.pretrained",
)


def experiment_graph(name: str) -> Graph:
    """The graph that `mplp.meta.setup.build_program` compiles for a built-in experiment."""
    config = EXPERIMENTS[name]
    network = config.network
    return mlp_graph(
        network.sizes,
        activation=network.activation,
        loss=network.loss,
        init_std=network.init_std,
        aggregate=build_learner(config.learner).default_aggregate,
    )


def options_graph() -> Graph:
    """A graph whose groups carry options of every JSON type, with two reflexive arrows."""
    groups = (
        Group(name="input", kind="input", shape=(2,)),
        Group(
            name="dense0",
            kind="dense",
            shape=(2, 3),
            options={"init_std": 0.25, "seed": 3, "label": "first", "frozen": False},
        ),
        Group(name="bias0", kind="bias", shape=(3,), options={"whole": 1.0}),
        Group(name="loss", kind="l2", shape=(3,)),
    )
    pairs = [("input", "dense0"), ("dense0", "bias0"), ("bias0", "loss")]
    reflexive = (
        Arrow(name="bias0:a", kind="reflexive", source="bias0", target="bias0"),
        Arrow(name="bias0:b", kind="reflexive", source="bias0", target="bias0"),
    )
    return Graph(groups=groups, arrows=(*chain_arrows(pairs, aggregate="mean"), *reflexive))


# JSON files.


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_graph_json_round_trip(name: str, tmp_path: Path) -> None:
    graph = experiment_graph(name)

    path = mplp.save_graph(graph, tmp_path / f"{name}.json")
    loaded = mplp.load_graph(path)

    assert loaded == graph
    assert loaded.to_json() == graph.to_json()
    assert path.read_text(encoding="utf-8") == graph.to_json() + "\n"


def test_options_json_round_trip(tmp_path: Path) -> None:
    graph = options_graph()

    loaded = mplp.load_graph(mplp.save_graph(graph, tmp_path / "graph.json"))

    assert loaded == graph
    options = loaded.group("dense0").options
    assert type(options["init_std"]) is float
    assert type(options["seed"]) is int
    assert type(options["label"]) is str
    assert type(options["frozen"]) is bool
    assert type(loaded.group("bias0").options["whole"]) is float
    assert [arrow.name for arrow in loaded.arrows] == [arrow.name for arrow in graph.arrows]


@pytest.mark.parametrize(
    ("learner", "aggregate"),
    [(mplp.learners.gradient(0.3), "sum"), (mplp.learners.stateless(2), "mean")],
    ids=["gradient", "stateless"],
)
def test_loaded_graph_same_program(learner: mplp.Learner, aggregate: str, tmp_path: Path) -> None:
    graph = residual_graph(width_in=2, width=3)
    if aggregate == "mean":
        graph = Graph(
            groups=graph.groups,
            arrows=tuple(
                arrow.model_copy(update={"aggregate": "mean"})
                if arrow.kind == "backward"
                else arrow
                for arrow in graph.arrows
            ),
        )
    loaded = mplp.load_graph(mplp.save_graph(graph, tmp_path / "residual.json"))
    original = mplp.compile_graph(graph, learner)
    reloaded = mplp.compile_graph(loaded, learner)
    x, target = random_batch(0, (3,), 2, 3, "l2")
    learner_params = original.init_learner(jax.random.key(1))

    state, metrics = original.step(learner_params, original.init(jax.random.key(0), 3), x, target)
    loaded_state, loaded_metrics = reloaded.step(
        learner_params, reloaded.init(jax.random.key(0), 3), x, target
    )

    assert reloaded.schedule == original.schedule
    assert reloaded.state_fields(3) == original.state_fields(3)
    np.testing.assert_array_equal(loaded_metrics["loss"], metrics["loss"])
    for leaf, loaded_leaf in zip(
        jax.tree.leaves(state), jax.tree.leaves(loaded_state), strict=True
    ):
        np.testing.assert_array_equal(loaded_leaf, leaf)


def test_load_graph_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"groups": [', encoding="utf-8")

    with pytest.raises(mplp.GraphError, match="broken.json is invalid at top level"):
        mplp.load_graph(path)


def test_load_graph_invalid_field(tmp_path: Path) -> None:
    document = options_graph().to_json().replace('"kind": "reflexive"', '"kind": "sideways"')
    path = tmp_path / "graph.json"
    path.write_text(document, encoding="utf-8")

    with pytest.raises(mplp.GraphError, match=r"graph.json is invalid at arrows\.\d+\.kind"):
        mplp.load_graph(path)


def test_load_graph_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mplp.load_graph(tmp_path / "missing.json")


# Summary.


def test_summary_graph_rows() -> None:
    text = mplp.summary(experiment_graph("sinusoid"))
    lines = text.splitlines()

    assert lines[0] == "Graph: 10 groups, 17 arrows (9 forward, 8 backward, 0 reflexive)"
    assert re.search(r"^  dense1 +dense +weight +\(20, 20\) +400 +400$", text, re.MULTILINE)
    assert re.search(r"^  act0 +relu +activation +\(20,\) +20 +0$", text, re.MULTILINE)
    assert re.search(r"^  act0->dense1 +forward +act0 -> dense1 +dense +-$", text, re.MULTILINE)
    assert re.search(r"^  dense1->act0 +backward +dense1 -> act0 +- +mean$", text, re.MULTILINE)
    # 1*20 + 20 + 20*20 + 20 + 20*1 + 1 parameters.
    assert lines[-1] == "Total: 523 nodes, 481 parameters"


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_summary_fits_one_screen(name: str) -> None:
    lines = mplp.summary(experiment_graph(name)).splitlines()

    assert len(lines) <= 50
    assert max(len(line) for line in lines) <= 100


def test_summary_program_learner() -> None:
    program = mplp.builders.mlp([2, 3, 1], learner=mplp.learners.stateless(4))

    text = mplp.summary(program)
    lines = text.splitlines()

    learner_params = program.init_learner(jax.random.key(0))
    count = mplp.learners.count_parameters(learner_params)["total"]
    assert lines[-2] == f"Learner: stateless, message size 4, {count} learner parameters"
    assert lines[-1] == (
        "Backward pass (6 groups, in order): loss, bias1, dense1, act0, bias0, dense0"
    )


def test_summary_unknown_kind() -> None:
    graph = residual_graph()
    graph = graph.model_copy(
        update={
            "groups": tuple(
                group.model_copy(update={"kind": "mystery"}) if group.name == "dense1" else group
                for group in graph.groups
            )
        }
    )

    text = mplp.summary(graph)

    assert re.search(r"^  dense1 +mystery +\? +\(3, 3\) +9 +\?$", text, re.MULTILINE)
    assert "Parameters not counted (kind unknown or invalid for the group): dense1" in text
    # dense0 (2*3), bias0 (3) and bias1 (3) are still counted.
    assert "Total: 32 nodes, 12 parameters" in text


def test_summary_extra_kinds() -> None:
    kind = mplp.nodes.DENSE._replace(name="mystery")
    graph = Graph(
        groups=(
            Group(name="input", kind="input", shape=(2,)),
            Group(name="w", kind="mystery", shape=(2, 5)),
            Group(name="loss", kind="l2", shape=(5,)),
        ),
        arrows=(forward_arrow("input", "w", "dense"), forward_arrow("w", "loss")),
    )

    text = mplp.summary(graph, kinds={"mystery": kind})

    assert re.search(r"^  w +mystery +weight +\(2, 5\) +10 +10$", text, re.MULTILINE)


# Layout and drawing.


def test_layered_positions_generations() -> None:
    positions = mplp.graphcore.layered_positions(residual_graph())

    columns = {name: x for name, (x, _) in positions.items()}
    assert columns == {
        "input": 0.0,
        "dense0": 1.0,
        "bias0": 2.0,
        "act0": 3.0,
        "dense1": 4.0,
        "bias1": 5.0,
        "sum": 6.0,
        "loss": 7.0,
    }
    assert {y for _, y in positions.values()} == {0.0}


def test_layered_positions_stacks_generation() -> None:
    graph = residual_graph()
    graph = Graph(
        groups=(*graph.groups, Group(name="side", kind="tanh", shape=(3,))),
        arrows=(*graph.arrows, forward_arrow("act0", "side")),
    )

    positions = mplp.graphcore.layered_positions(graph)

    assert positions["dense1"] == (4.0, 0.5)
    assert positions["side"] == (4.0, -0.5)


def test_layered_positions_cycle() -> None:
    graph = residual_graph()
    loop = forward_arrow("sum", "act0", name="loop")
    graph = Graph(groups=graph.groups, arrows=(*graph.arrows, loop))

    with pytest.raises(mplp.GraphError, match="forward arrows form a cycle"):
        mplp.graphcore.layered_positions(graph)


def test_layered_positions_unknown_group() -> None:
    graph = residual_graph()
    graph = Graph(groups=graph.groups, arrows=(*graph.arrows, forward_arrow("sum", "nowhere")))

    with pytest.raises(mplp.GraphError, match="'nowhere', which is not a group"):
        mplp.graphcore.layered_positions(graph)


def test_draw_writes_png(tmp_path: Path) -> None:
    path = mplp.draw(options_graph(), tmp_path / "graph.png", title="options")

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 600
    assert height >= 300


def test_draw_program_png(tmp_path: Path) -> None:
    program = mplp.compile_graph(residual_graph(), mplp.learners.gradient())

    path = mplp.draw(program, tmp_path / "program.png", dpi=50)

    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_draw_arrow_colors() -> None:
    from matplotlib.colors import to_hex
    from matplotlib.patches import FancyArrowPatch

    graph = options_graph()

    figure = mplp.graphcore.inspect._render(graph, None, None, 50)

    patches = [patch for patch in figure.axes[0].patches if isinstance(patch, FancyArrowPatch)]
    drawn = [to_hex(patch.get_edgecolor()) for patch in patches]
    for kind, color in mplp.graphcore.inspect.ARROW_COLORS.items():
        expected = sum(1 for arrow in graph.arrows if arrow.kind == kind)
        assert drawn.count(to_hex(color)) == expected, kind
    assert len(drawn) == len(graph.arrows)


# Public API and its reference page.


def public_names(module: types.ModuleType) -> set[str]:
    """Names of ``module`` without a leading underscore, less what it imports from elsewhere.

    Left out are other libraries' modules, ``from __future__`` features, and classes or
    functions of other libraries imported under their own name (``Path``). Kept are mplp's own
    objects, constants, and aliases such as ``LearnerParams = Any``.
    """
    names = set()
    for name in dir(module):
        if name.startswith("_"):
            continue
        value = getattr(module, name)
        if isinstance(value, types.ModuleType):
            if value.__name__.startswith("mplp"):
                names.add(name)
        elif isinstance(value, __future__._Feature):
            continue
        elif inspect.isclass(value) or inspect.isroutine(value):
            foreign = not value.__module__.startswith("mplp")
            if not (foreign and value.__name__ == name):
                names.add(name)
        else:
            names.add(name)
    return names


def api_sections() -> dict[str, str]:
    """The text of each ``## `module` `` or ``### `module` `` section of docs/api.md, by module
    name."""
    text = (REPO_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    sections = {}
    heading = r"^#{2,3} `([\w.]+)`\n(.*?)(?=^#{2,3} |\Z)"
    for match in re.finditer(heading, text, re.MULTILINE | re.DOTALL):
        sections[match.group(1)] = match.group(2)
    return sections


def test_api_docs_every_public_name() -> None:
    # Importing the command line and the meta package loads every submodule that another
    # import could add as a package attribute, so the names below do not depend on test order.
    importlib.import_module("mplp.cli")
    sections = api_sections()

    missing = []
    for package in PUBLIC_PACKAGES:
        module = importlib.import_module(package)
        assert package in sections, f"docs/api.md has no section for {package}"
        for name in sorted(public_names(module)):
            if f"`{name}`" not in sections[package]:
                missing.append(f"{package}.{name}")
    assert not missing, "public names missing from docs/api.md: " + ", ".join(missing)


def test_api_docs_no_stale_names() -> None:
    importlib.import_module("mplp.cli")
    sections = api_sections()

    stale = []
    for package, text in sections.items():
        module = importlib.import_module(package)
        for name in re.findall(r"^- `(\w+)`", text, re.MULTILINE):
            if not hasattr(module, name):
                stale.append(f"{package}.{name}")
    assert not stale, "docs/api.md lists names that do not exist: " + ", ".join(stale)


def test_custom_kind_api_exported() -> None:
    for name in (
        "NodeKind",
        "FieldSpec",
        "Fields",
        "GroupInfo",
        "Schedule",
        "State",
        "register_kind",
        "activation_kind",
        "to_networkx",
        "validate_graph",
        "build_schedule",
        "save_graph",
        "load_graph",
        "summary",
        "draw",
    ):
        assert hasattr(mplp, name), name


def test_mlp_graph_registered_activation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mplp.graphcore.kinds, "_REGISTRY", dict(mplp.graphcore.kinds._REGISTRY))
    softsign = mplp.activation_kind("softsign", jax.nn.soft_sign)
    mplp.register_kind(softsign)
    mplp.register_kind(mplp.nodes.BIAS._replace(name="shift"))

    graph = mlp_graph([1, 3, 1], activation="softsign")

    assert graph.group("act0").kind == "softsign"
    assert mplp.builders.activation_kind_names()[-1] == "softsign"
    with pytest.raises(mplp.GraphError, match="activation 'shift' is unknown"):
        mlp_graph([1, 3, 1], activation="shift")


# The `mplp graph show` command.


def test_graph_show_experiment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mplp.cli import main

    out = tmp_path / "figures" / "sinusoid.png"

    status = main(["graph", "show", "sinusoid", "--out", str(out), "--summary"])

    printed = capsys.readouterr().out
    assert status == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert printed.startswith("Graph: 10 groups, 17 arrows")
    assert "Learner: stateful, message size 8" in printed


def test_graph_show_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mplp.cli import main

    path = mplp.save_graph(options_graph(), tmp_path / "graph.json")
    out = tmp_path / "graph.png"

    status = main(["graph", "show", str(path), "--out", str(out)])

    assert status == 0
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nope", "unknown experiment 'nope'; built-in experiments: sinusoid"),
        ("missing.json", "file not found: missing.json"),
        ("broken.json", "broken.json is invalid at top level"),
    ],
)
def test_graph_show_invalid_source(
    source: str,
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mplp.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.json").write_text("{", encoding="utf-8")

    status = main(["graph", "show", source, "--out", "out.png"])

    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
