"""The batch-step agent (slurm_rl.roles.agent): transparent to the job, and it sees the role's process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from slurm_rl.roles.agent import proc_state


def agent(code: str, tmp_path, **kw) -> subprocess.Popen:
    env = dict(os.environ, SLURM_JOB_ID="4242")
    (tmp_path / "slurm").mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "slurm_rl.roles.agent", "--run-dir", str(tmp_path), "--", sys.executable, "-c", code]
    return subprocess.Popen(cmd, env=env, **kw)


def test_the_agent_exits_as_its_command_did(tmp_path):
    assert agent("import sys; sys.exit(3)", tmp_path).wait(30) == 3
    assert agent("pass", tmp_path).wait(30) == 0
    # a command killed by a signal: the agent dies of the same signal (Slurm records 0:9)
    assert agent("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path).wait(30) == -signal.SIGKILL


def test_signals_to_the_agent_reach_the_command(tmp_path):
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    p = agent(code, tmp_path, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 7


def test_the_command_is_told_where_to_write_its_pid(tmp_path):
    code = "import os; print(os.environ['SLURM_RL_PID_FILE'])"
    p = agent(code, tmp_path, stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=30)
    assert out.strip() == str(tmp_path / "slurm" / "pid-4242")
    assert not (tmp_path / "slurm" / "pid-4242").exists()        # cleaned up when the job ends


def test_proc_state_tells_stopped_sleeping_and_busy_apart():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert proc_state(sleeper.pid)[0] == "S"
        cpu0 = proc_state(busy.pid)[1]
        time.sleep(0.5)
        state, cpu1 = proc_state(busy.pid)
        assert state == "R" and cpu1 > cpu0                         # busy: the CPU clock moves
        os.kill(busy.pid, signal.SIGSTOP)
        time.sleep(0.2)
        state, cpu2 = proc_state(busy.pid)
        time.sleep(0.5)
        assert state == "T" and proc_state(busy.pid) == ("T", cpu2)   # stopped: nothing moves
    finally:
        for p in (sleeper, busy):
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
            p.wait()
    assert proc_state(busy.pid) is None                              # gone
