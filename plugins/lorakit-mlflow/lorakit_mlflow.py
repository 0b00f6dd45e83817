"""lorakit-mlflow: every ``lorakit train`` run becomes an MLflow run, through the run-event hooks.

At run start: an MLflow run named after the exp_id, tagged ``lorakit.exp_id``, with the merged config as
params (dotted keys). After each epoch: that epoch's metrics at ``step=epoch``. At run end: the test split's
metrics as ``test.<name>`` and the best epoch's as ``best.<name>``, the experiment folder as artifacts
(without ``checkpoints/``), and the status (completed → FINISHED, failed → FAILED, preempted → KILLED).

A resumed run continues its MLflow run: the run id is kept in ``<folder>/mlflow_run.json`` with the
tracking URI it belongs to, so ``--resume`` finds it and ``--force`` (a new folder) starts a new one.

Tracking never fails or slows a run: every MLflow call (the ``mlflow`` import included) happens in one
background thread fed by a queue; the hooks only enqueue. ``lorakit_on_run_end`` waits for the queue to
drain for at most ``LORAKIT_MLFLOW_TIMEOUT`` seconds (30) and then warns, naming what was not logged. An
MLflow error is a warning on the ``lorakit.train.mlflow`` logger, which lorakit writes to the run's
train.log: the run's own status is untouched.

Environment: ``LORAKIT_MLFLOW=0`` turns the plugin off; ``LORAKIT_MLFLOW_TRACKING_URI``, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///<outputs>/mlflow.db`` with artifacts in ``<outputs>/mlruns``
(``<outputs>`` is the folder that holds the experiment folders); ``LORAKIT_MLFLOW_EXPERIMENT`` names the
MLflow experiment (``lorakit``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lorakit.hookspecs import hookimpl

NAME = "mlflow"  # the entry point's name: warnings say `plugin "mlflow": ...` like the core's
RUN_FILE = "mlflow_run.json"
SKIPPED = {"checkpoints", RUN_FILE}  # checkpoints are resumable state, deleted once a run completes
STATUS = {"completed": "FINISHED", "failed": "FAILED", "preempted": "KILLED"}
DEFAULT_EXPERIMENT = "lorakit"
DEFAULT_TIMEOUT = 30.0
OFF = {"0", "false", "no", "off"}
# MLflow's limits (mlflow.utils.validation), fixed here so that the hooks need no mlflow import
MAX_KEY = 250
MAX_VALUE = 6000
PARAMS_PER_BATCH = 100

# what MLflow accepts in a param or metric name on every platform (a label column may hold anything)
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")

# a child of lorakit's run logger: lorakit attaches train.log (and the terminal) to "lorakit.train"
log = logging.getLogger("lorakit.train.mlflow")


def enabled() -> bool:
    return os.environ.get("LORAKIT_MLFLOW", "1").strip().lower() not in OFF


def tracking_uri(output_dir: str | Path) -> tuple[str, Path | None]:
    """The tracking URI, and the artifact folder when it is lorakit's local default (else None)."""
    uri = os.environ.get("LORAKIT_MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    outputs = Path(output_dir).resolve().parent
    return f"sqlite:///{(outputs / 'mlflow.db').as_posix()}", outputs / "mlruns"


def params(config: Mapping[str, Any]) -> dict[str, str]:
    """The config as MLflow params: dotted keys, string values, both cut to MLflow's lengths."""
    from lorakit.config.converter import flatten  # lorakit's own dotted keys; cattrs is slow to import

    result = {}
    for key, value in flatten(dict(config)).items():
        text = value if isinstance(value, str) else _text(value)
        if len(text) > MAX_VALUE:
            text = text[: MAX_VALUE - 3] + "..."
        result[mlflow_key(key)] = text
    return result


def mlflow_key(key: str) -> str:
    """``key`` as a valid MLflow param or metric name: characters MLflow refuses become ``_``."""
    return _BAD_KEY_CHARS.sub("_", key)[:MAX_KEY]


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric entries of ``values`` (booleans and nested tables left out), keys prefixed."""
    return {
        mlflow_key(f"{prefix}{key}"): float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


class Worker:
    """One daemon thread running queued tasks in order; a task that raises is a warning, never an error.

    A task stays queued until it has run, so :meth:`drain` can name what is still pending.
    """

    def __init__(self) -> None:
        self._tasks: collections.deque[tuple[str, Callable[[], None]]] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, what: str, task: Callable[[], None]) -> None:
        with self._cond:
            self._tasks.append((what, task))
            self._cond.notify_all()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="lorakit-mlflow", daemon=True)
                self._thread.start()

    def drain(self, timeout: float) -> list[str]:
        """Wait until every task has run, at most ``timeout`` seconds; return what is still pending."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._tasks and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return [what for what, _ in self._tasks]

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._tasks:
                    self._cond.wait()
                what, task = self._tasks[0]
            try:
                task()
            except Exception as exc:
                warn(f"could not log {what}: {_reason(exc)}")
            with self._cond:
                self._tasks.popleft()
                self._cond.notify_all()


def warn(message: str) -> None:
    log.warning('plugin "%s": %s', NAME, message)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > 300:  # MLflow's messages can carry a whole HTTP response or SQL statement
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Tracker:
    """The MLflow side: one open MLflow run per running exp_id. Its methods run on the worker thread."""

    def __init__(self) -> None:
        self.runs: dict[str, tuple[Any, str]] = {}  # exp_id -> (MlflowClient, MLflow run id)

    def start(self, exp_id: str, config: Mapping[str, Any], output_dir: str) -> None:
        self.runs.pop(exp_id, None)
        folder = Path(output_dir)
        uri, artifacts = tracking_uri(folder)
        try:
            client = _open(uri)
            run_id = _previous_run(client, folder, uri)
            if run_id is None:
                run_id = _new_run(client, exp_id, folder, uri, artifacts)
        except Exception as exc:
            warn(
                f"could not start an MLflow run for {exp_id} at {uri} ({_reason(exc)}); nothing of this run is logged"
            )
            return
        self.runs[exp_id] = (client, run_id)
        logged = client.get_run(run_id).data.params  # a resumed run logged its params at its first start
        self._log_params(client, run_id, {k: v for k, v in params(config).items() if k not in logged})

    @staticmethod
    def _log_params(client: Any, run_id: str, values: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(key, value) for key, value in values.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])

    def metrics(self, exp_id: str, values: Mapping[str, float], step: int) -> None:
        if exp_id not in self.runs or not values:
            return  # the start failed, and said so
        from mlflow.entities import Metric

        client, run_id = self.runs[exp_id]
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def artifacts(self, exp_id: str, output_dir: str) -> None:
        if exp_id not in self.runs:
            return
        client, run_id = self.runs.pop(exp_id)  # the run's last task
        for entry in sorted(Path(output_dir).iterdir()):
            if entry.name in SKIPPED or entry.is_symlink():
                continue
            if entry.is_dir():
                client.log_artifacts(run_id, str(entry), artifact_path=entry.name)
            elif entry.is_file():
                client.log_artifact(run_id, str(entry))

    def end(self, exp_id: str, status: str) -> None:
        if exp_id not in self.runs:
            return
        client, run_id = self.runs[exp_id]
        client.set_terminated(run_id, STATUS.get(status, "FAILED"))


