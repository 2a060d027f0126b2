"""The sweep file: its format, validation (every run's config, with file, line and key), and the
run points it expands to; the metrics a summary can show."""


from __future__ import annotations

import dataclasses
import difflib
import itertools
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from slurm_rl.config import RunConfig, load_config
from slurm_rl.errors import ConfigError

SWEEP_SCHEMA = 1
TOP_KEYS = ("name", "base", "runs_dir", "max_concurrent", "backend", "set", "grid", "runs", "metrics", "summary")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# ----------------------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True, slots=True)
class Metric:
    """A figure of a finished run, read from its report (`slurm_rl.report.report_dict`)."""

    name: str
    label: str
    get: Callable[[dict[str, Any]], Any]
    spec: str = ""          # format spec for display; "%" for a ratio shown as percent

    def show(self, v: Any) -> str:
        if v is None:
            return "-"
        if self.spec == "%":
            return f"{v:.1%}"
        return format(v, self.spec) if self.spec else str(v)


def _mttr(rep: dict[str, Any]) -> float | None:
    vals = [f["recover_s"] for f in rep.get("faults", []) if f.get("recover_s") is not None]
    return round(sum(vals) / len(vals), 3) if vals else None


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("steps", "steps", lambda r: r["steps"]),
    Metric("reward", "reward", lambda r: r["reward"]["last"], ".3f"),
    Metric("reward_first", "reward@0", lambda r: r["reward"]["first"], ".3f"),
    Metric("ettr", "ETTR", lambda r: r["ettr"], "%"),
    Metric("wall_s", "wall s", lambda r: r["wall_s"], ".1f"),
    Metric("startup_s", "start-up s", lambda r: r["startup_s"], ".1f"),
    Metric("productive_s", "productive s", lambda r: r.get("productive_s"), ".1f"),
    Metric("recovery_s", "recovery s", lambda r: r["badput"]["recovery_s"], ".1f"),
    Metric("replay_s", "replay s", lambda r: r["badput"]["replay_s"], ".1f"),
    Metric("idle_s", "idle s", lambda r: r["badput"]["idle_s"], ".1f"),
    Metric("faults", "faults", lambda r: len(r["faults"])),
    Metric("mttr_s", "MTTR s", _mttr, ".2f"),
    Metric("restarts", "restarts", lambda r: sum(r["restarts"][k] for k in ("trainer", "rollout", "spare", "trainer_spare"))),
    Metric("full_restarts", "full restarts", lambda r: r["restarts"]["full"]),
    Metric("lost", "lost", lambda r: r["trajectories"]["lost"]),
    Metric("generated", "generated", lambda r: r["trajectories"]["generated"]),
    Metric("consumed", "consumed", lambda r: r["trajectories"]["consumed"]),
)}
DEFAULT_METRICS = ("steps", "reward", "ettr", "faults", "mttr_s", "wall_s")


