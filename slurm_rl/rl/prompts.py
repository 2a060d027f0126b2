"""The text and token ids a policy sees for a problem: template, system prompt, chat template.

`task.template` is the user message with `{prompt}` standing for the problem's text; nothing
else in it is special, so literal braces (`\\boxed{}`, JSON, LaTeX) stay as written. With
`task.chat: true` the message (after `task.system_prompt` as a system message) goes through the
tokenizer's own chat template with the generation prompt added, and is tokenized without
adding special tokens again (the template writes them); otherwise the system prompt and the
message are joined by a blank line and tokenized as plain text (with the tokenizer's BOS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slurm_rl.errors import BadInput
from slurm_rl.rl.task import Problem

PLACEHOLDER = "{prompt}"


def render(template: str, problem: Problem) -> str:
    """`template` with every `{prompt}` replaced by the problem's text; other braces untouched."""
    return template.replace(PLACEHOLDER, problem.prompt)


@dataclass
class PromptBuilder:
    tokenizer: Any
    template: str = PLACEHOLDER
    chat: bool = False
    system_prompt: str | None = None
    chat_template_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise BadInput("task.chat is true but the model's tokenizer has no chat template",
                           hint="use an instruct/chat checkpoint, or set task.chat: false")

    def text(self, problem: Problem) -> str:
        """The full prompt text, chat template applied."""
        user = render(self.template, problem)
        if not self.chat:
            return f"{self.system_prompt}\n\n{user}" if self.system_prompt else user
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + \
            [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **dict(self.chat_template_kwargs))

    def ids(self, problem: Problem) -> list[int]:
        return list(self.tokenizer(self.text(problem), add_special_tokens=not self.chat)["input_ids"])

    def encode(self, problems: Sequence[Problem]) -> list[list[int]]:
        return [self.ids(p) for p in problems]


def builder_for(tokenizer: Any, task: Any) -> PromptBuilder:
    """The PromptBuilder of a run's `task:` section."""
    return PromptBuilder(tokenizer, template=task.template, chat=task.chat, system_prompt=task.system_prompt,
                         chat_template_kwargs=task.chat_template_kwargs)


def check_lengths(builder: PromptBuilder, problems: Sequence[Problem], *, max_new_tokens: int, max_model_len: int,
                  split: str) -> int:
    """The longest prompt in tokens; `BadInput` naming the first problem whose prompt and
    max_new_tokens do not fit in max_model_len (vLLM would refuse it in the middle of the run)."""
    longest = 0
    for p in problems:
        n = len(builder.ids(p))
        longest = max(longest, n)
        if n + max_new_tokens > max_model_len:
            raise BadInput(f"{split} problem {p.id!r}: its prompt is {n} tokens, and with algorithm.max_new_tokens "
                           f"{max_new_tokens} it does not fit in model.max_model_len {max_model_len}",
                           hint="raise model.max_model_len (up to the model's context), lower "
                                "algorithm.max_new_tokens, or drop the longest problems")
    return longest
