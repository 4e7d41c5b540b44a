#!/usr/bin/env python3
"""Side by side: the main job's zero-shot dev evaluation, `peft eval` against HF transformers.

The job is `experiments/sst2-prompt-tuning.toml`: SmolLM2-135M-Instruct (the zoo's GGUF, which both sides
dequantize to f32; the transformers side is loaded by `generate_side_by_side.hf_base`), SST-2's 872 dev rows,
the experiment's template and verbalizer. Zero-shot, the frozen model scores each class's label word at the
prompt's last token; accuracy is the share of rows whose label word scores highest, loss the mean cross-entropy
over the label words. Both sides use the same thread count, each in its own process:

    cargo build --release -p peft-cli && target/release/peft fetch smollm2-135m
    python benches/eval_side_by_side.py --markdown --out results/eval_side_by_side.json
    python benches/eval_side_by_side.py --max-rows 64                 # a quick check

- **peft**: `peft eval EXPERIMENT --batch-size B` on a copy of the experiment (data paths made absolute, the dev
  rows cut to `--max-rows`). `peft eval` reports no time of its own, so its time is the command's wall time
  minus the wall time of the same command on one dev row (process start, model load and dequantization,
  tokenizing the data, one short forward pass).
- **HF**: the same prompts, tokenized by the same tokenizer as `peft eval` tokenizes them (the GGUF's, through
  transformers; the special tokens the tokenizer adds, any it appends after the prompt dropped), sorted by
  length (stable) and cut into batches of B as `peft eval` batches them, right-padded with id 0 as it pads,
  one forward pass of the transformers base model per batch under `torch.inference_mode()` (no attention mask:
  with right padding and causal attention the real positions never see the padding, which is why `peft eval`
  needs none either), the final hidden state at each row's last real token times the label words' rows of the
  LM head. Timed from the raw rows to the accuracy, tokenization included; model loading is not timed.

Each time is the median of `--repeats` runs, each in a fresh process, no warm-up (one evaluation is the job).
The two accuracies must agree to about 1e-3 (one row of 872 is 1.1e-3) and the losses closely; where they do
not, the script says so and counts the HF rows whose two label-word logits are nearly tied. Needs torch,
transformers and gguf (pip).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib

from generate_side_by_side import ROOT, gguf_path, hf_base
from side_by_side import cpu_name, print_table, thread_env, write_json

EXPERIMENT = os.path.join(ROOT, "experiments", "sst2-prompt-tuning.toml")
ZOO_MODEL = "smollm2-135m"
# The data-source keys this script reads as `peft eval` does; any other key would change the rows.
SOURCE_KEYS = {"path", "text", "label", "limit", "skip", "has_header", "trim", "format"}
# Logit margins below this count as near ties (either side may pick either class).
TIE = 1e-4


def load_experiment(path):
    """The experiment file parsed, with its data paths absolute (they are relative to its folder)."""
    with open(path, "rb") as f:
        exp = tomllib.load(f)
    folder = os.path.dirname(os.path.abspath(path))
    if exp["model"]["name"] != ZOO_MODEL:
        raise SystemExit(f"{path}: the model must be the zoo's {ZOO_MODEL}, not {exp['model']['name']!r}")
    if exp["model"].get("quantized"):
        raise SystemExit(f"{path}: `quantized = true` keeps the GGUF's blocks; both sides here compute in f32")
    if exp["task"]["kind"] != "classification":
        raise SystemExit(f"{path}: the task must be verbalizer classification")
    for split in ("train", "eval"):
        source = exp["data"][split]
        unknown = set(source) - SOURCE_KEYS
        if unknown:
            raise SystemExit(f"{path}: [data.{split}] has {sorted(unknown)}, which this script does not apply")
        if source.get("format", "tsv" if source["path"].lower().endswith(".tsv") else None) != "tsv":
            raise SystemExit(f"{path}: [data.{split}] must be a TSV file")
        source["path"] = os.path.normpath(os.path.join(folder, source["path"]))
    return exp


def toml_dumps(table, prefix=()):
    """A TOML document of nested dicts of strings, numbers, booleans and lists (no arrays of tables)."""
    def key(k):
        return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else json.dumps(k)

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    lines = []
    if prefix:
        lines.append("[" + ".".join(key(k) for k in prefix) + "]")
    lines += [f"{key(k)} = {value(v)}" for k, v in table.items() if not isinstance(v, dict)]
    for k, v in table.items():
        if isinstance(v, dict):
            lines += ["", toml_dumps(v, prefix + (k,))]
    return "\n".join(lines).lstrip("\n")


def with_eval_limit(exp, limit):
    """The experiment with its dev rows cut to `limit` (or its own limit, if lower)."""
    data = dict(exp["data"])
    source = dict(data["eval"])
    if limit is not None:
        source["limit"] = min(limit, source.get("limit", limit))
    data["eval"] = source
    return dict(exp, data=data)


def read_rows(source):
    """The (text, label) rows of a TSV source as `peft eval` reads them: a header naming the columns, quoting
    off, values trimmed, blank lines skipped, then `skip` and `limit` applied."""
    rows = []
    with open(source["path"], encoding="utf-8") as f:
        lines = f.read().split("\n")
    if source.get("has_header", True):
        header = [c.strip() for c in lines[0].rstrip("\r").split("\t")]
        lines = lines[1:]
        text_col, label_col = header.index(source["text"]), header.index(source["label"])
    else:
        text_col, label_col = int(source["text"]), int(source["label"])
    trim = source.get("trim", True)
    for line in lines:
        cells = line.rstrip("\r").split("\t")
        if all(not c.strip() for c in cells):
            continue
        if trim:
            cells = [c.strip() for c in cells]
        rows.append((cells[text_col], cells[label_col]))
    rows = rows[source.get("skip", 0):]
    return rows[:source["limit"]] if "limit" in source else rows


def hf_child(args):
    """Runs in its own process: the HF evaluation, timed after the model is loaded; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    exp = with_eval_limit(load_experiment(args.experiment), args.max_rows)
    model, tokenizer = hf_base(gguf_path())
    task = exp["task"]
    template = task["template"]
    if template.replace("{text}", "").count("{"):
        raise SystemExit(f"the template {template!r} has placeholders besides {{text}}")
    add_special = task.get("add_special_tokens", True)
    max_length = task.get("max_length")
    classes = list(task["label_words"])  # class order is the verbalizer's order
    rows = read_rows(exp["data"]["eval"])
    # As `Verbalizer::label_token_ids`: each word's first token after the bare template, no special tokens.
    context = template.replace("{text}", "")
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    label_ids = [tokenizer(context + task["label_words"][c], add_special_tokens=False)["input_ids"][len(context_ids)]
                 for c in classes]
    head = model.lm_head.weight[label_ids]  # [classes, hidden]

    started = time.perf_counter()
    examples = []
    for text, label in rows:
        enc = tokenizer(template.replace("{text}", text), add_special_tokens=add_special,
                        return_special_tokens_mask=True)
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        while ids and special[len(ids) - 1]:  # trailing specials go: the label word follows the prompt
            ids = ids[:-1]
        if max_length is not None and len(ids) > max_length:
            raise SystemExit(f"a prompt of {len(ids)} tokens needs peft's truncation, which this script lacks")
        examples.append((ids, classes.index(label)))
    examples.sort(key=lambda e: len(e[0]))  # stable, as `peft eval` sorts
    correct, loss_sum, margins = 0, 0.0, []
    with torch.inference_mode():
        for start in range(0, len(examples), args.batch):
            chunk = examples[start:start + args.batch]
            width = max(len(ids) for ids, _ in chunk)
            batch = torch.zeros((len(chunk), width), dtype=torch.long)  # right padding with id 0
            for i, (ids, _) in enumerate(chunk):
                batch[i, :len(ids)] = torch.tensor(ids)
            hidden = model.base_model(input_ids=batch).last_hidden_state
            last = hidden[torch.arange(len(chunk)), torch.tensor([len(ids) - 1 for ids, _ in chunk])]
            logits = last @ head.T
            targets = torch.tensor([label for _, label in chunk])
            loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            correct += (logits.argmax(-1) == targets).sum().item()
            top2 = logits.topk(2, dim=-1).values
            margins += (top2[:, 0] - top2[:, 1]).tolist()
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows": len(examples), "accuracy": correct / len(examples),
                      "loss": loss_sum / len(examples), "near_ties": sum(m < TIE for m in margins),
                      "min_margin": min(margins), "label_ids": label_ids, "torch": torch.__version__}))


