"""ThreatModel: validation, and exactness of the projections onto Lp ball ∩ [0, 1] box."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from seasoning import threat

EPS_GRID = {
    "linf": (1e-4, 0.03, 0.3, 2.0),
    "l2": (1e-4, 0.5, 3.0, 100.0),
    "l1": (1e-4, 1.0, 12.0, 1e4),
}
SHAPES = ((6, 5), (4, 3, 3, 2), (3, 28, 28, 1))


def _norm_np(d, norm):
    d = d.reshape(d.shape[0], -1).astype(np.float64)
    if norm == "linf":
        return np.abs(d).max(1)
    if norm == "l2":
        return np.sqrt((d**2).sum(1))
    return np.abs(d).sum(1)


def _problem(rng, shape, scale):
    """Centres in the box (a quarter of them on the faces) and points to project."""
    x = rng.uniform(0, 1, shape).astype(np.float32)
    flat = x.reshape(shape[0], -1)
    k = max(flat.shape[1] // 4, 1)
    flat[:, :k] = np.round(flat[:, :k])
    x = flat.reshape(shape)
    v = x + rng.normal(0, 1, shape).astype(np.float32) * scale
    return x, v.astype(np.float32)


@functools.cache
def _jitted(tm):
    """tm.project, compiled once per norm and shape (eps is traced)."""
    f = jax.jit(threat.project, static_argnums=2)
    return lambda v, x: f(v, x, tm.norm, jnp.float32(tm.eps))


# ------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "norm, eps, match",
    [
        ("l3", 1.0, "l3"),
        ("linf", -0.1, "-0.1"),
        ("l2", float("nan"), "nan"),
        ("l1", float("inf"), "inf"),
        ("l2", "a lot", "a lot"),
        ("none", 0.5, "none"),
    ],
)
def test_invalid_threat_models_raise(norm, eps, match):
    with pytest.raises(ValueError, match=match):
        threat.ThreatModel(norm, eps)


def test_unknown_norm_error_lists_allowed():
    with pytest.raises(ValueError, match="linf.*l2.*l1.*none"):
        threat.ThreatModel("l0", 1.0)


def test_threat_model_is_frozen_hashable_and_static_for_jit():
    tm = threat.ThreatModel("Linf", 8 / 255)
    assert tm.norm == "linf" and isinstance(tm.eps, float)
    assert hash(tm) == hash(threat.ThreatModel("linf", 8 / 255))
    assert tm == threat.ThreatModel("linf", np.float64(8 / 255))  # numpy scalars become floats
    with pytest.raises(AttributeError):
        tm.eps = 0.1
    f = jax.jit(lambda v, x, tm: tm.project(v, x), static_argnums=2)
    x = jnp.full((2, 3), 0.5)
    np.testing.assert_allclose(f(x + 1.0, x, tm), x + 8 / 255, rtol=1e-6)
    assert threat.ThreatModel("none", 0).trivial and threat.ThreatModel("l2", 0.0).trivial
    assert tm.with_eps(0.1) == threat.ThreatModel("linf", 0.1)


def test_none_and_zero_eps_project_to_x():
    rng = np.random.default_rng(0)
    x, v = _problem(rng, (4, 7), 1.0)
    for tm in (threat.ThreatModel("none", 0.0), threat.ThreatModel("l1", 0.0)):
        np.testing.assert_array_equal(tm.project(v, x), x)
        assert bool(tm.contains(x, x).all())
        assert not bool(tm.contains(v, x).any())


def test_contains_rejects_outside_points_and_nan():
    x = jnp.full((3, 4), 0.5)
    tm = threat.ThreatModel("l2", 0.1)
    pts = jnp.stack([x[0] + 0.04, x[1] + 0.06, x[2].at[0].set(jnp.nan)])
    np.testing.assert_array_equal(tm.contains(pts, x), [True, False, False])
    box = threat.ThreatModel("linf", 1.0)
    assert not bool(box.contains(x.at[0, 0].set(1.01), x)[0])


# ------------------------------------------------------------------------------- properties


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_projection_properties(norm):
    """Feasible, idempotent and nearer to v than many other feasible points, for every eps."""
    rng = np.random.default_rng({"linf": 1, "l2": 2, "l1": 3}[norm])
    for shape in SHAPES:
        for eps in EPS_GRID[norm]:
            tm = threat.ThreatModel(norm, eps)
            proj = _jitted(tm)
            x, v = _problem(rng, shape, scale=rng.choice([0.01, 0.3, 3.0]))
            p = np.asarray(proj(v, x))
            assert bool(tm.contains(p, x).all()), (shape, eps)
            np.testing.assert_allclose(proj(p, x), p, atol=2e-6)
            # Feasible competitors: projections of random points, and mixtures of those with x
            # and with p (all convex combinations of feasible points are feasible).
            d_best = _norm_np(p - v, "l2")
            for _ in range(6):
                _, w = _problem(rng, shape, scale=rng.choice([0.05, 1.0, 10.0]))
                f = np.asarray(proj(w, x))
                for lam in (0.0, 0.5, 0.9, 0.99):
                    for base in (x, p):
                        q = lam * base + (1 - lam) * f
                        assert np.all(d_best <= _norm_np(q - v, "l2") + 1e-5), (shape, eps, lam)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_projection_is_tight_on_the_sphere(norm):
    """When the box alone is infeasible the projection lies on the sphere (to float precision)."""
    rng = np.random.default_rng(4)
    eps = {"l2": 0.5, "l1": 4.0}[norm]
    x, v = _problem(rng, (16, 32, 32, 3), 3.0)
    tm = threat.ThreatModel(norm, eps)
    n = _norm_np(np.asarray(_jitted(tm)(v, x)) - x, norm)
    np.testing.assert_allclose(n, eps, rtol=2e-6)


def test_linf_projection_is_the_clip():
    rng = np.random.default_rng(5)
    x, v = _problem(rng, (8, 4, 4, 3), 0.5)
    tm = threat.ThreatModel("linf", 0.1)
    np.testing.assert_array_equal(
        tm.project(v, x), np.clip(np.clip(v, x - 0.1, x + 0.1), 0.0, 1.0).astype(np.float32)
    )


# ------------------------------------------------------------------------------- independent solver


def _scipy_projection(v, x, norm, eps):
    """argmin ||z - v||^2 over the ball ∩ box by SLSQP (float64); l1 via z = x + p - q."""
    v, x = v.astype(np.float64), x.astype(np.float64)
    n = x.size
    lo, hi = -x, 1.0 - x
    if norm == "l2":
        res = scipy.optimize.minimize(
            lambda d: np.sum((d - (v - x)) ** 2),
            np.zeros(n),
            jac=lambda d: 2 * (d - (v - x)),
            bounds=list(zip(lo, hi, strict=True)),
            constraints=[
                dict(type="ineq", fun=lambda d: eps**2 - d @ d, jac=lambda d: -2 * d),
            ],
            method="SLSQP",
            options=dict(ftol=1e-15, maxiter=500),
        )
        return x + res.x
    a = np.eye(n)

    def obj(pq):
        return np.sum((pq[:n] - pq[n:] - (v - x)) ** 2)

    def jac(pq):
        g = 2 * (pq[:n] - pq[n:] - (v - x))
        return np.concatenate([g, -g])

    res = scipy.optimize.minimize(
        obj,
        np.zeros(2 * n),
        jac=jac,
        bounds=[(0, None)] * (2 * n),
        constraints=[
            dict(type="ineq", fun=lambda pq: eps - pq.sum(), jac=lambda pq: -np.ones(2 * n)),
            dict(
                type="ineq", fun=lambda pq: pq[:n] - pq[n:] - lo, jac=lambda pq: np.hstack([a, -a])
            ),
            dict(
                type="ineq", fun=lambda pq: hi - pq[:n] + pq[n:], jac=lambda pq: np.hstack([-a, a])
            ),
        ],
        method="SLSQP",
        options=dict(ftol=1e-15, maxiter=1000),
    )
    return x + res.x[:n] - res.x[n:]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_projection_agrees_with_scipy(norm):
    rng = np.random.default_rng(6)
    n_cases = 0
    for eps in {"l2": (0.05, 0.4, 1.0), "l1": (0.05, 0.7, 2.0)}[norm]:
        x, v = _problem(rng, (12, 6), 1.0)
        tm = threat.ThreatModel(norm, eps)
        p = np.asarray(_jitted(tm)(v, x))
        for i in range(x.shape[0]):
            ref = _scipy_projection(v[i], x[i], norm, eps)
            # SLSQP itself is accurate to ~1e-7 here; the float32 projection to ~1e-7.
            np.testing.assert_allclose(p[i], ref, atol=2e-5, err_msg=f"{norm} eps={eps} i={i}")
            n_cases += 1
    assert n_cases == 36
