#!/usr/bin/env bash
# nodectl.sh - manage the fake compute nodes of slurm-rl's single-host Slurm lab (fault injection).
# cluster-up.sh installs a copy as $LAB/nodectl.sh next to $LAB/lab.env; run that copy, or this
# file with LAB=... set.
#   nodectl.sh start NODE          start node (namespace + slurmd)
#   nodectl.sh stop NODE           clean stop: kill the whole node (slurmd + jobs) with SIGKILL
#   nodectl.sh crash NODE          same as stop: SIGKILL the node's namespace init = power loss
#   nodectl.sh repair NODE         what an admin does after a crash: mark it DOWN (ends the jobs
#                                  cancelled while it was dead, which stay COMPLETING otherwise),
#                                  start it again, resume it
#   nodectl.sh kill-slurmd NODE    SIGKILL only slurmd; job processes on the node keep running
#   nodectl.sh restart-slurmd NODE start slurmd again inside the node's existing namespace
#   nodectl.sh pids NODE           print "init=<pid> slurmd=<pid>" (host PIDs)
#   nodectl.sh is-up NODE          exit 0 if the node's slurmd is running
#   nodectl.sh status              one line per node
set -euo pipefail
# The lab and the mode its nodes were started in come from lab.env written by cluster-up.sh -
# never NODE_NS from the caller's environment (a mismatch used to leave namespace inits behind).
SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -f "$SELF_DIR/lab.env" ]; then ENV_FILE=$SELF_DIR/lab.env
else ENV_FILE=${LAB:-${TMPDIR:-/tmp}/slurm-rl-lab}/lab.env; fi
[ -f "$ENV_FILE" ] || { echo "nodectl.sh: no lab.env at $ENV_FILE - is the lab up? (scripts/slurm-lab/cluster-up.sh)" >&2; exit 1; }
LAB=$(sed -n 's/^LAB=//p' "$ENV_FILE"); NODE_NS=$(sed -n 's/^NODE_NS=//p' "$ENV_FILE")
RUN=$LAB/run; LOG=$LAB/log
alive() { local p=$1 s; [ -n "$p" ] && [ -r "/proc/$p/stat" ] || return 1
          s=$(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) || return 1; [ "$s" != Z ] && [ "$s" != X ]; }
