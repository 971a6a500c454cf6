"""`seasoning.evaluate` run for real on a Fashion-MNIST model: eval.json is complete, reused when
up to date and never silently replaced; other datasets; threat specs; the CLI's errors."""

import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from absl import flags

from seasoning import (
    cli,
    config_lib,
    data,
    errors,
    evaluate,
    evaluation,
    lease,
    stats,
    threat,
    train,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "configs/fmnist_cnn_linf.py")
LINF = threat.ThreatModel("linf", 0.1)


@pytest.fixture(scope="module")
def runs(family):
    """The shared family's nominal model (the attacks need a model, not a robust one:
    robustness from adversarial training is tested in test_ingredients.py)."""
    return {"run": family["fmnist_cnn_scratch"]}


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A cnn-small trained for 5 steps on synthetic 32x32 RGB images of 10 classes (the shape
    and class count of CIFAR-10), nominally."""
    workdir = str(tmp_path_factory.mktemp("runs") / "synthetic")
    overrides = [
        "dataset.name=synthetic",
        "dataset.image_size=32",
        "max_steps=5",
        "threat.norm=none",
        "threat.eps=0.0",
        "attack.name=none",
    ]
    train.train_and_evaluate(config_lib.load_config(f"{FMNIST}:runlocal", overrides), workdir)
    return workdir


@pytest.mark.slow
def test_eval_json_is_complete_and_not_silently_replaced(runs):
    workdir = runs["run"]
    threats = [LINF, threat.parse("l2:0.8")]
    settings = dict(version="fast", n_iter=5, output="e.json")
    result = evaluate.evaluate_run(workdir, threats, n_examples=64, batch_size=8, **settings)
    with open(os.path.join(workdir, "e.json")) as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk["threat_models"]) == {"linf:0.1", "l2:0.8"}
    assert on_disk["settings"]["overrides"] == {"n_iter": 5}
    assert on_disk["threat_models"]["l2:0.8"]["settings"]["n_iter"] == 5
    assert on_disk["jax"]["matmul_precision"] == "highest"  # as tests/conftest.py sets it
    assert on_disk["settings"]["dataset"] == "fashion_mnist" and on_disk["processes"] == 1
    assert on_disk["clean_count"] == round(64 * on_disk["clean_accuracy"])
    per_threat = [e["robust_accuracy"] for e in on_disk["threat_models"].values()]
    assert on_disk["union"]["robust_accuracy"] <= min(per_threat)
    # Every accuracy with its 95% interval, in the file and in the table.
    for entry in (*on_disk["threat_models"].values(), on_disk["union"]):
        assert entry["robust_interval"] == stats.accuracy_interval(entry["robust_accuracy"], 64)
    low, high = on_disk["clean_interval"]
    assert 0 <= low < on_disk["clean_accuracy"] < high <= 1 and "Clopper" in on_disk["intervals"]
    table = evaluate.format_table(on_disk)
    assert "union" in table and "l2:0.8" in table and "apgd-t" in table
    assert f"{100 * low:.1f}-{100 * high:.1f}" in table and "95% CI" in table

    # Other settings into the same file: refused, naming the difference; then on request.
    with pytest.raises(ValueError, match=r"other settings.*\n.*n_examples: 64 -> 32"):
        evaluate.evaluate_run(workdir, threats, n_examples=32, **settings)
    with open(os.path.join(workdir, "e.json")) as f:
        assert json.load(f) == on_disk
    # The same settings again: the result on disk is reused, not recomputed.
    assert evaluate.evaluate_run(workdir, threats, n_examples=64, **settings) == on_disk
    again = evaluate.evaluate_run(
        workdir, [LINF], n_examples=32, batch_size=8, overwrite=True, **settings
    )
    assert again["n_examples"] == 32


@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_examples=-5), "n_examples=-5: expected an integer >= 0"),
        (dict(batch_size=0), "batch_size=0: expected an integer >= 1"),
    ],
)
def test_bad_sizes_are_refused_before_anything_is_written(runs, kwargs, message):
    with pytest.raises(errors.UserError, match=message):
        evaluate.evaluate_run(runs["run"], [LINF], output="bad.json", **kwargs)
    assert not os.path.exists(os.path.join(runs["run"], "bad.json"))


@pytest.mark.slow
def test_an_evaluation_stopped_by_sigterm_resumes_to_the_same_result(runs, tmp_path, monkeypatch):
    """SIGTERM during the first of two threat models: the evaluation stops after it (exit 5
    from the CLI) with that threat model saved (`complete: false`), refuses to go on without
    --resume, and resumed does not attack it again and ends with the uninterrupted result."""
    threats = [LINF, threat.parse("l2:0.8")]
    settings = dict(version="fast", n_iter=5, n_examples=48, batch_size=8)
    whole = evaluate.evaluate_run(
        runs["run"], threats, output=str(tmp_path / "whole.json"), **settings
    )
    output = str(tmp_path / "stopped.json")
    real = evaluation.Evaluator._attack
    attacked = []

    def attack(self, variables, source, indices, clean, tm, *args):
        attacked.append(str(tm))
        if len(attacked) == 1:
            signal.raise_signal(signal.SIGTERM)
        return real(self, variables, source, indices, clean, tm, *args)

    monkeypatch.setattr(evaluation.Evaluator, "_attack", attack)
    with pytest.raises(errors.PreemptedError, match=r"after 1 of 2 threat models \(linf:0.1\)"):
        evaluate.evaluate_run(runs["run"], threats, output=output, **settings)
    with open(output) as f:
        partial = json.load(f)
    assert not partial["complete"] and list(partial["finished"]) == ["linf:0.1"]
    with pytest.raises(errors.UserError, match="pass --resume"):
        evaluate.evaluate_run(runs["run"], threats, output=output, **settings)
    resumed = evaluate.evaluate_run(runs["run"], threats, output=output, resume=True, **settings)
    assert attacked == ["linf:0.1", "l2:0.8"]  # linf not attacked again
    for key in ("clean_accuracy", "union", "settings"):
        assert resumed[key] == whole[key], key
    for name, entry in whole["threat_models"].items():  # all but the times
        for key in ("robust_accuracy", "robust_count", "after", "settings"):
            assert resumed["threat_models"][name][key] == entry[key], (name, key)


@pytest.mark.slow
def test_an_output_another_live_evaluation_writes_is_refused(runs, tmp_path):
    """Each result file has its lease (`<output>.lease`), so a training job still writing the
    workdir does not stop an evaluation, and two evaluations into one file do not both run."""
    output = str(tmp_path / "eval.json")
    with lease.of_file(output) as holder:
        with pytest.raises(errors.BusyError, match=f"{output} is in use by another job"):
            evaluate.evaluate_run(runs["run"], [LINF], output=output)
        assert os.listdir(tmp_path) == ["eval.json.lease"] and holder.lost is None


def test_default_threats_follow_the_dataset():
    assert [str(t) for t in data.default_threats("fashion_mnist")] == [
        "linf:0.1",
        "l2:0.8",
        "l1:10",
    ]
    assert [str(t) for t in data.default_threats("cifar10")] == [
        "linf:0.0313725",
        "l2:0.5",
        "l1:12",
    ]
    assert data.default_threats("imagenet2012")[0].eps == pytest.approx(4 / 255)
    with pytest.raises(errors.UserError, match="'synthetic'.*eval.threats"):
        data.default_threats("synthetic")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("linf", "not of the form norm:eps"),
        ("linf:abc", "eps 'abc' is not a number"),
        ("l5:0.1", "unknown threat norm 'l5'"),
        ("l2:-1", "eps must be a finite number >= 0"),
    ],
)
def test_threat_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        threat.parse(spec)
    assert threat.parse("linf:8/255").eps == pytest.approx(8 / 255)


@pytest.mark.slow
def test_cli_error_is_one_line_and_exit_2(runs):
    """The real command (`--n_examples=-5` once wrote an eval.json of NaN and exited 0)."""
    argv = [
        sys.executable,
        "-m",
        "seasoning.evaluate",
        f"--workdir={runs['run']}",
        "--n_examples=-5",
        "--output=bad.json",
    ]
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "n_examples=-5: expected an integer >= 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(runs["run"], "bad.json"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--threat=linf:abc"], "eps 'abc' is not a number"),
        (["--workdir=/nonexistent/run"], "config.json not found"),
        (["--batch_size=0"], "batch_size=0: expected an integer >= 1"),
        (["--dataset=cifar-10"], "Unknown dataset 'cifar-10'"),
    ],
)
def test_cli_errors_are_one_line_and_exit_2(runs, capsys, args, message):
    """The command's entry point in this process (its flags parsed as absl parses them)."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(
        ["evaluate", f"--workdir={runs['run']}", "--cpu_devices=0", "--output=bad.json", *args]
    )
    try:
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(["evaluate"])
    finally:
        flags.FLAGS.unparse_flags()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not os.path.exists(os.path.join(runs["run"], "bad.json"))


