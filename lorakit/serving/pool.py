"""Many experiments on one base model: each experiment's adapter and heads beside one shared encoder.

Experiments whose only tuning method is peft's share one base model per (arch, backbone): the first loads it
with its adapter, the next ones add theirs (``load_adapter``), and a batch of rows for several of them runs
in one forward pass (peft's ``adapter_names``, where every adapter in it is plain LoRA; others run one
adapter at a time). An experiment with a method outside peft (lorakit-adapters' ``bottleneck``) gets a
model of its own. Everything here runs in the server's one model thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..errors import LorakitError
from ..plugins import Plugins


class LoadRefused(LorakitError):
    """An experiment that cannot be served (not completed, damaged, unknown): the reason in one line."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@attrs.define(kw_only=True, eq=False)
class Served:
    """One loaded experiment."""

    exp_id: str
    adapter: str | None  # its adapter's name on the shared base; None: a model of its own
    base: Any  # _Base
    classifier: Any  # MultiTaskClassifier: the (shared) encoder and this experiment's heads
    tasks: list[str]
    labels: dict[str, list[str]]
    probability_fns: list[Any]
    max_len: int
    info: dict[str, Any]


@attrs.define(kw_only=True, eq=False)
class _Base:
    key: tuple[str, str]
    encoder: Any  # a PeftModel holding every adapter, or (own model) the experiment's encoder
    tokenizer: Any
    mixed: bool = True  # may rows of different adapters share one forward pass?


