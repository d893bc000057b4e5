# shellcheck shell=bash
# deps.sh -- installs what building and testing vks needs on a Debian machine (sourced by
# tests/run and k3s/demo). Only missing packages are installed; Rust, Go and kubectl are expected.

vks_install_deps() {
  local pkgs=() p
  # package:command pairs; the command tells whether the package is there.
  for p in curl:curl openssl:openssl gcc:gcc dbus:dbus-daemon systemd:systemctl util-linux:setpriv \
           dpkg-dev:dpkg-deb iproute2:ip procps:ps lintian:lintian; do
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
  # cargo-deb builds the Debian package (Cargo.toml [package.metadata.deb]).
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "deps: installing cargo-deb (cargo install --locked)" >&2
    cargo install --locked cargo-deb >&2 || { echo "deps: cannot install cargo-deb" >&2; return 1; }
  fi
  vks_zg2_deb >/dev/null
}

# vks_zg2_deb -- prints the path of a cached policyrcd-script-zg2 .deb (a dependency of the vks
# package), downloading it once with apt-get download: test nodes install it from there instead of
# fetching it from the mirror on every boot.
vks_zg2_deb() {
  local cache=${XDG_CACHE_HOME:-$HOME/.cache}/vks/debs f
  f=$(ls "$cache"/policyrcd-script-zg2_*.deb 2>/dev/null | tail -n 1) || true
  if [ -z "$f" ]; then
    mkdir -p "$cache"
    (cd "$cache" && { apt-get download policyrcd-script-zg2 >&2 ||
      { apt-get update -q >&2 && apt-get download policyrcd-script-zg2 >&2; }; }) ||
      { echo "deps: cannot download policyrcd-script-zg2" >&2; return 1; }
    f=$(ls "$cache"/policyrcd-script-zg2_*.deb | tail -n 1)
  fi
  echo "$f"
}
