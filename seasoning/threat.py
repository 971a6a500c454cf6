"""Threat models: an Lp ball around the clean input intersected with the [0, 1] pixel box.

A `ThreatModel(norm, eps)` is the set {x + d : ||d||_p <= eps} ∩ [0, 1]^n, one per example
(batch axis 0, any trailing shape). `project` returns the exact Euclidean projection onto that
set; it is not "project onto the ball, then clip", which is not the projection for l2 and l1:

- linf: the set is itself a box, so the projection is a clip.
- l2: for a multiplier mu >= 0 of the ball constraint the minimiser is
  clip(x + t (v - x), 0, 1) with t = 1 / (1 + mu); ||clip(t u)|| grows with t, so the t that puts
  the point on the sphere is found by bisection.
- l1: for a multiplier lam >= 0 the minimiser is the soft-threshold of v - x by lam, clipped to
  the box; the l1 norm falls with lam, so lam is found by bisection.

Both bisections run over float32 values to adjacent floats (`bisection.flip_point`) and keep
the feasible end, so the result is feasible and, coordinate by coordinate, within rounding of
the exact projection. A last guard rescales any point whose float32 norm still
exceeds eps (by rounding) toward x.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from seasoning import bisection, errors

NORMS = ("linf", "l2", "l1", "none")


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(a.shape[0], -1)


def _per_example(v: jax.Array, like: jax.Array) -> jax.Array:
    """Reshapes a [B] array to broadcast against `like` ([B, ...])."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def lp_norm(delta: jax.Array, norm: str) -> jax.Array:
    """Per-example Lp norm of `delta` ([B, ...] -> [B]); "none" measures with linf."""
    d = _flat(delta)
    if norm in ("linf", "none"):
        return jnp.max(jnp.abs(d), axis=1) if d.shape[1] else jnp.zeros(d.shape[0], d.dtype)
    if norm == "l2":
        return jnp.sqrt(jnp.sum(d * d, axis=1))
    if norm == "l1":
        return jnp.sum(jnp.abs(d), axis=1)
    raise errors.UserError(f"unknown norm {norm!r}; allowed: {NORMS}")


def project_linf(v: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
    """Projection of `v` onto {||z - x||_inf <= eps} ∩ [0, 1]^n (a clip)."""
    eps = _per_example(jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1]), x)
    lo = jnp.maximum(x - eps, 0.0)
    hi = jnp.minimum(x + eps, 1.0)
    return jnp.clip(v, lo, hi)


