r"""Forms of softplus, the Bernoulli likelihood and tanh that inductor compiles faster on a CPU.

Inductor lowers ``log1p`` and ``tanh`` on the CPU to SLEEF's vectorized functions (1 ulp), and
with many particles these dominate what is left of a step outside its matmuls: in the Burda
VAE's IWAE step at K = 50 (batch 128: 50 × 128 × 784 logits, two 6400 × 200 tanh layers; the
2-core CPU), compiled as recorded, 12.4–13.0 ms of a 69–70 ms step went to the likelihood's
kernel, forward and backward, and 3.4 ms to the two tanh layers, against 47–48 ms of matmuls
(``python benchmarks/profile_step.py``, two runs). Here, only where the graph is compiled for a
CPU:

**Softplus** :math:`\max(x, 0) + \log(1 + u)`, :math:`u = e^{-|x|} \in [0, 1]`, which is also
every Bernoulli log-likelihood with logits (Pyro's ``Bernoulli.log_prob`` is
``-binary_cross_entropy_with_logits``, :math:`\log\sigma(x) = -\operatorname{softplus}(-x)`),
with :math:`\log(1 + u) \approx u\,p(u)`: :math:`p` of degree 8, a Chebyshev fit of
:math:`\log(1+u)/u` on :math:`[0, 1]` (least squares at 4000 Chebyshev nodes; the function is
analytic on a disc of radius 1 about the interval's left end, so a low degree suffices; the
factor :math:`u` keeps the relative error where :math:`u` is tiny). In float32 by Horner's rule
it is within 2.5 ulp of the exact value on all of :math:`[0, 1]`. The likelihood's forward
at that shape: 8.3–8.5 → 3.7–3.8 ms, and ``log1p`` alone 4.1 → 1.1 ms (``benchmarks/cpu_forms.py``,
each side compiled, two runs).

**tanh** :math:`x\,q(x^2)` for :math:`|x| < 0.625` (:math:`q` of degree 5, a Chebyshev fit of
:math:`\tanh(x)/x` in :math:`x^2`), and :math:`\operatorname{sign}(x)\,(1 - e)/(1 + e)`,
:math:`e = e^{-2|x|}`, above (there :math:`\tanh \ge 0.55`, so the subtraction loses nothing):
within 1.5 ulp eager and 1.51 compiled (inductor's ``exp``); it reaches ±1 from :math:`|x| = 8.66`,
where torch's stops at :math:`1 - 2^{-24}` until 9.01, so ``tanh_backward``'s :math:`1 - y^2` is 0
there instead of 1.2e-7; a 6400 × 200 layer 1.8–2.1 → 0.9–1.2 ms (the same script).

Where the forms differ from torch's beyond rounding: a softplus whose ``threshold`` is above
88/``beta`` gives ``x`` where ``exp(beta x)`` overflows float32 and torch gives ``inf``; with
``beta`` 0 or ``inf`` (a NaN ``beta x``) it gives ``x`` where torch gives NaN. The forms assume
ATen's argument checks have passed, as in a recorded graph (called directly, an integer target or a
target that broadcasts against the input is not refused).

Both bounds are checked against float64 by ``tests/test_cpu_forms.py`` (3 ulp and 2 ulp). The
IWAE step at K = 50: 68.7–70.1 → 63.0–63.8 ms, its likelihood kernel 12.4–13.0 → 7.5 ms, its tanh
kernels 3.4 → 1.7 ms (``benchmarks/profile_step.py``, two runs). :func:`rewrite` puts the forms
into a captured graph in place of ATen's ``binary_cross_entropy_with_logits``, ``softplus`` and
``tanh``; the fast path (:mod:`ppmodels.compiled`) calls it before it compiles a graph for a CPU,
and the reason in ``fit``'s history says how many operations it replaced. Only the values change form: the
gradients are the graph's own recorded backward operations (``tanh_backward`` reads the new
output). On CUDA the graph is left as recorded (inductor's libdevice functions are no bottleneck
there), and so is an operation on any dtype but float32: the forms are exact to float32's
precision only, so float64 (and half precision, whose rounding the fits do not account for) keep
torch's operations.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx
from torch.ops import aten

__all__ = ["log1p_unit", "softplus", "log_sigmoid", "binary_cross_entropy_with_logits", "tanh", "rewrite"]

#: p(u) ≈ log(1 + u) / u on [0, 1], lowest power first
LOG1P_COEFFICIENTS = (0.999999971, -0.499995015, 0.333192713, -0.248443699, 0.191114311, -0.136747697,
                      0.078361668, -0.0295885074, 0.0052534578)
#: below this |x|, tanh is x q(x²); above it, from exp(-2|x|)
TANH_CUT = 0.625
#: q(s) ≈ tanh(√s) / √s on [0, TANH_CUT²], lowest power first
TANH_COEFFICIENTS = (0.999999996, -0.333332616, 0.133311502, -0.0537226793, 0.02059568, -0.00566477536)

_MEAN, _SUM = 1, 2  # ATen's reduction codes (0: none)


def _horner(coefficients: tuple[float, ...], s: Tensor) -> Tensor:
    acc = s * coefficients[-1] + coefficients[-2]
    for c in coefficients[-3::-1]:
        acc = acc * s + c
    return acc


def log1p_unit(u: Tensor) -> Tensor:
    """``log(1 + u)`` for ``u`` in [0, 1], within 2.5 ulp in float32 (outside [0, 1] it is wrong;
    in float64 it is as inexact as in float32)."""
    return u * _horner(LOG1P_COEFFICIENTS, u)


def _log1p_exp_neg_abs(x: Tensor) -> Tensor:
    """``log(1 + exp(-|x|))``, the part of softplus and log σ that needs a logarithm."""
    return log1p_unit((-x.abs()).exp())


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """``torch.nn.functional.softplus(x, beta, threshold)``: ``log(1 + exp(beta x)) / beta``, and
    ``x`` where ``beta x > threshold``. Not float32: torch's own."""
    if x.dtype != torch.float32:
        return aten.softplus(x, beta, threshold)
    z = x * beta if beta != 1 else x
    out = z.clamp_min(0) + _log1p_exp_neg_abs(z)
    if beta != 1:
        out = out / beta
    return out.where(z <= threshold, x)


