"""Lease and queue accounting in the state store: nothing acknowledged is lost, nothing done twice."""

from __future__ import annotations

import uuid

import pytest

from slurm_rl import protocol as P
from slurm_rl.store import Store

NOW = 1000.0


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state.db")
    s.load_problems([(f"{i}+1=", str(i + 1)) for i in range(10)])
    yield s
    s.close()


def group(lease: P.ProblemLease, version: int = 0, wepoch: int = 0, n: int = 4, reward: float = 0.5) -> P.GroupMsg:
    return P.GroupMsg(group_id=uuid.uuid4().hex, item_id=lease.item_id, problem_idx=lease.problem_idx,
                      prompt_ids=[1, 2], samples=[P.SampleMsg([3], [-0.1], reward)] * n, version=version,
                      wepoch=wepoch)


def submit(store, holder, groups, trainer_version=0, max_staleness=2):
    slot = holder.split("#")[0]
    return store.submit_groups(holder, slot, 1, groups, NOW, trainer_version=trainer_version,
                               max_staleness=max_staleness, wepoch=0, committed=0)


def identity_holds(store) -> bool:
    c = store.counts()
    return c.samples_generated == c.samples_consumed + c.samples_dropped_stale + c.samples_dropped_rollback \
        + c.samples_pending


def test_lease_walks_the_data_cursor_and_wraps(store):
    a = store.lease("rollout/0#1", 6, NOW, 60)
    b = store.lease("rollout/1#1", 6, NOW, 60)
    assert [x.problem_idx for x in a] == [0, 1, 2, 3, 4, 5]
    assert [x.problem_idx for x in b] == [6, 7, 8, 9, 0, 1]          # next epoch starts over
    assert len({x.item_id for x in a + b}) == 12                       # each lease is its own item
    assert a[0].prompt == "0+1=" and a[0].answer == "1"


def test_requeued_leases_are_served_first(store):
    a = store.lease("rollout/0#1", 3, NOW, 60)
    assert store.requeue_holder_prefix("rollout/0") == 3
    b = store.lease("rollout/1#1", 4, NOW, 60)
    assert [x.item_id for x in b[:3]] == [x.item_id for x in a]
    assert b[3].problem_idx == 3


def test_groups_of_a_lost_lease_are_rejected_and_not_counted(store):
    a = store.lease("rollout/0#1", 2, NOW, 60)
    store.requeue_holder_prefix("rollout/0")                           # declared dead
    b = store.lease("rollout/1#1", 2, NOW, 60)                         # someone else took them
    acc, rej = submit(store, "rollout/0#1", [group(x) for x in a])     # the zombie hands in late
    assert acc == [] and len(rej) == 2
    acc, rej = submit(store, "rollout/1#1", [group(x) for x in b])
    assert len(acc) == 2 and rej == []
    c = store.counts()
    assert c.groups_queued == 2 and c.items_done == 2 and c.samples_generated == 8
    assert identity_holds(store)


def test_resubmitting_the_same_group_is_idempotent(store):
    a = store.lease("rollout/0#1", 1, NOW, 60)
    g = group(a[0])
    assert submit(store, "rollout/0#1", [g]) == ([g.group_id], [])
    assert submit(store, "rollout/0#1", [g]) == ([g.group_id], [])    # the ack got lost; retry
    assert store.counts().groups_queued == 1


def test_a_prompt_is_done_once(store):
    a = store.lease("rollout/0#1", 1, NOW, 60)
    submit(store, "rollout/0#1", [group(a[0])])
    acc, rej = submit(store, "rollout/0#1", [group(a[0])])              # a second, different group
    assert acc == [] and len(rej) == 1


def test_expired_leases_return(store):
    store.lease("rollout/0#1", 3, NOW, 10)
    assert store.expire_leases(NOW + 5) == 0
    assert store.expire_leases(NOW + 11) == 3
    assert store.counts().items_queued == 3


def test_fetch_batch_is_all_or_nothing_and_repeatable(store):
    leases = store.lease("rollout/0#1", 5, NOW, 60)
    submit(store, "rollout/0#1", [group(x) for x in leases[:3]])
    assert store.fetch_batch("trainer/0#1", 0, 4, 2) == []             # 3 < 4: wait
    submit(store, "rollout/0#1", [group(x) for x in leases[3:]])
    batch = store.fetch_batch("trainer/0#1", 0, 4, 2)
    assert len(batch) == 4
    again = store.fetch_batch("trainer/0#1", 0, 4, 2)                  # a retried request
    assert [g.group_id for g in again] == [g.group_id for g in batch]
    assert store.counts().groups_delivered == 4 and store.counts().groups_queued == 1


