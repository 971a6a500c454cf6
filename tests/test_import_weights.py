"""Importing published checkpoints: every format and model gives the source's logits.

Each test builds the published model in its own framework (tests/published_models.py) with
random weights and random BatchNorm statistics, saves it as its authors do, imports the file
with `seasoning.import_weights` and compares logits on the same images: at most 1e-4 apart in
float32, in eval mode and, for BatchNorm models, in train mode (batch statistics).
"""

import os
import pickle
import re
import subprocess
import sys

import flax
import jax
import numpy as np
import published_models
import pytest

from seasoning import (
    errors,
    evaluate,
    import_weights,
    models,
    report,
    runs,
    soup,
    threat,
    train,
    trees,
)
from seasoning import workdir as workdir_lib
from seasoning.import_weights import layouts, readers

TOLERANCE = 1e-4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(n, size, seed=0):
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _ours(run, x, train_mode=False):
    """The imported model's logits (compiled: one program, not one per operation)."""
    if train_mode:
        apply = jax.jit(lambda v, z: run.model.apply(v, z, train=True, mutable=["batch_stats"])[0])
    else:
        apply = jax.jit(lambda v, z: run.model.apply(v, z, train=False))
    return np.asarray(apply(run.variables, x))


def _torch_logits(model, x, train_mode=False):
    import torch

    model.train(train_mode)
    with torch.no_grad():
        out = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    model.eval()
    return out


def _import_torch(tmp_path, model, name, *, wrap=None, **kwargs):
    """Saves `model`'s state dict (optionally wrapped as training scripts do) and imports it."""
    import torch

    state = model.state_dict()
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = str(tmp_path / "model.pt")
    torch.save(wrap(state) if wrap else state, path)
    workdir = str(tmp_path / "run")
    import_weights.import_run("torch", path, name, workdir, **kwargs)
    return runs.load(workdir)


CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


