"""`slurm-rl export`: a run's checkpoint as a Hugging Face model directory (slurm_rl/export.py)."""

from __future__ import annotations

import json

import click

from slurm_rl.cli.base import RUN_DIR, _console, _example, _quiet_hf, cli


@cli.command("export", short_help="Write a checkpoint as a Hugging Face model directory.",
             epilog=_example("slurm-rl export runs/demo out/demo-final",
                             "slurm-rl export runs/demo --step 40 out/demo-step40",
                             "slurm-rl export runs/qwen --dtype bfloat16 --force /models/qwen-grpo"))
@RUN_DIR
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--step", type=click.IntRange(min=0), default=None,
              help="Checkpoint step to export (default: the newest intact one).")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists and is not empty.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Cast the weights (default: as checkpointed, the run's model.dtype).")
@click.option("--max-shard-size", default="5GB", show_default=True,
              help="Largest safetensors file; bigger models get several and an index (e.g. 2GB, 500MB).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export_cmd(run_dir: str, out_dir: str, step: int | None, force: bool, dtype: str | None, max_shard_size: str,
               as_json: bool) -> None:
    """Write checkpoint STEP of the run at RUN_DIR to OUT_DIR as a Hugging Face model directory:
    config.json, generation_config.json, the tokenizer, and safetensors shards (with an index when
    there are several), which `transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` and
    `vllm.LLM(OUT_DIR)` load.

    Checkpoints are verified first (sizes and hashes); by default the newest intact one is used and
    damaged newer ones are named. Nothing is half-written: OUT_DIR appears complete or not at all.
    """
    from slurm_rl.export import export_run

    _quiet_hf()
    res = export_run(run_dir, out_dir, step=step, force=force, dtype=dtype, max_shard_size=max_shard_size)
    if as_json:
        click.echo(json.dumps(res.to_json(), indent=2))
        return
    err = _console(stderr=True)
    for s in res.skipped:
        err.print(f"skipped damaged checkpoint {s}")
    out = _console()
    out.print(f"exported step {res.step} to {res.out_dir}: {res.weight_bytes / 1e6:.1f} MB of {res.dtype} weights "
              f"in {res.shards} shard{'s' if res.shards != 1 else ''} ({res.seconds:.1f}s)")
