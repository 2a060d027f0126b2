"""The `hf` engine: plain transformers sampling with logprobs, for machines without vLLM.

A hand-written sampling loop (left-padded batch + KV cache) instead of
`model.generate`: generate's default processors (top_k=50 from generation configs,
repetition penalties) would change the sampling distribution behind the logprobs'
back, and a private `torch.Generator` keeps seeding local to the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from slurm_rl.rl.engine import Completion, Engine, EngineKind, TokenProgress, check_generate_args
from slurm_rl.rl.precision import torch_dtype
from slurm_rl.rl.model import load_tokenizer

log = logging.getLogger("slurm_rl.rl")


class HFEngine(Engine):
    """Sampling from a transformers `AutoModelForCausalLM` held in this process."""

    kind = EngineKind.HF

    def __init__(
        self,
        model_dir: Path,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        seed: int = 0,
        max_model_len: int | None = None,
        threads: int | None = None,
        batch_size: int = 256,
    ):
        from transformers import AutoModelForCausalLM

        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._gen = torch.Generator(device=self.device)  # the stream for seed=None calls
        self._gen.manual_seed(seed)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype)).to(self.device)
        self.model.eval().requires_grad_(False)
        self.max_model_len = max_model_len or int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        self.tokenizer = load_tokenizer(model_dir)
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = self.tokenizer.pad_token_id
        self._closed = False

    @torch.no_grad()
    def generate(
        self,
        prompt_token_ids: Sequence[Sequence[int]],
        *,
        n: int,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        progress: TokenProgress | None = None,
    ) -> list[list[Completion]]:
        check_generate_args(prompt_token_ids, n, max_tokens, temperature)
        progress = progress or self.on_progress
        too_long = [i for i, p in enumerate(prompt_token_ids) if len(p) + max_tokens > self.max_model_len]
        if too_long:
            raise ValueError(f"prompt {too_long[0]}: prompt + max_tokens exceeds max_model_len={self.max_model_len}")
        if seed is None:
            gen = self._gen
        else:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(seed)
        flat = [list(p) for p in prompt_token_ids for _ in range(n)]
        out: list[Completion] = []
        for lo in range(0, len(flat), self.batch_size):
            out.extend(self._sample(flat[lo : lo + self.batch_size], max_tokens, temperature, gen, progress))
        return [out[i * n : (i + 1) * n] for i in range(len(prompt_token_ids))]

    def _sample(
        self, prompts: list[list[int]], max_tokens: int, temperature: float, gen: torch.Generator,
        progress: TokenProgress | None = None,
    ) -> list[Completion]:
        b, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every row's next token is at the end
            ids[i, width - len(p) :] = torch.tensor(p)
            attn[i, width - len(p) :] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        res = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        cache, logits = res.past_key_values, res.logits[:, -1]
        last_pos = pos[:, -1:]
        tokens = torch.zeros((b, max_tokens), dtype=torch.long)
        logps = torch.zeros((b, max_tokens))
        done = torch.zeros(b, dtype=torch.bool)
        lengths = torch.full((b,), max_tokens)
        eos = torch.tensor(sorted(self.eos_ids), device=self.device)
        for t in range(max_tokens):
            if temperature == 0:
                lp = torch.log_softmax(logits.float(), -1)
                tok = lp.argmax(-1)
            else:
                lp = torch.log_softmax(logits.float() / temperature, -1)
                tok = torch.multinomial(lp.exp(), 1, generator=gen).squeeze(-1)
            tokens[:, t] = tok.cpu()
            logps[:, t] = lp.gather(-1, tok[:, None]).squeeze(-1).cpu()
            hit = torch.isin(tok, eos).cpu() & ~done
            lengths[hit] = t + 1
            if progress is not None:
                progress(int((~done).sum()))  # a token for every row still going
            done |= hit
            if bool(done.all()) or t == max_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=self.device)], dim=1)
            last_pos = last_pos + 1
            res = self.model(
                input_ids=tok[:, None], attention_mask=attn, position_ids=last_pos, past_key_values=cache, use_cache=True
            )
            cache, logits = res.past_key_values, res.logits[:, -1]
        comps = []
        for i in range(b):
            k = int(lengths[i])
            toks = tokens[i, :k].tolist()
            stopped = bool(done[i])
            comps.append(
                Completion(
                    token_ids=toks,
                    logprobs=logps[i, :k].tolist(),
                    text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    finish_reason="stop" if stopped else "length",
                )
            )
        return comps

    def load_weights(self, sd: Mapping[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(dict(sd), strict=False)
        missing = [k for k in missing if not (k == "lm_head.weight" and self.model.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def prompt_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        ids = torch.tensor([list(token_ids)], device=self.device)
        logits = self.model(input_ids=ids).logits[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.model = None  # type: ignore[assignment]
