"""The data of a run: problem files in (JSONL, Parquet, Hugging Face `save_to_disk` dirs), the
order prompts are handed out in, and synthetic GSM8K- and MATH-format sets.

Modules (none imports torch: the controller's store uses `order`):
  records    read records from files, turn them into `Problem`s (errors name file, line/row, field)
  order      shuffled epochs: which problem the n-th handed-out prompt is
  synthetic  word problems a tiny policy learns in minutes, in GSM8K and MATH format
"""
