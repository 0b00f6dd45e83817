"""``lorakit train`` and ``lorakit predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click


@click.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key (TOML value)."
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its newest checkpoint.")
@click.option("--force", is_flag=True, help="Replace an existing experiment folder.")
@click.option(
    "--outputs",
    type=click.Path(file_okay=False),
    help="Outputs folder (default: $LORAKIT_OUTPUTS or ./outputs).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Data-parallel processes via torchrun (default: resources.gpus when that many GPUs are visible).",
)
def train(
    config_path: str,
    overrides: tuple[str, ...],
    resume: bool,
    force: bool,
    outputs: str | None,
    nproc: int | None,
) -> None:
    """Train the experiment described by CONFIG_PATH."""
    from ..errors import LorakitError
    from ..experiment import Experiment
    from ..training import distributed
    from ..training.loop import RunStopped, catch_early_signals

    catch_early_signals()  # a stop signal while torch loads ends as preempted, not as a killed process
    if resume and force:
        raise LorakitError("--resume and --force exclude each other")
    if distributed.in_worker():
        from ..proctree import die_with_parent

        die_with_parent()  # a rank never outlives its torchrun
    experiment = Experiment(config_path, overrides, outputs=outputs)
    if not distributed.in_worker():
        nproc = nproc or distributed.default_nproc(experiment.config.resources.gpus)
        if nproc > 1:
            args = [config_path, *(f"--set={o}" for o in overrides), f"--outputs={experiment.outputs}"]
            args += ["--resume"] * resume + ["--force"] * force
            sys.exit(distributed.launch(nproc, args, experiment.output_dir / "run.json"))
    try:
        result = experiment.run(resume=resume, force=force)
    except RunStopped as stop:
        click.echo(f"{experiment.config.exp_id}: {stop}", err=True)
        sys.exit(stop.exit_code)
    except LorakitError:
        raise
    except Exception as exc:
        _exit_failed(experiment, exc)
    if not result.best and distributed.in_worker():
        return  # ranks other than 0 have nothing to report
    verbose = bool((click.get_current_context().obj or {}).get("verbose"))
    _echo_result(result, experiment.config.task_columns, verbose=verbose)


def _exit_failed(experiment: Any, exc: Exception) -> NoReturn:
    """A run that failed: one line saying where it is recorded (-v, or nothing recorded: the traceback)."""
    from ..errors import machine_problem
    from ..training import distributed

    if distributed.in_worker():
        distributed.record_rank_error(exc)  # the launcher says which rank failed, and why
    # a failure after the folder was opened is recorded there; say so in one line (-v: traceback).
    # A fault of the machine (full disk, read-only folder) is one line and exit 2 even where it kept
    # the failure from being recorded.
    machine = machine_problem(exc, experiment.output_dir)
    failed = _recorded_failure(experiment.outputs, experiment.config.exp_id)
    if (failed is None and machine is None) or (click.get_current_context().obj or {}).get("verbose"):
        raise exc
    if failed is None:  # the machine refused before anything could be recorded
        click.echo(f"Error: {machine}", err=True)
        sys.exit(2)
    click.echo(f"Error: {experiment.config.exp_id} failed: {failed}", err=True)
    click.echo(
        f"  recorded in {experiment.output_dir / 'run.json'}; traceback in "
        f"{experiment.output_dir / 'train.log'}; checkpoints kept: continue with --resume",
        err=True,
    )
    sys.exit(2 if machine else 1)


def _echo_result(result: Any, tasks: list[str], *, verbose: bool = False) -> None:
    """The best epoch's F1 and accuracy figures; a single task's each once (-v: under every name)."""
    best = result.best
    click.echo(f"{result.exp_id}: completed, best epoch {best.get('epoch')}")
    # a single task's figures are in metrics.json as <task>_f1, f1 and avg_f1 (accuracy likewise): one name
    same = {f"{tasks[0]}_f1", f"{tasks[0]}_accuracy", "avg_f1"} if len(tasks) == 1 and "f1" in best else set()
    for key, value in best.items():
        shown = verbose or key not in same
        if shown and key != "epoch" and isinstance(value, float) and key.endswith(("f1", "accuracy")):
            click.echo(f"  {key:<28} {value:.4f}")
    click.echo(f"outputs: {result.output_dir}")


def _recorded_failure(outputs: Path, exp_id: str) -> str | None:
    """The reason recorded in run.json when this process's run ended as failed, else None."""
    from ..scheduling.launch import read_run
    from ..training.distributed import is_main_rank

    info = read_run(outputs, exp_id)
    if info is None or info.status != "failed" or not is_main_rank():
        return None
    return str(info.error or "unknown error")


@click.command()
@click.argument("exp", required=False)
@click.option("--text", "texts", multiple=True, help="A text to classify (repeatable).")
@click.option(
    "--input", "input_path", type=click.Path(dir_okay=False, exists=True), help="CSV/TSV/JSONL file."
)
@click.option(
    "--output", "output_path", type=click.Path(dir_okay=False), help="Where to write (same format)."
)
@click.option(
    "--outputs",
    type=click.Path(file_okay=False),
    help="Outputs folder (default: $LORAKIT_OUTPUTS or ./outputs).",
)
@click.option("--batch-size", default=64, show_default=True)
def predict(
    exp: str | None,
    texts: tuple[str, ...],
    input_path: str | None,
    output_path: str | None,
    outputs: str | None,
    batch_size: int,
) -> None:
    """Classify texts with experiment EXP (default: the active experiment)."""
    from ..errors import LorakitError, MachineError, machine_problem
    from ..experiment import Experiment

    if bool(texts) == bool(input_path):
        raise LorakitError("give either --text (one or more) or --input FILE")
    predictor = Experiment.load(exp, outputs=outputs)
    if texts:
        for text, result in zip(texts, predictor.predict(list(texts), batch_size=batch_size), strict=False):
            click.echo(json.dumps({"text": text, **result}, ensure_ascii=False))
        return
    from ..predicting import predict_file

    assert input_path is not None  # checked above: exactly one of --text / --input

    try:
        written = predict_file(predictor, input_path, output_path, batch_size=batch_size)
    except OSError as exc:  # a full disk or a folder in place of the output file: name the file
        problem = machine_problem(exc, output_path)
        if problem is None:
            raise
        raise MachineError(problem) from exc
    if output_path:
        click.echo(f"{written} rows → {output_path}", err=True)
