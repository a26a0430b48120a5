"""mplp: meta-learned message passing learning rules (MPLP) in JAX.

The public API. Subpackages: `mplp.graphcore` (schemas, scheduler, compiler, inspection),
`mplp.nodes` (built-in node kinds), `mplp.learners` (learning rules), `mplp.builders` (network
builders). `mplp.meta` (meta-training), `mplp.tasks` (task families) and `mplp.pretrained` are
imported on their own, e.g. ``import mplp.meta``.
"""

from mplp import builders as builders
from mplp import graphcore as graphcore
from mplp import learners as learners
from mplp import nodes as nodes
from mplp.graphcore import Arrow as Arrow
from mplp.graphcore import BackwardStep as BackwardStep
from mplp.graphcore import Fields as Fields
from mplp.graphcore import FieldSpec as FieldSpec
from mplp.graphcore import ForwardStep as ForwardStep
from mplp.graphcore import Graph as Graph
from mplp.graphcore import GraphError as GraphError
from mplp.graphcore import Group as Group
from mplp.graphcore import GroupInfo as GroupInfo
from mplp.graphcore import Learner as Learner
from mplp.graphcore import LearnerParams as LearnerParams
from mplp.graphcore import NodeKind as NodeKind
from mplp.graphcore import Program as Program
from mplp.graphcore import Schedule as Schedule
from mplp.graphcore import State as State
from mplp.graphcore import build_schedule as build_schedule
from mplp.graphcore import compile_graph as compile_graph
from mplp.graphcore import connect as connect
from mplp.graphcore import draw as draw
from mplp.graphcore import get_kind as get_kind
from mplp.graphcore import load_graph as load_graph
from mplp.graphcore import register_kind as register_kind
from mplp.graphcore import registered_kinds as registered_kinds
from mplp.graphcore import save_graph as save_graph
from mplp.graphcore import summary as summary
from mplp.graphcore import to_networkx as to_networkx
from mplp.graphcore import validate_graph as validate_graph
from mplp.nodes import activation_kind as activation_kind

__version__ = "0.1.0"