def test_stale_groups_are_dropped_and_counted(store):
    leases = store.lease("rollout/0#1", 4, NOW, 60)
    submit(store, "rollout/0#1", [group(leases[0], version=0), group(leases[1], version=3)], trainer_version=3)
    # a group already too stale on arrival is stored as dropped (it was acknowledged)
    acc, _ = submit(store, "rollout/0#1", [group(leases[2], version=0)], trainer_version=5)
    assert len(acc) == 1
    submit(store, "rollout/0#1", [group(leases[3], version=4)], trainer_version=5)
    batch = store.fetch_batch("trainer/0#1", 5, 2, 2)                  # version 0 < 5-2: dropped
    assert sorted(g.version for g in batch) == [3, 4]
    c = store.counts()
    assert c.groups_dropped_stale == 2 and identity_holds(store)


def _train(store, step: int, n: int = 2) -> list[str]:
    leases = store.lease("rollout/0#1", n, NOW, 60)
    submit(store, "rollout/0#1", [group(x, version=step) for x in leases], trainer_version=step)
    batch = store.fetch_batch("trainer/0#1", step, n, 2)
    ids = [g.group_id for g in batch]
    store.step_done(P.StepDone(ident=P.Ident("trainer", 0, 1), version=step + 1, wepoch=0, group_ids=ids,
                               t_start=NOW, t_end=NOW + 1, wait_s=0.1, metrics={"reward_mean": 0.5}), "trainer/0#1")
    return ids


def test_commit_turns_trained_groups_into_consumed(store):
    _train(store, 0)
    _train(store, 1)
    c = store.counts()
    assert c.groups_trained == 4 and c.groups_consumed == 0
    store.commit_through(1)
    c = store.counts()
    assert c.groups_consumed == 2 and c.groups_trained == 2
    assert [r["state"] for r in store.steps()] == ["committed", "done"]
    assert identity_holds(store)


def test_trainer_loss_requeues_uncommitted_groups(store):
    _train(store, 0)
    _train(store, 1)
    store.commit_through(1)
    leases = store.lease("rollout/0#1", 2, NOW, 60)
    submit(store, "rollout/0#1", [group(x, version=2) for x in leases], trainer_version=2)
    store.fetch_batch("trainer/0#1", 2, 2, 2)                          # delivered, trainer dies mid-step
    steps, groups, replay = store.rollback_after(1, regenerate=False, now=NOW)
    assert steps == 1 and groups == 4 and replay == pytest.approx(1.0)                                 # step 2's two + the delivered two
    c = store.counts()
    assert c.groups_queued == 4 and c.groups_consumed == 2
    assert [r["state"] for r in store.steps()] == ["committed", "rolled_back"]
    assert identity_holds(store)


def test_full_restart_drops_rolled_back_groups_and_requeues_their_problems(store):
    for step in range(3):
        _train(store, step)
    store.commit_through(3)
    steps, groups, replay = store.rollback_after(1, regenerate=True, now=NOW)  # checkpoint at step 1
    assert steps == 2 and groups == 4 and replay == pytest.approx(2.0)
    c = store.counts()
    assert c.groups_dropped_rollback == 4 and c.groups_consumed == 2 and c.items_queued == 4
    assert identity_holds(store)
    again = store.lease("rollout/0#1", 4, NOW, 60)
    assert sorted(x.problem_idx for x in again) == [2, 3, 4, 5]        # the rolled-back problems come back


def test_shuffled_epochs_hand_out_each_problem_once_per_epoch_in_a_seeded_order(tmp_path):
    def order(seed, path):
        s = Store(path)
        s.load_problems([(f"{i}+1=", str(i + 1)) for i in range(10)], shuffle=True, seed=seed)
        try:
            return [x.problem_idx for x in s.lease("rollout/0#1", 7, NOW, 60) + s.lease("rollout/1#1", 13, NOW, 60)]
        finally:
            s.close()

    a = order(3, tmp_path / "a.db")
    assert sorted(a[:10]) == list(range(10)) and sorted(a[10:]) == list(range(10))   # each epoch: all, once
    assert a[:10] != list(range(10)) and a[:10] != a[10:]                             # shuffled, anew per epoch
    assert order(3, tmp_path / "b.db") == a and order(4, tmp_path / "c.db") != a    # seeded


def test_a_restarted_store_continues_the_same_shuffled_order(tmp_path):
    s = Store(tmp_path / "s.db")
    s.load_problems([(f"p{i}", str(i)) for i in range(8)], shuffle=True, seed=1)
    first = [x.problem_idx for x in s.lease("rollout/0#1", 5, NOW, 60)]
    s.close()
    s = Store(tmp_path / "s.db")                       # a controller restart reopens the store
    rest = [x.problem_idx for x in s.lease("rollout/0#2", 11, NOW, 60)]
    s.close()
    s = Store(tmp_path / "t.db")
    s.load_problems([(f"p{i}", str(i)) for i in range(8)], shuffle=True, seed=1)
    assert first + rest == [x.problem_idx for x in s.lease("rollout/0#1", 16, NOW, 60)]
    s.close()