# ----------------------------------------------------------------------------- the sweep file
@dataclasses.dataclass(frozen=True, slots=True)
class SweepPoint:
    """One run of a sweep."""

    name: str
    overrides: tuple[tuple[str, Any], ...]     # everything this run sets: `set`, then grid, then its list entry
    varying: tuple[tuple[str, Any], ...]       # the grid and list keys (they tell the runs apart)
    line: int | None                           # where it comes from in the sweep file

    def set_args(self) -> list[str]:
        """The overrides as `--set key=value` arguments (values in JSON, which YAML reads back as is)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides]


@dataclasses.dataclass(frozen=True, slots=True)
class SweepSpec:
    name: str
    source: Path
    base: Path
    runs_dir: Path
    max_concurrent: int
    backend: str | None
    points: tuple[SweepPoint, ...]
    keys: tuple[str, ...]                      # the varying keys, in file order
    metrics: tuple[str, ...]
    summary: Path

    @property
    def dir(self) -> Path:
        return self.runs_dir / self.name

    def run_path(self, p: SweepPoint) -> Path:
        return self.dir / p.name

    def plan(self) -> dict[str, Any]:
        """What sweep.json records (and `--dry-run --json` prints)."""
        return {"schema": SWEEP_SCHEMA, "sweep": self.name, "source": str(self.source), "base": str(self.base),
                "dir": str(self.dir), "max_concurrent": self.max_concurrent, "backend": self.backend,
                "keys": list(self.keys), "metrics": list(self.metrics), "summary_csv": str(self.summary),
                "runs": [{"run": p.name, "path": str(self.run_path(p)), "overrides": dict(p.overrides),
                          "varying": dict(p.varying)} for p in self.points]}


def _line_map(text: str) -> dict[tuple[str, ...], int]:
    """Key paths of the YAML text -> 1-based lines (sequence items by index)."""
    out: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                out[path + (str(k.value),)] = k.start_mark.line + 1
                walk(v, path + (str(k.value),))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                out[path + (str(i),)] = v.start_mark.line + 1
                walk(v, path + (str(i),))

    if root is not None:
        walk(root, ())
    return out


class _Reader:
    """Checks of one sweep file, each error with file:line."""

    def __init__(self, source: Path, text: str):
        self.source = source
        self.lines = _line_map(text)

    def where(self, *path: str | int) -> str:
        p = tuple(str(x) for x in path)
        for n in range(len(p), 0, -1):
            if p[:n] in self.lines:
                return f"{self.source}:{self.lines[p[:n]]}"
        return str(self.source)

    def line(self, *path: str | int) -> int | None:
        return self.lines.get(tuple(str(x) for x in path))

    def fail(self, path: Sequence[str | int], msg: str, hint: str | None = None) -> ConfigError:
        return ConfigError(msg, where=self.where(*path), hint=hint)


def check_key(key: Any) -> str | None:
    """Why a dotted config key is not one (None: it is). Suggests the closest real key."""
    if not isinstance(key, str) or not key:
        return f"{key!r} is not a dotted config key such as rollout.replicas"
    parts = key.split(".")
    model: type[BaseModel] | None = RunConfig
    for i, part in enumerate(parts):
        if model is None:
            return None          # inside a free-form mapping (e.g. recovery.phase_timeouts.loading)
        if part not in model.model_fields:
            allowed = sorted(model.model_fields)
            close = difflib.get_close_matches(part, allowed, n=1)
            sugg = f" Did you mean '{'.'.join(parts[:i] + [close[0]])}'?" if close else ""
            return f"unknown config key '{'.'.join(parts[:i + 1])}'.{sugg} Allowed here: {', '.join(allowed)}"
        ann = model.model_fields[part].annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if model is None and i < len(parts) - 1 and part not in ("phase_timeouts", "additional"):
            return f"'{'.'.join(parts[:i + 1])}' is a value, not a section: '{key}' goes too deep"
    if model is not None:
        return f"'{key}' is a section; set one of its keys, e.g. '{key}.{min(model.model_fields)}'"
    return None


def _slug(v: Any) -> str:
    s = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-.") or "x"


def _auto_name(i: int, n: int, varying: Sequence[tuple[str, Any]], keys: Sequence[str]) -> str:
    """`3-full-restart_replicas-2`: the index keeps names unique and in order; a text value says
    what it is on its own, a number or flag gets its key's last segment (the full key where two
    keys share a last segment)."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}
    width = len(str(n))
    body = "_".join(_slug(v) if isinstance(v, str) else f"{_slug(short.get(k, k))}-{_slug(v)}" for k, v in varying)
    name = f"{i:0{width}d}" + (f"-{body}" if body else "")
    return name[:64].rstrip("-_.")


