"""The graph runtime: schemas, the multigraph, the scheduler, the compiler to JAX and the
inspection tools (JSON files, text summary, drawing).

Graphcore runs any graph of registered node kinds; it knows nothing of dense layers or data sets.
"""

from mplp.graphcore.compiler import Program as Program
from mplp.graphcore.compiler import State as State
from mplp.graphcore.compiler import compile_graph as compile_graph
from mplp.graphcore.errors import GraphError as GraphError
from mplp.graphcore.graph import BackwardStep as BackwardStep
from mplp.graphcore.graph import ForwardStep as ForwardStep
from mplp.graphcore.graph import Schedule as Schedule
from mplp.graphcore.graph import build_schedule as build_schedule
from mplp.graphcore.graph import to_networkx as to_networkx
from mplp.graphcore.graph import validate_graph as validate_graph
from mplp.graphcore.inspect import draw as draw
from mplp.graphcore.inspect import layered_positions as layered_positions
from mplp.graphcore.inspect import load_graph as load_graph
from mplp.graphcore.inspect import save_graph as save_graph
from mplp.graphcore.inspect import summary as summary
from mplp.graphcore.kinds import Fields as Fields
from mplp.graphcore.kinds import FieldSpec as FieldSpec
from mplp.graphcore.kinds import NodeKind as NodeKind
from mplp.graphcore.kinds import get_kind as get_kind
from mplp.graphcore.kinds import register_kind as register_kind
from mplp.graphcore.kinds import registered_kinds as registered_kinds
from mplp.graphcore.learning import GroupInfo as GroupInfo
from mplp.graphcore.learning import Learner as Learner
from mplp.graphcore.learning import LearnerParams as LearnerParams
from mplp.graphcore.schema import Arrow as Arrow
from mplp.graphcore.schema import Graph as Graph
from mplp.graphcore.schema import Group as Group
from mplp.graphcore.schema import connect as connect