def log_sigmoid(x: Tensor) -> Tensor:
    """``log σ(x) = min(x, 0) - log(1 + exp(-|x|))``, for float32."""
    return x.clamp_max(0) - _log1p_exp_neg_abs(x)


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight: Tensor | None = None,
                                     pos_weight: Tensor | None = None, reduction: int = _MEAN) -> Tensor:
    """ATen's ``binary_cross_entropy_with_logits`` (positional arguments, the reduction as ATen's
    code), in the form of torch's own decomposition with :func:`log_sigmoid` in it. Not float32:
    torch's own."""
    if input.dtype != torch.float32:
        return aten.binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction)
    if pos_weight is not None:
        loss = (1 - target) * input - ((pos_weight - 1) * target + 1) * log_sigmoid(input)
    else:
        loss = (1 - target) * input - log_sigmoid(input)
    if weight is not None:
        loss = loss * weight
    loss = loss.to(target.dtype)
    if reduction == _MEAN:
        return loss.mean()
    return loss.sum() if reduction == _SUM else loss


def tanh(x: Tensor) -> Tensor:
    """``torch.tanh(x)`` within about 1.5 ulp in float32. Not float32: torch's own."""
    if x.dtype != torch.float32:
        return aten.tanh(x)
    a = x.abs()
    e = (-2 * a).exp()
    return (x * _horner(TANH_COEFFICIENTS, x * x)).where(a < TANH_CUT, ((1 - e) / (1 + e)).copysign(x))


_FORMS = {aten.binary_cross_entropy_with_logits.default: binary_cross_entropy_with_logits,
          aten.softplus.default: softplus, aten.tanh.default: tanh}


def rewrite(gm: fx.GraphModule) -> int:
    """Replace, in place, each call of an ATen operation this module has a form of by that form,
    where it makes a float32 tensor (``node.meta["dtype"]``, as :func:`ppmodels.recording.record`
    notes it; a node without it is replaced, and the form checks at run time); returns how many it
    replaced (the graph is recompiled if any)."""
    n = 0
    for node in gm.graph.nodes:
        if (node.op == "call_function" and node.target in _FORMS
                and node.meta.get("dtype", torch.float32) == torch.float32):
            node.target = _FORMS[node.target]
            n += 1
    if n:
        gm.recompile()
    return n
