"""Square Attack (Andriushchenko et al., ECCV 2020): score-based random search, linf, l2, l1.

Semantics follow fra31/auto-attack's `square.py`, on NHWC images [B, H, W, C]:

- the loss is the margin z_y - max_{j != y} z_j; a candidate replaces the current point if it
  lowers the margin or misclassifies; examples stop once misclassified; the loop ends early
  when every example is misclassified;
- the square side at iteration i is s = round(sqrt(p_i H W)), with p_i = p_init halved at
  iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 (`rescale_schedule=True` first maps
  i to i * 10000 / n_queries; AutoAttack runs 5000 queries with rescaling off);
- linf: start from vertical stripes x ± eps (one sign per column and channel); each step sets
  one s x s window (s >= 1) to x ± eps with one random sign per channel;
- l2 and l1: start from a grid of (H // 5)-sized blocks of the "concentric squares" pattern
  (rectangles weighted 1 / (k + 1)^2 for l2, 1 / (k + 1)^4 for l1, a + half over a - half)
  with a random sign per block and channel; each step moves the perturbation mass of a second
  window into the first (s >= 3, odd) and adds a fresh pattern there. l2 rescales the whole
  perturbation to norm eps (then clips to the box); l1 gives the first window, per channel,
  the window's old mass plus the unused budget (times C, as the reference does) and then
  projects exactly onto the l1 ball of radius eps (1 - 1e-6) ∩ box, as it projects the start.

Deviations: window positions and signs are drawn per example (the reference shares them across
the batch), window corners are uniform over all valid positions (the reference never picks the
last row/column), and all examples run in one vectorised loop.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from seasoning import errors, threat
from seasoning.attacks import losses
from seasoning.attacks._common import LogitsFn, bcast, where, wrong

_P_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
NORMS = ("linf", "l2", "l1")
_L1_SHRINK = 1.0 - 1e-6  # l1 points are projected onto the ball of radius eps (1 - 1e-6)


def p_selection(it: int, n_queries: int, p_init: float, rescale: bool) -> float:
    """The fraction p of pixels a square covers at iteration `it`."""
    if rescale:
        it = int(it / n_queries * 10000)
    k = sum(it > bound for bound in _P_BOUNDS)
    return p_init / 2**k


def square_sides(
    n_queries: int, p_init: float, rescale: bool, h: int, w: int, norm: str
) -> np.ndarray:
    """The square side of each iteration, int32 [n_queries]."""
    sides = np.zeros(n_queries, np.int32)
    for i in range(n_queries):
        s = int(round(math.sqrt(p_selection(i, n_queries, p_init, rescale) * h * w)))
        if norm == "linf":
            s = max(s, 1)
        else:
            s = max(s, 3)
            s += 1 - s % 2
        sides[i] = min(s, h, w)
    return sides


# The concentric rectangles' weights fall as 1 / (k + 1)^power; the pattern has unit norm.
_PATTERN_POWER = {"l2": 2, "l1": 4}


def _unit(d: np.ndarray, norm: str) -> np.ndarray:
    n = np.abs(d).sum() if norm == "l1" else np.sqrt((d**2).sum())
    return d / n if n > 0 else d


def _eta_rectangles(a: int, b: int, norm: str = "l2") -> np.ndarray:
    """Concentric rectangles around the centre of an a x b window, weights 1/(k+1)^power."""
    d = np.zeros((a, b))
    r, c = a // 2, b // 2
    for k in range(max(a // 2 + 1, b // 2 + 1)):
        d[max(r - k, 0) : min(r - k + 2 * k + 1, a), max(c - k, 0) : min(c - k + 2 * k + 1, b)] += (
            1.0 / (k + 1) ** _PATTERN_POWER[norm]
        )
    return _unit(d, norm)


def eta(s: int, norm: str = "l2") -> np.ndarray:
    """The s x s Square pattern of `norm` (l2 or l1): + rectangles on top, - below; unit norm."""
    top, bottom = _eta_rectangles(s // 2, s, norm), _eta_rectangles(s - s // 2, s, norm)
    return _unit(np.concatenate([top, -bottom], axis=0), norm)


def _windows(vh: jax.Array, vw: jax.Array, s: jax.Array, h: int, w: int) -> jax.Array:
    """bool [B, H, W, 1]: the s x s windows with top-left corners (vh, vw)."""
    hh = jnp.arange(h)[None, :, None]
    ww = jnp.arange(w)[None, None, :]
    rows = (hh >= vh[:, None, None]) & (hh < (vh + s)[:, None, None])
    cols = (ww >= vw[:, None, None]) & (ww < (vw + s)[:, None, None])
    return (rows & cols)[..., None]


def _position(u: jax.Array, s: jax.Array, size: int) -> jax.Array:
    """A uniform corner in {0, ..., size - s} from u ~ U[0, 1)."""
    return jnp.minimum(jnp.floor(u * (size - s + 1)).astype(jnp.int32), size - s)


def _sign(u: jax.Array) -> jax.Array:
    return jnp.where(u < 0.5, 1.0, -1.0)


def _blocks_init(key: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
    """The l2 / l1 starting point (see module doc), inside ball ∩ box."""
    b, h, w, c = x.shape
    s0 = max(h // 5, 1)
    start = (h - 5 * s0) // 2
    blk = -np.ones((h, w), np.int64)
    pat = np.zeros((2, h, w))
    base = eta(s0, norm)
    n_blocks = 0
    for i in range(h // s0):
        for j in range(w // s0):
            r0, c0 = start + i * s0, start + j * s0
            r1, c1 = min(r0 + s0, h), min(c0 + s0, w)
            if r0 >= h or c0 >= w or r1 <= r0 or c1 <= c0:
                continue
            blk[r0:r1, c0:c1] = n_blocks
            pat[0, r0:r1, c0:c1] = base[: r1 - r0, : c1 - c0]
            pat[1, r0:r1, c0:c1] = base.T[: r1 - r0, : c1 - c0]
            n_blocks += 1
    nb = max(n_blocks, 1)
    u = jax.random.uniform(key, (b, nb, c + 1))
    tr = u[..., c] < 0.5
    sg = _sign(u[..., :c])
    idx = jnp.asarray(np.maximum(blk, 0))
    pv = jnp.where(tr[:, idx], jnp.asarray(pat[1], x.dtype), jnp.asarray(pat[0], x.dtype))
    delta = jnp.where(jnp.asarray(blk >= 0)[None, :, :, None], pv[..., None] * sg[:, idx, :], 0.0)
    if norm == "l1":
        return threat.project_l1(x + delta, x, eps * _L1_SHRINK)
    delta = delta / bcast(threat.lp_norm(delta, "l2") + 1e-12, delta)
    return jnp.clip(x + eps * delta, 0.0, 1.0)


def square_run(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    n_queries: int = 5000,
    p_init: float = 0.8,
    rescale_schedule: bool = True,
    active: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The Square Attack loop: (x_best [B, H, W, C], margin at x_best [B]).

    Args:
      active: bool [B], the examples to attack (default: all); the others are frozen with margin
        -inf and do not keep the loop alive. Other arguments: as `square`.
    """
    if tm.norm not in NORMS:
        raise errors.UserError(f"square supports norms {NORMS}, got {tm.norm!r}")
    if x.ndim != 4:
        raise errors.UserError(f"square needs NHWC images [B, H, W, C], got shape {x.shape}")
    errors.check_count("n_queries", n_queries, 0)
    if not 0.0 < p_init <= 1.0:
        raise errors.UserError(f"p_init must be in (0, 1], got {p_init!r}")
    b, h, w, c = x.shape
    eps, norm = tm.eps, tm.norm
    y = y.astype(jnp.int32)
    active = jnp.ones((b,), bool) if active is None else active
    sides_np = square_sides(int(n_queries), p_init, rescale_schedule, h, w, norm)
    sides = jnp.asarray(sides_np)
    if norm != "linf":
        levels = sorted(set(sides_np.tolist())) or [min(3, h, w)]
        table = np.zeros((len(levels), 2, h, w), np.float32)
        for li, s in enumerate(levels):
            table[li, 0, :s, :s] = eta(s, norm)
            table[li, 1, :s, :s] = eta(s, norm).T
        level_of = np.zeros(max(levels) + 1, np.int32)
        level_of[levels] = np.arange(len(levels))
        table, level_of = jnp.asarray(table), jnp.asarray(level_of)

    k_init, k_loop = jax.random.split(key)
    if norm == "linf":
        x_best = jnp.clip(x + eps * _sign(jax.random.uniform(k_init, (b, 1, w, c))), 0.0, 1.0)
    else:
        x_best = _blocks_init(k_init, x, eps, norm)
    margin_of = lambda z: losses.margin(logits_fn(z).astype(jnp.float32), y)  # noqa: E731
    m_min = jnp.where(active, margin_of(x_best), -jnp.inf)

    def proposal(i, x_best):
        s = sides[i]
        # One draw per iteration: 2 corners, the pattern's orientation and a sign per channel.
        u = jax.random.uniform(jax.random.fold_in(k_loop, i), (b, 5 + c))
        vh, vw = _position(u[:, 0], s, h), _position(u[:, 1], s, w)
        m1 = _windows(vh, vw, s, h, w)
        sg = _sign(u[:, 5:])[:, None, None, :]
        if norm == "linf":
            return jnp.where(m1, jnp.clip(x + eps * sg, 0.0, 1.0), x_best)
        vh2, vw2 = _position(u[:, 2], s, h), _position(u[:, 3], s, w)
        m2 = _windows(vh2, vw2, s, h, w)
        delta = x_best - x
        # Per channel: the window norms (l2 or l1) and the image's norm.
        if norm == "l2":
            size = lambda v, m: jnp.sqrt(jnp.sum(v * v * m, axis=(1, 2), keepdims=True))  # noqa: E731
        else:
            size = lambda v, m: jnp.sum(jnp.abs(v) * m, axis=(1, 2), keepdims=True)  # noqa: E731
        nw1, nws = size(delta, m1), size(delta, m1 | m2)
        n_img = bcast(threat.lp_norm(delta, norm), delta)
        tr = (u[:, 4] < 0.5).astype(jnp.int32)
        pats = table[level_of[s]][tr]  # [B, H, W], pattern at the top-left corner
        rows = jnp.clip(jnp.arange(h)[None, :] - vh[:, None], 0, h - 1)
        cols = jnp.clip(jnp.arange(w)[None, :] - vw[:, None], 0, w - 1)
        placed = jax.vmap(lambda p, r, q: p[r[:, None], q[None, :]])(pats, rows, cols)
        new = (placed[..., None] * sg + delta / (1e-12 + nw1)) * m1
        if norm == "l1":
            room = (jnp.maximum(eps - n_img, 0.0) / c + nws) * c
            new = new / (1e-12 + size(new, m1)) * room
            delta = jnp.where(m1, new, jnp.where(m2, 0.0, delta))
            return threat.project_l1(x + delta, x, eps * _L1_SHRINK)
        room = jnp.maximum(eps**2 - n_img**2, 0.0) / c + nws**2
        new = new / (1e-12 + size(new, m1)) * jnp.sqrt(room)
        delta = jnp.where(m1, new, jnp.where(m2, 0.0, delta))
        delta = delta / bcast(threat.lp_norm(delta, "l2") + 1e-12, delta)
        return jnp.clip(x + eps * delta, 0.0, 1.0)

    def cond(carry):
        i, _, m = carry
        return (i < n_queries) & jnp.any(m > 0)

    def body(carry):
        i, x_best, m_min = carry
        x_new = proposal(i, x_best)
        m_new = margin_of(x_new)
        accept = (m_min > 0) & ((m_new < m_min) | (m_new <= 0))
        x_best = where(accept, x_new, x_best)
        return i + 1, x_best, jnp.where(accept, m_new, m_min)

    _, x_best, m_min = jax.lax.while_loop(cond, body, (jnp.int32(0), x_best, m_min))
    return tm.clamp(x_best, x), m_min


