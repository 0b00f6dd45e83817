"""The training loop, on 🤗 Accelerate: one run of one experiment, resumable at any step boundary."""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ..config.schema import ExperimentConfig
from ..conventions import greater_is_better, headline_metric, is_better, stop_exit_code
from ..errors import LorakitError, ResumeError
from ..plugins import Plugins
from ..runs.layout import RunLayout
from . import precision as mp
from .batching import collate, epoch_batches, to_device
from .checkpoint import (
    check_world_size,
    latest_checkpoint,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_best,
    save_checkpoint,
)
from .console import RunProgress, on_terminal
from .evaluate import class_reports, compute_metrics, predict_split

log = logging.getLogger("lorakit.train")

STOP_SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")


class RunStopped(Exception):
    """The run was asked to stop (signal) and saved a checkpoint; ``--resume`` continues it."""

    def __init__(self, signal_name: str, global_step: int):
        self.signal_name = signal_name
        self.global_step = global_step
        self.exit_code = stop_exit_code(signal_name)
        super().__init__(
            f"stopped by {signal_name} at step {global_step}; checkpoint saved, resume with --resume"
        )


class NonFiniteLoss(LorakitError):
    """The loss became NaN or infinite."""


@attrs.define(kw_only=True)
class LoopState:
    """Where the loop is; saved in every checkpoint."""

    epoch: int = 1  # the epoch in progress (1-based)
    batch: int = 0  # batches of that epoch already consumed
    global_step: int = 0  # optimizer steps taken
    history: dict[str, dict[str, float]] = attrs.Factory(dict)
    best_epoch: int | None = None
    best_value: float | None = None
    epochs_without_best: int = 0
    train_loss_sum: float = 0.0
    train_loss_batches: int = 0
    skipped_steps: int = 0  # fp16 steps the loss scaler skipped (inf/NaN gradients); the LR did not move


_EARLY: list[str] = []  # stop signals received before a run's SignalCatcher was installed


def catch_early_signals() -> None:
    """Remember stop signals from the first line of ``lorakit train`` on (a signal's default action would
    kill the process while it imports torch or reads the config); the run's catcher takes them over."""

    def remember(signum: int, frame: Any) -> None:
        _EARLY.append(signal.Signals(signum).name)

    for name in STOP_SIGNALS:
        with contextlib.suppress(ValueError, AttributeError):  # not the main thread, or no such signal
            signal.signal(getattr(signal, name), remember)


def early_signal() -> str | None:
    """The last stop signal received before any run's catcher was installed."""
    return _EARLY[-1] if _EARLY else None


