# shellcheck shell=bash
# deps.sh -- installs what building and testing vks needs on a Debian machine (sourced by
# tests/run and k3s/demo). Only missing packages are installed; Rust, Go and kubectl are expected.

vks_install_deps() {
  local pkgs=() p
  # package:command pairs; the command tells whether the package is there.
  for p in curl:curl openssl:openssl gcc:gcc dbus:dbus-daemon systemd:systemctl util-linux:setpriv \
           dpkg-dev:dpkg-deb iproute2:ip procps:ps socat:socat gnupg:gpg python3:python3 lintian:lintian shellcheck:shellcheck; do
    command -v "${p#*:}" >/dev/null 2>&1 || pkgs+=("${p%%:*}")
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    echo "deps: installing ${pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2 ||
      { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}" >&2; }
  fi
  vks_cached_deb policyrcd-script-zg2 >/dev/null || return 1
  local t
  for t in cargo go kubectl; do
    command -v "$t" >/dev/null || { echo "deps: $t is required but not installed" >&2; return 1; }
  done
  # cargo-deb builds the Debian package (Cargo.toml [package.metadata.deb]); cargo-deny checks
  # licenses, duplicates and sources (deny.toml).
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "deps: installing cargo-deb (cargo install --locked)" >&2
    cargo install --locked cargo-deb >&2 || { echo "deps: cannot install cargo-deb" >&2; return 1; }
  fi
  if ! cargo deny --version >/dev/null 2>&1; then
    echo "deps: installing cargo-deny (cargo install --locked)" >&2
    cargo install --locked cargo-deny >&2 || { echo "deps: cannot install cargo-deny" >&2; return 1; }
  fi
}

# vks_cached_deb PACKAGE -> path of PACKAGE's .deb (Debian's candidate), downloaded once into
# ${XDG_CACHE_HOME:-~/.cache}/vks/debs (test nodes install it from there, e.g. the policy-rc.d
# that vks depends on).
vks_cached_deb() {
  local dir=${XDG_CACHE_HOME:-$HOME/.cache}/vks/debs f
  mkdir -p "$dir"
  (
    flock 9
    f=$(find "$dir" -maxdepth 1 -name "${1}_*.deb" -print -quit)
    if [ -z "$f" ]; then
      cd "$dir" || exit 1
      apt-get download -q "$1" >&2 2>/dev/null || { apt-get update -q >&2 && apt-get download -q "$1" >&2; } ||
        { echo "deps: cannot download $1" >&2; exit 1; }
      f=$(find "$dir" -maxdepth 1 -name "${1}_*.deb" -print -quit)
    fi
    echo "$f"
  ) 9>"$dir/.lock"
}