def peft_eval(args, experiment_file):
    """Wall seconds and the metrics of one `peft eval` run."""
    cmd = [args.peft, "eval", experiment_file, "--batch-size", str(args.batch)]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args.threads))
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def hf_eval(args):
    """The HF child's result, in a fresh process."""
    cmd = [sys.executable, __file__, "--hf-child", "--experiment", args.experiment, "--batch", str(args.batch),
           "--threads", str(args.threads)]
    if args.max_rows is not None:
        cmd += ["--max-rows", str(args.max_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(args.threads))
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit("the HF side failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", default=EXPERIMENT, help="the experiment file (the main job's)")
    parser.add_argument("--batch", type=int, default=32, help="rows per forward pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-rows", type=int, help="only the first N dev rows (a quick check)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, each in a fresh process")
    parser.add_argument("--peft", default=os.path.join(ROOT, "target", "release", "peft"))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", help="also write every measurement to this JSON file")
    parser.add_argument("--hf-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        return hf_child(args)
    if not os.path.isfile(args.peft):
        raise SystemExit(f"{args.peft} is missing: run `cargo build --release -p peft-cli` first")
    exp = load_experiment(args.experiment)
    gguf_path()  # fails early, naming the fetch command, where the model is missing

    with tempfile.TemporaryDirectory() as tmp:
        full, one = os.path.join(tmp, "eval.toml"), os.path.join(tmp, "one-row.toml")
        for path, limit in ((full, args.max_rows), (one, 1)):
            copy = with_eval_limit(exp, limit)
            text = toml_dumps(copy) + "\n"
            if tomllib.loads(text) != copy:  # what `peft eval` reads must be the experiment, nothing else
                raise SystemExit(f"the experiment's copy does not read back the same:\n{text}")
            with open(path, "w") as f:
                f.write(text)
        ours_wall, ours_fixed, hf = [], [], []
        for _ in range(args.repeats):  # alternating, so that load from other processes hits both sides
            seconds, metrics = peft_eval(args, full)
            ours_wall.append(seconds)
            ours_fixed.append(peft_eval(args, one)[0])
            hf.append(hf_eval(args))
    ours_s = statistics.median(ours_wall) - statistics.median(ours_fixed)
    hf_s = statistics.median(h["seconds"] for h in hf)
    theirs = hf[0]
    rows = theirs["rows"]
    diff_rows = round(abs(metrics["accuracy"] - theirs["accuracy"]) * rows)
    agree = diff_rows == 0 and abs(metrics["loss"] - theirs["loss"]) < 1e-3

    setup = (f"SmolLM2-135M-Instruct (f32 from the zoo's GGUF), zero-shot, {os.path.relpath(args.experiment, ROOT)}"
             f" dev rows, batch {args.batch}, {args.threads} threads, median of {args.repeats} run(s) per side; "
             f"peft s = wall time minus a one-row run's; {cpu_name()}; torch {theirs['torch']}")
    print(setup)
    setup = {"header": setup, "experiment": os.path.relpath(args.experiment, ROOT), "rows": rows,
             "batch": args.batch, "threads": args.threads, "repeats": args.repeats, "cpu": cpu_name(),
             "torch": theirs["torch"],
             "peft_time": "wall time of `peft eval` minus the wall time of the same command on one dev row",
             "hf_time": "tokenization and forward passes, model loading excluded"}
    table = [["rows", "batch", "peft s", "HF s", "peft / HF", "peft accuracy", "HF accuracy", "peft loss",
              "HF loss"],
             [str(rows), str(args.batch), f"{ours_s:.2f}", f"{hf_s:.2f}", f"{ours_s / hf_s:.2f}x",
              f"{metrics['accuracy']:.4f}", f"{theirs['accuracy']:.4f}", f"{metrics['loss']:.5f}",
              f"{theirs['loss']:.5f}"]]
    print_table(table, args.markdown)
    if agree:
        print(f"The accuracies agree (the same {round(metrics['accuracy'] * rows)} of {rows} rows right) and the "
              f"losses differ by {abs(metrics['loss'] - theirs['loss']):.1e}.")
    else:
        print(f"DISAGREEMENT: {diff_rows} row(s) of {rows} apart, losses {abs(metrics['loss'] - theirs['loss']):.1e}"
              f" apart; HF has {theirs['near_ties']} row(s) whose label-word logits are within {TIE} "
              f"(smallest margin {theirs['min_margin']:.1e}): f32 rounding decides those, more rows mean the "
              "passes differ.")
    write_json(args.out, {"setup": setup, "ours": {"seconds": ours_s, "wall_s": ours_wall,
                                                    "one_row_wall_s": ours_fixed, "metrics": metrics},
                          "hf": hf, "agree": agree})


if __name__ == "__main__":
    main()
