"""Enums shared by every layer: roles, their states and phases, jobs, nodes and faults."""

from __future__ import annotations

import enum


class RoleKind(str, enum.Enum):
    TRAINER = "trainer"
    ROLLOUT = "rollout"
    SPARE = "spare"
    # a warm standby of the trainer's own shape (nodes x ranks): its ranks have formed their process
    # group and built their shards, and wait to become the trainer (spare.trainer_nodes)
    TRAINER_SPARE = "trainer-spare"

    def __str__(self) -> str:
        return self.value


class RoleState(str, enum.Enum):
    """Lifecycle of one role replica (a slot such as rollout/1), as the controller sees it."""

    PENDING = "PENDING"      # job submitted, not yet connected
    STARTING = "STARTING"    # connected, loading
    READY = "READY"          # heartbeating, working (or idle for a good reason)
    SUSPECT = "SUSPECT"      # one failure signal seen, waiting for confirmation
    DEAD = "DEAD"            # confirmed failed; recovery decided
    MOVING = "MOVING"        # node drains: a replacement is starting, then this one stops
    STOPPED = "STOPPED"      # ended on purpose (run over, replaced, cancelled)

    def __str__(self) -> str:
        return self.value

    @property
    def alive(self) -> bool:
        return self in (RoleState.PENDING, RoleState.STARTING, RoleState.READY, RoleState.SUSPECT, RoleState.MOVING)


class Phase(str, enum.Enum):
    """What a role says it is doing, in each heartbeat. Waiting phases are never a fault."""

    LOADING = "loading"
    IDLE = "idle"                          # rollout/spare with nothing to do (no prompts, buffer full)
    WAITING_FOR_DATA = "waiting_for_data"  # trainer
    STEPPING = "stepping"                  # trainer
    CHECKPOINTING = "checkpointing"        # trainer
    PUBLISHING = "publishing"              # trainer
    GENERATING = "generating"              # rollout
    SYNCING_WEIGHTS = "syncing_weights"    # anyone pulling a new version
    RESTORING = "restoring"                # a standby becoming trainer
    STOPPING = "stopping"

    def __str__(self) -> str:
        return self.value

    @property
    def waiting(self) -> bool:
        return self in (Phase.IDLE, Phase.WAITING_FOR_DATA)


class JobState(str, enum.Enum):
    """Scheduler state of the job (Slurm's names; the local backend maps process states onto them)."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"
    SUSPENDED = "SUSPENDED"
    REQUEUED = "REQUEUED"
    RESIZING = "RESIZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL_JOB_STATES

    @property
    def active(self) -> bool:
        return self in (JobState.PENDING, JobState.CONFIGURING, JobState.RUNNING, JobState.COMPLETING,
                        JobState.SUSPENDED, JobState.REQUEUED, JobState.RESIZING)


_TERMINAL_JOB_STATES = frozenset({
    JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL,
    JobState.OUT_OF_MEMORY, JobState.PREEMPTED, JobState.BOOT_FAIL, JobState.DEADLINE,
})


class NodeHealth(str, enum.Enum):
    """Node condition as far as recovery cares."""

    OK = "OK"
    DRAIN = "DRAIN"      # still running its jobs, will go away: move roles off gracefully
    DOWN = "DOWN"        # not responding / down / fail: its roles are gone
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


class FaultKind(str, enum.Enum):
    CRASH = "crash"          # SIGKILL the role's process
    HANG = "hang"            # SIGSTOP it (alive, silent)
    EXIT = "exit"            # the process exits with a code (exit:N)
    NODE_DOWN = "node-down"  # the whole node goes away
    DRAIN = "drain"          # the node is drained (graceful move expected)

    def __str__(self) -> str:
        return self.value
