"""Meta-learning tasks: few-shot sinusoid regression and MNIST classification."""

from mplp.tasks import mnist, mnist_io, sinusoid

__all__ = ["mnist", "mnist_io", "sinusoid"]
