# shellcheck shell=bash
# node-lib.sh -- shared helpers of k3s/node and k3s/lib/node-guardian.sh (sourced, not executed).
#
# Node state dir ($VKS_TEST_ROOT/nodes/NAME/):
#   ip, hostname, machine-id      identity (kept across reboots)
#   upper/ work/ root/            overlay (lowerdir=/) and its mount point (inside the node's mount ns only)
#   journal/                      bound to the node's /run/log/journal (readable after the node is gone)
#   cgdirs cgmounts cglinks       the node's cgroup dirs on the host / what the boot script mounts
#   owner                         "PID STARTTIME" of VKS_NODE_OWNER (optional)
#   up                            "PID STARTTIME" of the `k3s/node up` creating the node
#   guardian                      "PID STARTTIME" of the guardian (parent of unshare)
#   down                          "PID STARTTIME" of the process tearing the node down (claim_teardown)
#                                 (all records are written atomically by rec_pid; read with alive_rec)
#   unshare.pid pid pidns boot    unshare's PID, node PID 1 (host PID) + its pid ns, boot counter
#   masks etc-initialized         /etc/systemd/system bookkeeping of node-boot.sh
#   console.log guardian.log      output of the boot script / the guardian
#   netns                         present for a node in its own network namespace (VKS_NODE_NETNS=1)
#   net/                          its forwarders' unix sockets, "PID STARTTIME" records and log

VKS_TEST_ROOT=${VKS_TEST_ROOT:-/var/tmp/vks-test}
NODES_DIR=$VKS_TEST_ROOT/nodes
NODE_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$NODE_LIB/../.." && pwd)
NODE_STOP_TIMEOUT=${VKS_NODE_STOP_TIMEOUT:-15}

nlog() { echo "node: $*" >&2; }

# shellcheck source=node-net.sh
. "$NODE_LIB/node-net.sh"

