"""Prompt text and ids: the template's placeholder, literal braces, system prompts, chat templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_rl.errors import BadInput
from slurm_rl.rl.model import build_tiny_model, load_tokenizer
from slurm_rl.rl.prompts import PromptBuilder, check_lengths, render
from slurm_rl.rl.task import Problem, format_prompt

P = Problem(id="a", prompt="What is {x} + 1?", answer="2")


def test_only_the_placeholder_is_replaced() -> None:
    t = "Solve: {prompt}\nPut the answer in \\boxed{}. JSON: {\"a\": 1} {other}"
    assert render(t, P) == "Solve: What is {x} + 1?\nPut the answer in \\boxed{}. JSON: {\"a\": 1} {other}"
    assert format_prompt(P, t) == render(t, P)           # str.format raised on these braces


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_chat_prompts_use_the_models_template(family: str, tmp_path: Path) -> None:
    tok = load_tokenizer(build_tiny_model(tmp_path / family, family=family, chat=True))
    b = PromptBuilder(tok, template="Q: {prompt} \\boxed{}", chat=True, system_prompt="Be brief.")
    text = b.text(P)
    expected = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Q: What is {x} + 1? \\boxed{}"}],
                                       tokenize=False, add_generation_prompt=True)
    assert text == expected and "Be brief." in text
    ids = b.ids(P)
    assert tok.decode(ids) == text                       # no second BOS: the template wrote the specials
    if family == "llama":
        assert ids.count(tok.bos_token_id) == 1


def test_plain_prompts_put_the_system_prompt_first(tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    b = PromptBuilder(tok, system_prompt="2+2=4")
    assert b.text(Problem(id="a", prompt="3+4=", answer="7")) == "2+2=4\n\n3+4="
    ids = PromptBuilder(tok).ids(Problem(id="a", prompt="3+4=", answer="7"))
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == "3+4="


def test_chat_without_a_template_is_bad_input(tiny_model: Path) -> None:
    with pytest.raises(BadInput, match="no chat template"):
        PromptBuilder(load_tokenizer(tiny_model), chat=True)


def test_a_prompt_too_long_for_the_model_names_the_problem(tiny_model: Path) -> None:
    b = PromptBuilder(load_tokenizer(tiny_model))
    probs = [Problem(id="short", prompt="1+1=", answer="2"), Problem(id="long", prompt="1+1=" * 40, answer="2")]
    assert check_lengths(b, probs[:1], max_new_tokens=4, max_model_len=16, split="training") == 5
    with pytest.raises(BadInput, match=r"training problem 'long': its prompt is 161 tokens"):
        check_lengths(b, probs, max_new_tokens=4, max_model_len=128, split="training")
