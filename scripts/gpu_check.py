"""The GPU check: vLLM on CUDA, a CUDA trainer, weight sync from and into GPU memory (issue 16).

    python scripts/gpu_check.py --out gpu-check-out            # every step, results in gpu-check.json
    python scripts/gpu_check.py --steps environment,memcpy     # a subset (--list names them)
    python scripts/gpu_check.py --rehearse-cpu                 # the steps' code on CPU, small sizes

`scripts/gpu-check.sh` installs what it needs and runs this. Each step runs in its own process
(a crash, a hang or leaked GPU memory stays inside it) under a time limit, and the check as a
whole under a budget (default 480 s: one H100, ~8 minutes with the install). Every step is
recorded in the JSON as ok, failed (with its traceback and the checks that did not hold) or
skipped (with the reason), with its seconds and figures; the file is rewritten after each step,
so a check cut short still leaves what it measured.

Where CUDA is absent every step after `environment` is skipped ("no CUDA") and the exit code
is 0: that is what a CPU machine (CI) runs. Where CUDA is present, a step that fails, or a step
that could not run (vLLM missing, the budget spent), makes the exit code 1 at the end.
`--rehearse-cpu` runs the steps on the CPU with small sizes to exercise this script's own code
(launch, inject, report, transports); its figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))          # runnable from a checkout, the tree's slurm_rl first
sys.path.insert(0, str(HERE))

import gpu_check_steps as S  # noqa: E402

SCHEMA = "slurm-rl/gpu-check/1"
DEFAULT_BUDGET_S = 480.0
# a step is started only with at least this much of the budget left
MIN_START_S = 20.0
# what pretends CUDA is present on a CPU machine, to test that a failing step fails the check loudly
PRETEND_ENV = "SLURM_RL_GPU_CHECK_PRETEND_CUDA"


@dataclass
class StepResult:
    name: str
    status: S.Status
    seconds: float = 0.0
    reason: str = ""
    what: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""
    output_tail: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return {k: v for k, v in d.items() if v not in ("", None) or k in ("reason",)}


def _tail(text: str, n: int = 4000) -> str:
    return text[-n:] if len(text) > n else text


def run_child(name: str, ctx: S.Ctx, timeout_s: float, log_dir: Path) -> StepResult:
    """Run one step in its own process group, under `timeout_s`; what it wrote is its result."""
    result_path = log_dir / f"{name}.result.json"
    out_path = log_dir / f"{name}.log"
    result_path.unlink(missing_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--ctx", ctx.to_arg(),
            "--result", str(result_path)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.monotonic()
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(REPO), start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            rc = proc.returncode
    seconds = time.monotonic() - t0
    output = out_path.read_text(errors="replace")
    try:
        doc = json.loads(result_path.read_text())
    except (OSError, ValueError):
        doc = None
    if doc is not None and not timed_out:
        res = StepResult(name=name, status=S.Status(doc["status"]), seconds=round(seconds, 2),
                         reason=doc.get("reason", ""), what=doc.get("what", ""), figures=doc.get("figures", {}),
                         traceback=doc.get("traceback", ""))
        if res.status is S.Status.FAILED:
            res.output_tail = _tail(output)
        return res
    figures = (doc or {}).get("figures", {}) if doc else {}
    if timed_out:
        reason = f"timed out after {timeout_s:.0f}s (killed)"
    else:
        reason = f"the step's process ended with exit code {rc} before writing its result"
    partial = _read_partial(log_dir / f"{name}.partial.json")
    return StepResult(name=name, status=S.Status.FAILED, seconds=round(seconds, 2), reason=reason,
                      figures=partial or figures, output_tail=_tail(output), what=S.STEPS[name].what)


def _read_partial(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End the step's process group (the step and what it started: a run's controller and roles
    have their own sessions and are stopped by the step itself, or by its cleanup below)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def child_main(name: str, ctx: S.Ctx, result_path: Path) -> int:
    """Inside the step's process: run it, write its result (ok / failed / skipped)."""
    spec = S.STEPS[name]
    fig: dict[str, Any] = {}
    partial = result_path.with_name(f"{name}.partial.json")
    ctx.partial_path = str(partial)
    t0 = time.monotonic()
    doc: dict[str, Any] = {"name": name, "what": spec.what}
    try:
        spec.fn(ctx, fig)
        doc.update(status=S.Status.OK.value, reason="")
    except S.Skip as e:
        doc.update(status=S.Status.SKIPPED.value, reason=str(e))
    except BaseException as e:  # noqa: BLE001 -- every failure is a result, recorded loudly
        doc.update(status=S.Status.FAILED.value, reason=f"{type(e).__name__}: {e}"[:2000],
                   traceback=traceback.format_exc())
    doc["seconds"] = round(time.monotonic() - t0, 2)
    doc["figures"] = S.jsonable(fig)
    result_path.write_text(json.dumps(doc, indent=1))
    # vLLM's and UCX's threads can keep a finished interpreter from exiting: the result is written
    os._exit(0)


def environment_skip_reason(env: StepResult) -> str:
    """Why the GPU steps are skipped here, or "" when CUDA is present."""
    f = env.figures
    if env.status is not S.Status.OK:
        return ""
    if f.get("cuda_available"):
        return ""
    built = f.get("torch_cuda_build") or "none"
    return (f"no CUDA: torch {f.get('torch', '?')} (CUDA build: {built}) reports torch.cuda.is_available() False"
            + (f"; {f['cuda_error']}" if f.get("cuda_error") else ""))


