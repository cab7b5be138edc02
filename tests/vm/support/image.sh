#!/usr/bin/env bash
# VM test support, image recipe: a Debian guest with systemd, sshd and cloud-init, built offline
# from Debian packages (mmdebstrap; no cloud image download) into OUT/{base.qcow2,vmlinuz,initrd.img}.
# The guest's only apt source is a local flat repository /srv/ov-repo holding the packages the
# test layers install (downloaded here, not installed), so apt and dpkg run for real and offline.
# Invariant: OUT appears complete or not at all (built in OUT.part, then renamed); the caller
# holds a lock and hashes this file into OUT's name, so a changed recipe builds a new image.
#
# usage: image.sh OUT SUITE MIRROR DEBCACHE REPO_PACKAGES...
set -euo pipefail
out=$1 suite=$2 mirror=$3 debs=$4
shift 4
repo_pkgs=("$@")
[ -f "$out/base.qcow2" ] && exit 0

include=linux-image-cloud-amd64,systemd-sysv,udev,dbus,openssh-server,sudo,cloud-init,iproute2,netbase,ca-certificates,e2fsprogs
# The network: Debian 12 the classic way (cloud-init writes an ifupdown config, isc-dhcp-client
# asks QEMU's DHCP). A Debian 13 guest built that way sat in networking.service for minutes (cause
# not pursued), so there systemd-networkd (part of the systemd package) gets a fixed DHCP config
# and cloud-init leaves networking alone.
case $suite in
bookworm) include=$include,ifupdown,isc-dhcp-client networkd=no ;;
*) networkd=yes ;;
esac

part=$out.part
rm -rf --one-file-system "$part"
mkdir -p "$part" "$debs"
root=$part/rootfs
trap 'rm -rf --one-file-system "$root" "$part/disk.raw"' EXIT

# Docs, man pages and locales out (smaller image); the .debs are kept in DEBCACHE so a rebuild
# downloads nothing it already has. The customize hook fetches the repository packages while
# the build still has the network, and keeps them out of apt's cache. The hooks are shell code
# run by mmdebstrap with the root as $1: single quotes on purpose, our values go in %q-quoted.
printf -v qdebs %q "$debs"
printf -v qpkgs ' %q' "${repo_pkgs[@]}"
# shellcheck disable=SC2016
mmdebstrap --variant=apt --include="$include" \
	--aptopt='Acquire::Languages "none"' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--setup-hook='mkdir -p "$1/var/cache/apt/archives"; cp -a '"$qdebs"'/. "$1/var/cache/apt/archives/" 2>/dev/null || true' \
	--skip=download/empty \
	--customize-hook='cp -a "$1"/var/cache/apt/archives/*.deb '"$qdebs"'/ 2>/dev/null || true' \
	--customize-hook='mkdir -p "$1/srv/ov-repo" && chroot "$1" sh -c "cd /srv/ov-repo && apt-get download -q'"$qpkgs"'"' \
	"$suite" "$root" "$mirror" >"$part/build.log" 2>&1 || {
	tail -n 30 "$part/build.log" >&2
	exit 1
}

# The local repository: a flat Packages index and a Release file (apt needs one; [trusted=yes]
# stands in for a signature). The guest can reach no network, so this is its only source.
(
	cd "$root/srv/ov-repo"
	for deb in *.deb; do
		dpkg-deb -f "$deb"
		printf 'Filename: ./%s\nSize: %s\nSHA256: %s\n\n' "$deb" "$(stat -c %s "$deb")" "$(sha256sum "$deb" | cut -d' ' -f1)"
	done >Packages
	{
		printf 'Origin: ov-tests\nLabel: ov-tests\nSuite: ov\nCodename: ov\nDate: %s\nSHA256:\n' "$(LC_ALL=C date -u -R)"
		printf ' %s %s Packages\n' "$(sha256sum Packages | cut -d' ' -f1)" "$(stat -c %s Packages)"
	} >Release
)
rm -f "$root/etc/apt/sources.list" "$root"/etc/apt/sources.list.d/*
echo 'deb [trusted=yes] file:/srv/ov-repo ./' >"$root/etc/apt/sources.list.d/ov-repo.list"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
mkdir -p "$root/var/lib/apt/lists/partial"

echo ovguest >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tovguest\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
: >"$root/etc/resolv.conf"
: >"$root/etc/machine-id"
printf '/dev/vda\t/\text4\tdefaults,errors=remount-ro\t0\t1\n' >"$root/etc/fstab"
# cloud-init writes the host key the seed pins; sshd must not have another one.
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/cloud/cloud.cfg.d/90-ov-tests.cfg" <<'CFG'
# Only the NoCloud seed; never probe network metadata services.
datasource_list: [ NoCloud, None ]
# No locales package: C.UTF-8 is built into glibc (otherwise cloud-init reports an error).
locale: C.UTF-8
CFG
if [ "$networkd" = yes ]; then
	printf '[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n' >"$root/etc/systemd/network/20-ov-tests.network"
	printf 'network: {config: disabled}\n' >"$root/etc/cloud/cloud.cfg.d/91-ov-tests-network.cfg"
	chroot "$root" systemctl enable systemd-networkd.service systemd-networkd.socket >/dev/null 2>&1 ||
		chroot "$root" systemctl enable systemd-networkd.service
fi
# Nothing in the background competing with the tests on slow emulated CPUs.
for u in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer e2scrub_all.timer man-db.timer; do
	rm -f "$root/etc/systemd/system/timers.target.wants/$u"
done
ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"

cp "$root"/boot/vmlinuz-* "$part/vmlinuz"
cp "$root"/boot/initrd.img-* "$part/initrd.img"
truncate -s 3G "$part/disk.raw"
mkfs.ext4 -q -F -L ovroot -d "$root" "$part/disk.raw"
qemu-img convert -O qcow2 "$part/disk.raw" "$part/base.qcow2"
rm -rf --one-file-system "$root" "$part/disk.raw"
rm -rf --one-file-system "$out"
mv "$part" "$out"
