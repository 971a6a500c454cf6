"""A markdown table of finished, evaluated runs: `python -m seasoning.report`.

    python -m seasoning.report --workdirs=runs/a,runs/b,runs/c [--markdown=runs/table.md]

One row a run: what it was trained for (and its parent when fine-tuned), clean accuracy and
robust accuracy per threat model from its `eval.json` (written by `seasoning.evaluate`), the
union, and the wall-clock time of its training from `metrics.jsonl`.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags

from seasoning import cli, errors, metrics, stats
from seasoning import workdir as workdir_lib

_WORKDIRS = flags.DEFINE_list("workdirs", [], "Evaluated runs, comma-separated.")
_EVAL_FILE = flags.DEFINE_string("eval_file", "eval.json", "The evaluation file in each run.")
_MARKDOWN = flags.DEFINE_string("markdown", "", "Also write the table to this file.")


def training_seconds(workdir: str) -> float:
    """Wall-clock seconds of training, from metrics.jsonl; time between a kill and the resume
    is not counted (each session runs from its start/resumed event to its last record)."""
    total, session_start, last = 0.0, None, None
    text = workdir_lib.read_text(workdir_lib.path(workdir, metrics.METRICS_FILE))
    for line in text.splitlines():
        record = json.loads(line)
        if record.get("event") in ("start", "resumed"):
            if session_start is not None and last is not None:
                total += last - session_start
            session_start = last = record["time"]
        else:
            last = record["time"]
    if session_start is not None and last is not None:
        total += last - session_start
    return total


def trained_for(config: dict[str, Any]) -> str:
    """`linf 0.1`, `nominal`, `E-AT linf:0.1 / l2:0.8`, with `<- parent` for a fine-tuned run;
    `imported: FILE` for a run of `seasoning.import_weights`."""
    imported = (config.get("imported_from") or {}).get("file")
    if imported:
        return f"imported: {os.path.basename(imported)}"
    t = config["threat"]
    if t["norm"] == "multi":
        what = "E-AT " + " / ".join(t["multi"])
    else:
        what = "nominal" if t["norm"] == "none" else f"{t['norm']} {t['eps']:g}"
    parent = config.get("init_from")
    return f"{what} <- {os.path.basename(os.path.normpath(parent))}" if parent else what


def table(workdirs: list[str], eval_file: str = "eval.json") -> str:
    """The markdown table of `workdirs` (see module doc).

    Raises:
      FileNotFoundError: a run lacks config.json or its evaluation file (the message says
        which command makes it).
    """
    rows, threats = [], []
    for workdir in workdirs:
        config = workdir_lib.read_json(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE))
        path = workdir_lib.path(workdir, eval_file)
        try:
            result = workdir_lib.read_json(path)
        except FileNotFoundError:
            raise errors.MissingInputError(
                f"{path} not found; evaluate the run first: "
                f"python -m seasoning.evaluate --workdir={workdir}"
            ) from None
        order = result.get("settings", {}).get("threats") or sorted(result["threat_models"])
        threats += [t for t in order if t not in threats]
        rows.append((workdir, config, result))
    header = ["run", "trained for", "clean", *threats, "union", "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for workdir, config, result in rows:
        per = result["threat_models"]
        cells = [
            os.path.basename(os.path.normpath(workdir)),
            trained_for(config),
            _pct(result["clean_accuracy"]),
            *(_pct(per[t]["robust_accuracy"]) if t in per else "" for t in threats),
            _pct(result["union"]["robust_accuracy"]),
            f"{training_seconds(workdir) / 60:.1f} min",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0][2] if rows else {}
    settings = first.get("settings", {})
    note = ""
    if rows:
        n = first.get("n_examples")
        note = (
            f"\nAccuracy in % on the first {n} images of {first.get('dataset')}/"
            f"{settings.get('split')}, AutoAttack {settings.get('version')}; each within a 95% "
            f"interval of at most +-{100 * stats.half_width(n):.1f} points (Clopper-Pearson)."
        )
    return "\n".join(lines) + note


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _WORKDIRS.value:
        raise app.UsageError("--workdirs is required.")

    def run():
        text = table(_WORKDIRS.value, _EVAL_FILE.value)
        print(text)
        if _MARKDOWN.value:
            workdir_lib.write_atomic(_MARKDOWN.value, text + "\n")

    cli.exit_on_user_error(run)


if __name__ == "__main__":
    app.run(main)
