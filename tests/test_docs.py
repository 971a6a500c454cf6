"""The documentation's commands and links: README.md and docs/*.md.

Every `python -m seasoning.<driver>` and `python benchmarks/<x>.py` line of a fenced code block
names a module or script that exists and only flags it defines; each `--config=path[:arg]`
loads with its `--config.a.b=v` overrides and passes its driver's checks; every `make` target
and `bash launch|benchmarks/...` script named exists; every relative link (and its #anchor)
resolves. And the README's five-command walkthrough runs, verbatim, at its `:runlocal` sizes.
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
import functools
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
import types

import pytest
from absl import flags

from seasoning import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
SHELL_LANGS = ("", "bash", "sh", "shell", "console")
# A command's first word may be one of these after environment assignments (`FOO=1 make ...`).
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_PYTHON = re.compile(r"^(?:\S*/)?python3?$")
# Values that stand for something the reader fills in: only the flag's name is checked.
_PLACEHOLDER = re.compile(r"<[^>]*>|\$\{?[A-Za-z_]|\.\.\.")
# Counted by hand in README.md and docs/*.md (a parser that finds nothing must fail): the
# fenced `python -m seasoning.*` / `python benchmarks/*.py` lines, and the fenced `make` lines.
MIN_PYTHON_COMMANDS, MIN_MAKE_COMMANDS = 25, 6
# The driver module -> (module, function) that checks its config, as the driver does.
VALIDATORS = {
    "seasoning.train": ("seasoning.train_config", "validate_train_config"),
    "seasoning.soup": ("seasoning.soup.config", "validate_soup_config"),
    "seasoning.shift": ("seasoning.shift.config", "validate_shift_config"),
    "seasoning.demo": ("seasoning.demo.config", "validate_demo_config"),
}
# configs/finetune.py reads its parent run's config.json; a parent the docs name stands for a
# run of this config (docs/importing.md imports a CIFAR-10 WRN-28-10).
FINETUNE, FINETUNE_PARENT_CONFIG = "configs/finetune.py", "configs/cifar10_wrn28_10_linf.py"


@dataclasses.dataclass(frozen=True)
class Command:
    """One command of a fenced code block: its words and where it was written."""

    words: tuple[str, ...]
    doc: str
    line: int

    def __str__(self) -> str:
        return f"{os.path.relpath(self.doc, ROOT)}:{self.line}: {shlex.join(self.words)}"


def _fenced_blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of each fenced code block, fence indent removed."""
    blocks, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent) :] if line.startswith(indent) else line)
            i += 1
        blocks.append((lang.lower(), start, body))
        i += 1
    return blocks


def _logical_lines(body: list[str], start: int) -> list[tuple[int, str]]:
    """Lines joined over trailing backslashes, with the number of their first line."""
    out, pending, first = [], "", start
    for n, line in enumerate(body, start):
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((first, pending + line))
        pending = ""
    if pending:
        out.append((first, pending))
    return out


def _words(line: str) -> list[str]:
    """A shell line's words, comments and leading environment assignments dropped."""
    words = shlex.split(line, comments=True)
    while words and _ENV.match(words[0]):
        words.pop(0)
    return words