class ModelPool:
    """The experiments a server holds, and the forward passes over them."""

    def __init__(self, outputs: Path, plugins: Plugins, *, device: str = "cpu"):
        self.outputs = outputs
        self.plugins = plugins
        self.device = device
        self.served: dict[str, Served] = {}
        self._bases: dict[tuple[str, str], _Base] = {}
        self._count = 0

    # ---- loading ------------------------------------------------------------------------------------

    def load(self, exp_id: str) -> Served:
        """Load (or reload) a completed experiment; :class:`LoadRefused` says why not in one line."""
        from ..experiment import resolve_experiment
        from ..modeling.artifacts import check_method_files, saved_parts

        try:
            layout = resolve_experiment(exp_id, self.outputs)
        except LorakitError as exc:
            raise LoadRefused(str(exc), 404) from None
        try:
            run = layout.read_run()
            if run.status != "completed":
                reason = f" ({run.error})" if run.error else ""
                raise LoadRefused(
                    f"{exp_id}: {run.status}{reason}; only completed experiments are served", 409
                )
            meta = layout.read_heads()
            parts = saved_parts(meta, self.plugins)
            check_method_files(layout, parts)
            if len(parts) == 1 and parts[0].spec.uses_peft:
                served = self._load_shared(layout, meta)
            else:
                served = self._load_own(layout)
        except LoadRefused:
            raise
        except LorakitError as exc:  # a damaged file, a missing plugin
            raise LoadRefused(" ".join(str(exc).split()), 422) from None
        best = layout.read_metrics().get("best") if layout.metrics.is_file() else None
        served.info = _info(served, meta, run, best)
        old = self.served.get(exp_id)
        self.served[exp_id] = served
        if old is not None and old.adapter is not None and old.adapter != served.adapter:
            old.base.encoder.delete_adapter(old.adapter)
        return served

    def _load_shared(self, layout: Any, meta: dict[str, Any]) -> Served:
        import peft

        from ..modeling.artifacts import quiet_peft

        key = (str(meta["arch"]), str(meta["backbone"]))
        name = f"exp{self._count}"  # peft adapter names: no dots, not inside "lora_"
        self._count += 1
        base = self._bases.get(key)
        with quiet_peft():
            if base is None:
                backbone = self.plugins.backbones().get(meta["backbone"])
                encoder = backbone.load_model(meta["arch"])
                model = peft.PeftModel.from_pretrained(encoder, str(layout.adapter_dir), adapter_name=name)
                model.to(self.device).eval()
                base = _Base(key=key, encoder=model, tokenizer=backbone.load_tokenizer(meta["arch"]))
                self._bases[key] = base
            else:
                base.encoder.load_adapter(str(layout.adapter_dir), adapter_name=name)
                base.encoder.to(self.device).eval()
        config = base.encoder.peft_config[name]
        base.mixed = (
            base.mixed and config.peft_type == peft.PeftType.LORA and not getattr(config, "use_dora", False)
        )
        return self._with_heads(layout, meta, base, name)

    def _with_heads(self, layout: Any, meta: dict[str, Any], base: _Base, adapter: str) -> Served:
        import torch

        from ..modeling.artifacts import label_names, with_saved_heads

        classifier, specs = with_saved_heads(base.encoder, meta, self.plugins, layout)
        classifier.heads.to(torch.device(self.device)).eval()
        return Served(
            exp_id=layout.exp_id,
            adapter=adapter,
            base=base,
            classifier=classifier,
            tasks=list(classifier.tasks),
            labels=label_names(meta),
            probability_fns=[s.probabilities for s in specs],
            max_len=int(meta.get("max_len") or 512),
            info={},
        )

    def _load_own(self, layout: Any) -> Served:
        from ..modeling.artifacts import label_names, load_artifacts

        model = load_artifacts(layout, self.plugins, device=self.device)
        meta = model.heads
        base = _Base(key=("own", layout.exp_id), encoder=model.classifier.encoder, tokenizer=model.tokenizer)
        return Served(
            exp_id=layout.exp_id,
            adapter=None,
            base=base,
            classifier=model.classifier,
            tasks=[t["name"] for t in meta["tasks"]],
            labels=label_names(meta),
            probability_fns=model.probability_fns,
            max_len=int(meta.get("max_len") or 512),
            info={},
        )

    def completed(self) -> list[str]:
        """Every completed experiment of the outputs folder, by the index."""
        from ..runs.index import ExperimentIndex

        entries = ExperimentIndex(self.outputs).entries()
        return [e for e, entry in sorted(entries.items()) if entry.get("status") == "completed"]

    # ---- inference ----------------------------------------------------------------------------------

    def predict(self, rows: Sequence[tuple[Served, str]], *, batch_rows: int) -> list[dict[str, Any]]:
        """One result per row, in order: rows grouped by base, sorted by length, ``batch_rows`` at a time."""
        import torch

        # an experiment loaded again since these rows were queued: its new model answers them
        rows = [(self.served.get(served.exp_id, served), text) for served, text in rows]
        results: list[dict[str, Any] | None] = [None] * len(rows)
        by_base: dict[int, list[int]] = {}
        for i, (served, _) in enumerate(rows):
            by_base.setdefault(id(served.base), []).append(i)
        with torch.inference_mode():
            for indices in by_base.values():
                base = rows[indices[0]][0].base
                ids = _tokenize(base.tokenizer, [rows[i] for i in indices])
                order = sorted(range(len(indices)), key=lambda k: len(ids[k]))
                for group in length_groups(order, [len(x) for x in ids], batch_rows):
                    chunk = [indices[k] for k in group]
                    outputs = self._forward(base, [rows[i][0] for i in chunk], [ids[k] for k in group])
                    for i, out in zip(chunk, outputs, strict=True):
                        results[i] = out
        return [r for r in results if r is not None]

    def _forward(self, base: _Base, served: list[Served], ids: list[list[int]]) -> list[dict[str, Any]]:
        import torch

        from ..modeling.model import pool

        width = max(len(x) for x in ids)
        pad = base.tokenizer.pad_token_id or 0
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=self.device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=self.device)
        names = [s.adapter for s in served]
        hidden = torch.empty(0)
        if served[0].adapter is None or (base.mixed and len(set(names)) > 1):
            kwargs = {} if served[0].adapter is None else {"adapter_names": names}
            hidden = _hidden(base.encoder(input_ids=input_ids, attention_mask=mask, **kwargs))
        elif len(set(names)) == 1:
            base.encoder.set_adapter(names[0])
            hidden = _hidden(base.encoder(input_ids=input_ids, attention_mask=mask))
        else:  # one adapter at a time (a method peft cannot mix)
            hidden = torch.zeros(len(ids), width, base.encoder.config.hidden_size, device=self.device)
            for name in dict.fromkeys(names):
                rows = [i for i, n in enumerate(names) if n == name]
                base.encoder.set_adapter(name)
                hidden[rows] = _hidden(base.encoder(input_ids=input_ids[rows], attention_mask=mask[rows]))
        out: list[dict[str, Any]] = [{} for _ in served]
        for experiment in dict.fromkeys(served):  # each experiment's heads once, over all its rows
            rows = [i for i, s in enumerate(served) if s is experiment]
            pooled = pool(hidden[rows], mask[rows], experiment.classifier.pooling)
            logits = [experiment.classifier.heads[f"t{t}"](pooled) for t in range(len(experiment.tasks))]
            for i, answer in zip(rows, _answers(experiment, logits), strict=True):
                out[i] = answer
        return out


