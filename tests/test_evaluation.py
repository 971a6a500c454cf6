"""The one evaluator on a linear problem whose robust accuracy is known exactly: both schedules,
a break is never undone, the union, and its errors. (Multi-process: test_multiprocess.py.)"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_attacks  # the linear problem and its exact solution (tests/ is on sys.path)

from seasoning import data, errors, evaluation, parallel, threat
from seasoning.attacks import autoattack

EPS = test_attacks.EPS


@functools.cache
def _problem(seed=3):
    """(variables, source, x, y) of test_attacks' linear problem, its images as uint8 (what a
    data source holds) and x as the evaluator sees them."""
    w, b, x, y = test_attacks._linear_problem(seed=seed)
    images = np.round(x * 255).astype(np.uint8)
    source = data.ArraySource(images, y, num_classes=10)
    return {"w": w, "b": b}, source, data.to_float(images), y


def _apply(v, z):
    return z.reshape(z.shape[0], -1) @ v["w"].T + v["b"]


@functools.cache
def _exact_robust(norm, seed=3):
    """bool [n]: provably robust points of `_problem` (as test_attacks' `_exact_robust`)."""
    v, _, x, y = _problem(seed)
    w, b = v["w"].astype(np.float64), v["b"].astype(np.float64)
    x = x.reshape(len(x), -1).astype(np.float64)
    z = x @ w.T + b
    others = np.array([[j for j in range(10) if j != t] for t in y])
    c = w[y][:, None, :] - w[others]
    margins = z[np.arange(len(y)), y][:, None] - np.take_along_axis(z, others, 1)
    worst = margins + test_attacks._min_linear(c, x, norm, EPS[norm])
    return (np.argmax(z, 1) == y) & np.all(worst > 0, axis=1)


# 8 points a call, two a device: survivor batches then have one shape (one compile per
# attack); 300 points leave a padded last batch.
def _evaluate(threats, schedule="still_robust", version="standard", batch_size=8, **kw):
    variables, source, _, _ = _problem()
    settings = evaluation.AttackSettings.make(threats, version, **kw)
    evaluator = evaluation.Evaluator(_apply, settings, schedule=schedule, batch_size=batch_size)
    return evaluator.run(variables, source, np.arange(len(source)), key=jax.random.key(0))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_still_robust_reaches_the_exact_robust_accuracy(norm):
    """Each restart and target class on the points still robust, padded batches (300 points,
    8 per call) sharded over 4 devices: never above exact, within one point of it.

    Seed 3: APGD-CE and APGD-T alone leave 2 provably breakable points of 300 robust under l1
    (43 and 39 vs exact 37); FAB-T and Square close that to one."""
    tm = threat.ThreatModel(norm, EPS[norm])
    result = _evaluate([tm])
    exact = _exact_robust(norm)
    robust = result.flags[result.names.index(str(tm))]
    _, _, x, y = _problem()
    np.testing.assert_array_equal(
        result.flags[0], np.argmax(_apply(_problem()[0], x), 1) == y
    )  # clean
    assert not np.any(exact & ~robust)  # a provably robust point is never counted broken
    assert robust.sum() - exact.sum() <= 1, (robust.sum(), exact.sum())
    after = result.details[str(tm)]["after"]
    assert list(after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(after.values()) == sorted(after.values(), reverse=True)
    assert after["square"] == result.accuracies()[str(tm)]
    assert result.names == ["clean", str(tm)] and result.loss.shape == (300,)


def test_every_decision_runs_at_full_float32_precision():
    """An evaluation's decisions (is this point classified correctly) trace every matmul and
    convolution of a real model at precision HIGHEST, which GPUs (TF32) and TPUs (bfloat16
    passes) would otherwise lower; the attacks' own search keeps the default."""
    from seasoning import models

    model = models.get_model("cnn-small", num_classes=10, features=(4, 8, 8), hidden=16)
    x = jnp.zeros((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)

    def logits_fn(z):
        return model.apply(variables, z, train=False)

    y = jnp.zeros(2, int)
    with jax.default_matmul_precision("tensorfloat32"):  # as on a GPU (tests set "highest")
        decided = str(jax.make_jaxpr(autoattack.decided_correct, static_argnums=0)(logits_fn, x, y))
        searched = str(jax.make_jaxpr(autoattack.correct, static_argnums=0)(logits_fn, x, y))
    ops = decided.count("dot_general[") + decided.count("conv_general_dilated[")
    assert ops >= 4 and decided.count("precision=(Precision.HIGHEST, Precision.HIGHEST)") == ops
    assert searched.count("precision=(Precision.HIGH, Precision.HIGH)") == ops


def test_search_dtype_for():
    assert evaluation.search_dtype_for("same", "float32") == "float32"
    assert evaluation.search_dtype_for("same", "bfloat16") == "bfloat16"
    assert evaluation.search_dtype_for("bfloat16", "float32") == "bfloat16"
    with pytest.raises(errors.UserError, match="search_dtype='half' is not one of"):
        evaluation.search_dtype_for("half", "float32")


@pytest.mark.slow
def test_schedules_agree_within_the_attacks_randomness():
    """all_points (every attack on every point) and still_robust (later attacks on survivors)
    run the same attacks; only the random draws each point gets differ. Both are upper bounds
    of the exact robust accuracy, so on this problem, where each lands within one point of it
    (seed 3, measured), they differ by at most one point per threat model, and the union by at
    most the sum of those."""
    threats = [threat.ThreatModel(n, EPS[n]) for n in ("linf", "l2")]
    still = _evaluate(threats, version="fast")
    every = _evaluate(threats, schedule="all_points", version="fast")
    assert still.names == every.names == ["clean", "linf:0.03", "l2:0.3", "union"]
    np.testing.assert_array_equal(still.flags[0], every.flags[0])  # clean: no randomness
    for i, tm in enumerate(threats, start=1):
        exact = _exact_robust(tm.norm)
        for result in (still, every):
            assert not np.any(exact & ~result.flags[i])
        assert abs(int(every.flags[i].sum()) - int(still.flags[i].sum())) <= 1
        assert every.flags[i].sum() <= still.flags[i].sum() + 1
    assert abs(int(every.flags[3].sum()) - int(still.flags[3].sum())) <= 2
    for result in (still, every):
        np.testing.assert_array_equal(result.flags[3], result.flags[1] & result.flags[2])
        acc = result.accuracies()
        assert 0 <= acc["union"] <= min(acc["linf:0.03"], acc["l2:0.3"]) <= acc["clean"] <= 1


def test_a_break_is_never_undone(monkeypatch):
    """A point counts as robust only if every attack failed on it: a re-prediction of the
    returned points that disagrees (floats at the boundary) can break a point, never restore
    one."""
    tm = threat.ThreatModel("linf", EPS["linf"])
    honest = _evaluate([tm], version="fast")  # the programs of the test above: no compiling
    real = evaluation._compiled_final

    def disagreeing(apply_fn, mesh, tm):
        program = real(apply_fn, mesh, tm)

        def flipped(*args):
            ok, inside = program(*args)
            return ~ok, inside

        return flipped

    monkeypatch.setattr(evaluation, "_compiled_final", disagreeing)
    flipped = _evaluate([tm], version="fast")
    assert 0 < honest.flags[1].sum() < honest.flags[0].sum()
    # Every point counts as broken: the attacks broke some, the "re-prediction" the others.
    assert not flipped.flags[1].any()
    np.testing.assert_array_equal(flipped.flags[0], honest.flags[0])


def test_a_point_outside_the_threat_model_is_a_bug(monkeypatch):
    """An attack unit whose point leaves the ball raises (never a silently wrong number)."""
    real = evaluation._one_unit

    def escaping(apply_fn, search_apply_fn, variables, x, y, key, unit, **kw):
        x_adv, ok, inside = real(apply_fn, search_apply_fn, variables, x, y, key, unit, **kw)
        return x_adv, ok, inside & (jax.numpy.arange(len(x)) != 0)

    monkeypatch.setattr(evaluation, "_one_unit", escaping)
    evaluation._compiled_unit.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="outside linf:0.03"):
            _evaluate([threat.ThreatModel("linf", EPS["linf"])], version="fast")
    finally:
        evaluation._compiled_unit.cache_clear()


def test_clean_only_and_trivial_threats():
    result = _evaluate([], batch_size=128)
    assert result.names == ["clean"] and result.flags.shape == (1, 300)
    trivial = _evaluate([threat.ThreatModel("linf", 0.0)], batch_size=128)
    np.testing.assert_array_equal(trivial.flags[1], result.flags[0])


def test_metric_flags_and_accuracies():
    clean = np.array([True, True, True, False])
    robust = [np.array([True, True, False, False]), np.array([True, False, True, False])]
    flags = np.asarray(evaluation.metric_flags(clean, robust))
    np.testing.assert_array_equal(flags[-1], [True, False, False, False])
    assert evaluation.metric_names([threat.parse("linf:0.1")]) == ["clean", "linf:0.1"]
    np.testing.assert_allclose(evaluation.flag_accuracies(flags), [0.75, 0.5, 0.5, 0.25])
    with pytest.raises(RuntimeError, match="not an accuracy"):
        evaluation.checked_accuracy(5, 4)


def test_chunks_pad_and_load_batch_shards():
    """Evaluation batches: the last one padded (repeating its last point), survivor batches
    padded only to a multiple of the quantum; a batch is loaded sharded over the devices."""
    _, source, x, y = _problem()
    mesh = parallel.make_mesh()
    batches = list(evaluation.chunks(np.arange(21), 8))
    assert [len(p) for p, _ in batches] == [8, 8, 8] and [n for _, n in batches] == [8, 8, 5]
    np.testing.assert_array_equal(batches[-1][0], [16, 17, 18, 19, 20, 20, 20, 20])
    assert [len(p) for p, _ in evaluation.chunks(np.arange(21), 16, quantum=4)] == [16, 8]
    images, labels = evaluation.load_batch(source, np.array([3, 4, 4, 4, 4, 4, 4, 4]), mesh)
    np.testing.assert_array_equal(np.asarray(labels), [y[3]] + [y[4]] * 7)
    np.testing.assert_array_equal(np.asarray(images)[0], x[3])
    assert images.sharding.spec[0] == "data"


def test_bad_settings_are_user_errors():
    _, source, _, _ = _problem()
    mesh = parallel.make_mesh()
    with pytest.raises(errors.UserError, match="n_examples=-5: expected an integer >= 0"):
        evaluation.check_points(None, source, -5)
    with pytest.raises(errors.UserError, match=r"must lie in \[0, 300\)"):
        evaluation.check_points(np.array([0, 300]), source)
    with pytest.raises(errors.UserError, match="batch_size=0: expected an integer >= 1"):
        evaluation.batch_size_for(0, mesh)
    with pytest.raises(errors.UserError, match="Unknown schedule 'some'"):
        evaluation.Evaluator(_apply, evaluation.AttackSettings(), schedule="some")
    with pytest.raises(errors.UserError, match="Unknown AutoAttack version 'strong'"):
        evaluation.AttackSettings.make([], "strong")
    with pytest.raises(errors.UserError, match="n_iter"):
        evaluation.AttackSettings.make([threat.parse("linf:0.1")], "fast", n_iter=-1)


def test_one_evaluation_set_up_for_every_driver():
    """`target`: the run's own split or another dataset's, the dataset's usual radii unless
    threat models are given (or defaults are off), overrides read from any mapping or config
    section by `autoattack.SETTINGS` (its other keys ignored)."""
    from seasoning import train_config
    from seasoning.soup import config as soup_config

    run_dataset = train_config.base_train_config().dataset
    run_dataset.name = "fashion_mnist"
    own = evaluation.target(run_dataset)
    assert own.split == run_dataset.eval_split and own.dataset.name == "fashion_mnist"
    assert own.threats == tuple(data.default_threats("fashion_mnist"))
    section = {"n_iter": 7, "n_queries": 0, "batch_size": 16, "dataset": "ignored"}
    other = evaluation.target(
        run_dataset, "cifar10:test", threats=["linf:8/255"], version="fast", overrides=section
    )
    assert (other.dataset.name, other.split) == ("cifar10", "test")
    assert [str(t) for t in other.threats] == ["linf:0.0313725"]
    assert other.settings.overrides == (("n_iter", 7),) and other.settings.version == "fast"
    assert evaluation.target(run_dataset, "cifar10", default_threats=False).threats == ()
    # Every budget the soup schema's eval section may set is one of AutoAttack's, and back.
    eval_keys = set(soup_config.base_soup_config().eval)
    assert set(autoattack.BUDGETS) <= eval_keys and "attacks" not in autoattack.BUDGETS
