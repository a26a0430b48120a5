"""Built-in node kinds, registered on import: dense weights, bias, activations, softmax and
losses."""

from mplp.graphcore import register_kind
from mplp.nodes.activations import ACTIVATION_FUNCTIONS as ACTIVATION_FUNCTIONS
from mplp.nodes.activations import ACTIVATIONS as ACTIVATIONS
from mplp.nodes.activations import INPUT as INPUT
from mplp.nodes.activations import activation_kind as activation_kind
from mplp.nodes.dense import BIAS as BIAS
from mplp.nodes.dense import DEFAULT_INIT_STD as DEFAULT_INIT_STD
from mplp.nodes.dense import DENSE as DENSE
from mplp.nodes.losses import CROSS_ENTROPY as CROSS_ENTROPY
from mplp.nodes.losses import L2 as L2
from mplp.nodes.losses import cross_entropy_loss as cross_entropy_loss
from mplp.nodes.losses import l2_loss as l2_loss
from mplp.nodes.softmax import SOFTMAX as SOFTMAX

LOSSES = {"l2": L2, "cross_entropy": CROSS_ENTROPY}

for _kind in (INPUT, DENSE, BIAS, SOFTMAX, L2, CROSS_ENTROPY, *ACTIVATIONS.values()):
    register_kind(_kind, replace=True)
