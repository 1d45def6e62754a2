#!/bin/bash
# `make deb`: dist/cni-calico_<version>_<arch>.deb from the onedir bundle of `make build`, offline (dpkg-deb).
#
# Layout (as `make install`'s, so a packaged node and a `make install`ed one look alike, but /usr/bin and
# /lib/systemd/system, a distribution package's places, instead of /usr/local/bin and /etc/systemd/system):
#   /opt/cni/bin/cni-calico/                 the PyInstaller onedir bundle (calico + _internal/), whole
#   /opt/cni/bin/calico, calico-ipam         -> cni-calico/calico (relative: the runtime's CNI plugins)
#   /usr/bin/calicoctl, /usr/bin/calico-node -> /opt/cni/bin/cni-calico/calico
#   /lib/systemd/system/calico-node.service  examples/calico-node.service, ExecStart=/usr/bin/calico-node
#   /etc/cni/net.d/10-calico.conf            examples/10-calico.conf, a conffile (dpkg keeps the admin's edits)
#   /usr/share/doc/cni-calico/examples/      10-calico.conf, 10-calico.conflist, ippool.yaml
#   /usr/share/doc/cni-calico/copyright, changelog.gz (build/deb/changelog: its top version must be VERSION)
#   /usr/share/man/man1/calicoctl.1.gz, man8/calico-node.8.gz, man8/calico.8.gz  from their --help texts
#                                            (build/make_man.py, dated by the changelog's top entry)
#   /usr/share/lintian/overrides/cni-calico  what lintian flags that a PyInstaller bundle cannot avoid, and why
# Every name is a symlink to the one executable: a onedir executable finds its _internal/ through symlinks
# (not through copies or hard links) and dispatches on the name it was called by.
# Maintainer scripts (build/deb/postinst, prerm, postrm): postinst enables calico-node.service with
# deb-systemd-helper and does not start it (it needs the site's settings first); prerm stops it on remove;
# postrm's purge forgets the enablement. They work in a chroot and under `dpkg --root` (DPKG_ROOT), and call
# systemctl only on a live systemd. `dpkg -P` leaves nothing behind.
#
# Environment: VERSION (default: cni_calico.__version__), DEB_OUT_DIR (default: dist),
# DEB_STAGE (default: build/work/deb/cni-calico), DEB_COMPRESS (default: gzip; also xz, zstd, none),
# DEB_COMPRESS_LEVEL (default: 6).
set -euo pipefail
cd "$(dirname "$0")/../.."

BUNDLE=dist/cni-calico
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' cni_calico/__init__.py)}
ARCH=$(dpkg --print-architecture)
OUT_DIR=${DEB_OUT_DIR:-dist}
STAGE=${DEB_STAGE:-build/work/deb/cni-calico}
OUT=$OUT_DIR/cni-calico_${VERSION}_${ARCH}.deb

[ -n "$VERSION" ] || { echo "build-deb: no version (cni_calico/__init__.py __version__)" >&2; exit 1; }
CHANGELOG=build/deb/changelog
[ "$(dpkg-parsechangelog -l "$CHANGELOG" -S Version)" = "$VERSION" ] || {
	echo "build-deb: $CHANGELOG's top entry is not version $VERSION: add one" >&2; exit 1; }
DATE=$(date -u -d "$(dpkg-parsechangelog -l "$CHANGELOG" -S Date)" +%Y-%m-%d)
PY=${PYTHON:-.venv/bin/python}
[ -x "$BUNDLE/calico" ] && [ -d "$BUNDLE/_internal" ] || {
	echo "build-deb: no bundle at $BUNDLE: run make build" >&2; exit 1; }

rm -rf "$STAGE"
install -d "$STAGE/DEBIAN" "$STAGE/opt/cni/bin" "$STAGE/usr/bin" "$STAGE/lib/systemd/system" \
	"$STAGE/usr/share/doc/cni-calico/examples" "$STAGE/etc/cni/net.d" "$STAGE/usr/share/man/man1" \
	"$STAGE/usr/share/man/man8" "$STAGE/usr/share/lintian/overrides"
cp -a "$BUNDLE" "$STAGE/opt/cni/bin/cni-calico"
for name in calico calico-ipam; do ln -s cni-calico/calico "$STAGE/opt/cni/bin/$name"; done
for name in calicoctl calico-node; do ln -s /opt/cni/bin/cni-calico/calico "$STAGE/usr/bin/$name"; done
sed 's|^ExecStart=.*|ExecStart=/usr/bin/calico-node|' examples/calico-node.service \
	> "$STAGE/lib/systemd/system/calico-node.service"
chmod 0644 "$STAGE/lib/systemd/system/calico-node.service"
install -m 0644 examples/10-calico.conf examples/10-calico.conflist examples/ippool.yaml \
	"$STAGE/usr/share/doc/cni-calico/examples/"
install -m 0644 build/deb/copyright "$STAGE/usr/share/doc/cni-calico/copyright"
install -m 0644 examples/10-calico.conf "$STAGE/etc/cni/net.d/10-calico.conf"
gzip -9n < "$CHANGELOG" > "$STAGE/usr/share/doc/cni-calico/changelog.gz"
install -m 0644 build/deb/lintian-overrides "$STAGE/usr/share/lintian/overrides/cni-calico"
for page in calicoctl:1 calico-node:8 calico:8; do
	name=${page%%:*} section=${page##*:}
	"$PY" build/make_man.py "$BUNDLE/calico" "$name" "$section" "$VERSION" "$DATE" \
		"$STAGE/usr/share/man/man$section/$name.$section.gz"
done
chmod -R u+rwX,go+rX,go-w "$STAGE"

# The bundle carries every shared library but the C library's (PyInstaller leaves those to the system):
# depend on the newest glibc symbol version any of its ELF files needs.
depends=libc6
if command -v objdump >/dev/null; then
	glibc=$(find "$STAGE/opt/cni/bin/cni-calico" -type f \( -name calico -o -name '*.so*' \) \
		-exec objdump -T {} + 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
	[ -z "$glibc" ] || depends="libc6 (>= $glibc)"
fi
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
	-e "s/@DEPENDS@/$depends/" build/deb/control.in > "$STAGE/DEBIAN/control"
# md5sums leaves out the conffiles under etc/ (dpkg keeps their sums itself), as dh_md5sums does.
(cd "$STAGE" && find . \( -path ./DEBIAN -o -path ./etc \) -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
	| xargs -0 md5sum) \
	> "$STAGE/DEBIAN/md5sums"
echo /etc/cni/net.d/10-calico.conf > "$STAGE/DEBIAN/conffiles"
install -m 0755 build/deb/postinst build/deb/prerm build/deb/postrm "$STAGE/DEBIAN/"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/md5sums" "$STAGE/DEBIAN/conffiles"

# gzip -6: every dpkg reads it, and it packs the ~90 MB bundle in ~10 s (-9: ~35 s, xz: longer still).
mkdir -p "$OUT_DIR"
dpkg-deb --root-owner-group -Z"${DEB_COMPRESS:-gzip}" -z"${DEB_COMPRESS_LEVEL:-6}" --build "$STAGE" "$OUT.tmp" \
	>/dev/null
mv "$OUT.tmp" "$OUT"
echo "$OUT"
