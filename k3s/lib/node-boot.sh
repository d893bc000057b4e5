#!/bin/bash
# node-boot.sh NAME STATE -- PID 1 of a node's fresh pid+mount+uts+ipc+cgroup namespaces (started by
# node-guardian.sh through unshare). Builds the node's root file system -- an overlay over the host's
# / with upper/work dirs in STATE -- mounts the API file systems into it, pivots into it and execs
# systemd, which boots default.target (multi-user.target) with everything host-ish masked.
# Every mount uses `mount -n` (never touch the host's /run/mount/utab).
set -euo pipefail
NAME=$1 STATE=$2
M() { mount -n "$@"; }
nullify() { # nullify PATH... -> symlinks to /dev/null (one process for all: forks are slow under load)
  [ $# -gt 0 ] || return 0
  if command -v perl >/dev/null; then
    perl -e 'for (@ARGV) { unlink $_; symlink("/dev/null", $_) or die "symlink $_: $!\n" }' "$@"
  else
    local p; for p; do ln -sfn /dev/null "$p"; done
  fi
}
log() { echo "node-boot[$NAME]: $*" >&2; }
[ $$ -eq 1 ] || { log "must run as PID 1 of a new pid namespace"; exit 1; }
T0=$EPOCHREALTIME
if [ "${VKS_NODE_TRACE:-0}" = 1 ]; then PS4='+ $EPOCHREALTIME '; set -x; fi

M --make-rprivate /     # nothing below propagates back to the host (unshare already did it; be sure)
hostname "$NAME"

# ---- root file system: overlay, lowerdir = host /, upper/work in the state dir ----------------------
R=$STATE/root
mkdir -p "$STATE/upper" "$STATE/work" "$R" "$STATE/journal"
M -t overlay overlay -o "lowerdir=/,upperdir=$STATE/upper,workdir=$STATE/work" "$R"

# ---- identity (written into the overlay: node-local, persistent across reboots) -----------------
echo "$NAME" >"$R/etc/hostname"
cp "$STATE/machine-id" "$R/etc/machine-id"
IP=$(cat "$STATE/ip")
grep -qE "^[^#]*[[:space:]]$NAME([[:space:]]|\$)" "$R/etc/hosts" 2>/dev/null || printf '%s\t%s\n' "$IP" "$NAME" >>"$R/etc/hosts"

# ---- unit configuration: a clean /etc/systemd/system ----------------------------------------------
# First boot: the host's content (its enabled units: postgresql, timers, gettys, ...) is dropped
# (rm + mkdir on the overlay = opaque dir). Later boots keep what was enabled inside the node.
E=$R/etc/systemd/system
if [ ! -e "$STATE/etc-initialized" ]; then
  rm -rf "$E"
  mkdir -m 755 "$E"
  ln -s /usr/lib/systemd/system/multi-user.target "$E/default.target"
  touch "$STATE/etc-initialized"
fi
# Masks for everything host-ish, recomputed at every boot from the node's own (overlay) view of the
# installed units: all *.target.wants of the vendor dir except journald, dbus, logind and
# tmpfiles-setup, plus known host-level services. Masks made by an earlier boot (STATE/masks) that are
# no longer wanted are removed.
# Kept unlike the shared-root recipe: systemd-tmpfiles-setup.service (with the overlay and a private
# /tmp, /var/tmp, /run, and --exclude-prefix=/dev it acts only on the node, as on a real host) and
# systemd-logind.service (node-local /run; without it `systemctl reboot/poweroff` inside the node
# print "Call to Reboot failed" before falling back to systemd).
keep=" systemd-journald.service systemd-journald.socket systemd-journald-dev-log.socket dbus.socket dbus.service
  systemd-tmpfiles-setup.service systemd-logind.service dev-mqueue.mount ${VKS_NODE_KEEP_UNITS:-} "
keep=${keep//$'\n'/ }
declare -A want=()
wants=()
for f in "$R"/usr/lib/systemd/system/*.target.wants/*; do [ -e "$f" ] || [ -L "$f" ] && wants+=("${f##*/}"); done
for u in "${wants[@]}" \
  getty.target console-getty.service getty@.service serial-getty@.service modprobe@.service \
  systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
  systemd-udev-trigger.service systemd-udev-settle.service systemd-tmpfiles-clean.service \
  systemd-tmpfiles-clean.timer systemd-hwdb-update.service ldconfig.service systemd-networkd.service \
  systemd-networkd-wait-online.service systemd-resolved.service systemd-timesyncd.service \
  systemd-journald-audit.socket systemd-remount-fs.service systemd-pstore.service \
  systemd-journal-catalog-update.service systemd-update-done.service e2scrub_reap.service \
  remote-fs.target rescue.service emergency.service; do
  [[ $keep == *" $u "* ]] || want[$u]=1
done
declare -A isnull=()
while read -r u; do isnull[$u]=1; done < <(find "$E" -maxdepth 1 -lname /dev/null -printf '%f\n')
if [ -f "$STATE/masks" ]; then   # masks of an earlier boot that are no longer wanted
  while read -r u; do
    [ -z "${want[$u]:-}" ] && [ -n "${isnull[$u]:-}" ] && rm -f "$E/$u"
  done <"$STATE/masks"
fi
: >"$STATE/masks.new"
new=()
for u in "${!want[@]}"; do
  if [ ! -e "$E/$u" ] && [ ! -L "$E/$u" ]; then new+=("$E/$u"); isnull[$u]=1; fi
  [ -n "${isnull[$u]:-}" ] && echo "$u" >>"$STATE/masks.new"
done
nullify "${new[@]}"
mv "$STATE/masks.new" "$STATE/masks"

# ---- /proc (fresh, for the new pid ns); /proc/sys read-only: no sysctl changes of the shared kernel
M -t proc -o nosuid,nodev,noexec proc "$R/proc"
M --bind "$R/proc/sys" "$R/proc/sys"
M -o remount,bind,ro,nosuid,nodev,noexec "$R/proc/sys"
for f in sysrq-trigger kcore; do
  [ -e "$R/proc/$f" ] || continue
  M --bind "$R/proc/$f" "$R/proc/$f"; M -o remount,bind,ro "$R/proc/$f"
done

# ---- /sys read-only; cgroups: fresh mounts inside the cgroup ns = rooted at the node's own cgroup
M --bind /sys "$R/sys"
M -o remount,bind,ro,nosuid,nodev,noexec "$R/sys"
M -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs "$R/sys/fs/cgroup"
while read -r dir fstype opts; do
  mkdir -p "$R/sys/fs/cgroup/$dir"
  M -t "$fstype" -o "nosuid,nodev,noexec,$opts" cgroup "$R/sys/fs/cgroup/$dir"
done <"$STATE/cgmounts"
while read -r link target; do ln -s "$target" "$R/sys/fs/cgroup/$link"; done <"$STATE/cglinks"
M -o remount,ro,bind,nosuid,nodev,noexec "$R/sys/fs/cgroup"

# ---- private minimal /dev (like systemd-nspawn): no kmsg, no host /dev/log, own pts/shm/mqueue
D=$R/dev
M -t tmpfs -o mode=755,nosuid,size=4m tmpfs "$D"
for n in null zero full random urandom tty; do touch "$D/$n"; M --bind "/dev/$n" "$D/$n"; done
mkdir -p "$D/pts" "$D/shm" "$D/mqueue"
M -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$D/pts"
ln -s pts/ptmx "$D/ptmx"
M -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$D/shm"
M -t mqueue -o nosuid,nodev,noexec mqueue "$D/mqueue"
ln -s /proc/self/fd "$D/fd"; ln -s /proc/self/fd/0 "$D/stdin"
ln -s /proc/self/fd/1 "$D/stdout"; ln -s /proc/self/fd/2 "$D/stderr"

# ---- private /tmp, /var/tmp; /run = tmpfs (systemd needs it: credentials, RuntimeDirectory=)
M -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
M -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/var/tmp"
M -t tmpfs -o mode=755,nosuid,nodev,size=256m tmpfs "$R/run"
mkdir -p "$R/run/log/journal" "$R/run/systemd/system" "$R/run/systemd/system.conf.d" \
  "$R/run/systemd/journald.conf.d" "$R/run/systemd/system-generators" "$R/run/oldroot"
mkdir -m 1777 "$R/run/lock"
# journal: the host-side STATE/journal, so logs survive the node (journalctl -D STATE/journal); not
# unmounted at shutdown (journald writes until the end: "Failed unmounting" otherwise)
M --bind "$STATE/journal" "$R/run/log/journal"
mkdir -p "$R/run/systemd/system/run-log-journal.mount.d"
printf '[Unit]\nDefaultDependencies=no\n' >"$R/run/systemd/system/run-log-journal.mount.d/vks-node.conf"
# a fresh boot id per boot, like a real host (the kernel's is shared with the host and every node;
# journalctl -b and sd_id128_get_boot() need it to change), as systemd-nspawn does
tr -d '\n' </proc/sys/kernel/random/uuid >"$R/run/systemd/boot_id"
echo >>"$R/run/systemd/boot_id"
M --bind "$R/run/systemd/boot_id" "$R/proc/sys/kernel/random/boot_id"
M -o remount,bind,ro "$R/proc/sys/kernel/random/boot_id"
# no generators (fstab, sysv, getty, ... would act on the host's configuration)
gens=()
for g in "$R"/usr/lib/systemd/system-generators/* "$R"/usr/local/lib/systemd/system-generators/* \
  "$R"/etc/systemd/system-generators/*; do
  [ -e "$g" ] && gens+=("$R/run/systemd/system-generators/${g##*/}")