is_init() { # is_init PID NODE: PID is node NODE's namespace init (a bash whose parent is NODE's unshare)
  local p=$1 n=$2 pp
  alive "$p" && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = bash ] || return 1
  pp=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null) || return 1
  [ "$(cat "/proc/$pp/comm" 2>/dev/null)" = unshare ] && tr '\0' ' ' <"/proc/$pp/cmdline" 2>/dev/null | grep -qF "bash -c hostname $n;"
}
find_init() { # the namespace init of node $1, from the processes themselves (the unshare naming the node)
  local n=$1 p k
  for p in /proc/[0-9]*; do p=${p#/proc/}
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = unshare ] || continue
    for k in $(cat "/proc/$p/task/$p/children" 2>/dev/null); do is_init "$k" "$n" && { echo "$k"; return 0; }; done
  done; true
}
init_pid() { # host PID of node $1's namespace init; the file is a cache checked against the processes (it
             # went missing once when a busy machine outran start's search, and crash then killed nothing)
  local p; p=$(cat "$RUN/node-$1.init" 2>/dev/null || true)
  if [ -n "$p" ] && is_init "$p" "$1"; then echo "$p"; return 0; fi
  p=$(find_init "$1")
  if [ -n "$p" ]; then echo "$p" > "$RUN/node-$1.init"; echo "$p"; fi
  true
}
slurmd_pid() { # host PID of the slurmd serving node $1 (found by namespace / environment tag)
  local n=$1 p ns init
  if [ "$NODE_NS" = 1 ]; then
    init=$(init_pid "$n"); [ -n "$init" ] || return 0
    ns=$(readlink "/proc/$init/ns/pid")
    for p in /proc/[0-9]*; do p=${p#/proc/}
      [ "$(cat /proc/$p/comm 2>/dev/null)" = slurmd ] || continue
      [ "$(readlink /proc/$p/ns/pid 2>/dev/null)" = "$ns" ] && alive "$p" && { echo "$p"; return 0; }
    done
  else
    p=$(cat "$RUN/slurmd-$n.pid" 2>/dev/null || true); alive "$p" && echo "$p" || true
  fi
}
plain_node_pids() { # plain mode: slurmd of $1, its slurmstepd's (they keep an fd on slurmd-$1.log) and
                    # every process in those slurmstepd's sessions (= the job processes)
  local n=$1 p f sids="" sid
  p=$(cat "$RUN/slurmd-$n.pid" 2>/dev/null || true); alive "$p" && echo "$p"
  for p in /proc/[0-9]*; do p=${p#/proc/}
    [ "$(cat /proc/$p/comm 2>/dev/null)" = slurmstepd ] || continue
    for f in /proc/$p/fd/*; do
      [ "$(readlink "$f" 2>/dev/null)" = "$LOG/slurmd-$n.log" ] && { echo "$p"; sids="$sids $(awk '{print $6}' /proc/$p/stat)"; break; }
    done
  done
  [ -n "$sids" ] || return 0
  for p in /proc/[0-9]*; do p=${p#/proc/}
    sid=$(awk '{print $6}' /proc/$p/stat 2>/dev/null) || continue
    for f in $sids; do [ "$sid" = "$f" ] && echo "$p"; done
  done; true
}
start_slurmd_cmd() { echo "exec slurmd -D -N $1 >>$LOG/slurmd-$1.stdout 2>&1"; }
start() {
  local n=$1
  if [ "$NODE_NS" = 1 ]; then
    [ -z "$(init_pid "$n")" ] || { echo "$n already running (init $(init_pid "$n"))"; return 0; }
    mkdir -p "$LAB/spool/$n"
    # ns init = bash: sets hostname, private /etc/hosts, starts slurmd, then reaps orphans forever
    SLURMLAB_NODE=$n setsid unshare --uts --pid --mount --fork --mount-proc --propagation private \
      bash -c "hostname $n; mount --bind $LAB/etc/hosts /etc/hosts;
               ( $(start_slurmd_cmd "$n") ) &
               while :; do sleep 3600 & wait \$!; done" </dev/null >/dev/null 2>&1 &
    local u=$! c=""
    echo "$u" > "$RUN/node-$n.unshare"
    # the namespace init is unshare's child running bash (a loaded machine may take seconds to fork it)
    for _ in $(seq 1 600); do
      c=$(find_init "$n"); [ -n "$c" ] && break; sleep 0.05
    done
    [ -n "$c" ] || { echo "could not find namespace init of $n" >&2; return 1; }
    echo "$c" > "$RUN/node-$n.init"
  else
    [ -z "$(slurmd_pid "$n")" ] || { echo "$n already running"; return 0; }
    mkdir -p "$LAB/spool/$n"
    SLURMLAB_NODE=$n setsid bash -c "$(start_slurmd_cmd "$n")" </dev/null >/dev/null 2>&1 &
    echo $! > "$RUN/slurmd-$n.pid"
  fi
}
restart_slurmd() {
  local n=$1 init
  [ -z "$(slurmd_pid "$n")" ] || { echo "slurmd of $n is already running"; return 0; }
  if [ "$NODE_NS" = 1 ] && init=$(init_pid "$n") && [ -n "$init" ]; then
    SLURMLAB_NODE=$n setsid nsenter --target "$init" --uts --pid --mount \
      bash -c "$(start_slurmd_cmd "$n")" </dev/null >/dev/null 2>&1 &
  else
    start "$n"
  fi
}
crash() {
  local n=$1 init p
  if [ "$NODE_NS" = 1 ]; then
    init=$(init_pid "$n")
    [ -n "$init" ] && kill -9 "$init" 2>/dev/null || true   # kernel SIGKILLs every process of the node
  else
    for p in $(plain_node_pids "$n" | sort -u); do kill -9 "$p" 2>/dev/null || true; done
  fi
  rm -f "$RUN/node-$n.init" "$RUN/node-$n.unshare" "$RUN/slurmd-$n.pid"
}
repair() {
  local n=$1
  crash "$n"                      # clears a half-dead namespace (slurmd gone, init alive) first
  # a job cancelled while its node was dead stays COMPLETING (holding its CPUs) after the node is
  # back until slurmctld resends the terminate request (measured: 64-72 s); DOWN ends it at once
  scontrol update nodename="$n" state=down reason="slurm-rl lab: repaired after a crash" >/dev/null 2>&1 || true
  start "$n"
  scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
}
kill_slurmd() { local p; p=$(slurmd_pid "$1"); [ -n "$p" ] && kill -9 "$p" && echo "killed slurmd of $1 (pid $p)" || echo "slurmd of $1 not running"; }
case "${1:-}" in
  start) start "$2";;
  stop|crash) crash "$2";;
  repair) repair "$2";;
  kill-slurmd) kill_slurmd "$2";;
  restart-slurmd) restart_slurmd "$2";;
  pids) echo "init=$(init_pid "$2") slurmd=$(slurmd_pid "$2")";;
  is-up) [ -n "$(slurmd_pid "$2")" ];;
  status) for f in $(ls "$LAB/spool" 2>/dev/null); do echo "$f: init=$(init_pid "$f") slurmd=$(slurmd_pid "$f")"; done;;
  *) sed -n '2,17p' "$0"; exit 2;;
esac