def square(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: jax.Array,
    tm: threat.ThreatModel,
    *,
    key: jax.Array,
    n_queries: int = 5000,
    p_init: float = 0.8,
    rescale_schedule: bool = True,
) -> jax.Array:
    """Square Attack, linf, l2 or l1, on NHWC images; pure and jit/vmap-able (settings static).

    Args:
      logits_fn: x [B, H, W, C] -> logits [B, K] (only its values are used).
      x: [B, H, W, C] float32 clean images in [0, 1].
      y: int [B] labels.
      tm: the threat model (static): "linf", "l2" or "l1" ("none" or eps == 0 returns x).
      key: `jax.random` key.
      n_queries: iterations (one model query each, after the initial one).
      p_init: initial fraction of pixels a square covers.
      rescale_schedule: map the p schedule onto `n_queries` (the reference class's default;
        AutoAttack runs 5000 queries without it).

    Returns:
      x_adv [B, H, W, C] inside `tm`: a misclassified point if found (x if x is misclassified),
      else the point of lowest margin found.
    """
    if tm.trivial:
        return x
    clean_wrong = wrong(logits_fn(x), y.astype(jnp.int32))
    x_best, _ = square_run(
        logits_fn,
        x,
        y,
        tm,
        key=key,
        n_queries=n_queries,
        p_init=p_init,
        rescale_schedule=rescale_schedule,
        active=~clean_wrong,
    )
    return where(clean_wrong, x, x_best)