class SignalCatcher:
    """Turns stop signals into a flag the loop checks at step boundaries (handlers restored on exit)."""

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        self._depth = 0

    def __enter__(self) -> SignalCatcher:
        # re-entrant: the runner holds it from the first line of a run, the loop again while it trains
        self._depth += 1
        if self._depth > 1:
            return self
        if _EARLY and self.received is None:
            self.received = _EARLY.pop()
            _EARLY.clear()
        for name in STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is None:
                continue
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the caller owns signals
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class TrainingLoop:
    """Train ``classifier`` on ``data`` per ``cfg``; calls ``on_best`` with each new best epoch's metrics."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        *,
        plugins: Plugins,
        layout: RunLayout,
        classifier: Any,
        combiner: Any,
        data: Any,
        plan: Any,
        pad_id: int,
        fingerprints: dict[str, str],
        on_epoch: Any,
        on_best: Any,
        precision: str | None = None,
        signals: SignalCatcher | None = None,
    ):
        self.cfg = cfg
        self.plugins = plugins
        self.layout = layout
        self.data = data
        self.plan = plan
        self.pad_id = pad_id
        self.fingerprints = fingerprints
        self.on_epoch = on_epoch
        self.on_best = on_best
        self.metric = headline_metric(cfg.train.save_strategy)
        self.probability_fns = [t.head_spec.probabilities for t in plan.tasks]
        self.signals = signals or SignalCatcher()
        # end after this epoch, on the full run's schedule (``lorakit reproduce --epochs-only``)
        self.stop_after_epochs: int | None = None
        # False (``echo=False``): the run prints nothing, so no progress bar either
        self.echo = True
        self.progress = RunProgress(enabled=False, logger=log, metric=self.metric, epochs=0, total=0)
        self.last_reports: dict[str, Any] = {}  # the last evaluate()'s per-class reports
        self._setup_device(precision)
        self._setup_optimizer(classifier, combiner)
        self.train_split = data.splits["train"]
        self._setup_schedule()
        self.state = LoopState()

    def _setup_device(self, precision: str | None) -> None:
        """Accelerate on the configured device, and the precision the run trains in."""
        import torch
        from accelerate import Accelerator

        wanted = self.cfg.train.device
        # mixed precision is lorakit's own autocast and scaler (see training/precision.py), not Accelerate's
        self.accelerator = Accelerator(
            cpu=wanted == "cpu" or (wanted == "auto" and not torch.cuda.is_available()),
            mixed_precision="no",
        )
        self.device = self.accelerator.device
        #: fp32 | bf16 | fp16: a resumed run passes the precision it started with
        self.precision = precision or mp.resolve(self.cfg.train.mixed_precision, self.device)
        self.scaler = mp.grad_scaler(self.precision, self.device)
        self.tf32 = mp.enable_tf32(self.device)
        note = mp.emulation_note(self.precision, self.device)
        if note and self.accelerator.is_main_process:
            log.warning("%s", note)

    def _setup_optimizer(self, classifier: Any, combiner: Any) -> None:
        """AdamW over the trainable weights of the model and the loss (no weight decay on 1-D ones)."""
        import torch

        params = [p for p in classifier.parameters() if p.requires_grad]
        params += [p for p in combiner.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.cfg.train.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.cfg.train.lr,
        )
        self.classifier, self.optimizer = self.accelerator.prepare(classifier, optimizer)
        # the bare optimizer: the loss scaler keys its per-optimizer state on the object it is given
        self._optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        self.combiner = combiner.to(self.device)
        self._combiner_params = [p for p in self.combiner.parameters() if p.requires_grad]

    def _setup_schedule(self) -> None:
        """Steps per epoch and the LR scheduler over all of them."""
        train = self.cfg.train
        self.batches_per_epoch = len(self._batches(1))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / train.grad_accum)
        total = self.steps_per_epoch * train.epochs
        self.scheduler = (
            self.plugins.lr_schedulers()
            .get(train.lr_scheduler)
            .build(self.optimizer, round(total * train.warmup_ratio), total)
        )

    # ---- state ----------------------------------------------------------------------------------

    def _batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(
            self.train_split.lengths(),
            self.cfg.train.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
            group_by_length=self.cfg.train.group_by_length,
            num_replicas=self.accelerator.num_processes,
            rank=self.accelerator.process_index,
        )

    def trainable(self) -> dict[str, Any]:
        from ..modeling.model import trainable_state

        model = self.accelerator.unwrap_model(self.classifier)
        return {
            **{f"model.{k}": v for k, v in trainable_state(model).items()},
            **{f"loss.{k}": v for k, v in trainable_state(self.combiner).items()},
        }

    def load_trainable(self, weights: dict[str, Any], source: Path | None = None) -> None:
        """Load trainable weights; ``source`` (the file they came from) is named when they do not fit."""
        from ..modeling.model import load_trainable_state

        model = self.accelerator.unwrap_model(self.classifier)
        model_weights = {k[6:]: v for k, v in weights.items() if k.startswith("model.")}
        load_trainable_state(model, model_weights, source=source)
        loss_weights = {k[5:]: v for k, v in weights.items() if k.startswith("loss.")}
        load_trainable_state(self.combiner, loss_weights, source=source)

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def autocast(self) -> Any:
        """The run's autocast context: every forward pass (training, evaluation, reload check) uses it."""
        return mp.autocast(self.precision, self.device)

    def checkpoint(self) -> None:
        """Every rank calls this (RNG states are gathered); rank 0 alone writes."""
        rank_rng = [rng_state(self.device)]
        if self.world_size > 1:
            from accelerate.utils import gather_object

            rank_rng = gather_object(rank_rng)
        if self.accelerator.is_main_process:
            save_checkpoint(
                self.layout.checkpoints,
                global_step=self.state.global_step,
                weights=self.trainable(),
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                state={
                    "loop": attrs.asdict(self.state),
                    "fingerprints": self.fingerprints,
                    "world_size": self.world_size,
                    "precision": self.precision,
                },
                rank_rng=rank_rng,
                scaler=self.scaler,
            )
        self.accelerator.wait_for_everyone()

    def rank_report(self) -> list[dict[str, Any]]:
        """Per rank: optimizer steps (proof that every rank trained), peak memory, and a checksum of the
        trainable weights (proof that the ranks stayed in step). A collective: every rank calls it."""
        from .envinfo import peak_memory_mb

        report = [{"steps": self.state.global_step, **peak_memory_mb(self.device)}]
        if self.world_size == 1:
            return report
        from accelerate.utils import gather_object

        weights = self.trainable()
        report[0]["checksum"] = float(sum(float(t.double().sum()) for t in weights.values()))

        return list(gather_object(report))

    def stop_requested(self, signals: SignalCatcher) -> str | None:
        """The stop signal, agreed by every rank (one tiny all-reduce per step, only when distributed)."""
        if self.world_size == 1:
            return signals.received
        import torch

        code = STOP_SIGNALS.index(signals.received) + 1 if signals.received else 0
        flag = torch.tensor([code], device=self.device)
        agreed = int(self.accelerator.gather(flag).max().item())
        return STOP_SIGNALS[agreed - 1] if agreed else None

    def resume(self) -> bool:
        """Load the newest complete checkpoint; False when there is none."""
        path = latest_checkpoint(self.layout.checkpoints)
        if path is None:
            return False
        ckpt = load_checkpoint(path)
        check_world_size(path, ckpt["state"].get("world_size", 1), self.world_size)
        saved_precision = ckpt["state"].get("precision", "fp32")
        if saved_precision != self.precision:
            raise ResumeError(
                f"{path}: trained in {saved_precision}, resuming in {self.precision}; "
                f'set train.mixed_precision = "{saved_precision}" to resume exactly'
            )
        self.load_trainable(ckpt["weights"], source=path / "trainable.safetensors")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"], ckpt["state"]["python_random"], self.accelerator.process_index, self.device)
        self.state = LoopState(**ckpt["state"]["loop"])
        log.info(
            "resumed from %s (epoch %d, batch %d, step %d)",
            path.name,
            self.state.epoch,
            self.state.batch,
            self.state.global_step,
        )
        return True

    # ---- the loop -------------------------------------------------------------------------------

    def run(self) -> LoopState:
        """Train to the last epoch (or an early stop); raises :class:`RunStopped` on a stop signal."""
        import torch

        cfg = self.cfg
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        last = min(cfg.train.epochs, self.stop_after_epochs or cfg.train.epochs)
        with self.signals, self._progress(last) as self.progress:
            # a signal that came during model loading, tokenization or process-group setup stops here,
            # before the first step: nothing new to checkpoint, the newest checkpoint (if any) stands
            stop = self.stop_requested(self.signals)
            if stop:
                raise RunStopped(stop, self.state.global_step)
            # (the early-stop test comes first too: a run resumed after its early stop trains no further)
            while self.state.epoch <= last and not self._should_stop_early():
                epoch = self.state.epoch
                started = time.perf_counter()
                self.progress.epoch(epoch)
                self._train_epoch(epoch, first_bad)
                self._check_finite(first_bad)
                self._end_epoch(epoch, time.perf_counter() - started)
                done = self.state.history[f"epoch_{epoch}"]
                self.progress.update(loss=done.get("train_loss"), best=self.state.best_value)
                if self._should_stop_early():
                    log.info("early stopping: no new best for %d epochs", self.state.epochs_without_best)
                    break
                stop = self.stop_requested(self.signals)
                if stop:
                    raise RunStopped(stop, self.state.global_step)
        return self.state

    def _train_epoch(self, epoch: int, first_bad: Any) -> None:
        """The rest of ``epoch`` from ``state.batch`` on; checkpoints at intervals and on a stop signal."""
        import torch

        cfg = self.cfg
        accum = cfg.train.grad_accum
        log_every = max(1, self.steps_per_epoch // 10)
        batches = self._batches(epoch)
        self.classifier.train()
        # float64: sums of float32 losses stay exact, so a resumed run banks the same train_loss
        running = torch.zeros((), dtype=torch.float64, device=self.device)
        window_start = self.state.batch  # first batch whose loss is in `running`
        for b in range(self.state.batch, len(batches)):
            last_in_step = (b + 1) % accum == 0 or b + 1 == len(batches)
            # the epoch's last accumulation group may be short: average over its real size
            group = min(accum, len(batches) - (b // accum) * accum)
            # micro-batches before the step skip DDP's gradient all-reduce (one per optimizer step)
            sync = contextlib.nullcontext() if last_in_step else self.accelerator.no_sync(self.classifier)
            with sync:
                loss = self._forward_backward(batches[b], group)
            # remember the first non-finite step on the device: no per-step host sync
            bad = ~torch.isfinite(loss)
            step_no = self.state.global_step + 1
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step_no), first_bad)
            running += loss.double()
            self.state.batch = b + 1
            if not last_in_step:
                continue
            self._optimizer_step()
            self.progress.step()
            if self.state.global_step % log_every == 0:
                # the only host syncs of the epoch: every tenth of it (the bar shows the loss logged here)
                self._check_finite(first_bad)
                mean_loss = running.item() / max(b + 1 - window_start, 1)
                log.info(
                    "epoch %d step %d/%d loss %.4f lr %.2e",
                    epoch,
                    self.state.global_step,
                    self.steps_per_epoch * cfg.train.epochs,
                    mean_loss,
                    self.scheduler.get_last_lr()[0],
                )
                self.progress.update(loss=mean_loss)
            every = cfg.train.checkpoint_every_steps
            at_interval = every is not None and self.state.global_step % every == 0 and b + 1 < len(batches)
            stop = self.stop_requested(self.signals)
            if at_interval or stop:
                self._bank(running)
                running.zero_()
                window_start = self.state.batch
                self.checkpoint()
            if stop:
                raise RunStopped(stop, self.state.global_step)
        self._bank(running)

    def _forward_backward(self, index: np.ndarray, group: int) -> Any:
        """One micro-batch: forward under the run's autocast, backward (scaled in fp16); the detached loss."""
        batch = collate(self.train_split, index, self.pad_id)
        with self.autocast():
            logits = self.classifier(
                to_device(batch["input_ids"], self.device), to_device(batch["attention_mask"], self.device)
            )
            loss, _ = self.combiner(logits, to_device(batch["labels"], self.device))
        scaled = loss / group
        self.accelerator.backward(self.scaler.scale(scaled) if self.scaler is not None else scaled)
        return loss.detach().float()

    def _optimizer_step(self) -> None:
        """Clip, step, and advance the LR schedule, except on a step fp16's loss scaler skipped."""
        cfg = self.cfg
        self._sync_combiner_grads()
        if self.scaler is not None:
            self.scaler.unscale_(self._optimizer)  # clip the true gradients, not the scaled ones
        if cfg.train.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.classifier.parameters(), cfg.train.max_grad_norm)
        skipped = False
        if self.scaler is not None:
            # fp16 only: the scaler reads its inf check back to the host in step() anyway
            scale = self.scaler.get_scale()
            self.scaler.step(self._optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale
        else:
            self.optimizer.step()
        if skipped:
            self.state.skipped_steps += 1
        else:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1

    def _sync_combiner_grads(self) -> None:
        """Learned loss weights live outside the DDP-wrapped model: average their gradients by hand so
        every rank keeps the same weights."""
        if self.world_size == 1 or not self._combiner_params:
            return
        import torch.distributed as dist

        for param in self._combiner_params:
            if param.grad is not None:
                dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
                param.grad.div_(self.world_size)

    def _bank(self, running: Any) -> None:
        """Move the device-side loss sum into the host state (one sync, at checkpoints and epoch ends)."""
        self.state.train_loss_sum += float(running.item())
        self.state.train_loss_batches = self.state.batch

    def _check_finite(self, first_bad: Any) -> None:
        step = int(first_bad.item())
        if step >= 0:
            raise NonFiniteLoss(
                f"{self.cfg.exp_id}: the loss became NaN or infinite at step {step}; lower train.lr, "
                'check the data, or use train.mixed_precision = "no"'
            )

    def _progress(self, last_epoch: int) -> RunProgress:
        """The run's bar, through epoch ``last_epoch``: from the step the run is at (a resume) to the last."""
        return RunProgress(
            enabled=self.echo and self.accelerator.is_main_process and on_terminal(),
            logger=log,
            metric=self.metric,
            epochs=last_epoch,
            total=self.steps_per_epoch * last_epoch,
            initial=self.state.global_step,
            best=self.state.best_value,
        )

    def evaluate(self, split_name: str, *, alone: bool = False) -> dict[str, float]:
        """Metrics of a split: each rank predicts every ``world_size``-th row, every rank gets all rows;
        ``alone``: this rank predicts every row itself (rank 0 after training, when the others are gone)."""
        split = self.data.splits[split_name]
        n = len(split.lengths())
        share = 1 if alone else self.world_size
        rows = np.arange(0 if alone else self.accelerator.process_index, n, share)
        probs, _ = predict_split(
            self.accelerator.unwrap_model(self.classifier),
            split,
            batch_size=self.cfg.train.eval_batch_size or 2 * self.cfg.train.batch_size,
            pad_id=self.pad_id,
            device=self.device,
            probability_fns=self.probability_fns,
            rows=rows,
            autocast=self.autocast,
        )
        if share > 1:
            probs = self._gather_rows(n, rows, probs)
        tasks = [t.name for t in self.plan.tasks]
        labels = np.asarray(split.labels)
        # per-class figures and confusion matrices of the same predictions, for reports.json
        names = [list(t.labels) for t in self.data.label_map.tasks]
        self.last_reports = class_reports(probs, labels, tasks, names)
        return compute_metrics(
            probs,
            labels,
            tasks,
            [t.num_labels for t in self.plan.tasks],
            self.cfg.train.metrics,
            self.plugins,
        )

    def _gather_rows(self, n: int, rows: np.ndarray, probs: list[np.ndarray]) -> list[np.ndarray]:
        """Put every rank's share of the predictions together, in row order, on every rank."""
        from accelerate.utils import gather_object

        shares = gather_object([(rows, probs)])
        widths = next(
            ([p.shape[1] for p in share] for share_rows, share in shares if len(share_rows)), [0] * len(probs)
        )
        full = [np.zeros((n, width), dtype=np.float32) for width in widths]
        for share_rows, share_probs in shares:
            for t, p in enumerate(share_probs):
                if len(share_rows):
                    full[t][share_rows] = p
        return full

    def _end_epoch(self, epoch: int, seconds: float) -> None:
        metrics = self.evaluate("val")
        metrics["train_loss"] = self.state.train_loss_sum / max(self.state.train_loss_batches, 1)
        metrics["epoch_seconds"] = round(seconds, 3)
        self.state.history[f"epoch_{epoch}"] = metrics
        if self.metric not in metrics:
            raise LorakitError(
                f"train.save_strategy: metric {self.metric!r} is not computed; known: {', '.join(sorted(metrics))}"
            )
        value = metrics[self.metric]
        greater = greater_is_better(self.metric, self.plugins.metrics())
        is_best = self.cfg.train.save_strategy == "last" or is_better(value, self.state.best_value, greater)
        if is_best:
            self.state.best_epoch, self.state.best_value = epoch, value
            self.state.epochs_without_best = 0
        else:
            self.state.epochs_without_best += 1
        summary = " ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("f1", "accuracy", "loss"))
        )
        log.info("epoch %d: %s%s", epoch, summary, " (best)" if is_best else "")
        self.state.epoch, self.state.batch = epoch + 1, 0
        self.state.train_loss_sum, self.state.train_loss_batches = 0.0, 0
        if self.accelerator.is_main_process:
            if is_best:
                save_best(self.layout.checkpoints, self.trainable())
                self.on_best(self.accelerator.unwrap_model(self.classifier), self.state)
            self.on_epoch(epoch, metrics, self.state, self.last_reports)
        self.checkpoint()

    def _should_stop_early(self) -> bool:
        patience = self.cfg.train.early_stopping_patience
        return patience is not None and self.state.epochs_without_best >= patience