# A forward pass costs about as much as this many more tokens (Python and kernel launches per layer):
# measured on all-MiniLM-L6-v2, 2 CPU threads, a batch of one 8-token text takes as long as ~70 tokens.
FORWARD_OVERHEAD_TOKENS = 64


def length_groups(order: list[int], lengths: list[int], max_rows: int) -> list[list[int]]:
    """Split rows sorted by length (``order``) into consecutive batches of at most ``max_rows`` that
    minimise the padded tokens plus :data:`FORWARD_OVERHEAD_TOKENS` per batch: one batch of 32 tweets padded
    to its longest wastes ~40% of the tokens, one pass per text pays the overhead 32 times. Exact dynamic
    programming over the split points (O(n · max_rows))."""
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of the first i rows
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[order[end - 1]]  # the longest of any batch ending here (sorted)
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + FORWARD_OVERHEAD_TOKENS + (end - start) * width
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups: list[list[int]] = []
    end = n
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def _hidden(output: Any) -> Any:
    return output[0] if isinstance(output, tuple) else output.last_hidden_state


def _tokenize(tokenizer: Any, rows: Sequence[tuple[Served, str]]) -> list[list[int]]:
    """Token ids per row, each truncated at its experiment's max_len (no padding: batches pad themselves);
    one tokenizer call per experiment."""
    out: list[list[int]] = [[] for _ in rows]
    for served in dict.fromkeys(s for s, _ in rows):
        index = [i for i, (s, _) in enumerate(rows) if s is served]
        ids = tokenizer([rows[i][1] for i in index], truncation=True, max_length=served.max_len)["input_ids"]
        for i, row in zip(index, ids, strict=True):
            out[i] = list(row)
    return out


def _answers(served: Served, logits: list[Any]) -> list[dict[str, Any]]:
    """Per row, per task: the label and each label's probability (what ``Experiment.load(...).predict``
    gives)."""
    from ..modeling.artifacts import answers, probabilities

    probs = [
        probabilities(lg.float(), fn).cpu().tolist()
        for lg, fn in zip(logits, served.probability_fns, strict=True)
    ]
    return answers(served.tasks, served.labels, probs)


def _info(served: Served, meta: dict[str, Any], run: Any, best: Any) -> dict[str, Any]:
    params = run.key_params or {}
    return {
        "exp_id": served.exp_id,
        "tasks": {task: served.labels[task] for task in served.tasks},
        "method": meta.get("method") or params.get("method"),
        "base_model": meta["arch"],
        "backbone": meta["backbone"],
        "shared_base": served.adapter is not None,
        "headline_metric": run.headline,
        "loaded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "best": best if isinstance(best, dict) else None,
    }
