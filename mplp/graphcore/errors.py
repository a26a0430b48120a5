"""The exception type that every graph, schedule and program check raises."""


class GraphError(ValueError):
    """An invalid graph, node kind, learner configuration or program input.

    The message names the offending group, arrow or value and says how to fix it.
    It subclasses `ValueError` so that callers catching bad input keep working.
    """