# name -> (our model name, the published model, input size, the statistics its authors
# normalise with before the model (None: it takes [0, 1] pixels), import flags, how the
# training script wrapped the state dict).
def _torch_cases():
    return {
        # RobustBench WRN as TRADES saved it: DataParallel prefixes, an unused sub_block1.
        "wrn": (
            "wrn-10-2",
            lambda t: t.WideResNet(10, 10, 2, sub_block1=True),
            32,
            None,
            {},
            lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}, "epoch": 1},
        ),
        # Normalises inside, with mean/std buffers that the import reads.
        "dm-wrn": (
            "dm-wrn-10-2",
            lambda t: t.DMWideResNet(10, depth=10, width=2),
            32,
            None,
            {},
            None,
        ),
        "resnet-18": (
            "resnet-18",
            lambda t: t.CifarResNet(t.BasicBlock, (2, 2, 2, 2)),
            32,
            None,
            {},
            lambda s: {"net": s, "acc": 0.5},
        ),
        # Rice et al.'s normalises outside the model: the import is told with --mean/--std.
        "preact-resnet-18": (
            "preact-resnet-18",
            lambda t: t.CifarResNet(t.PreActBlock, (2, 2, 2, 2), final_bn=True),
            32,
            CIFAR10,
            dict(mean=CIFAR10[0], std=CIFAR10[1]),
            None,
        ),
        "preact-resnet-18-kuangliu": (
            "preact-resnet-18",
            lambda t: t.CifarResNet(t.PreActBlock, (2, 2, 2, 2)),
            32,
            None,
            {},
            lambda s: {"model_state_dict": s},
        ),
        # torchvision's preprocessing statistics are the import's default for ResNet-50. At
        # 128 px the last stage's BatchNorm sees 4x4 values an image: in train mode, batch
        # statistics over fewer values amplify float32 rounding of the 50 layers to ~1e-4.
        "resnet-50": ("resnet-50", lambda t: t.ResNet50(num_classes=1000), 128, IMAGENET, {}, None),
        # timm's augreg ViTs: 0.5 / 0.5, the default for ViTs.
        "vit": (
            "vit-ti16",
            lambda t: t.VisionTransformer(32, 16, 10, 192, 12, 3),
            32,
            ((0.5,), (0.5,)),
            {},
            None,
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("case", list(_torch_cases()))
def test_torch_checkpoints_give_the_source_logits(tmp_path, case):
    torch = pytest.importorskip("torch")
    name, build, size, stats, kwargs, wrap = _torch_cases()[case]
    torch.manual_seed(0)
    model = build(published_models.torch_models())
    published_models.randomize_batch_norm(model)
    run = _import_torch(tmp_path, model, name, wrap=wrap, **kwargs)
    x = _images(8, size)
    source_x = (x - np.float32(stats[0])) / np.float32(stats[1]) if stats else x
    expected = _torch_logits(model, source_x)
    assert np.abs(_ours(run, x) - expected).max() <= TOLERANCE
    assert np.abs(expected).max() > 1e-2  # the comparison is not of near-zero logits
    if "batch_stats" in run.variables:
        expected = _torch_logits(model, source_x, train_mode=True)
        assert np.abs(_ours(run, x, train_mode=True) - expected).max() <= TOLERANCE
    assert run.config.imported_from.format == "torch"
    assert run.config.imported_from.sha256 == readers.sha256(str(tmp_path / "model.pt"))
    if case == "dm-wrn":
        assert run.config.imported_from.normalization == "checkpoint"
    if case == "vit":
        assert run.config.model.image_size == 32 and not run.config.model.gelu_approximate
    if case.startswith("preact"):
        assert run.config.model.final_norm == (case == "preact-resnet-18")


@pytest.mark.slow
def test_haiku_checkpoint_of_deepmind_gives_the_source_logits(tmp_path):
    forward = published_models.haiku_wide_resnet(depth=10, width=2)
    x = _images(4, 32)
    params, state = jax.jit(forward.init, static_argnames="is_training")(
        jax.random.key(0), x, is_training=True
    )
    rng = np.random.default_rng(1)
    # Random moving averages (Haiku reads `average`), so eval mode is no identity.
    state = {
        module: {
            k: (
                rng.random(v.shape).astype(np.float32) + (0.5 if "var" in module else -0.5)
                if k == "average"
                else np.asarray(v)
            )
            for k, v in leaves.items()
        }
        for module, leaves in state.items()
    }
    params = jax.tree.map(
        lambda v: np.asarray(v) + 0.1 * rng.standard_normal(v.shape, np.float32), params
    )
    path = str(tmp_path / "dm.npy")
    np.save(path, np.array((params, state), dtype=object), allow_pickle=True)  # as DeepMind's
    import_weights.import_run("haiku", path, "dm-wrn-10-2", str(tmp_path / "run"))
    run = runs.load(str(tmp_path / "run"))
    apply = jax.jit(forward.apply, static_argnames="is_training")
    expected = np.asarray(apply(params, state, None, x, is_training=False)[0])
    assert np.abs(_ours(run, x) - expected).max() <= TOLERANCE
    expected_train = np.asarray(apply(params, state, None, x, is_training=True)[0])
    assert np.abs(_ours(run, x, train_mode=True) - expected_train).max() <= TOLERANCE
    assert run.config.imported_from.normalization == "default"  # DeepMind's CIFAR-10 constants
    # The same arrays as an .npz (params and state flattened) import to the same model.
    flat = {**published_models.flatten(params), **published_models.flatten(state)}
    np.savez(tmp_path / "dm.npz", **flat)
    import_weights.import_run(
        "haiku", str(tmp_path / "dm.npz"), "dm-wrn-10-2", str(tmp_path / "run_npz")
    )
    assert np.abs(_ours(runs.load(str(tmp_path / "run_npz")), x) - expected).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("naming", ["big_vision", "vision_transformer"])
def test_npz_vit_gives_the_source_logits(tmp_path, naming):
    vit = published_models.big_vision_vit(10, 32, 16, width=192, depth=12, num_heads=3)
    x = _images(3, 32)
    params = jax.tree.map(np.asarray, jax.jit(vit.init)(jax.random.key(0), x)["params"])
    rng = np.random.default_rng(2)
    params = jax.tree.map(lambda v: v + 0.05 * rng.standard_normal(v.shape, np.float32), params)
    expected = np.asarray(jax.jit(vit.apply)({"params": params}, x))
    flat = published_models.flatten(params)
    if naming == "vision_transformer":  # the older names, class token inside the positions
        renames = {
            "LayerNorm_1": "LayerNorm_2",
            "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
            "MlpBlock_0": "MlpBlock_3",
        }
        old = {}
        for key, value in flat.items():
            for a, b in renames.items():
                key = key.replace(f"/{a}/", f"/{b}/")
            old[key] = value
        positions = old.pop("pos_embedding")
        old["Transformer/posembed_input/pos_embedding"] = np.concatenate(
            [np.zeros_like(positions[:, :1]), positions], axis=1
        )
        flat = old
    else:
        flat = {f"params/{k}": v for k, v in flat.items()}
    np.savez(tmp_path / "vit.npz", **flat)
    import_weights.import_run(
        "npz", str(tmp_path / "vit.npz"), "vit-ti16", str(tmp_path / "run"), dataset="synthetic"
    )
    run = runs.load(str(tmp_path / "run"))
    assert np.abs(_ours(run, x) - expected).max() <= TOLERANCE
    assert run.config.model.gelu_approximate and run.config.model.image_size == 32


@pytest.mark.slow
def test_published_layouts_of_the_full_sizes_match_the_definitions():
    """WRN-28-10 / 70-16, DeepMind's WRN-70-16 and ViT-B/16: every name and shape our layout
    expects is in the published definition's state dict and nothing else (checked on the meta
    device and with eval_shape: no weights are allocated)."""
    torch = pytest.importorskip("torch")
    t = published_models.torch_models()
    with torch.device("meta"):
        sources = {
            "wrn-28-10": t.WideResNet(28, 10, 10),
            "wrn-70-16": t.WideResNet(70, 10, 16),
            "dm-wrn-70-16": t.DMWideResNet(10, depth=70, width=16),
            "vit-b16": t.VisionTransformer(224, 16, 1000, 768, 12, 12),
        }
    for name, model in sources.items():
        stored = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_layout(name, "torch", stored, num_classes=1000 if name == "vit-b16" else 10)
    forward = published_models.haiku_wide_resnet(depth=70, width=16)
    x = np.zeros((1, 32, 32, 3), np.float32)
    shapes = jax.eval_shape(lambda: forward.init(jax.random.key(0), x, True))
    stored = flax.traverse_util.flatten_dict({**shapes[0], **shapes[1]}, sep="/")
    prefix = import_weights.model_prefix(stored, "dm-wrn-70-16", "haiku")
    assert prefix == "wide_res_net/~/"
    stored = {k.removeprefix(prefix): tuple(v.shape) for k, v in stored.items()}
    _check_layout("dm-wrn-70-16", "haiku", stored, num_classes=10)


def _check_layout(name, fmt, stored, num_classes):
    """Every name our layout reads is in `stored` (name -> shape) with a shape it accepts, and
    every other stored name is one the layout ignores (or input statistics)."""
    lay = layouts.layout(name, fmt)
    extra = {"image_size": 224} if name.startswith("vit") else {}
    module = models.get_model(name, num_classes=num_classes, **extra)
    size = extra.get("image_size", 32)
    expected = flax.core.unfreeze(
        jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
    )
    shapes = {
        trees.path_str(p): tuple(leaf.shape)
        for p, leaf in jax.tree_util.tree_leaves_with_path(expected)
    }
    read = set()
    for path, rule in layouts.rules(lay, expected).items():
        assert rule.keys[0] in stored, (name, path, rule.keys)
        assert stored[rule.keys[0]] in rule.transform.source_shapes(shapes[path]), (name, path)
        read.add(rule.keys[0])
    unread = {k for k in set(stored) - read if not re.fullmatch(lay.ignored, k)}
    assert unread <= {"mean", "std"}, (name, sorted(unread)[:5])


def test_wrong_shapes_and_keys_are_named_and_nothing_is_written(tmp_path):
    torch = pytest.importorskip("torch")
    t = published_models.torch_models()
    model = t.WideResNet(10, 10, 2)
    path = str(tmp_path / "wrn.pt")
    torch.save(model.state_dict(), path)
    workdir = tmp_path / "run"
    # Width 1 expects 16 channels where the file has 32: the first such key is named.
    expected = (
        r"block1\.layer\.0\.conv1\.weight has shape \(32, 16, 3, 3\), but model 'wrn-10-1' "
        r"expects \(16, 16, 3, 3\)"
    )
    with pytest.raises(errors.UserError, match=expected):
        import_weights.import_run("torch", path, "wrn-10-1", str(workdir))
    assert not workdir.exists()
    # A key the model has no place for.
    state = dict(model.state_dict(), **{"extra.weight": torch.zeros(3)})
    torch.save(state, path)
    with pytest.raises(errors.UserError, match=r"extra\.weight \(shape \(3,\)\) has no place"):
        import_weights.import_run("torch", path, "wrn-10-2", str(workdir))
    # A key the model needs and the file lacks.
    state = {k: v for k, v in model.state_dict().items() if k != "fc.bias"}
    torch.save(state, path)
    with pytest.raises(errors.UserError, match=r"has no fc\.bias \(shape \(10,\)\)"):
        import_weights.import_run("torch", path, "wrn-10-2", str(workdir))
    # Another architecture's file.
    torch.save(t.CifarResNet(t.BasicBlock, (2, 2, 2, 2)).state_dict(), path)
    with pytest.raises(errors.UserError, match=r"is --model right"):
        import_weights.import_run("torch", path, "wrn-10-2", str(workdir))
    assert not workdir.exists()
    # The ViT of test_npz_vit... has 2 blocks; vit-ti16 needs 12.
    with pytest.raises(errors.UserError, match="has no place|has no"):
        import_weights.import_run("torch", path, "vit-ti16", str(workdir))


def test_missing_file_and_format_errors(tmp_path):
    with pytest.raises(errors.MissingInputError, match="RobustBench's model zoo"):
        import_weights.import_run(
            "torch", str(tmp_path / "nope.pt"), "wrn-28-10", str(tmp_path / "run")
        )
    with pytest.raises(errors.MissingInputError, match="adversarial_robustness"):
        import_weights.import_run(
            "haiku", str(tmp_path / "x.npy"), "dm-wrn-28-10", str(tmp_path / "run")
        )
    with pytest.raises(errors.UserError, match="not one of"):
        readers.read("onnx", __file__)
    with pytest.raises(errors.UserError, match=r"--from=npz has no layout for --model='wrn-28-10'"):
        layouts.layout("wrn-28-10", "npz")
    with pytest.raises(errors.UserError, match="has no import layout"):
        layouts.family("cnn-small")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(errors.UserError, match="a Haiku checkpoint is a"):
        readers.read("haiku", str(tmp_path / "plain.npy"))


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickles_that_would_run_code_are_refused(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(
        path, np.array([{"a": np.zeros(2)}, _Payload(str(target))], dtype=object), allow_pickle=True
    )
    with pytest.raises(errors.UserError, match=r"names (io|builtins)\.open.*refused"):
        readers.read("haiku", str(path))
    assert not target.exists()
    torch = pytest.importorskip("torch")
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"w": torch.zeros(2), "payload": _Payload(str(target))}, f)
    with pytest.raises(errors.UserError, match="would run code"):
        readers.read("torch", str(tmp_path / "evil.pt"))
    assert not target.exists()
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(_Payload(str(target)), f)
    with pytest.raises(errors.UserError):
        readers.read("npz", str(tmp_path / "raw.pkl"))
    assert not target.exists()


