# shellcheck shell=bash
# deps.sh -- installs what building and testing vks needs on a Debian machine (sourced by
# tests/run and k3s/demo). Only missing packages are installed; Rust, Go and kubectl are expected.

vks_install_deps() {
  local pkgs=() p
  # package:command pairs; the command tells whether the package is there.
  for p in curl:curl openssl:openssl gcc:gcc dbus:dbus-daemon systemd:systemctl util-linux:setpriv \
           dpkg-dev:dpkg-deb iproute2:ip procps:ps; do
    command -v "${p#*:}" >/dev/null 2>&1 || pkgs+=("${p%%:*}")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "deps: installing ${pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2; }
  fi
  local t
  for t in cargo go kubectl; do
    command -v "$t" >/dev/null || { echo "deps: $t is required but not installed" >&2; return 1; }
  done
}