def _open(uri: str) -> Any:
    """An MlflowClient whose store is ready: for SQLite, its tables created by one process at a time."""
    # MLflow announces creating its database tables at INFO on its own handler: not news in a run's output
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    # A new SQLite store is made by ~60 migrations (seconds); runs started together (run-parallel) would
    # each migrate it at once and block on SQLite's single writer. The first one migrates, the others wait.
    with _file_lock(Path(uri[len("sqlite:///") :] + ".lock")):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store: creates and migrates the tables
    return client


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 120.0) -> Iterator[None]:
    """An exclusive lock on ``path`` between processes (POSIX ``flock``); elsewhere, or past ``timeout``,
    no lock: the store is then opened as MLflow would open it."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _previous_run(client: Any, folder: Path, uri: str) -> str | None:
    """The MLflow run of an earlier start of this folder (a ``--resume``), marked running again; or None."""
    try:
        saved = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        run_id = saved["run_id"] if saved.get("tracking_uri") == uri else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(run_id, str):
        return None
    try:
        run = client.get_run(run_id)
    except Exception:  # deleted for good, or not found: a new run
        return None
    # deleted in MLflow meanwhile, or the file came along with a copied folder: a new run
    if run.info.lifecycle_stage != "active" or run.data.tags.get("lorakit.output_dir") != str(
        folder.resolve()
    ):
        return None
    client.update_run(run_id, status="RUNNING")
    return run_id


def _new_run(client: Any, exp_id: str, folder: Path, uri: str, artifacts: Path | None) -> str:
    name = os.environ.get("LORAKIT_MLFLOW_EXPERIMENT") or DEFAULT_EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = artifacts.as_uri() if artifacts is not None else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except Exception:  # another run (run-parallel) created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    tags = {"lorakit.exp_id": exp_id, "lorakit.output_dir": str(folder.resolve())}
    run_id: str = client.create_run(experiment_id, run_name=exp_id, tags=tags).info.run_id
    record = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": uri}
    (folder / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return run_id


_worker = Worker()
_tracker = Tracker()


@hookimpl
def lorakit_on_run_start(exp_id: str, config: Mapping[str, Any], output_dir: str) -> None:
    if enabled():
        config = json.loads(json.dumps(config, default=str))  # a copy: the caller's dict may change
        _worker.submit(f"the start of {exp_id}", lambda: _tracker.start(exp_id, config, output_dir))


@hookimpl
def lorakit_on_epoch_end(exp_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
    if enabled():
        values = numbers(metrics)
        _worker.submit(f"epoch {epoch} metrics", lambda: _tracker.metrics(exp_id, values, epoch))


@hookimpl
def lorakit_on_run_end(exp_id: str, status: str, metrics: Mapping[str, Any], output_dir: str) -> None:
    if not enabled():
        return
    epochs = [int(k[6:]) for k in metrics if k.startswith("epoch_") and k[6:].isdigit()]
    step = max(epochs, default=0)
    final: dict[str, float] = {}
    for block in ("test", "best"):
        if isinstance(metrics.get(block), Mapping):
            final.update(numbers(metrics[block], prefix=f"{block}."))
    _worker.submit("the test and best metrics", lambda: _tracker.metrics(exp_id, final, step))
    # the status before the artifacts: a slow upload past the timeout should not leave the run RUNNING
    _worker.submit(f"the status {STATUS.get(status, status)}", lambda: _tracker.end(exp_id, status))
    _worker.submit("the artifacts", lambda: _tracker.artifacts(exp_id, output_dir))
    timeout = _timeout()
    pending = _worker.drain(min(timeout, 1.0))
    if pending:  # say why the run has not ended yet (a new local store takes seconds to create)
        log.info('plugin "%s": waiting up to %g s for MLflow to log %s', NAME, timeout, ", ".join(pending))
        pending = _worker.drain(max(0.0, timeout - 1.0))
    if pending:
        warn(
            f"MLflow did not answer within {timeout:g} s (LORAKIT_MLFLOW_TIMEOUT); not logged: {', '.join(pending)}"
        )


def _timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("LORAKIT_MLFLOW_TIMEOUT", DEFAULT_TIMEOUT)))
    except ValueError:
        return DEFAULT_TIMEOUT