def commands(doc: str) -> list[Command]:
    """Every command of the doc's shell code blocks (one per `&&` / `;` part of a line)."""
    with open(doc) as f:
        text = f.read()
    found = []
    for lang, start, body in _fenced_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        for n, line in _logical_lines(body, start):
            looks = re.match(r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*(?:\S*python3?|make|bash)\s", line + " ")
            if not looks:
                continue  # a file tree, an output sample: not a command
            part: list[str] = []
            for word in [*_words(line), ";"]:
                if word in ("&&", ";", "||", "|"):
                    if part:
                        found.append(Command(tuple(part), doc, n))
                    part = []
                else:
                    part.append(word)
    return found


def all_commands() -> list[Command]:
    return [c for doc in DOCS for c in commands(doc)]


def python_target(command: Command) -> tuple[str, str] | None:
    """("module", "seasoning.x") or ("script", "benchmarks/x.py") of a python command; None
    for other commands."""
    words = command.words
    if not words or not _PYTHON.match(words[0]) or len(words) < 2:
        return None
    if words[1] == "-m" and len(words) > 2 and words[2].split(".")[0] == "seasoning":
        return "module", words[2]
    if words[1].startswith("benchmarks/") and words[1].endswith(".py"):
        return "script", words[1]
    return None


def _python_commands() -> list[Command]:
    return [c for c in all_commands() if python_target(c)]


# --------------------------------------------------------------------------------------------
# The flags a module defines, without importing it into this process's absl FLAGS: drivers
# define flags of the same name (`--overwrite`, `--batch_size`), so each is executed apart with
# `absl.flags` pointed at a FlagValues of its own.


def _source_file(kind: str, target: str) -> tuple[str, str]:
    """(the file that runs, the module name it runs as)."""
    if kind == "script":
        return os.path.join(ROOT, target), "_docs_" + re.sub(r"\W", "_", target)
    spec = importlib.util.find_spec(target)
    assert spec is not None, f"no such module: {target}"
    if spec.submodule_search_locations:  # a package: `python -m` runs its __main__
        spec = importlib.util.find_spec(f"{target}.__main__")
        assert spec is not None, f"{target} is a package without __main__"
    return spec.origin, spec.name


@functools.cache
def module_flags(kind: str, target: str) -> tuple[flags.FlagValues, bool]:
    """A FlagValues holding the flags the module (or script) accepts: its own, those of
    `seasoning.cli` when it imports it, absl's; and whether it reads `--config`."""
    path, name = _source_file(kind, target)
    own = flags.FlagValues()
    shim = types.ModuleType("absl.flags")
    shim.__dict__.update(vars(flags))
    for attr, value in vars(flags).items():
        if attr.startswith("DEFINE") and callable(value):
            setattr(shim, attr, functools.partial(value, flag_values=own))
    shim.FLAGS = own

    def _import(module, globals_=None, locals_=None, fromlist=(), level=0):
        if level == 0 and module == "absl" and fromlist and "flags" in fromlist:
            parts = {n: importlib.import_module(f"absl.{n}") for n in fromlist if n != "flags"}
            return types.SimpleNamespace(flags=shim, **parts)
        return builtins.__import__(module, globals_, locals_, fromlist, level)

    with open(path) as f:
        source = f.read()
    copy_name = f"_docs_copy_{name}"
    module = types.ModuleType(copy_name)
    module.__dict__.update(
        __file__=path,
        __package__=name.rpartition(".")[0] if kind == "module" else None,
        __builtins__={**vars(builtins), "__import__": _import},
    )
    sys.modules[copy_name] = module  # dataclasses look their module up
    try:
        exec(compile(source, path, "exec"), module.__dict__)
    finally:
        del sys.modules[copy_name]
    shared = [m for m, fs in flags.FLAGS.flags_by_module_dict().items() if m.startswith("absl.")]
    if any(getattr(v, "__name__", "") == "seasoning.cli" for v in module.__dict__.values()):
        shared.append("seasoning.cli")
    by_module = flags.FLAGS.flags_by_module_dict()
    for m in shared:
        for flag in by_module.get(m, []):
            if flag.name not in own:
                own[flag.name] = copy.deepcopy(flag)  # parsed here, never in FLAGS
    return own, "main_with_config" in source


def _validator(module: str):
    home, name = VALIDATORS[module]
    return getattr(importlib.import_module(home), name)


def _fake_finetune_parent(spec: str, tmp_path) -> str:
    """configs/finetune.py's spec with its parent replaced by a run dir holding a config.json
    (a run of FINETUNE_PARENT_CONFIG)."""
    path, _, arg = spec.partition(":")
    parent = os.path.join(str(tmp_path), "parent")
    os.makedirs(parent, exist_ok=True)
    config = config_lib.load_config(os.path.join(ROOT, FINETUNE_PARENT_CONFIG))
    with open(os.path.join(parent, "config.json"), "w") as f:
        json.dump(config_lib.as_json(config), f)
    arg = re.sub(r"(^|,)parent=[^,]*", rf"\1parent={parent}", arg)
    return f"{path}:{arg}"


def check_command(command: Command, tmp_path) -> None:
    """Asserts the command's module or script exists, its flags are ones it defines, and its
    config loads and passes the driver's checks."""
    kind, target = python_target(command)
    if kind == "script":
        assert os.path.isfile(os.path.join(ROOT, target)), f"{command}: no such script"
    accepted, uses_config = module_flags(kind, target)
    args = list(command.words[3:] if kind == "module" else command.words[2:])
    spec, overrides = None, []
    if uses_config:
        args, spec, overrides = config_lib.split_config_flags(args)
        assert spec, f"{command}: --config is required"
    to_parse = []
    for arg in args:
        assert arg.startswith("--"), f"{command}: positional argument {arg!r}"
        name, eq, value = arg[2:].partition("=")
        if eq and _PLACEHOLDER.search(value):  # only the name: the reader fills the value in
            assert name in accepted, f"{command}: {target} defines no --{name}"
            continue
        to_parse.append(arg)
    try:
        rest = accepted(["prog", *to_parse])
    except flags.Error as e:
        raise AssertionError(f"{command}: {e}") from None
    finally:
        accepted.unparse_flags()
    assert rest == ["prog"], f"{command}: not flags: {rest[1:]}"
    if spec is None:
        return
    if spec.partition(":")[0] == FINETUNE:
        spec = _fake_finetune_parent(spec, tmp_path)
    config = config_lib.load_config(os.path.join(ROOT, spec), overrides)
    driver = target.removesuffix(".__main__")
    assert driver in VALIDATORS, f"{command}: which check does {driver} run on its config?"
    _validator(driver)(config)


def test_the_docs_hold_every_command_counted_by_hand():
    python, make = _python_commands(), [c for c in all_commands() if c.words[0] == "make"]
    assert len(python) >= MIN_PYTHON_COMMANDS, [str(c) for c in python]
    assert len(make) >= MIN_MAKE_COMMANDS, [str(c) for c in make]
    drivers = {python_target(c)[1] for c in python}
    assert {"seasoning.train", "seasoning.evaluate", "seasoning.soup", "seasoning.shift"} <= drivers


@pytest.mark.parametrize(
    "command", _python_commands(), ids=lambda c: f"{os.path.relpath(c.doc, ROOT)}:{c.line}"
)
def test_each_python_command_names_a_module_flags_and_a_config_it_accepts(command, tmp_path):
    check_command(command, tmp_path)


def _line(line: str) -> Command:
    return Command(tuple(_words(line)), README, 0)


def test_the_checker_refuses_a_wrong_flag_a_bad_value_and_a_bad_config(tmp_path):
    def refused(line: str) -> str:
        with pytest.raises(Exception) as e:
            check_command(_line(line), tmp_path)
        return str(e.value)

    train = "python -m seasoning.train --config=configs/fmnist_cnn_linf.py:runlocal --workdir=w"
    evaluate = "python -m seasoning.evaluate --workdir=<workdir>"
    check_command(_line(train + " --config.optimizer.lr=0.1"), tmp_path)
    check_command(_line(evaluate + " --n_examples=$N --noresume"), tmp_path)
    assert "no_such_flag" in refused(train + " --no_such_flag=1")
    assert "overwrite" in refused(train + " --overwrite")  # evaluate's and shift's, not train's
    assert "version" in refused(evaluate + " --version=fastest")
    assert "n_exemples" in refused(evaluate + " --n_exemples=<n>")
    assert "batch_size" in refused(evaluate + " --nobatch_size")
    assert "optimizer.lrr" in refused(train + " --config.optimizer.lrr=0.1")
    assert "cnn-huge" in refused(train + " --config.model.name=cnn-huge")  # the driver's check
    assert "workdir" in refused("python benchmarks/scale.py --workdir=w")
    assert "no such module" in refused("python -m seasoning.no_such_driver --workdir=w")
    assert "positional" in refused(evaluate + " w")


def _targets(makefile: str) -> set[str]:
    with open(makefile) as f:
        return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", f.read(), flags=re.M))


def test_every_make_target_and_script_the_docs_name_exists():
    targets = _targets(os.path.join(ROOT, "Makefile"))
    named = []
    for doc in DOCS:
        with open(doc) as f:
            text = f.read()
        # Fenced commands and inline `make ...` spans alike.
        spans = [" ".join(c.words) for c in commands(doc)] + re.findall(r"`([^`\n]+)`", text)
        for span in spans:
            for m in re.finditer(r"(?:^|\s)make((?:\s+[^\s`]+)*)", span):
                words = [w for w in m.group(1).split() if "=" not in w]
                if words and not words[0].startswith("-"):
                    named.append((doc, words[0]))
        for script in re.findall(
            r"\b(?:bash\s+)?((?:launch|benchmarks)/[\w.-]+\.(?:sh|py|sbatch))", text
        ):
            assert os.path.isfile(os.path.join(ROOT, script)), f"{doc}: no {script}"
    assert len(named) >= MIN_MAKE_COMMANDS
    for doc, target in named:
        assert target in targets, f"{os.path.relpath(doc, ROOT)}: make {target}: no such target"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: str) -> set[str]:
    with open(path) as f:
        text = f.read()
    text = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.M | re.S)  # no code comments
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        slug = _slug(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_every_relative_link_and_anchor_resolves():
    checked = 0
    for doc in DOCS:
        with open(doc) as f:
            text = re.sub(r"^\s*```.*?^\s*```", "", f.read(), flags=re.M | re.S)
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            where = f"{os.path.relpath(doc, ROOT)}: ({target})"
            assert os.path.exists(resolved), f"{where}: no such file"
            if anchor:
                assert anchor in _anchors(resolved), f"{where}: no such heading"
            checked += 1
    assert checked >= 40  # the README's contents list alone has over 15


# Where the code points into the docs: `docs/x.md, "Heading"`, `docs/x.md ("Heading")`,
# `README "Heading"`.
_POINTER = re.compile(r'\b(docs/[\w-]+\.md|README(?:\.md)?)(?:(?:(?:,\s*|\s+)\(?|\()"([^"\n]+)")?')
_CODE = ("seasoning", "configs", "launch", "benchmarks", "tests", ".ci")


def _code_files() -> list[str]:
    files = [os.path.join(ROOT, f) for f in ("Makefile", "setup.py", "pyproject.toml")]
    for folder in _CODE:
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*"), recursive=True):
            if os.path.isfile(path) and not path.endswith((".pyc", ".png", ".npz")):
                files.append(path)
    return [f for f in files if os.path.abspath(f) != os.path.abspath(__file__)]


def _headings(path: str) -> list[str]:
    with open(path) as f:
        text = re.sub(r"^\s*```.*?^\s*```", "", f.read(), flags=re.M | re.S)
    return [h.replace("`", "") for h in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)]