done
nullify "${gens[@]}"
cat >"$R/run/systemd/system.conf.d/vks-node.conf" <<EOC
[Manager]
DefaultCPUAccounting=yes
DefaultMemoryAccounting=yes
DefaultTasksAccounting=yes
DefaultIOAccounting=yes
DefaultTimeoutStopSec=${VKS_NODE_UNIT_STOP_TIMEOUT:-10s}
EOC
cat >"$R/run/systemd/journald.conf.d/vks-node.conf" <<EOC
[Journal]
Storage=volatile
RuntimeMaxUse=64M
ForwardToSyslog=no
ForwardToWall=no
ForwardToConsole=no
EOC

# ---- switch root: pivot into the overlay and detach the host's mount tree
cd "$R"
pivot_root . run/oldroot
cd /
umount -n -l /run/oldroot
rmdir /run/oldroot
# systemd does not make / shared in a container, but LoadCredential=/SetCredential= need mounts made
# in helper namespaces to propagate back (peers only inside this mount namespace).
M --make-rshared /

log "root file system ready in $(( (${EPOCHREALTIME/./} - ${T0/./}) / 1000 )) ms; exec systemd"
exec env -i container=vks PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  /usr/lib/systemd/systemd --system --log-target=journal --log-level="${VKS_NODE_LOG_LEVEL:-info}" \
  --show-status=no
