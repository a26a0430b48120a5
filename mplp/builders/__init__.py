"""Builders that lower familiar architectures into node groups and arrows."""

from mplp.builders.mlp import activation_kind_names as activation_kind_names
from mplp.builders.mlp import dense_layers as dense_layers
from mplp.builders.mlp import mlp as mlp
from mplp.builders.mlp import mlp_graph as mlp_graph
from mplp.builders.mlp import replace_dense_layers as replace_dense_layers