def _finish(x: jax.Array, d: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """x + d, putting coordinates that sit on a box face exactly on it (0 or 1)."""
    z = jnp.where(d >= hi, 1.0, jnp.where(d <= lo, 0.0, x + d))
    return jnp.clip(z, 0.0, 1.0)


def _shrink_to_ball(z: jax.Array, x: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
    """Rescales z toward x where its float norm exceeds eps by rounding (a no-op otherwise)."""
    d = z - x
    n = lp_norm(d, norm)
    scale = jnp.where(n > eps, eps / jnp.maximum(n, 1e-30) * (1.0 - 2e-7), 1.0)
    return jnp.clip(x + d * scale[:, None], 0.0, 1.0)


def project_l2(v: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
    """Exact projection of `v` onto {||z - x||_2 <= eps} ∩ [0, 1]^n, per example."""
    shape = x.shape
    v, x = _flat(v), _flat(x)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    u, lo, hi = v - x, -x, 1.0 - x
    box = jnp.clip(u, lo, hi)
    inside = jnp.sum(box * box, axis=1) <= eps * eps

    def feasible(t):
        dt = jnp.clip(t[:, None] * u, lo, hi)
        return jnp.sum(dt * dt, axis=1) <= eps * eps

    # The largest feasible t: t = 0 is feasible, t >= 1 is not (else `inside`).
    t, _ = bisection.flip_point(lambda t: ~feasible(t), eps.shape)
    d = jnp.clip(t[:, None] * u, lo, hi)
    z = jnp.where(inside[:, None], jnp.clip(v, 0.0, 1.0), _finish(x, d, lo, hi))
    z = jnp.where(inside[:, None], z, _shrink_to_ball(z, x, eps, "l2"))
    return z.reshape(shape)


def project_l1(v: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
    """Exact projection of `v` onto {||z - x||_1 <= eps} ∩ [0, 1]^n, per example."""
    shape = x.shape
    v, x = _flat(v), _flat(x)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    u, lo, hi = v - x, -x, 1.0 - x
    a = jnp.abs(u)
    cap = jnp.where(u >= 0, hi, -lo)  # room in the direction of u

    def l1_at(lam):
        return jnp.sum(jnp.minimum(jnp.maximum(a - lam[:, None], 0.0), cap), axis=1)

    inside = l1_at(jnp.zeros_like(eps)) <= eps
    # The smallest feasible lam (at lam = max|u| the norm is 0).
    _, lam = bisection.flip_point(lambda m: l1_at(m) <= eps, eps.shape)
    lam = jnp.where(inside, 0.0, lam)
    d = jnp.sign(u) * jnp.minimum(jnp.maximum(a - lam[:, None], 0.0), cap)
    z = jnp.where(inside[:, None], jnp.clip(v, 0.0, 1.0), _finish(x, d, lo, hi))
    z = jnp.where(inside[:, None], z, _shrink_to_ball(z, x, eps, "l1"))
    return z.reshape(shape)


def project(v: jax.Array, x: jax.Array, norm: str, eps: float | jax.Array) -> jax.Array:
    """Exact projection of `v` onto {||z - x||_norm <= eps} ∩ [0, 1]^n (see module doc)."""
    if norm == "linf":
        return project_linf(v, x, eps)
    if norm == "l2":
        return project_l2(v, x, eps)
    if norm == "l1":
        return project_l1(v, x, eps)
    if norm == "none":
        return x
    raise errors.UserError(f"unknown norm {norm!r}; allowed: {NORMS}")


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """The set {x + d : ||d||_norm <= eps} ∩ [0, 1]^n around each clean input x.

    Frozen and hashable, so it can be a static argument of `jax.jit`.

    Attributes:
      norm: one of "linf", "l2", "l1", "none" (case-insensitive; "none" means no attack and
        requires eps == 0).
      eps: the radius, a finite float >= 0.
    """

    norm: str
    eps: float

    def __post_init__(self):
        norm = self.norm.lower() if isinstance(self.norm, str) else self.norm
        if norm not in NORMS:
            raise errors.UserError(f"unknown threat norm {self.norm!r}; allowed: {NORMS}")
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise errors.UserError(f"eps must be a finite number >= 0, got {self.eps!r}") from None
        if not math.isfinite(eps) or eps < 0:
            raise errors.UserError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if norm == "none" and eps != 0:
            raise errors.UserError(
                f"norm 'none' needs eps == 0 (no perturbation), got eps={self.eps!r}"
            )
        object.__setattr__(self, "norm", norm)
        object.__setattr__(self, "eps", eps)

    @property
    def trivial(self) -> bool:
        """True when the set is {x} alone (norm "none" or eps == 0): attacks return x."""
        return self.norm == "none" or self.eps == 0.0

    def with_eps(self, eps: float) -> ThreatModel:
        """The same norm with another radius."""
        return dataclasses.replace(self, eps=eps)

    def norm_of(self, delta: jax.Array) -> jax.Array:
        """Per-example norm of a perturbation `delta` [B, ...] -> [B]."""
        return lp_norm(delta, self.norm)

    def project(self, x_adv: jax.Array, x: jax.Array) -> jax.Array:
        """Exact Euclidean projection of `x_adv` onto the threat set around `x`, per example.

        Args:
          x_adv: [B, ...] points to project.
          x: [B, ...] clean inputs (centres), in [0, 1].

        Returns:
          [B, ...] the nearest points of ball ∩ box; jit-able, vectorised over the batch.
        """
        if self.trivial:
            return x
        return project(x_adv, x, self.norm, self.eps)

    def clamp(self, x_adv: jax.Array, x: jax.Array) -> jax.Array:
        """A cheap map into the threat set that leaves its points unchanged (not the projection).

        Scales x_adv - x down to norm eps where it is longer (guarding against rounding), then
        clips to the box; for linf this is the projection. Attacks end with it: their points
        are exact projections already, so it only removes float rounding excess.
        """
        if self.trivial:
            return x
        if self.norm == "linf":
            return project_linf(x_adv, x, self.eps)
        d = x_adv - x
        n = lp_norm(d, self.norm)
        scale = jnp.where(n > self.eps, self.eps / jnp.maximum(n, 1e-30) * (1.0 - 2e-7), 1.0)
        return jnp.clip(x + d * _per_example(scale, d), 0.0, 1.0)

    def contains(
        self, x_adv: jax.Array, x: jax.Array, atol: float = 1e-6, rtol: float = 1e-6
    ) -> jax.Array:
        """Per-example membership test, bool [B]: in the box and ||x_adv - x|| <= eps.

        The tolerance is `atol` on the box and `atol + rtol * eps` on the norm (float32 sums of
        many coordinates carry a relative rounding error of about 1e-7). NaN is never inside.
        """
        xa = _flat(x_adv)
        in_box = jnp.all((xa >= -atol) & (xa <= 1.0 + atol), axis=1)
        in_ball = lp_norm(x_adv - x, self.norm) <= self.eps + atol + rtol * self.eps
        return in_box & in_ball

    def __str__(self) -> str:
        return f"{self.norm}:{self.eps:.6g}"


def parse(spec: str) -> ThreatModel:
    """A threat model from `norm:eps` text, eps a number or a fraction: `linf:8/255`, `l2:0.5`.

    Raises:
      ValueError: naming the text when it is not of that form, or for a bad norm or eps.
    """
    norm, sep, eps_text = spec.partition(":")
    if not sep or not eps_text:
        raise errors.UserError(
            f"threat {spec!r} is not of the form norm:eps (e.g. linf:8/255, l2:0.5)"
        )
    num, slash, den = eps_text.partition("/")
    try:
        eps = float(num) / float(den) if slash else float(num)
    except (ValueError, ZeroDivisionError):
        raise errors.UserError(
            f"threat {spec!r}: eps {eps_text!r} is not a number or a fraction"
        ) from None
    return ThreatModel(norm, eps)
