"""Entry point of every role job: `python -m slurm_rl.roles.worker RUN_DIR ROLE INDEX --incarnation N`.

This is what each Slurm job (or local process) runs. It reads the run's resolved config and keys
from RUN_DIR, says hello to the controller, and plays the role it is assigned, switching role in
place when promoted (a spare becoming a rollout or the trainer).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from slurm_rl import protocol as P
from slurm_rl.config import load_run_config
from slurm_rl.errors import FATAL_ROLE_EXITS, role_exit_code
from slurm_rl.logs import setup_process_logging
from slurm_rl.rl.dist import RankInfo, rank_info
from slurm_rl.rundir import RunDir
from slurm_rl.states import RoleKind

if TYPE_CHECKING:
    from slurm_rl.roles.runtime import (
        RoleRuntime,  # imports torch: loaded once the pid file is out
    )

log = logging.getLogger("slurm_rl.roles.worker")


def play(rt: RoleRuntime, assign: P.Command) -> int:
    """Play roles until told to stop; a `become` command switches role in place, in this process."""
    from slurm_rl.roles.host import RoleHost
    from slurm_rl.roles.rollout import run_rollout
    from slurm_rl.roles.spare import run_spare, run_trainer_spare
    from slurm_rl.roles.trainer import make_trainer, run_trainer

    roles = {
        RoleKind.TRAINER: lambda host, cmd: run_trainer(rt, host, resume_step=max(cmd.resume_step, 0)),
        RoleKind.ROLLOUT: lambda host, cmd: run_rollout(rt, host),
        RoleKind.SPARE: lambda host, cmd: run_spare(rt, host),
        RoleKind.TRAINER_SPARE: lambda host, cmd: run_trainer_spare(rt, host),
    }
    host = RoleHost(rt, build_trainer=make_trainer)
    cmd: P.Command | None = assign
    while cmd is not None:
        rt.set_ident(P.Ident(kind=cmd.kind, index=cmd.index, incarnation=cmd.incarnation))
        if cmd.op == "become":
            log.info("promoted: %s", cmd.reason)
        cmd = roles[RoleKind(cmd.kind)](host, cmd)
    host.wait_engine_closed()
    host.close_engine()
    return 0


def play_rank(rt: RoleRuntime, info: RankInfo, pg_store: Any) -> int:
    """One rank of a multi-rank trainer, or of its trainer-shaped standby: join the process group
    (rank 0 after its hello, the others with the address the controller hands them), train (a
    standby once promoted), leave."""
    from slurm_rl.rl import dist as rd
    from slurm_rl.rl.modeldir import check_model_dir
    from slurm_rl.roles.host import resolve_device
    from slurm_rl.roles.trainer_ranks import run_sharded_trainer, stand_by

    timeout = rt.cfg.trainer.dist_timeout_s
    device = resolve_device(rt.cfg.trainer.device)
    try:
        if info.leader:
            assign = rt.start()
            check_model_dir(rt.run.model)
            rd.join(info, device=device, timeout_s=timeout, store=pg_store)
            resume = max(assign.resume_step, 0)
        else:
            rd.join(info, device=device, timeout_s=timeout, rdzv=rt.join_as_rank(timeout))
            resume = 0
        trainer = None
        if rt.ident.kind == RoleKind.TRAINER_SPARE.value:
            promoted = stand_by(rt)
            if promoted is None:
                return 0                 # stopped while standing by
            trainer, resume = promoted
        run_sharded_trainer(rt, resume_step=resume, trainer=trainer)
    finally:
        rd.leave()
    return 0


def _write_pid_file() -> None:
    """Tell the job's batch agent (slurm_rl.roles.agent) which process to watch: the first task's."""
    path = os.environ.get("SLURM_RL_PID_FILE")
    if not path or not rank_info().leader:
        return
    try:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write %s (%s): hangs are confirmed by heartbeat silence alone", path, e)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm_rl.roles.worker", description=__doc__)
    p.add_argument("run_dir")
    p.add_argument("role", choices=[k.value for k in RoleKind])
    p.add_argument("index", type=int)
    p.add_argument("--incarnation", type=int, default=1)
    args = p.parse_args(argv)

    _write_pid_file()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run = RunDir(args.run_dir)
    cfg = load_run_config(run)
    job_id = os.environ.get("SLURM_RL_JOB_ID") or os.environ.get("SLURM_JOB_ID", "")
    node = os.environ.get("SLURM_RL_NODE") or os.environ.get("SLURMD_NODENAME") or socket.gethostname()

    from slurm_rl.rl.modeldir import check_model_dir
    from slurm_rl.roles.runtime import RoleRuntime, write_exit_record

    holder: dict[str, RoleRuntime] = {}

    def prefix() -> str:
        rt = holder.get("rt")
        ident = rt.ident if rt else P.Ident(args.role, args.index, args.incarnation)
        step = f" v={rt.held_version}" if rt else ""
        return f"[{ident.slot} job={job_id or '-'}{step}]"

    setup_process_logging(prefix)
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from slurm_rl.rl import dist as rd
    from slurm_rl.roles.runtime import bind_host

    info = rd.rank_info()
    timeout = cfg.trainer.dist_timeout_s
    pg_store, rdzv = (rd.serve_store(bind_host(cfg), info.world_size, timeout) if info.distributed and info.leader
                      else (None, ""))
    rt = RoleRuntime(run, cfg, P.Ident(args.role, args.index, args.incarnation), job_id=job_id, node=node,
                     rank=info, rdzv=rdzv, pg_store=pg_store)
    holder["rt"] = rt
    log.info("started on %s (pid %d, rank %d of %d), weights served at %s", node, os.getpid(), info.rank,
             info.world_size, ", ".join(rt.addrs.values()) or "-")
    code, fatal, why = 0, "", ""
    try:
        if info.distributed:
            code = play_rank(rt, info, pg_store)
        else:
            assign = rt.start()
            check_model_dir(run.model)
            code = play(rt, assign)
    except SystemExit as e:
        code = int(e.code or 0)
    except Exception as e:
        code = role_exit_code(e)
        fatal = FATAL_ROLE_EXITS.get(code, "")
        if fatal:
            why = str(e)            # message and hint; the cause is deterministic, a traceback adds nothing
            log.error("cannot run (%s): %s", fatal, why)
        else:
            log.exception("role failed")
    write_exit_record(code)
    rt.close(why or ("finished" if code == 0 else f"failed with exit {code}"), fatal=fatal)
    # vLLM's engine threads can abort interpreter teardown; the work is done, so leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
