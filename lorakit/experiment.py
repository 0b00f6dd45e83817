"""The Python API: ``Experiment(config).run()`` and ``Experiment.load(exp).predict(texts)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config.schema import ExperimentConfig, load_config
from .errors import LorakitError, did_you_mean
from .plugins import Plugins, get_plugins
from .runs.layout import RunLayout, outputs_root


class Experiment:
    """One experiment: a config (file or dict, plus ``--set``-style overrides) and its output folder.

    >>> result = Experiment("configs/exp_v4_double_label.toml").run()      # doctest: +SKIP
    >>> result.best["avg_f1"]                                                # doctest: +SKIP
    """

    def __init__(
        self,
        config: str | Path | Mapping[str, Any],
        overrides: Sequence[str] | None = None,
        *,
        outputs: str | Path | None = None,
        plugins: Plugins | None = None,
    ):
        self.config: ExperimentConfig
        self.config, self.raw = load_config(config, list(overrides or ()))
        self.outputs = outputs_root(outputs)
        self.plugins = plugins or get_plugins()

    @property
    def output_dir(self) -> Path:
        return self.outputs / self.config.exp_id

    def run(
        self,
        *,
        resume: bool = False,
        force: bool = False,
        echo: bool = True,
        stop_after_epochs: int | None = None,
    ) -> Any:
        """Train (or ``resume``) and return a :class:`lorakit.training.runner.RunResult`;
        ``stop_after_epochs=K`` ends the run after epoch K, on the full run's learning-rate schedule."""
        from .training.runner import run_experiment

        return run_experiment(
            self.config,
            config_path=str(self.raw.path) if self.raw.path else None,
            plugins=self.plugins,
            outputs=self.outputs,
            resume=resume,
            force=force,
            echo=echo,
            written=self.raw.written,
            stop_after_epochs=stop_after_epochs,
        )

    @classmethod
    def load(
        cls,
        exp: str | Path | None = None,
        *,
        outputs: str | Path | None = None,
        plugins: Plugins | None = None,
        device: str = "cpu",
    ) -> Predictor:
        """A trained experiment, by id (in the outputs folder), by folder path, or the active one when None."""
        return Predictor(resolve_experiment(exp, outputs), plugins or get_plugins(), device=device)


def resolve_experiment(exp: str | Path | None, outputs: str | Path | None = None) -> RunLayout:
    """An experiment folder from an id, a path, or (None) the active experiment of the index."""
    root = outputs_root(outputs)
    if exp is None:
        from .runs.index import ExperimentIndex

        active = ExperimentIndex(root).active()
        if active is None:
            raise LorakitError(
                "no experiment given and none is active; name one or run `lorakit rollback --exp-id EXP`"
            )
        exp = active
    path = Path(exp)
    if path.is_dir() and (path / "run.json").is_file():
        return RunLayout(path.resolve())
    layout = RunLayout(root / str(exp))
    if not layout.root.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise LorakitError(f"no experiment {str(exp)!r} in {root}{did_you_mean(str(exp), known)}")
    layout.require_run()  # an experiment's files without run.json: damaged, said so
    return layout


class Predictor:
    """A trained experiment loaded for prediction; a damaged file of its model (``heads.json``,
    ``heads.safetensors``, ``adapter_config.json``, the adapter weights) raises
    :class:`~lorakit.errors.DamagedFile`."""

    def __init__(self, layout: RunLayout, plugins: Plugins, *, device: str = "cpu"):
        from .modeling.artifacts import label_names, load_artifacts

        self.layout = layout
        self.model = load_artifacts(layout, plugins, device=device)
        self.device = device
        self.tasks = [t["name"] for t in self.model.heads["tasks"]]
        self.labels = label_names(self.model.heads)
        self.max_len = int(self.model.heads.get("max_len", 512))
        self.text_column = str(self.model.heads.get("text_column", "text"))

    @property
    def exp_id(self) -> str:
        return self.layout.exp_id

    def predict(self, texts: Sequence[str], *, batch_size: int = 64) -> list[dict[str, dict[str, Any]]]:
        """Per text, per task: ``{"label": str, "probabilities": {label: p}}``."""
        import torch

        from .modeling.artifacts import answers, probabilities

        tok = self.model.tokenizer
        results: list[dict[str, dict[str, Any]]] = []
        classifier = self.model.classifier
        for start in range(0, len(texts), batch_size):
            chunk = [str(t) for t in texts[start : start + batch_size]]
            enc = tok(chunk, truncation=True, max_length=self.max_len, padding=True, return_tensors="pt")
            with torch.no_grad():
                logits = classifier(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device))
            probs = [
                probabilities(out, fn).cpu().numpy()
                for out, fn in zip(logits, self.model.probability_fns, strict=False)
            ]
            results += answers(self.tasks, self.labels, probs)
        return results