def summary_table(results: list[StepResult]) -> str:
    lines = [f"{'step':<22}{'status':<9}{'seconds':>9}  detail"]
    for r in results:
        detail = S.headline(r.name, r.figures) if r.status is S.Status.OK else r.reason
        lines.append(f"{r.name:<22}{r.status.value:<9}{r.seconds:>9.1f}  {detail[:150]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "gpu-check-out"),
                    help="folder for gpu-check.json and the step logs (default: $OUT, else ./gpu-check-out)")
    ap.add_argument("--work", default=os.environ.get("GPU_CHECK_WORK") or "/tmp/slurm-rl-gpu-check",
                    help="scratch folder: model dirs, the GRPO run (not under --out: it holds many files)")
    ap.add_argument("--steps", default="", help=f"comma-separated subset of: {','.join(S.STEPS)}")
    ap.add_argument("--budget", type=float, default=float(os.environ.get("GPU_CHECK_BUDGET_S", DEFAULT_BUDGET_S)),
                    help="seconds for all steps together (default 480; env GPU_CHECK_BUDGET_S)")
    ap.add_argument("--rehearse-cpu", action="store_true",
                    help="run the steps on the CPU with small sizes (exercises this script; not a GPU check)")
    ap.add_argument("--list", action="store_true", help="list the steps and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--ctx", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        return child_main(args.child, S.Ctx.from_arg(args.ctx), Path(args.result))
    if args.list:
        for name, spec in S.STEPS.items():
            print(f"{name:<22}{spec.what}")
        return 0

    wanted = [s.strip() for s in args.steps.split(",") if s.strip()] or list(S.STEPS)
    unknown = [s for s in wanted if s not in S.STEPS]
    if unknown:
        print(f"gpu_check: unknown step(s) {unknown}; valid: {', '.join(S.STEPS)}", file=sys.stderr)
        return 2
    if "environment" not in wanted:
        wanted.insert(0, "environment")

    out = Path(args.out).resolve()
    work = Path(args.work).resolve()
    logs = work / "logs"
    for d in (out, work, logs):
        d.mkdir(parents=True, exist_ok=True)
    ctx = S.Ctx(device="cpu" if args.rehearse_cpu else "cuda", rehearsal=args.rehearse_cpu, work=str(work),
                repo=str(REPO), pretend_cuda=os.environ.get(PRETEND_ENV) == "1")
    doc: dict[str, Any] = {
        "schema": SCHEMA, "date": dt.date.today().isoformat(),
        "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "cpu-rehearsal" if ctx.rehearsal else "gpu", "budget_s": args.budget, "commit": S.git_commit(REPO),
        "steps": [],
    }
    json_path = out / "gpu-check.json"
    results: list[StepResult] = []

    def save() -> None:
        doc["steps"] = [r.to_json() for r in results]
        doc["summary"] = {s.value: sum(r.status is s for r in results) for s in S.Status}
        tmp = json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(json_path)

    t_start = time.monotonic()
    skip_all = ""
    for name in wanted:
        spec = S.STEPS[name]
        left = args.budget - (time.monotonic() - t_start)
        if name != "environment":
            env_fig = results[0].figures if results else {}
            why = skip_all or spec.skip_reason(ctx, env_fig)
            if why:
                results.append(StepResult(name, S.Status.SKIPPED, reason=why, what=spec.what))
                save()
                continue
            missing = spec.missing(ctx, env_fig)
            if missing:
                results.append(StepResult(name, S.Status.FAILED, reason=missing, what=spec.what))
                save()
                print(f"[gpu-check] {name}: failed: {missing}", flush=True)
                continue
            if left < MIN_START_S:
                results.append(StepResult(name, S.Status.FAILED, what=spec.what,
                                          reason=f"not started: {left:.0f}s of the {args.budget:.0f}s budget left"))
                save()
                continue
        print(f"[gpu-check] {name}: {spec.what} (limit {min(spec.timeout_s, max(left, MIN_START_S)):.0f}s)",
              flush=True)
        res = run_child(name, ctx, min(spec.timeout_s, max(left, MIN_START_S)), logs)
        res.what = spec.what
        results.append(res)
        print(f"[gpu-check] {name}: {res.status.value} in {res.seconds:.1f}s"
              + (f": {res.reason}" if res.reason else ""), flush=True)
        if name == "environment":
            if res.status is not S.Status.OK:
                skip_all = "not run: the environment step failed"
            elif ctx.pretend_cuda:
                res.figures["pretend_cuda"] = True
            elif not ctx.rehearsal:
                skip_all = environment_skip_reason(res)
        save()

    S.derive(results_by_name={r.name: r.figures for r in results if r.status is S.Status.OK}, doc=doc)
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    cuda = bool(results and (results[0].figures.get("cuda_available") or ctx.pretend_cuda))
    failed = [r.name for r in results if r.status is S.Status.FAILED]
    doc["exit_code"] = 1 if failed and (cuda or ctx.rehearsal) or results[0].status is S.Status.FAILED else 0
    save()
    print("\n" + summary_table(results), flush=True)
    print(f"\n[gpu-check] {json_path} ({doc['mode']}, {doc['wall_s']}s): "
          + ", ".join(f"{k} {v}" for k, v in doc["summary"].items())
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    return int(doc["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
