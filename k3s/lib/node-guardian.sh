#!/bin/bash
# node-guardian.sh NAME -- the small process that owns one node (started setsid'd by `k3s/node up`).
#
#   guardian (this, in the caller's cgroups)
#     ├─ setpriv --pdeathsig KILL [nsenter --net=/run/netns/vks-NAME] unshare --pid --fork
#     │     --kill-child=SIGKILL --mount --uts --ipc --cgroup
#     │    └─ node-boot.sh -> systemd (PID 1 of the node)
#     └─ netns nodes only: the socat forwarders of node-net.sh (pdeathsig: they die with the guardian)
#
# * unshare dies with the guardian (PR_SET_PDEATHSIG=SIGKILL); the node's PID 1 dies with unshare
#   (--kill-child) and the kernel then kills the whole pid namespace.
# * reboot: when the node's systemd reboots (systemctl reboot inside, or `k3s/node reboot`), reboot(2)
#   in the pid ns ends its PID 1 with SIGHUP, unshare re-raises it (exit 129): boot again on the same
#   state. A poweroff from inside (SIGINT, 130) or a crash leaves the node "off" until `down`.
# * SIGTERM (sent by `k3s/node down`): graceful poweroff, then exit (down cleans up).
# * owner (STATE/owner, from VKS_NODE_OWNER) gone: graceful poweroff + full cleanup (like down), unless
#   another process (down, a reaper) has already claimed the teardown.
# * stdout/stderr = STATE/guardian.log: every exit of the guardian is logged there with its reason.
set -u
stop=0
trap 'stop=1' TERM INT HUP      # first thing: `down` may signal us as soon as our record exists
NAME=$1
glog() { echo "$(date '+%F %T.%3N') guardian[$NAME]: $*"; }
trap 'glog "exit $? (pid $$)"' EXIT
# shellcheck source=node-lib.sh
. "$(dirname "$(readlink -f "$0")")/node-lib.sh"
STATE=$NODES_DIR/$NAME
cd "$STATE" || { glog "no state dir $STATE"; exit 1; }
# close every fd inherited from the caller (a pipe held open here would hang `$(k3s/node up ..)`)
for f in /proc/$$/fd/*; do
  fd=${f##*/}; [ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-"
done 2>/dev/null
rec_pid $$ "$STATE/guardian" || { glog "cannot write $STATE/guardian"; exit 1; }
glog "started (pid $$, owner: $(cat "$STATE/owner" 2>/dev/null || echo none))"

exec {SLEEPFD}<> <(:)           # sleep without forking: read -t on a pipe nobody writes to
nap() { read -r -t "$1" -u "$SLEEPFD" _ 2>/dev/null; return 0; }

owner_ok() { [ ! -f "$STATE/owner" ] || alive_rec "$STATE/owner"; }

UPID=
boot() {
  local n c
  n=$(($(cat "$STATE/boot" 2>/dev/null || echo 0) + 1))
  rm -f "$STATE/pid" "$STATE/pidns" "$STATE/off"
  # the cgroup namespace's root is the cgroup of the process calling unshare: move it there first
  (
    while read -r cg; do echo "$BASHPID" >"$cg/cgroup.procs"; done <"$STATE/cgdirs"
    # a netns node boots inside its named network namespace (kept across reboots)
    netns=()
    net_enabled "$STATE" && netns=(nsenter --net="/run/netns/$(net_ns "$NAME")")
    exec setpriv --pdeathsig KILL "${netns[@]}" unshare --pid --fork --kill-child=SIGKILL --mount --uts --ipc --cgroup \
      "$NODE_LIB/node-boot.sh" "$NAME" "$STATE"
  ) >>"$STATE/console.log" 2>&1 </dev/null &
  UPID=$!
  echo "$UPID" >"$STATE/unshare.pid"
  # the node's PID 1 = unshare's child in a different pid namespace
  for ((i = 0; i < 1000; i++)); do
    for c in $(cat "/proc/$UPID/task/$UPID/children" 2>/dev/null); do
      if [ "$(readlink "/proc/$c/ns/pid")" != "$(readlink "/proc/$UPID/ns/pid")" ]; then
        readlink "/proc/$c/ns/pid" >"$STATE/pidns"
        echo "$c" >"$STATE/pid"
        echo "$n" >"$STATE/boot.tmp" && mv -f "$STATE/boot.tmp" "$STATE/boot"
        glog "boot $n: unshare $UPID, node PID 1 = $c"
        return 0
      fi
    done
    proc_start "$UPID" >/dev/null || break
    nap 0.01
  done
  glog "boot $n: no node PID 1 found (unshare $UPID)"
  echo "$n" >"$STATE/boot"
  return 1
}

if net_enabled "$STATE"; then
  net_forwarders "$STATE" "$NAME"
  glog "forwarders to 127.0.0.1:6443 and :9345 started in netns $(net_ns "$NAME")"
fi
boot
owner_gone=0
while :; do
  [ "$stop" = 1 ] && { glog "SIGTERM: stopping the node"; break; }
  owner_ok || { owner_gone=1; glog "owner $(cat "$STATE/owner" 2>/dev/null) gone: tearing the node down"; break; }
  if [ -n "$UPID" ] && ! proc_start "$UPID" >/dev/null; then
    wait "$UPID"; rc=$?; UPID=
    if [ "$stop" = 1 ]; then continue; fi
    if [ "$rc" -eq 129 ] || [ -e "$STATE/reboot-requested" ]; then
      glog "node rebooting (unshare exit $rc)"
      rm -f "$STATE/reboot-requested"
      node_kill_all "$STATE"
      node_rm_cgroups "$STATE" keep-top
      boot
    else
      glog "node is off (unshare exit $rc); waiting for down${VKS_NODE_OWNER:+ or the owner to exit}"
      echo off >"$STATE/off"
      node_kill_all "$STATE"
    fi
    continue
  fi
  nap 0.2
done

mine=0
if [ "$owner_gone" = 1 ]; then   # tear down + clean up ourselves, unless a down/reaper already does
  lock; claim_teardown "$STATE" 2>/dev/null && mine=1; unlock
  [ "$mine" = 1 ] || glog "teardown claimed by process $(cut -d' ' -f1 "$STATE/down" 2>/dev/null)"
fi
node_poweroff "$STATE" "$(cat "$STATE/stop-timeout" 2>/dev/null || echo "$NODE_STOP_TIMEOUT")"
[ -n "$UPID" ] && wait "$UPID" 2>/dev/null
if [ "$mine" = 1 ]; then
  node_cleanup "$NAME" "$STATE"
  glog "cleaned up"
fi
exit 0
