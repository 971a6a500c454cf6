"""`lax.conv_general_dilated` with an input gradient that XLA:CPU runs fast inside loops.

Attacks differentiate the model with respect to its input many times inside `lax.scan`. The
transpose of a convolution (the input gradient) reads the kernel with its input and output
features swapped; outside a loop XLA:CPU copies the kernel into the layout its fast convolution
needs, but inside a while loop's body it does not, and the input-gradient convolutions fall back
to a path several times slower (docs/benchmarks.md, "Attack speed"; jax-ml/jax#12868 is the
same effect).
`conv_general_dilated` here computes the same function and the same gradients, bit for bit,
but builds the input gradient from a kernel whose feature axes are swapped explicitly (behind an
`optimization_barrier`, so that XLA cannot fold the swap back into the convolution), which the
transposed convolution then reads in the fast layout. The kernel gradient has the same problem
inside loops (gradient accumulation differentiates the parameters in a `lax.scan` over
micro-batches); for the models' NHWC / HWIO layout it is computed as a forward convolution of
the explicitly transposed input by the transposed output gradient (`_kernel_gradient`).

Used by every convolution of `seasoning.models` (`nn.Conv(conv_general_dilated=...)`); on other
backends, and for grouped convolutions, it is plain `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _plain(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, precision):
    return lax.conv_general_dilated(
        lhs,
        rhs,
        strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        precision=precision,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _loop_friendly(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, numbers, precision):
    return _plain(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, numbers, precision)


def _forward(lhs, rhs, *statics):
    return _loop_friendly(lhs, rhs, *statics), (lhs, rhs)


def _backward(strides, padding, lhs_dilation, rhs_dilation, numbers, precision, residuals, g):
    lhs, rhs = residuals
    out, inp = numbers.rhs_spec[0], numbers.rhs_spec[1]
    # The same convolution of lhs with the kernel stored feature-swapped: its transpose reads
    # that copy, whose layout is the one XLA:CPU's fast convolution wants.
    swapped_kernel = lax.optimization_barrier(jnp.swapaxes(rhs, out, inp))
    swapped = lax.ConvDimensionNumbers(
        numbers.lhs_spec, (inp, out, *numbers.rhs_spec[2:]), numbers.out_spec
    )
    _, input_vjp = jax.vjp(
        lambda x: _plain(
            x, swapped_kernel, strides, padding, lhs_dilation, rhs_dilation, swapped, precision
        ),
        lhs,
    )
    if numbers == _NHWC and all(d == 1 for d in lhs_dilation or ()):
        kernel_grad = _kernel_gradient(lhs, rhs, g, strides, padding, rhs_dilation, precision)
    else:
        _, kernel_vjp = jax.vjp(
            lambda k: _plain(
                lhs, k, strides, padding, lhs_dilation, rhs_dilation, numbers, precision
            ),
            rhs,
        )
        kernel_grad = kernel_vjp(g)[0]
    return input_vjp(g)[0], kernel_grad


# flax's (and the models') layout: images NHWC, kernels HWIO.
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


def _kernel_gradient(lhs, rhs, g, strides, padding, rhs_dilation, precision):
    """The kernel gradient of an NHWC / HWIO convolution, as a forward NHWC / HWIO convolution.

    dk[a, b, i, o] = sum over n, y, x of lhs_padded[n, s*y + d*a, s*x + d*b, i] * g[n, y, x, o]
    (s the strides, d the kernel dilation): a convolution of the padded input, with its batch
    and feature axes swapped, by g as the kernel (dilated by s, stepping by d). The same sums
    as lax's kernel transpose, with both operands transposed explicitly behind an
    `optimization_barrier`, which XLA:CPU then convolves in its fast layout inside loops too.
    """
    dilation = tuple(rhs_dilation or (1, 1))
    window = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True)]
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], window, strides, padding)
    zero = jnp.zeros((), lhs.dtype)
    x = lax.pad(lhs, zero, [(0, 0, 0), *((lo, hi, 0) for lo, hi in padding), (0, 0, 0)])
    # Only the rows and columns that some output reads.
    extent = [w + (n - 1) * s for w, n, s in zip(window, g.shape[1:3], strides, strict=True)]
    x = x[:, : extent[0], : extent[1]]
    x = lax.optimization_barrier(jnp.transpose(x, (3, 1, 2, 0)))  # [I, H, W, N]
    kernel = lax.optimization_barrier(jnp.transpose(g, (1, 2, 0, 3)))  # [H', W', N, O]
    out = lax.conv_general_dilated(
        x,
        kernel,
        dilation,
        "VALID",
        rhs_dilation=tuple(strides),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )
    return jnp.transpose(out, (1, 2, 0, 3)).astype(rhs.dtype)  # [kh, kw, I, O]


_loop_friendly.defvjp(_forward, _backward)


def _tuple(value: Any) -> Any:
    return None if value is None else tuple(value)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Any,
    padding: Any,
    lhs_dilation: Any = None,
    rhs_dilation: Any = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """`lax.conv_general_dilated` (same arguments) with a loop-friendly input gradient."""
    if feature_group_count != 1 or kwargs or jax.default_backend() != "cpu":
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if not isinstance(padding, str):
        padding = tuple(tuple(p) for p in padding)
    return _loop_friendly(
        lhs,
        rhs,
        tuple(window_strides),
        padding,
        _tuple(lhs_dilation),
        _tuple(rhs_dilation),
        numbers,
        precision,
    )
