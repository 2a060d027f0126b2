"""`python -m slurm_rl.controller RUN_DIR [--resume]`: the controller process of one run."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from slurm_rl.logs import setup_process_logging
from slurm_rl.rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slurm_rl.controller")
    p.add_argument("run_dir")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    run = RunDir(args.run_dir)
    setup_process_logging(lambda: f"[controller pid={os.getpid()}]")
    from slurm_rl.backends.factory import make_backend
    from slurm_rl.config import load_run_config
    from slurm_rl.controller.lock import ControllerLock, ControllerRunning
    from slurm_rl.controller.loop import Controller

    lock = ControllerLock(run)
    try:
        lock.acquire()                       # before anything is written: one controller per state store
    except ControllerRunning as e:
        logging.getLogger("slurm_rl.controller").error("%s", e)
        return e.exit_code
    cfg = load_run_config(run)
    backend = make_backend(run, cfg)
    try:
        return Controller(run, cfg, backend, resume=args.resume).serve()
    except Exception:
        logging.getLogger("slurm_rl.controller").exception("controller crashed")
        return 1
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