# proc_start PID -> start time (field 22 of /proc/PID/stat); fails if gone or a zombie. Builtins only.
proc_start() {
  local line rest f
  [[ ${1:-} =~ ^[0-9]+$ ]] || return 1
  read -r line 2>/dev/null <"/proc/$1/stat" || return 1
  rest=${line##*) }
  read -r -a f <<<"$rest"
  [ "${f[0]}" != Z ] && [ "${f[0]}" != X ] || return 1
  echo "${f[19]}"
}

# alive_rec FILE -> true if the process recorded in FILE ("PID STARTTIME") still exists (not recycled).
alive_rec() {
  local pid st cur
  [ -f "$1" ] || return 1
  read -r pid st 2>/dev/null <"$1" || return 1
  cur=$(proc_start "$pid") || return 1
  [ "$cur" = "$st" ]
}

# rec_pid PID FILE -> record PID as "PID STARTTIME" (for alive_rec). Atomic (write + rename): the
# records are polled without the lock, and `echo >FILE` creates/truncates FILE before writing it, so a
# reader could see an empty record and take a live process for dead (`up`: "guardian exited").
rec_pid() {
  local tmp="$2.tmp.$BASHPID"
  echo "$1 $(proc_start "$1")" >"$tmp" && mv -f "$tmp" "$2"
}

# The state root's lock (fd 9): creating a node, deciding to reap one, claiming a teardown.
lock() { mkdir -p "$NODES_DIR"; exec 9>"$NODES_DIR/.lock"; flock 9; }
unlock() { flock -u 9; exec 9>&-; }

# claim_teardown STATE -> (under the lock) make this process ($$) the one tearing the node down
# (STATE/down = "PID STARTTIME"); fails if another live process already does. One teardown at a time:
# `down`, the reaper of every `up` and a guardian whose owner is gone would otherwise race on the same
# node (kill, cgroup rmdir, rm -rf of a state dir another process is still writing).
claim_teardown() {
  local pid
  if alive_rec "$1/down"; then
    read -r pid _ <"$1/down" || pid=
    [ "$pid" = $$ ] && return 0
    return 1
  fi
  rec_pid $$ "$1/down"
}

# release_teardown STATE -> give up our claim (after a failed teardown, so that another `down` may retry)
release_teardown() {
  local pid
  read -r pid _ 2>/dev/null <"$1/down" || return 0
  [ "$pid" != $$ ] || rm -f "$1/down"
}

# wait_teardown STATE -> wait while another live process tears the node down (until its state is gone)
wait_teardown() {
  while [ -d "$1" ] && alive_rec "$1/down"; do sleep 0.1; done
}

# node_pid1 STATE -> host PID of the node's systemd if it is alive (right pid ns, not a zombie)
node_pid1() {
  local pid ns
  read -r pid 2>/dev/null <"$1/pid" || return 1
  read -r ns 2>/dev/null <"$1/pidns" || return 1
  [ "$(readlink "/proc/$pid/ns/pid" 2>/dev/null)" = "$ns" ] || return 1
  proc_start "$pid" >/dev/null || return 1
  echo "$pid"
}

node_unified_cg() { grep -m1 '/unified/' "$1/cgdirs" 2>/dev/null || true; }

# node_tasks STATE -> number of tasks left in the node's cgroups (all hierarchies)
node_tasks() {
  local cgs=() cg
  [ -f "$1/cgdirs" ] || { echo 0; return; }
  while read -r cg; do [ -d "$cg" ] && cgs+=("$cg"); done 2>/dev/null <"$1/cgdirs" || true
  [ ${#cgs[@]} -gt 0 ] || { echo 0; return; }
  find "${cgs[@]}" -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l
}

# node_kill_wrappers STATE -> SIGKILL the host-side nsenter parents of processes in the node's pid ns
# (`k3s/node exec`, `nsenter -t PID -a ...`). A dying pid-ns init waits until every process of its ns is
# reaped; a stopped nsenter (e.g. SIGTTIN in a background job) would never reap its killed child.
node_kill_wrappers() {
  local ns p pp line upid
  read -r ns 2>/dev/null <"$1/pidns" || return 0
  read -r upid 2>/dev/null <"$1/unshare.pid" || upid=
  for p in $(find /proc -mindepth 3 -maxdepth 3 -path '/proc/[0-9]*/ns/pid' -printf '%p %l\n' 2>/dev/null |
    grep -F " $ns" | cut -d/ -f3); do
    pp=
    # (|| continue: the process may be gone by now; a failed redirection would end a `set -e` caller)
    while read -r line; do [[ $line == PPid:* ]] && { pp=${line#PPid:}; pp=${pp//[[:space:]]/}; break; }; done 2>/dev/null <"/proc/$p/status" || continue
    [ -n "$pp" ] && [ "$pp" != 0 ] && [ "$pp" != "$upid" ] || continue
    [ "$(readlink "/proc/$pp/ns/pid" 2>/dev/null)" = "$ns" ] && continue
    read -r line 2>/dev/null <"/proc/$pp/comm" || continue
    [ "$line" = nsenter ] && { kill -9 "$pp" 2>/dev/null || true; }
  done
  return 0
}

# node_kill_all STATE -> SIGKILL every task in the node's cgroup subtree and wait until it is empty
node_kill_all() {
  local state=$1 uni i j pid
  node_kill_wrappers "$state"
  uni=$(node_unified_cg "$state")
  if [ -n "$uni" ] && [ -e "$uni/cgroup.kill" ]; then echo 1 >"$uni/cgroup.kill" 2>/dev/null || true; fi
  pid=$(node_pid1 "$state") && { kill -9 "$pid" 2>/dev/null || true; }
  for ((i = 0; i < 200; i++)); do
    if [ "$(node_tasks "$state")" -eq 0 ]; then
      # an exiting pid-ns init leaves the cgroup first, then waits until every task of its ns is
      # reaped (orphans go to the host's init: slow on this VM, pitfall 10): wait for it (bounded)
      for ((j = 0; j < 100; j++)); do node_pid1 "$state" >/dev/null || break; sleep 0.05; done
      return 0
    fi
    # tasks only in v1 hierarchies (should not happen): kill them one by one
    if [ "$i" -eq 40 ]; then
      while read -r cg; do
        # shellcheck disable=SC2038 # xargs reads PIDs (the files' contents), not file names
        [ -d "$cg" ] && { find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true; }
      done 2>/dev/null <"$state/cgdirs" || true
    fi
    sleep 0.05
  done
  nlog "warning: tasks left in the cgroups of $state"
  return 1
}

# node_rm_cgroups STATE [keep-top] -> rmdir the node's cgroup trees bottom-up
node_rm_cgroups() {
  local cg
  [ -f "$1/cgdirs" ] || return 0
  while read -r cg; do
    [ -d "$cg" ] || continue
    if [ "${2:-}" = keep-top ]; then
      find "$cg" -mindepth 1 -depth -type d -exec rmdir {} + 2>/dev/null || true
    else
      find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
  done 2>/dev/null <"$1/cgdirs" || true
  return 0
}

# node_poweroff STATE [TIMEOUT] -> graceful poweroff (SIGRTMIN+4 to the node's systemd = systemctl
# poweroff), hard kill of the cgroup subtree if it does not finish within TIMEOUT seconds.
# A node still in node-boot.sh (PID 1 not systemd yet) is killed at once: a pid-ns init ignores
# signals from the parent ns it has no handler for, so SIGRTMIN+4 would only cost TIMEOUT seconds.
# For the same reason the signal is repeated while PID 1 is systemd (it may not have its handlers yet).
node_poweroff() {
  local state=$1 t=${2:-$NODE_STOP_TIMEOUT} pid end next=0 comm
  if pid=$(node_pid1 "$state") && read -r comm 2>/dev/null <"/proc/$pid/comm" && [ "$comm" = systemd ]; then
    end=$((SECONDS + t))
    while pid=$(node_pid1 "$state") && [ $SECONDS -lt "$end" ]; do
      if [ $SECONDS -ge $next ] && read -r comm 2>/dev/null <"/proc/$pid/comm" && [ "$comm" = systemd ]; then
        kill -s SIGRTMIN+4 "$pid" 2>/dev/null || true
        next=$((SECONDS + 1))
      fi
      sleep 0.05
    done
    if node_pid1 "$state" >/dev/null; then nlog "$(basename "$state"): graceful poweroff timed out after ${t}s; killing"; fi
  fi
  node_kill_all "$state"
}

# node_api_up -> true if something listens on the cluster's API port (keeps `down` fast without a cluster)
node_api_up() { timeout 1 bash -c '</dev/tcp/127.0.0.1/6443' 2>/dev/null; }

node_kubeconfig() {
  local kc
  [ -x "$REPO/k3s/cluster" ] || return 1
  kc=$("$REPO/k3s/cluster" kubeconfig 2>/dev/null) || return 1
  [ -f "$kc" ] || return 1
  echo "$kc"
}

# node_delete_k8s NAME -> delete the Node object, best effort
node_delete_k8s() {
  local kc
  node_api_up || return 0
  kc=$(node_kubeconfig) || return 0
  local out
  out=$(timeout 10 kubectl --kubeconfig "$kc" --request-timeout=5s delete node "$1" --wait=false \
    --ignore-not-found 2>&1) || nlog "$1: could not delete the Node object (ignored): ${out:-timeout}"
}

# node_delete_token STATE -> delete the bootstrap token the node joined with (STATE/token-id), best effort
node_delete_token() {
  local id kc out
  id=$(cat "$1/token-id" 2>/dev/null) || return 0
  node_api_up || return 0
  kc=$(node_kubeconfig) || return 0
  out=$(timeout 10 kubectl --kubeconfig "$kc" --request-timeout=5s -n kube-system delete secret \
    "bootstrap-token-$id" --ignore-not-found 2>&1) || nlog "could not delete bootstrap token $id (ignored): ${out:-timeout}"
}

# node_cleanup NAME STATE -> the node must be dead (or about to be): kill leftovers, remove cgroups,
# Node object and the state dir.
node_cleanup() {
  local name=$1 state=$2 gone
  node_kill_all "$state"
  node_rm_cgroups "$state"
  if net_enabled "$state"; then lock; net_cleanup "$state" "$name"; unlock; fi
  node_delete_k8s "$name"
  node_delete_token "$state"
  # Rename the state dir out of the way first (atomic, our teardown claim STATE/down inside), then delete
  # it: a plain `rm -rf` removes the claim early, and a reaper would then see a half-deleted node with
  # neither guardian nor claim and "reap" it again (writing into it: rm: Directory not empty).
  # Names starting with "." are never nodes; `reap` removes .gone.* dirs an interrupted cleanup left.
  gone=$NODES_DIR/.gone.$name.$BASHPID
  if mv -T "$state" "$gone" 2>/dev/null; then rm -rf "$gone"; else rm -rf "$state"; fi
}