@pytest.mark.slow
def test_another_dataset_is_evaluated_and_recorded(synthetic_run, tmp_path):
    """A model of 32x32 RGB images of 10 classes on CIFAR-10 (TFDS mock data): it runs, with
    CIFAR-10's radii from the registry, and eval.json says which dataset it measured (and that
    the attacks searched in bfloat16)."""
    output = str(tmp_path / "cifar.json")
    with tfds.testing.mock_data(num_examples=24):
        result = evaluate.evaluate_run(
            synthetic_run,
            dataset="cifar10",
            version="fast",
            n_examples=16,
            batch_size=16,
            output=output,
            n_iter=2,
            n_target_classes=1,
            search_dtype="bfloat16",
        )
    with open(output) as f:
        on_disk = json.load(f)
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["dataset"] == "cifar10" and on_disk["settings"]["dataset"] == "cifar10"
    assert on_disk["settings"]["split"] == "test" and on_disk["n_examples"] == 16
    assert on_disk["settings"]["threats"] == [str(t) for t in data.default_threats("cifar10")]
    assert on_disk["settings"]["search_dtype"] == "bfloat16"
    assert "float32, search in bfloat16" in evaluate.format_table(on_disk)


@pytest.mark.slow
def test_a_dataset_with_another_class_count_is_refused(synthetic_run, tmp_path):
    output = tmp_path / "c100.json"
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(errors.UserError, match="cifar100/test needs 100 classes.*on 10"):
            evaluate.evaluate_run(synthetic_run, [LINF], dataset="cifar100", output=str(output))
    assert not output.exists()


@pytest.mark.slow
def test_a_dataset_without_radii_needs_threats(synthetic_run, tmp_path):
    with pytest.raises(errors.UserError, match="'synthetic'"):
        evaluate.evaluate_run(synthetic_run, output=str(tmp_path / "x.json"))


@pytest.mark.parametrize(
    "setting, environ, expected",
    [
        ("auto", {"JAX_COMPILATION_CACHE_DIR": "/jax/cache", "XDG_CACHE_HOME": "/x"}, "/jax/cache"),
        ("auto", {"XDG_CACHE_HOME": "/x"}, "/x/seasoning/jax"),
        ("auto", {}, os.path.join(os.path.expanduser("~"), ".cache", "seasoning", "jax")),
        ("/my/cache", {"JAX_COMPILATION_CACHE_DIR": "/jax/cache"}, "/my/cache"),
        ("off", {"JAX_COMPILATION_CACHE_DIR": "/jax/cache"}, None),
    ],
)
def test_the_commands_compilation_cache_is_on_by_default_in_the_users_cache(
    setting, environ, expected
):
    """`--compilation_cache` (every command): JAX's own variable first, then the user's cache
    folder; a folder given; off."""
    assert cli.compilation_cache_dir(setting, environ) == expected
