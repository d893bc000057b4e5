# shellcheck shell=bash
# node-net.sh -- the opt-in network-namespace mode of test nodes (VKS_NODE_NETNS=1), sourced by
# node-lib.sh. Such a node lives in its own network namespace with a non-loopback address (so that
# its pods' IPs are valid in EndpointSlices, which refuse loopback addresses):
#
#   hub netns "vks-hub": bridge br0 10.77.0.1/24 (no route anywhere else)
#     └ veth vh<K> ── eth0 10.77.0.K/24 in the node's netns "vks-<name>" (lo up, no default route)
#
# Nothing is created in the machine's root network namespace: the veth pair is made inside the hub
# (`ip -n vks-hub link add ... peer ... netns vks-<name>`). The node reaches the control plane as a
# loopback node does, at https://127.0.0.1:6443 (API server) and :9345 (supervisor): inside its
# netns a socat listens on 127.0.0.1:<port> and forwards each connection through a unix socket in
# the node's state dir to a socat in the root netns, which connects to 127.0.0.1:<port> there. Such
# a node joins through the supervisor with a k3s token, so the API server reaches its kubelet
# through the agent tunnel, never by dialing 10.77.0.K (an address the root netns has no route for:
# traffic would leave the machine, testbed.md pitfall 18). Test clients talk to the node's address
# only from the hub or the node (`ip netns exec vks-hub ...`).
#
# Lifetime: the netns are named (/run/netns) and survive the node's reboots; the forwarders are
# children of the node's guardian (PR_SET_PDEATHSIG) and die with it; node_cleanup deletes the
# node's netns, and the hub with the last netns node.

NET_HUB=vks-hub
NET_PREFIX=10.77.0
NET_MARK=$VKS_TEST_ROOT/nodes/.netns-dir-created   # /run/netns did not exist before the first hub

net_ns() { echo "vks-$1"; }            # the named netns of node NAME
net_enabled() { [ -f "$1/netns" ]; }  # STATE -> is it a netns node?

# net_alloc_ip -> a free 10.77.0.K (K = 2..254), under the lock
net_alloc_ip() {
  local used k ip
  used=" $(cat "$NODES_DIR"/*/ip 2>/dev/null | tr '\n' ' ') "
  for ((k = 2; k <= 254; k++)); do
    ip=$NET_PREFIX.$k
    [[ $used == *" $ip "* ]] || { echo "$ip"; return 0; }
  done
  return 1
}

# net_hub_up -> the hub netns and its bridge (idempotent; under the lock)
net_hub_up() {
  if [ -e "/run/netns/$NET_HUB" ] && ip -n "$NET_HUB" link show br0 >/dev/null 2>&1; then return 0; fi
  [ -d /run/netns ] || touch "$NET_MARK"
  [ -e "/run/netns/$NET_HUB" ] || ip netns add "$NET_HUB" || return 1
  ip -n "$NET_HUB" link set lo up &&
    { ip -n "$NET_HUB" link show br0 >/dev/null 2>&1 || ip -n "$NET_HUB" link add br0 type bridge; } &&
    ip -n "$NET_HUB" addr replace "$NET_PREFIX.1/24" dev br0 &&
    ip -n "$NET_HUB" link set br0 up
}

# net_node_up NAME IP -> the node's netns, wired to the hub (under the lock)
net_node_up() {
  local name=$1 ip=$2 ns k
  ns=$(net_ns "$name") k=${ip##*.}
  net_hub_up || return 1
  [ -e "/run/netns/$ns" ] && ip netns del "$ns"
  ip netns add "$ns" || return 1
  ip -n "$NET_HUB" link del "vh$k" 2>/dev/null || true
  ip -n "$NET_HUB" link add "vh$k" type veth peer name eth0 netns "$ns" &&
    ip -n "$NET_HUB" link set "vh$k" master br0 up &&
    ip -n "$ns" link set lo up &&
    ip -n "$ns" addr add "$ip/24" dev eth0 &&
    ip -n "$ns" link set eth0 up
}

# net_forwarders STATE NAME -> start the socat pairs for 6443 and 9345 (called by the guardian; they
# die with it). Records "PID STARTTIME" of each in STATE/net/.
net_forwarders() {
  local state=$1 name=$2 ns p port
  ns=$(net_ns "$name")
  mkdir -p "$state/net"
  for p in api:6443 sup:9345; do
    port=${p#*:} p=${p%%:*}
    rm -f "$state/net/$p.sock"
    setpriv --pdeathsig KILL socat "UNIX-LISTEN:$state/net/$p.sock,fork,mode=600" "TCP:127.0.0.1:$port" \
      </dev/null >>"$state/net/socat.log" 2>&1 &
    rec_pid $! "$state/net/$p-root"
    setpriv --pdeathsig KILL nsenter --net="/run/netns/$ns" \
      socat "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr,fork" "UNIX-CONNECT:$state/net/$p.sock" \
      </dev/null >>"$state/net/socat.log" 2>&1 &
    rec_pid $! "$state/net/$p-node"
  done
}

# net_cleanup STATE NAME -> stop the forwarders, delete the node's netns (its veth goes with it), and
# the hub when no netns node is left (under the lock)
net_cleanup() {
  local state=$1 name=$2 ns f pid d others=0
  ns=$(net_ns "$name")
  for f in "$state"/net/*-root "$state"/net/*-node; do
    alive_rec "$f" && { read -r pid _ <"$f"; kill -9 "$pid" 2>/dev/null || true; }
  done
  [ -e "/run/netns/$ns" ] && { ip netns del "$ns" 2>/dev/null || nlog "$name: could not delete netns $ns"; }
  for d in "$NODES_DIR"/*/; do
    [ "${d%/}" != "$state" ] && [ -f "${d}netns" ] && others=1
  done
  [ "$others" = 0 ] && net_hub_down
  return 0
}

# net_hub_down -> delete the hub, and /run/netns if it was created for it
net_hub_down() {
  [ -e "/run/netns/$NET_HUB" ] && ip netns del "$NET_HUB" 2>/dev/null
  if [ -f "$NET_MARK" ] && [ -d /run/netns ] && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
    umount /run/netns 2>/dev/null || true
    rmdir /run/netns 2>/dev/null && rm -f "$NET_MARK"
  fi
  return 0
}

# net_reap -> delete node netns whose node state is gone, and an unused hub (under the lock)
net_reap() {
  local f name
  for f in /run/netns/vks-*; do
    [ -e "$f" ] || continue
    name=${f##*/vks-}
    [ "$name" = hub ] && continue
    [ -d "$NODES_DIR/$name" ] || ip netns del "vks-$name" 2>/dev/null || true
  done
  ls "$NODES_DIR"/*/netns >/dev/null 2>&1 || net_hub_down
}

# net_wait_tunnel NAME DEADLINE(SECONDS) -> wait until the supervisor logged the node's tunnel session
net_wait_tunnel() {
  local log=$VKS_TEST_ROOT/cluster/logs/supervisor.log
  until grep -q "Tunnel session opened by node $1 " "$log" 2>/dev/null; do
    [ $SECONDS -lt "$2" ] || return 1
    sleep 0.2
  done
}