def test_normalisation_from_the_file_flags_or_defaults(tmp_path):
    pytest.importorskip("torch")
    t = published_models.torch_models()
    model = t.DMWideResNet(10, depth=10, width=1, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25))
    run = _import_torch(tmp_path / "a", model, "dm-wrn-10-1")
    assert run.config.model.mean == pytest.approx([0.5, 0.4, 0.3])
    assert run.config.model.std == pytest.approx([0.2, 0.2, 0.25])
    with pytest.raises(errors.UserError, match="contradict"):
        _import_torch(tmp_path / "b", model, "dm-wrn-10-1", mean=(0.1,), std=(1.0,))
    # RobustBench's CIFAR models take [0, 1] pixels: mean 0, std 1 unless told otherwise.
    wrn = t.WideResNet(10, 10, 1)
    run = _import_torch(tmp_path / "c", wrn, "wrn-10-1")
    assert (run.config.model.mean, run.config.model.std) == ([0.0], [1.0])
    assert run.config.imported_from.normalization == "default"
    run = _import_torch(tmp_path / "d", wrn, "wrn-10-1", mean=(0.5,), std=(0.25,))
    assert run.config.imported_from.normalization == "flags"
    with pytest.raises(errors.UserError, match="together"):
        _import_torch(tmp_path / "e", wrn, "wrn-10-1", mean=(0.5,))


