"""Secure protocols on shared tensors, one module each.  Importing this package registers
every correlation the dealer can deal (each module registers its own), so the dealer's
process imports it too."""

from .arithmetic import Opened, PreparedOperand, matmul, mul, mul_fixed, powers, prepare, square
from .compare import drelu, maximum, relu
from .exp import exp
from .gelu import gelu, gelu_by_channels
from .inverse import reciprocal, rsqrt
from .layernorm import layer_norm
from .softmax import softmax
from .trig import cos, sin, sincos, sine_series, sine_series_by_columns
from .truncation import truncate
from ..shared import PROTOCOLS

# the protocols behind SharedTensor's operators and methods (x * y, x @ y, x.exp(), ...)
PROTOCOLS.update(mul=mul, matmul=matmul, square=square, truncate=truncate, relu=relu, drelu=drelu, maximum=maximum,
                 exp=exp, reciprocal=reciprocal, rsqrt=rsqrt, cos=cos, sin=sin, gelu=gelu, softmax=softmax)

__all__ = ["Opened", "PreparedOperand", "matmul", "mul", "mul_fixed", "powers", "prepare", "square",
           "drelu", "maximum", "relu", "exp", "gelu", "gelu_by_channels", "reciprocal", "rsqrt", "layer_norm",
           "softmax", "cos", "sin", "sincos", "sine_series", "sine_series_by_columns", "truncate"]
