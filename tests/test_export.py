"""`slurm-rl export`: a run's checkpoint becomes a Hugging Face directory that transformers and vLLM load."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from slurm_rl.checkpoint import Checkpointer
from slurm_rl.cli import cli
from slurm_rl.errors import BadInput
from slurm_rl.export import export_run
from slurm_rl.rl.grpo import Group, PolicyTrainer, Sample
from slurm_rl.rl.model import build_tiny_model, load_tokenizer
from slurm_rl.rundir import RunDir
from tests import runs

PROBE = "12+34=46 7*8=56 (9-3)=6"


def _steps(tr: PolicyTrainer, tok, n: int, ck: Checkpointer, save_at: tuple[int, ...]) -> dict[int, dict]:
    """n real GRPO steps; checkpoints (what the trainer role writes) at `save_at`; the weights of each."""
    prompt = tok("3+4=")["input_ids"]
    saved = {}
    for _ in range(n):
        comps = [[10, 2], [6, 2], [10, 11, 2], [7, 7, 2]]
        samples = [Sample(prompt, c, tr.logprobs(prompt + c)[len(prompt) - 1 :], float(j == 0), tr.version)
                   for j, c in enumerate(comps)]
        tr.step([Group("p", samples)])
        if tr.version in save_at:
            sd = tr.state_dict_for_sync()
            assert ck.save(tr.version, sd, tr.optimizer_state(), {"wepoch": 0}).path is not None
            saved[tr.version] = sd
    return saved


def make_run(root: Path, *, dtype: str = "float32", tied: bool = False, save_at: tuple[int, ...] = (2, 4)):
    run = RunDir(root / "r")
    run.create()
    run.write_meta(name="r", backend="local", recovery="role-based", created=time.time())
    build_tiny_model(run.model, seed=0, tie_word_embeddings=tied)
    tr = PolicyTrainer(run.model, lr=3e-2, dtype=dtype)
    ck = Checkpointer(run.checkpoints, keep=10)
    try:
        saved = _steps(tr, load_tokenizer(run.model), max(save_at), ck, save_at)
    finally:
        ck.close()
    return run, tr, saved


def _hf_logprobs(model_dir: Path, ids: list[int]) -> list[float]:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        lp = torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
    return lp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).tolist()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_export_loads_in_transformers_with_the_trainers_logprobs(tmp_path: Path, tied: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, tr, saved = make_run(tmp_path, tied=tied)
    res = export_run(run.path, tmp_path / "out")
    assert res.step == 4 and res.shards == 1 and not res.skipped      # the newest intact checkpoint
    out = tmp_path / "out"
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "export.json"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".out.*"))                          # no temporary left behind
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok(PROBE)["input_ids"]
    assert ids == load_tokenizer(run.model)(PROBE)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(out)                  # dtype "auto" from config.json
    assert model.dtype == torch.float32
    got = _hf_logprobs(out, ids)
    assert got == pytest.approx(tr.logprobs(ids), abs=1e-5)            # the trainer at step 4
    assert json.loads((out / "export.json").read_text())["step"] == 4
    # --step picks an older one: its weights, not the newest
    export_run(run.path, tmp_path / "out2", step=2)
    from safetensors.torch import load_file

    exported = load_file(str(tmp_path / "out2" / "model.safetensors"))
    assert set(exported) == set(saved[2]) and all(torch.equal(exported[k], saved[2][k]) for k in exported)


def test_bf16_run_exports_bf16_and_shards_with_an_index(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    run, _, saved = make_run(tmp_path, dtype="bfloat16", save_at=(1,))
    res = export_run(run.path, tmp_path / "out", max_shard_size="200KB")
    out = tmp_path / "out"
    assert res.dtype == "bfloat16" and res.shards > 1
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(saved[1])
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    m = AutoModelForCausalLM.from_pretrained(out)
    assert m.dtype == torch.bfloat16
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in saved[1].items())
    # --dtype casts
    res32 = export_run(run.path, tmp_path / "out32", dtype="float32")
    assert res32.dtype == "float32" and res32.weight_bytes == 2 * res.weight_bytes


def test_errors_name_the_problem_and_write_nothing(tmp_path: Path) -> None:
    run, _, _ = make_run(tmp_path, save_at=(1, 2, 3))
    out = tmp_path / "out"
    with pytest.raises(BadInput, match=r"no checkpoint at step 7 .*there are: 1, 2, 3"):
        export_run(run.path, out, step=7)
    assert not out.exists()
    # the newest checkpoint damaged: the default takes the one before and says so
    w = run.checkpoints / "step-000003" / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(BadInput, match=r"step 3 is damaged: weights.safetensors has .* bytes") as e:
        export_run(run.path, out, step=3)
    assert "--step (1, 2)" in str(e.value)
    assert not out.exists()
    res = export_run(run.path, out)
    assert res.step == 2 and res.skipped and "step 3" in res.skipped[0]
    # OUT_DIR not empty: refused, untouched; --force replaces it whole
    marker = out / "config.json"
    before = marker.read_bytes()
    with pytest.raises(BadInput, match="is not empty"):
        export_run(run.path, out, step=1)
    assert marker.read_bytes() == before
    assert export_run(run.path, out, step=1, force=True).step == 1
    assert json.loads((out / "export.json").read_text())["step"] == 1
    assert not list(tmp_path.glob(".out.*"))
    # a file where the directory should be; a path that is not a run
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInput, match="not a directory"):
        export_run(run.path, tmp_path / "f")
    with pytest.raises(BadInput, match="not a slurm-rl run directory"):
        export_run(tmp_path, tmp_path / "o")


def test_weights_that_do_not_fit_the_runs_model_are_refused(tmp_path: Path) -> None:
    run, _, _ = make_run(tmp_path, save_at=(1,))
    build_tiny_model(run.model, seed=0, hidden=64, heads=2, kv_heads=1)   # the model dir was changed since
    with pytest.raises(BadInput, match="does not match the run's model"):
        export_run(run.path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_no_checkpoints_yet(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.create()
    run.write_meta(name="r")
    build_tiny_model(run.model, seed=0)
    with pytest.raises(BadInput, match="no checkpoints in"):
        export_run(run.path, tmp_path / "out")


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    run, _, _ = make_run(tmp_path, save_at=(1, 2))
    r = CliRunner()
    res = r.invoke(cli, ["export", str(run.path), str(tmp_path / "out"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["step"] == 2
    res = r.invoke(cli, ["export", str(run.path), "--step", "9", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "error: no checkpoint at step 9" in res.output and "Traceback" not in res.output
    res = r.invoke(cli, ["export", str(run.path), str(tmp_path / "out")])
    assert res.exit_code == 2 and "--force" in res.output
    res = r.invoke(cli, ["export", str(run.path), str(tmp_path / "out"), "--force", "--step", "1"])
    assert res.exit_code == 0 and "exported step 1" in res.output


@pytest.mark.vllm
def test_vllm_loads_and_generates_from_the_export(tmp_path: Path) -> None:
    from slurm_rl.rl.engines import make_engine

    run, tr, _ = make_run(tmp_path)
    export_run(run.path, tmp_path / "out")
    ids = load_tokenizer(run.model)(PROBE)["input_ids"]
    with make_engine("vllm", tmp_path / "out", seed=0, max_model_len=128) as eng:
        assert eng.prompt_logprobs(ids) == pytest.approx(tr.logprobs(ids), abs=1e-4)
        (comps,) = eng.generate([ids[:5]], n=2, max_tokens=8, temperature=1.0, seed=0)
        for c in comps:
            assert c.logprobs == pytest.approx(tr.logprobs(ids[:5] + c.token_ids)[4:], abs=1e-4)


@pytest.mark.slow
def test_export_of_a_real_local_run(tmp_path: Path) -> None:
    """A short run as a user launches it; its final checkpoint exported and loaded."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run = runs.launch(tmp_path, "algorithm.steps=6", "trainer.checkpoint_every=3", name="real")
    rep = runs.wait_done(run)
    assert rep["state"] == "finished"
    res = CliRunner().invoke(cli, ["export", str(run.path), str(tmp_path / "hf"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["step"] == 6
    ckpt = load_file(str(run.checkpoints / "step-000006" / "weights.safetensors"))
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    sd = m.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ckpt.items())
    base = load_file(str(run.model / "model.safetensors"))
    assert any(not torch.equal(base[k], ckpt[k]) for k in ckpt)         # the run trained it