def test_pointers_from_the_code_into_the_docs_name_existing_sections():
    """`docs/benchmarks.md, "Attack speed"` in a docstring names a doc and the start of one
    of its headings; a pointer to a README section names one the README still has."""
    checked = 0
    for path in _code_files():
        with open(path, errors="replace") as f:
            text = f.read()
        for doc, section in _POINTER.findall(text):
            doc = "README.md" if doc.startswith("README") else doc
            where = f"{os.path.relpath(path, ROOT)}: {doc} {section!r}"
            assert os.path.isfile(os.path.join(ROOT, doc)), f"{where}: no such doc"
            if section:
                headings = _headings(os.path.join(ROOT, doc))
                assert any(h.startswith(section) for h in headings), f"{where}: no such section"
            checked += 1
        # The older, unquoted form: `(README, Evaluation)`.
        for section in re.findall(r"\bREADME,\s+([A-Z][\w-]*)", text):
            where = f"{os.path.relpath(path, ROOT)}: README, {section}"
            assert any(h.startswith(section) for h in _headings(README)), f"{where}: moved?"
    assert checked >= 15


# --------------------------------------------------------------------------------------------
# The README's walkthrough, run as written.

WALKTHROUGH = "## The method in five commands"
QUICK = "runs/quick"  # where the README's walkthrough puts its runs
STEPS = (
    "seasoning.train",
    "seasoning.train",
    "seasoning.soup",
    "seasoning.evaluate",
    "seasoning.shift",
)


