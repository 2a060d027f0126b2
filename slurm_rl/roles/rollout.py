"""Rollout: lease prompts, generate a group of completions each, score them, hand them in.

Between batches it applies the newest weight version (pulled from any holder, then served to
others). Every group carries the weight version that generated it. A group counts as delivered
only when the controller acknowledges it (it is then on disk); the acknowledged ids are
journalled in the run's acks/ folder so a loss audit does not trust the store alone.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

from slurm_rl import protocol as P
from slurm_rl.rl.task import Problem, encode_prompts, reward
from slurm_rl.roles.host import RoleHost
from slurm_rl.roles.runtime import RoleRuntime
from slurm_rl.states import Phase

log = logging.getLogger("slurm_rl.roles.rollout")


class AckJournal:
    def __init__(self, rt: RoleRuntime):
        path = rt.run.acks / f"{rt.job_id or 'nojob'}.{os.getpid()}.log"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, ids: list[str]) -> None:
        if ids:
            os.write(self.fd, ("\n".join(ids) + "\n").encode())


def run_rollout(rt: RoleRuntime, host: RoleHost) -> P.Command | None:
    cfg = rt.cfg
    alg = cfg.algorithm
    engine = host.ensure_engine()
    tok = host.tokenizer
    journal = AckJournal(rt)
    batches = 0
    while True:
        cmd = rt.next_command()
        if cmd is not None:
            if cmd.op == "stop":
                return None
            if cmd.op == "become":
                return cmd
        if rt.needs_sync():
            rt.sync_newest(host.apply_weights)
        version, wepoch = rt.held_version, rt.held_wepoch
        reply = rt.call(P.LeaseRequest(ident=rt.ident, max_items=cfg.rollout.prompts_per_batch, version=version,
                                       wepoch=wepoch), timeout_s=5.0, attempts=1)
        if reply is None or reply.pause or not reply.leases:
            rt.set_phase(Phase.IDLE, reply.pause if reply is not None else "controller unreachable")
            time.sleep(0.1 if reply is not None else 0.5)
            continue
        leases = reply.leases
        rt.set_phase(Phase.GENERATING, f"{len(leases)} prompts x {alg.group_size} at v{version}")
        problems = [Problem(id=str(le.problem_idx), prompt=le.prompt, answer=le.answer) for le in leases]
        prompt_ids = encode_prompts(tok, problems, cfg.task.template)
        outs = engine.generate(prompt_ids, n=alg.group_size, max_tokens=alg.max_new_tokens,
                               temperature=alg.temperature, seed=cfg.seed * 1_000_003 + leases[0].item_id)
        groups: list[P.GroupMsg] = []
        tokens = 0
        for le, pids, comps in zip(leases, prompt_ids, outs):
            samples = [P.SampleMsg(completion_ids=list(c.token_ids), logprobs=[float(x) for x in c.logprobs],
                                   reward=reward(c.text, le.answer), text=c.text) for c in comps]
            tokens += sum(len(c.token_ids) for c in comps)
            groups.append(P.GroupMsg(group_id=uuid.uuid4().hex, item_id=le.item_id, problem_idx=le.problem_idx,
                                     prompt_ids=list(pids), samples=samples, version=version, wepoch=wepoch))
        rt.bump(tokens)
        _hand_in(rt, journal, groups)
        batches += 1


def _hand_in(rt: RoleRuntime, journal: AckJournal, groups: list[P.GroupMsg]) -> None:
    """Submit until the controller answers; a retry of stored groups is acknowledged again."""
    delay = 0.2
    while True:
        reply = rt.call(P.SubmitGroups(ident=rt.ident, groups=groups), timeout_s=10.0, attempts=2)
        if reply is not None:
            journal.write(list(reply.accepted))
            if reply.rejected:
                log.info("%d group(s) not accepted (lease lost or weights rolled back)", len(reply.rejected))
            return
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
