"""Reading a run's configuration: YAML (or the defaults) plus `--set` overrides, validated, with
errors that name the file, the key and its line."""

from __future__ import annotations

import difflib
import enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ValidationError

from slurm_rl.config.sections import RunConfig
from slurm_rl.errors import ConfigError

if TYPE_CHECKING:
    from slurm_rl.rundir import RunDir


def _line_map(text: str) -> dict[tuple[str, ...], int]:
    """Map key paths to 1-based line numbers, from the YAML node tree."""
    lines: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = str(k.value)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (str(i),)] = v.start_mark.line + 1
                walk(v, path + (str(i),))

    if root is not None:
        walk(root, ())
    return lines


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the mapping at `path` (for listing allowed keys)."""
    model: type[BaseModel] = RunConfig
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _explain(err: dict[str, Any], source: str, lines: dict[tuple[str, ...], int]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    key = ".".join(loc) if loc else "(top level)"
    line = None
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            line = lines[loc[:n]]
            break
    where = f"{source}:{line}" if line else source
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        sugg = f" Did you mean '{'.'.join(loc[:-1] + (close[0],))}'?" if close else ""
        return f"{where}: unknown key '{key}'.{sugg} Allowed here: {', '.join(allowed)}"
    msg = err["msg"]
    msg = msg.removeprefix("Value error, ")
    if err["type"] in ("enum", "literal_error"):
        msg = msg.replace("Input should be", "must be")
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"{where}: {key}: {msg}{got_s}"


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"--set {dotted}: empty key segment", hint="write --set section.key=value")
    cur: dict[str, Any] = data
    model: type[BaseModel] | None = RunConfig
    for i, part in enumerate(parts):
        if model is not None and part not in model.model_fields:
            allowed = sorted(model.model_fields)
            close = difflib.get_close_matches(part, allowed, n=1)
            sugg = f" Did you mean '{'.'.join(parts[:i] + [close[0]])}'?" if close else ""
            raise ConfigError(f"--set {dotted}: unknown key '{'.'.join(parts[:i + 1])}'.{sugg}",
                              hint=f"allowed here: {', '.join(allowed)}")
        if i == len(parts) - 1:
            cur[part] = value
            return
        nxt = cur.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[part] = nxt
        cur = nxt
        field = model.model_fields.get(part) if model is not None else None
        ann = field.annotation if field is not None else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def parse_override(item: str) -> tuple[str, Any]:
    """`key.sub=value` -> (key path, YAML-typed value)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value", hint="e.g. --set rollout.replicas=4")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return key, value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), **top: Any) -> RunConfig:
    """Read, merge overrides and validate. Raises ConfigError (exit 2) with file:line: key: problem."""
    try:
        return _load_config(path, overrides, **top)
    except RecursionError:
        # YAML aliases that refer to themselves, or absurd nesting, recurse in the parser or validator
        raise ConfigError(f"{path or '--set'}: the config nests too deeply (a YAML anchor that refers to "
                          "itself?)") from None


def _load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), **top: Any) -> RunConfig:
    source = str(path) if path is not None else "<defaults>"
    text = ""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {source} does not exist", hint="pass a YAML file, e.g. configs/demo.yaml")
        if p.is_dir():
            raise ConfigError(f"{source} is a directory, not a config file")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {source}: {e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            problem = getattr(e, "problem", None) or str(e)
            raise ConfigError(f"{where}: not valid YAML: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections (model:, rollout:, ...), "
                              f"not a {type(loaded).__name__}")
        data = loaded
    for item in overrides:
        key, value = parse_override(item)
        _set_path(data, key, value)
    for key, value in top.items():
        if value is not None:
            data[key] = value.value if isinstance(value, enum.Enum) else value
    lines = _line_map(text)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        problems = [_explain(err, source, lines) for err in e.errors()]
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None


def load_run_config(run: RunDir) -> RunConfig:
    """The resolved config a run directory was prepared with (already validated once at launch)."""
    return RunConfig.model_validate(yaml.safe_load(run.config.read_text()))
