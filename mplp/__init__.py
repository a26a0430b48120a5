"""mplp: meta-learned message passing learning rules (MPLP) in JAX.

The public API. Subpackages: `mplp.graphcore` (schemas, scheduler, compiler), `mplp.nodes`
(built-in node kinds), `mplp.learners` (learning rules), `mplp.builders` (network builders).
"""

from mplp import builders as builders
from mplp import graphcore as graphcore
from mplp import learners as learners
from mplp import nodes as nodes
from mplp.graphcore import Arrow as Arrow
from mplp.graphcore import Graph as Graph
from mplp.graphcore import GraphError as GraphError
from mplp.graphcore import Group as Group
from mplp.graphcore import Learner as Learner
from mplp.graphcore import NodeKind as NodeKind
from mplp.graphcore import Program as Program
from mplp.graphcore import compile_graph as compile_graph
from mplp.graphcore import register_kind as register_kind

__version__ = "0.1.0"