@pytest.mark.slow
def test_the_core_package_never_imports_torch(tmp_path):
    """Not the drivers, nor a run's metric writer (tensorboardX imports torch when it can)."""
    code = (
        "import sys; import seasoning.import_weights, seasoning.import_weights.__main__, "
        "seasoning.train, seasoning.evaluate, seasoning.soup.__main__, seasoning.shift, "
        "seasoning.report; from seasoning import metrics; "
        "w = metrics.MetricWriter(sys.argv[1]); w.write(1, {'loss': 0.5}); w.close(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=REPO)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path))


def test_torch_missing_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "m.pt").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(errors.UserError, match=r"pip install 'seasoning\[torch\]'"):
        readers.read("torch", str(tmp_path / "m.pt"))


def test_weights_with_a_nan_are_not_imported(tmp_path):
    torch = pytest.importorskip("torch")
    model = published_models.torch_models().WideResNet(10, 10, 1)
    state = model.state_dict()
    state["fc.bias"][3] = float("nan")
    torch.save(state, tmp_path / "wrn.pt")
    with pytest.raises(errors.UserError, match="fc.bias holds NaN or infinite values"):
        import_weights.import_run(
            "torch",
            str(tmp_path / "wrn.pt"),
            "wrn-10-1",
            str(tmp_path / "run"),
            dataset="synthetic",
        )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_imported_run_fine_tunes_evaluates_and_soups(tmp_path):
    """The runlocal chain: import -> fine-tune to L1 (configs/finetune.py) -> evaluate both
    -> a soup of the two; the command line import too."""
    torch = pytest.importorskip("torch")
    t = published_models.torch_models()
    torch.manual_seed(0)
    path = str(tmp_path / "wrn.pt")
    torch.save(t.WideResNet(10, 10, 1).state_dict(), path)
    parent = str(tmp_path / "rb")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [
        sys.executable,
        "-m",
        "seasoning.import_weights",
        "--from=torch",
        f"--src={path}",
        "--model=wrn-10-1",
        "--dataset=synthetic",
        f"--workdir={parent}",
    ]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Wrote the run" in done.stdout
    # The wrong model for the file (its errors reach the command line as one line, exit 2, as
    # every driver's UserError: tests/test_train.py).
    with pytest.raises(errors.UserError, match="but model 'wrn-10-2' expects"):
        import_weights.import_run(
            "torch", path, "wrn-10-2", str(tmp_path / "bad"), dataset="synthetic"
        )
    assert not os.path.exists(tmp_path / "bad")
    # The same import again keeps the run; another file into the same workdir is refused.
    import_weights.import_run("torch", path, "wrn-10-1", parent, dataset="synthetic")
    torch.save(t.WideResNet(10, 10, 1).state_dict(), path)
    with pytest.raises(workdir_lib.WorkdirConflictError, match="sha256"):
        import_weights.import_run("torch", path, "wrn-10-1", parent, dataset="synthetic")
    config = workdir_lib.read_json(os.path.join(parent, "config.json"))
    assert config["imported_from"]["file"] == os.path.abspath(path)
    assert report.trained_for(config) == "imported: wrn.pt"

    from seasoning import config_lib

    child = str(tmp_path / "rb_to_l1")
    # L1-APGD 2 steps (the recipe: 10): the chain is under test here, not the attack, and the
    # WRN's training step compiles in proportion to the attack's steps.
    child_config = config_lib.load_config(
        os.path.join(REPO, f"configs/finetune.py:parent={parent},norm=l1,eps=4,runlocal"),
        ["attack.steps=2"],
    )
    assert child_config.init_from == parent and child_config.threat.norm == "l1"
    assert child_config.imported_from.file == ""
    train.train_and_evaluate(child_config, child)
    child_run, parent_run = runs.load(child), runs.load(parent)
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()),
        child_run.variables["params"],
        parent_run.variables["params"],
    )
    assert max(jax.tree.leaves(moved)) > 0  # fine-tuning changed the imported weights
    result = evaluate.evaluate_run(
        parent, [threat.parse("linf:8/255")], version="fast", n_examples=16, batch_size=16, n_iter=2
    )
    assert 0 <= result["union"]["robust_accuracy"] <= result["clean_accuracy"] <= 1
    assert os.path.exists(os.path.join(parent, "eval.json"))
    ingredients = runs.load_ingredients([parent, child])
    mixed = soup.mix(ingredients[0].variables, ingredients[1].variables, 0.5)
    logits = ingredients[0].model.apply(mixed, _images(2, 32), train=False)
    assert np.all(np.isfinite(np.asarray(logits)))