def walkthrough() -> list[Command]:
    """The five commands of the README's walkthrough section, as written there."""
    with open(README) as f:
        text = f.read()
    offset = text[: text.index(WALKTHROUGH)].count("\n")
    section = text[text.index(WALKTHROUGH) :]
    end = section.find("\n## ", len(WALKTHROUGH))
    section = section if end < 0 else section[:end]
    found = []
    for lang, start, body in _fenced_blocks(section):
        start += offset
        if lang in SHELL_LANGS:
            found += [
                Command(tuple(_words(line)), README, n)
                for n, line in _logical_lines(body, start)
                if _words(line)
            ]
            break
    return found


def test_the_walkthrough_is_five_commands_of_the_method_in_order(tmp_path):
    steps = walkthrough()
    assert [python_target(c) for c in steps] == [("module", m) for m in STEPS], [
        str(c) for c in steps
    ]
    for step in steps:
        assert any(QUICK in w for w in step.words), step
        check_command(step, tmp_path)


def _flag(words: list[str], name: str) -> str:
    (value,) = [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]
    return value


def _check_run_files(workdir: str, log: str) -> None:
    """A `:runlocal` training run's files: config, metrics at every `log_every_steps` (5) and
    the final evaluation, TensorBoard events, the last checkpoint; its train step compiled
    once (JAX_LOG_COMPILES)."""
    from seasoning import checkpoints

    files = os.listdir(workdir)
    assert "config.json" in files and "metrics.jsonl" in files, files
    assert any(f.startswith("events.out.tfevents") for f in files), files
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["max_steps"] == 20
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    train_lines = [m for m in lines if "train/loss" in m]
    assert [m["step"] for m in train_lines] == [5, 10, 15, 20]
    assert all(m["train/images_per_s"] > 0 for m in train_lines)
    evals = [m for m in lines if "eval/accuracy" in m]
    assert [m["step"] for m in evals] == [20] and 0 <= evals[0]["eval/accuracy"] <= 1
    tree, meta, step = checkpoints.read_numpy(workdir)
    assert step == 20 and int(tree["step"]) == 20 and meta["model"]["name"] == "cnn-small"
    assert log.count("Compiling jit(train_step)") == 1, log[-3000:]


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path, family):
    """The five commands, run one after another in a fresh folder: each succeeds and writes its
    artefact (a training run's files, grid.json, eval.json, shift.json)."""
    quick = str(tmp_path / "quick")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_LOG_COMPILES": "1",  # every compilation logged: the train step compiles once
        # Fashion-MNIST-C's images, shared with tests/test_shift_run.py (the same runlocal split).
        "SEASONING_CACHE_DIR": os.path.join(family.root, "corruption_cache"),
    }
    times = []
    for step in walkthrough():
        words = [w.replace(QUICK, quick) for w in step.words]
        words[0] = sys.executable
        start = time.monotonic()
        done = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        times.append(round(time.monotonic() - start, 1))
        assert done.returncode == 0, f"{step}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        workdir = _flag(words, "workdir")
        driver = words[2]
        if driver == "seasoning.train":
            _check_run_files(workdir, done.stderr)
        else:
            name = {"seasoning.soup": "grid.json", "seasoning.evaluate": "eval.json"}
            with open(os.path.join(workdir, name.get(driver, "shift.json"))) as f:
                result = json.load(f)
            assert result.get("complete", True), step
    print("walkthrough seconds per command:", times)
    with open(os.path.join(quick, "fmnist_cnn_linf_to_l2", "config.json")) as f:
        assert json.load(f)["init_from"] == os.path.join(quick, "fmnist_cnn_linf")
