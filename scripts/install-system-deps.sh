#!/bin/sh
# Idempotent: installs the OS packages the wrenn-agent capsule runtime needs.
#   debootstrap  - builds the `minimal` template rootfs (Debian bookworm)
#   iptables     - NAT (MASQUERADE) for capsule outbound traffic
# apt-get update runs only when a package is missing.
set -eu
PKGS="debootstrap iptables"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
