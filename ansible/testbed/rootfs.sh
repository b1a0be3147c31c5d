#!/bin/sh
# Build (once) the Debian rootfs the playbook test boots with systemd-nspawn, and print its path.
#
# Usage: ansible/testbed/rootfs.sh [CACHE_DIR]     (default ~/.cache/edgecap/nspawn; root only)
#
# The mirror is the one this machine's own apt sources use for its release (apt-get indextargets):
# no registry host is written in the repository. The packages the role installs are included here,
# because the booted system has no network beyond the test's link: the role finds them present.
# A rootfs is named after a hash of the package list, so a change in the list builds a new one.
set -eu
CACHE=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecap/nspawn}
SUITE=$(. /etc/os-release && echo "$VERSION_CODENAME")
PACKAGES=systemd,systemd-sysv,dbus,iproute2,openssh-server,python3,python3-apt,python3-venv,python3-packaging,libportaudio2,libsndfile1,sudo
KEY=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
ROOT="$CACHE/$SUITE-$KEY"
if [ -f "$ROOT/.edgecap-ready" ]; then echo "$ROOT"; exit 0; fi
MIRROR=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null | awk -v s="$SUITE" '$2 == s {print $1; exit}')
[ -n "$MIRROR" ] || { echo "no apt source for $SUITE on this machine" >&2; exit 1; }
mkdir -p "$CACHE"
rm -rf "$ROOT.tmp"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT.tmp" "$MIRROR" >&2
# nothing to start but sshd: quick boots, and no unit that needs hardware or a network
chroot "$ROOT.tmp" systemctl mask systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer fstrim.timer >/dev/null 2>&1 || true
chroot "$ROOT.tmp" apt-get clean
chroot "$ROOT.tmp" ssh-keygen -A >&2   # a test rootfs: every booted copy shares these host keys
echo "edgecap-testbed" > "$ROOT.tmp/etc/hostname"
touch "$ROOT.tmp/.edgecap-ready"
mv "$ROOT.tmp" "$ROOT"
echo "$ROOT"