def load_sweep(path: str | Path, *, runs_dir: str | None = None, max_concurrent: int | None = None,
               summary: str | None = None, extra_sets: Sequence[str] = (), backend: str | None = None) -> SweepSpec:
    """Read and validate a sweep file; every run's config is validated too. Raises ConfigError (exit 2).

    Keyword arguments are the command line's overrides of the file's own settings."""
    from slurm_rl.config import parse_override

    source = Path(path)
    if not source.exists():
        raise ConfigError(f"sweep file {source} does not exist", hint="e.g. configs/sweep-example.yaml")
    if source.is_dir():
        raise ConfigError(f"{source} is a directory, not a sweep file")
    try:
        text = source.read_text()
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read sweep file {source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}") from None
    rd = _Reader(source, text)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a sweep file is a mapping with base:, grid: and/or runs: (see docs/cli.md), "
                          f"not a {type(data).__name__}")
    for k in data:
        if k not in TOP_KEYS:
            close = difflib.get_close_matches(str(k), TOP_KEYS, n=1)
            sugg = f" Did you mean '{close[0]}'?" if close else ""
            raise rd.fail([k], f"unknown key '{k}'.{sugg} Allowed: {', '.join(TOP_KEYS)}")

    name = data.get("name", source.stem)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise rd.fail(["name"], f"name: {name!r} is not usable as a directory name: letters, digits, '.', '_', "
                                f"'-' (max 64)")
    # base config: relative to the sweep file (it travels with it), else to the current directory
    base_raw = data.get("base")
    if not isinstance(base_raw, str) or not base_raw:
        raise rd.fail(["base"] if "base" in data else [], "base: the run config every run starts from is missing",
                      hint="add e.g. `base: demo.yaml` (relative to the sweep file)")
    tried = [source.parent / base_raw, Path(base_raw)]
    base = next((p for p in tried if p.is_file()), None)
    if base is None:
        raise rd.fail(["base"], f"base: config file {base_raw} not found (looked in {tried[0].parent or '.'} "
                                f"and the current directory)")
    mc = max_concurrent if max_concurrent is not None else data.get("max_concurrent", 1)
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
        raise rd.fail(["max_concurrent"], f"max_concurrent: must be a whole number >= 1 (got {mc!r})")
    backend = backend or data.get("backend")
    if backend is not None and backend not in ("local", "slurm"):
        raise rd.fail(["backend"], f"backend: must be 'local' or 'slurm' (got {backend!r})")

    def overrides_of(section: str) -> dict[str, Any]:
        m = data.get(section) or {}
        if not isinstance(m, dict):
            raise rd.fail([section], f"{section}: must be a mapping of dotted config keys to values")
        for k in m:
            why = check_key(k)
            if why:
                raise rd.fail([section, k], f"{section}: {why}")
        return m

    common = dict(overrides_of("set"))
    for item in extra_sets:                       # --set on the command line: for every run, last word
        k, v = parse_override(item)
        why = check_key(k)
        if why:
            raise ConfigError(f"--set {item}: {why}")
        common[k] = v
    grid = overrides_of("grid")
    axes: list[tuple[str, list[Any]]] = []
    for k, vals in grid.items():
        vals = vals if isinstance(vals, list) else [vals]
        if not vals:
            raise rd.fail(["grid", k], f"grid: {k} has no values", hint="write a list, e.g. [1, 2]")
        axes.append((k, vals))
    entries_raw = data.get("runs") or []
    if not isinstance(entries_raw, list):
        raise rd.fail(["runs"], "runs: must be a list of override sets, e.g. - {rollout.replicas: 4}")
    entries: list[tuple[str | None, dict[str, Any], int | None]] = []     # name, overrides, index in runs:
    seen: set[str] = set()
    for i, e in enumerate(entries_raw):
        if e is None:
            e = {}
        if not isinstance(e, dict):
            raise rd.fail(["runs", i], f"runs[{i}]: must be a mapping of dotted config keys to values (and an "
                                       f"optional name:)")
        e = dict(e)
        ename = e.pop("name", None)
        if ename is not None:
            if not isinstance(ename, str) or not _NAME_RE.fullmatch(ename) or len(ename) > 48:
                raise rd.fail(["runs", i, "name"], f"runs[{i}].name: {ename!r} is not usable as a run name: "
                                                   f"letters, digits, '.', '_', '-' (max 48)")
            if ename in seen:
                raise rd.fail(["runs", i, "name"], f"runs[{i}].name: '{ename}' is used twice")
            seen.add(ename)
        for k in e:
            why = check_key(k)
            if why:
                raise rd.fail(["runs", i, k], f"runs[{i}]: {why}")
        entries.append((ename, e, i))
    if not entries:
        entries = [(None, {}, None)]

    keys: list[str] = [k for k, _ in axes]
    for _, e, _ in entries:
        keys += [k for k in e if k not in keys]
    grid_points = list(itertools.product(*(vals for _, vals in axes))) if axes else [()]
    n = len(grid_points) * len(entries)
    points: list[SweepPoint] = []
    i = 0
    for ename, e, ei in entries:
        for combo in grid_points:
            i += 1
            varying = [(k, v) for (k, _), v in zip(axes, combo)] + list(e.items())
            ov = dict(common)
            ov.update(varying)
            if ename is not None:
                rest = [(k, v) for (k, _), v in zip(axes, combo)]
                pname = ename if not rest else f"{ename}_{_auto_name(i, n, rest, keys)}"[:64]
            else:
                pname = _auto_name(i, n, varying, keys)
            line = rd.line("runs", ei) if ei is not None else (rd.line("grid", axes[0][0]) if axes else None)
            points.append(SweepPoint(name=pname, overrides=tuple(ov.items()), varying=tuple(varying), line=line))

    # every run's whole config, checked now: a typo in run 7 must not wait for runs 1-6
    first_cfg: RunConfig | None = None
    for p, (_, e, ei) in zip(points, [x for x in entries for _ in grid_points]):
        # where each of this run's values was written, for the error message
        origin: dict[str, list[str | int]] = {k: ["set", k] for k in data.get("set") or {}}
        origin.update({k: ["grid", k] for k in grid})
        if ei is not None:
            origin.update({k: ["runs", ei, k] for k in e})
        try:
            cfg = load_config(base, p.set_args(), backend=backend)
        except ConfigError as err:
            raise _explain_run_error(err, p, rd, origin, dict(p.overrides)) from None
        first_cfg = first_cfg or cfg
    assert first_cfg is not None
    metrics_raw = data.get("metrics", list(DEFAULT_METRICS))
    if not isinstance(metrics_raw, list) or not metrics_raw:
        raise rd.fail(["metrics"], "metrics: must be a non-empty list of metric names",
                      hint=f"known: {', '.join(METRICS)}")
    for j, m in enumerate(metrics_raw):
        if m not in METRICS:
            close = difflib.get_close_matches(str(m), list(METRICS), n=1)
            sugg = f" Did you mean '{close[0]}'?" if close else ""
            raise rd.fail(["metrics", j], f"metrics: unknown metric {m!r}.{sugg} Known: {', '.join(METRICS)}")
    rdir = Path(runs_dir or data.get("runs_dir") or first_cfg.runs_dir)
    summary_raw = summary or data.get("summary")
    if summary_raw is not None and not isinstance(summary_raw, str):
        raise rd.fail(["summary"], "summary: must be a file path for the CSV summary")
    summ = Path(summary_raw) if summary_raw else rdir / name / "summary.csv"
    return SweepSpec(name=name, source=source, base=base, runs_dir=rdir, max_concurrent=mc, backend=backend,
                     points=tuple(points), keys=tuple(keys), metrics=tuple(metrics_raw), summary=summ)


_PROBLEM = re.compile(r"^\s*(?P<where>.+?): (?P<key>[\w.]+): (?P<msg>.*)$")


def _explain_run_error(err: ConfigError, p: SweepPoint, rd: _Reader, origin: dict[str, list[str | int]],
                       overrides: dict[str, Any]) -> ConfigError:
    """A run's config error, pointing at the sweep file line that set the offending value (problems
    with the base config itself keep the base config's file:line)."""
    problems = err.message.splitlines()[1:] or [err.message]
    out, where = [], None
    for line in problems:
        m = _PROBLEM.match(line)
        if m and m["key"] in overrides:
            path = origin.get(m["key"])
            here = rd.where(*path) if path else "--set"
            where = where or here
            out.append(f"{m['key']}: {m['msg']}" + ("" if here == where else f" (set at {here})"))
        else:
            out.append(line.strip())
    where = where or (f"{rd.source}:{p.line}" if p.line else str(rd.source))
    desc = ", ".join(f"{k}={v}" for k, v in p.varying) or "the common settings"
    return ConfigError(f"run '{p.name}' ({desc}): " + "; ".join(out), where=where, hint=err.hint)
