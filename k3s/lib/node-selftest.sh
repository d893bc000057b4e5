#!/usr/bin/env bash
# node-selftest.sh -- end-to-end checks of k3s/node without vks (VKS_NODE_NO_VKS=1, no cluster needed).
# Boots real nodes in a separate state root, prints timings, fails on the first broken check, and
# tears everything down. Options (env): SELFTEST_APT=1 also installs/removes `hello` inside a node
# (needs the Debian mirrors), VKS_TEST_ROOT (default /var/tmp/vks-node-selftest).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NODE=$HERE/../node
export VKS_TEST_ROOT=${VKS_TEST_ROOT:-/var/tmp/vks-node-selftest} VKS_NODE_NO_VKS=1
N=$VKS_TEST_ROOT/nodes
A=selftest-a B=selftest-b C=selftest-c D=selftest-d

ok() { echo "ok   $*"; }
fail() { echo "FAIL $*" >&2; exit 1; }
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
pidns_alive() { [ "$(readlink "/proc/$1/ns/pid" 2>/dev/null)" = "$2" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
cleanup() { for n in $A $B $C $D; do "$NODE" down "$n" >/dev/null 2>&1 || true; done; rm -rf "$VKS_TEST_ROOT"; }
trap cleanup EXIT

host_fingerprint() {
  find /etc/systemd -printf '%p %l %s %T@\n' 2>/dev/null | sort | md5sum
  md5sum /var/lib/dpkg/status /etc/machine-id /etc/hostname /etc/hosts
  find /var/log/journal /run/log 2>/dev/null | sort | md5sum
  ls -A /run /dev | md5sum
  awk '{print $5, $9}' /proc/self/mountinfo | sort | md5sum
}
before=$(host_fingerprint)
own_cg=$(sed -n 's/^0:://p' /proc/self/cgroup)

# 1. boot
t=$(date +%s%N); "$NODE" up $A; echo "     $A up in $(ms "$t") ms"
st=$("$NODE" exec $A systemctl is-system-running) || true
[ "$st" = running ] || fail "$A: is-system-running=$st"; ok "$A: is-system-running=running"
bad=$("$NODE" exec $A systemctl list-units --state=active --no-legend --plain --no-pager | awk '{print $1}' |
  grep -vE '^(-\.mount|dev-[a-z]+\.mount|run-.*\.mount|tmp\.mount|var-tmp\.mount|init\.scope|dbus\.(service|socket)|systemd-journald(-dev-log)?\.(service|socket)|systemd-logind\.service|systemd-tmpfiles-setup\.service|.*\.slice|.*\.target)$' || true)
[ -z "$bad" ] || fail "$A: unexpected active units: $bad"; ok "$A: only journald, dbus, logind, tmpfiles-setup, mounts, slices, targets active"
[ "$("$NODE" exec $A hostname)" = $A ] || fail "hostname"; ok "$A: hostname"

# 2. runtime unit in /run/systemd/system starts (no daemon-reload)
P=$("$NODE" pid $A)
printf '[Service]\nExecStart=/bin/sleep infinity\n' >"/proc/$P/root/run/systemd/system/selftest-rt.service"
"$NODE" exec $A systemctl start selftest-rt.service
[ "$("$NODE" exec $A systemctl is-active selftest-rt.service)" = active ] || fail "runtime unit"; ok "$A: unit in /run/systemd/system started"

# 3. enabled unit survives reboot; /run is fresh after it
"$NODE" exec $A sh -c 'printf "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n" >/etc/systemd/system/selftest-en.service && systemctl enable -q selftest-en.service'
[ -e /etc/systemd/system/selftest-en.service ] && fail "unit file leaked to the host"
t=$(date +%s%N); "$NODE" reboot $A; echo "     $A reboot in $(ms "$t") ms"
[ "$("$NODE" exec $A systemctl is-active selftest-en.service)" = active ] || fail "enabled unit not started after reboot"
ok "$A: enabled unit started after reboot"
"$NODE" exec $A test ! -e /run/systemd/system/selftest-rt.service || fail "/run survived reboot"
[ "$("$NODE" exec $A systemctl is-active selftest-rt.service || true)" = inactive ] || fail "runtime unit after reboot"
ok "$A: /run/systemd/system empty after reboot"
[ "$("$NODE" exec $A systemctl is-system-running)" = running ] || fail "state after reboot"

# 4. a second node at the same time
t=$(date +%s%N); "$NODE" up $B; echo "     $B up in $(ms "$t") ms"
ipa=$("$NODE" ip $A) ipb=$("$NODE" ip $B)
[ "$ipa" != "$ipb" ] || fail "same ip"; ok "two nodes running: $A=$ipa $B=$ipb"
"$NODE" exec $B systemd-run -q --unit=selftest-http python3 -m http.server --bind "$ipb" 10250
for _ in $(seq 50); do "$NODE" exec $A python3 -c "import urllib.request as u; u.urlopen('http://$ipb:10250/', timeout=1)" 2>/dev/null && break; sleep 0.1; done
"$NODE" exec $A python3 -c "import urllib.request as u; u.urlopen('http://$ipb:10250/', timeout=1)" || fail "node->node"
ok "$A reaches a server on $ipb:10250 in $B"

# 5. apt inside a node changes only that node
if [ "${SELFTEST_APT:-0}" = 1 ]; then
  "$NODE" exec $B env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends hello >/dev/null
  [ "$("$NODE" exec $B hello)" = "Hello, world!" ] || fail "hello in node"
  dpkg -s hello >/dev/null 2>&1 && fail "hello installed on the host"
  "$NODE" exec $A sh -c '! dpkg -s hello >/dev/null 2>&1' || fail "hello visible in the other node"
  "$NODE" exec $B env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q hello >/dev/null
  ok "apt-get install/purge hello in $B: host and $A unchanged"
fi

# 6. down leaves nothing
PB=$("$NODE" pid $B) NSB=$(cat "$N/$B/pidns")
t=$(date +%s%N); "$NODE" down $B; echo "     $B down in $(ms "$t") ms"
for p in /proc/[0-9]*; do [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$NSB" ] && fail "process ${p#/proc/} left in $B's pid ns"; done
left=$(find /sys/fs/cgroup/*/"${own_cg#/}" -maxdepth 3 -name "vks-node-$B" 2>/dev/null; find /sys/fs/cgroup -name "vks-node-$B" 2>/dev/null)
[ -z "$left" ] || fail "cgroups left: $left"
[ ! -e "$N/$B" ] || fail "state left"
pidns_alive "$PB" "$NSB" && fail "node PID 1 alive"
ok "$B down: no process in its pid ns, no cgroup dir, no state"

# 7. owner killed -> node torn down
sleep 600 & OWNER=$!
VKS_NODE_OWNER=$OWNER "$NODE" up $C
PC=$("$NODE" pid $C) NSC=$(cat "$N/$C/pidns")
t=$(date +%s%N); kill -9 $OWNER; wait $OWNER 2>/dev/null || true
while pidns_alive "$PC" "$NSC"; do [ "$(ms "$t")" -lt 10000 ] || fail "owner kill: node alive"; sleep 0.01; done; t1=$(ms "$t")
while [ -e "$N/$C" ]; do [ "$(ms "$t")" -lt 20000 ] || fail "owner kill: state left"; sleep 0.01; done
[ -z "$(find /sys/fs/cgroup -name "vks-node-$C")" ] || fail "owner kill: cgroups left"
ok "owner killed: node PID 1 gone after ${t1} ms, cgroups + state removed after $(ms "$t") ms"

# 8. guardian killed -> node dies (pdeathsig), reap cleans
"$NODE" up $D
PD=$("$NODE" pid $D) NSD=$(cat "$N/$D/pidns"); read -r G _ <"$N/$D/guardian"
t=$(date +%s%N); kill -9 "$G"
while pidns_alive "$PD" "$NSD"; do [ "$(ms "$t")" -lt 5000 ] || fail "guardian kill: node alive"; sleep 0.01; done
ok "guardian killed: node PID 1 gone after $(ms "$t") ms"
[ -e "$N/$D" ] || fail "no leftovers to reap?"
"$NODE" reap
[ ! -e "$N/$D" ] && [ -z "$(find /sys/fs/cgroup -name "vks-node-$D")" ] || fail "reap"
ok "reap removed $D's cgroups and state"

"$NODE" down $A
[ -z "$(find /sys/fs/cgroup -name 'vks-node-selftest-*')" ] || fail "cgroups left"
after=$(host_fingerprint)
[ "$before" = "$after" ] || { diff <(echo "$before") <(echo "$after") >&2; fail "host changed"; }
ok "host: /etc/systemd, dpkg status, machine-id, hostname, hosts, journal dirs, /run, /dev, mounts unchanged"
echo "all node self-tests passed"
