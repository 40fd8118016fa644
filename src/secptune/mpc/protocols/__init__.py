"""Secure protocols on shared tensors.  Importing this package registers every correlation
the dealer can deal, so the dealer process imports it too."""

from . import arithmetic, compare, exp, gelu, inverse, layernorm, softmax, trig, truncation  # noqa: F401
from .arithmetic import PreparedOperand, matmul, mul, mul_fixed, prepare, square
from .compare import drelu, maximum, relu
from .exp import exp as exp_  # noqa: F401
from .gelu import gelu
from .inverse import reciprocal, rsqrt
from .layernorm import layer_norm
from .softmax import softmax
from .trig import cos, sin, sincos, sine_series
from .truncation import truncate

__all__ = ["PreparedOperand", "matmul", "mul", "mul_fixed", "prepare", "square", "drelu", "maximum",
           "relu", "gelu", "reciprocal", "rsqrt", "layer_norm", "softmax", "cos", "sin", "sincos",
           "sine_series", "truncate"]
