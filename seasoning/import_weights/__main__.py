r"""Import a published checkpoint as a run: `python -m seasoning.import_weights`.

    python -m seasoning.import_weights --from=torch --src=Carmon2019Unlabeled.pt \
        --model=wrn-28-10 --workdir=runs/rb_linf [--dataset=cifar10] [--mean=... --std=...]

Writes config.json (the model, the dataset, the source file and its SHA-256) and an orbax
checkpoint into --workdir; the run then fine-tunes (`init_from`), evaluates and goes into soups
like a trained one. Formats: torch (a state dict, or a checkpoint dict holding one), npz
(big_vision / vision_transformer ViTs), haiku (DeepMind's adversarial_robustness JAX files).
Nothing is downloaded. A single-process command.
"""

from __future__ import annotations

from absl import app, flags, logging

from seasoning import cli, errors, import_weights
from seasoning.import_weights import layouts, readers

flags.DEFINE_enum("from", None, list(readers.FORMATS), "Format of --src.")
_SRC = flags.DEFINE_string("src", None, "The checkpoint file (local).")
_MODEL = flags.DEFINE_string(
    "model", None, f"Our model name for its architecture ({layouts.importable_models()})."
)
_MEAN = flags.DEFINE_list(
    "mean",
    [],
    "Input mean the source model expects, per channel or one value (default: "
    "the file's, else the usual one of its kind).",
)
_STD = flags.DEFINE_list("std", [], "Input standard deviation, likewise.")


def _floats(name: str, values: list[str]) -> list[float]:
    try:
        return [float(v) for v in values]
    except ValueError:
        raise errors.UserError(f"--{name}={','.join(values)}: expected numbers.") from None


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    missing = [
        name for name in ("from", "src", "model", "workdir") if flags.FLAGS[name].value is None
    ]
    if missing:
        raise app.UsageError(f"Required: {', '.join('--' + m for m in missing)}.")

    def run():
        workdir = import_weights.import_run(
            flags.FLAGS["from"].value,
            _SRC.value,
            _MODEL.value,
            cli.WORKDIR.value,
            dataset=cli.DATASET.value,
            mean=_floats("mean", _MEAN.value),
            std=_floats("std", _STD.value),
        )
        logging.info("Imported %s into %s.", _SRC.value, workdir)
        print(f"Wrote the run {workdir} (config.json, checkpoints/0) from {_SRC.value}")

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    app.run(main)
