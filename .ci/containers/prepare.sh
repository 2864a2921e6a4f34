#!/usr/bin/env bash
# .ci/containers/prepare.sh — make this machine able to run the compose cluster test
# (tests/containers, `just test-containers`): a container engine and the base images that
# the Containerfile and compose.yaml name. Idempotent: a second run checks and does nothing.
#
#  1. Engine: podman or docker, if one already answers `info`. Otherwise, as root with
#     apt-get (Debian 12 / Ubuntu), podman and what it needs (netavark + aardvark-dns for
#     name resolution between containers, runc, conmon, catatonit), and an
#     /etc/containers/containers.conf for machines like our CI's (see configure_podman),
#     unless an administrator's own file is there.
#  2. Base images docker.io/library/python:3.11-slim and docker.io/library/postgres:17:
#     kept if present, pulled if a registry answers, else built here as stand-ins from
#     Debian packages (standins/*, on a debootstrapped bookworm); they honour what our
#     Containerfile and compose.yaml use of the official images, nothing more.
#  3. A smoke test: a container runs, and containers on one network find each other by name.
# The compose command is not installed here: `just install` puts podman-compose into .venv
# (podman 4.3 has no `podman compose`) and the justfile finds it.
#
# Exit 0: ready. Exit 77: no engine can run here (not root, no apt-get, ...): the reason is
# printed, and the test skips saying so. Exit 1: a step that should work failed (see the
# log it names). Work files (rootfs cache, logs): $TM_CONTAINERS_WORK, default
# /var/tmp/taskmaster-containers.
#
# Changes from ../shared/tools/containers/check.sh, which this grew from: it prepares and
# checks nothing of the project (the test does that); it uses an engine that already works
# instead of reconfiguring it; it pulls the real images where a registry answers; it keeps
# an administrator's containers.conf; it takes a lock, so two runs cannot interleave.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=${TM_CONTAINERS_WORK:-/var/tmp/taskmaster-containers}
LOGS=$WORK/logs
ROOTFS=$WORK/rootfs-bookworm
BASE_IMAGE=localhost/tm-standin/debian:bookworm
PY_IMAGE=docker.io/library/python:3.11-slim
PG_IMAGE=docker.io/library/postgres:17
CONF=/etc/containers/containers.conf
MARKERS='written by taskmaster .ci/containers/prepare.sh|written by tm-check'
PKGS=(podman netavark aardvark-dns runc conmon catatonit slirp4netns fuse-overlayfs uidmap
      iptables ca-certificates curl)

say() { printf 'prepare: %s\n' "$*"; }
skip() { say "SKIP: $*"; exit 77; }
die() { say "FAILED: $*"; exit 1; }
quiet() { grep -v 'unable to get systemd connection' "$@"; }  # podman 4.3 without systemd

[ "$(uname -s)" = Linux ] || skip "not Linux: containers here need a Linux host"

engine_works() { command -v "$1" >/dev/null 2>&1 && timeout 60 "$1" info >/dev/null 2>&1; }

# ------------------------------------------------------------------ 1. engine
ENGINE=
if engine_works podman; then ENGINE=podman
elif engine_works docker; then ENGINE=docker
fi
if [ -z "$ENGINE" ]; then
	[ "$(id -u)" = 0 ] || skip "no working podman or docker, and not root: cannot install podman"
	command -v apt-get >/dev/null 2>&1 || skip "no working podman or docker, and no apt-get to install podman"
fi
mkdir -p "$LOGS" 2>/dev/null || skip "cannot write $WORK"
exec 9>"$WORK/lock"
flock -w 1800 9 || die "another prepare.sh holds $WORK/lock"

install_packages() {  # install_packages PKG... (only the missing ones)
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ "${#missing[@]}" -eq 0 ] && return 0
	say "apt-get install ${missing[*]}"
	{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; } \
		>>"$LOGS/apt.log" 2>&1 || die "apt-get install failed, see $LOGS/apt.log"
}

configure_podman() {
	# For this kind of machine; each line says why. An administrator's file is kept.
	local runtime=runc cgmgr=systemd logger=journald nofile nproc
	if [ -f "$CONF" ] && ! grep -qE "$MARKERS" "$CONF"; then
		say "keeping the administrator's $CONF"; return 0
	fi
	# runc, not crun: crun 1.8 (Debian 12) refuses cgroup v1 "hybrid" hosts whose cgroup2
	# mount has controllers ("cgroups in hybrid mode not supported"); runc runs everywhere.
	# No systemd as PID 1: cgroupfs, and events in a file instead of the journal.
	if [ ! -d /run/systemd/system ]; then cgmgr=cgroupfs; logger=file; fi
	# Podman (root) asks for RLIMIT_NOFILE/NPROC 1048576 in every container and lowers its
	# own NPROC hard limit to 32768; without CAP_SYS_RESOURCE the runtime cannot raise them
	# ("setrlimit RLIMIT_NOFILE: Operation not permitted"). Ask for what we have instead.
	nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
	nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
	mkdir -p "$(dirname "$CONF")"
	cat >"$CONF" <<EOF
# written by taskmaster .ci/containers/prepare.sh: podman settings for this machine
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "$runtime"
cgroup_manager = "$cgmgr"
events_logger = "$logger"
[network]
network_backend = "netavark"
EOF
	say "wrote $CONF (runtime=$runtime cgroup_manager=$cgmgr events_logger=$logger)"
}

if [ -z "$ENGINE" ]; then
	install_packages "${PKGS[@]}"
	configure_podman
	engine_works podman || die "podman is installed but 'podman info' fails: $(podman info 2>&1 | quiet | tail -1)"
	ENGINE=podman
fi
say "engine: $($ENGINE --version)"
# The test submits tasks with curl, as a user would.
if ! command -v curl >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || skip "no curl, and cannot install it"
	install_packages curl ca-certificates
fi

# ------------------------------------------------------------------ 2. base images
registry_answers() {  # Docker Hub's API answers 401 to anonymous requests when reachable
	local code
	code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' https://registry-1.docker.io/v2/ 2>/dev/null)
	[ "$code" = 401 ] || [ "$code" = 200 ]
}

build_base_image() {  # a debootstrapped bookworm, imported as $BASE_IMAGE
	$ENGINE image inspect "$BASE_IMAGE" >/dev/null 2>&1 && return 0
	[ "$(id -u)" = 0 ] || skip "no registry, and not root: cannot debootstrap stand-in images"
	command -v apt-get >/dev/null 2>&1 || skip "no registry, and no apt-get for debootstrap"
	install_packages debootstrap
	if [ ! -f "$ROOTFS/.complete" ]; then
		rm -rf "$ROOTFS"
		say "debootstrap --variant=minbase bookworm (a minute or two)"
		debootstrap --variant=minbase bookworm "$ROOTFS" http://deb.debian.org/debian \
			>"$LOGS/debootstrap.log" 2>&1 || die "debootstrap failed, see $LOGS/debootstrap.log"
		cat >"$ROOTFS/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
		rm -f "$ROOTFS"/var/cache/apt/archives/*.deb
		rm -rf "$ROOTFS"/var/lib/apt/lists/* && mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
		touch "$ROOTFS/.complete"
	fi
	tar --numeric-owner --exclude=./.complete -C "$ROOTFS" -cf - . |
		$ENGINE import --change 'CMD ["bash"]' \
			--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
			- "$BASE_IMAGE" >"$LOGS/import.log" 2>&1 || die "image import failed, see $LOGS/import.log"
}

build_standin() {  # build_standin DIR TAG: from standins/DIR, rebuilt when its sources change
	local ctx=$WORK/ctx/$1 tag=$2 hash have f
	rm -rf "$ctx"; mkdir -p "$ctx"; cp -a "$HERE/standins/$1/." "$ctx/"
	if [ "$1" = python ]; then
		# This machine's TLS-intercepting egress CA, if any (regular files in /etc/ssl/certs
		# besides the bundle, and /usr/local/share/ca-certificates): pip in builds needs it.
		mkdir -p "$ctx/extra-ca"
		for f in /etc/ssl/certs/*.pem /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
			[ -f "$f" ] && [ ! -L "$f" ] && cp "$f" "$ctx/extra-ca/$(basename "${f%.*}").crt"
		done
	fi
	hash=$( { $ENGINE image inspect -f '{{.Id}}' "$BASE_IMAGE"; find "$ctx" -type f | sort | xargs cat; } | sha256sum | cut -c1-16)
	have=$($ENGINE image inspect -f '{{index .Config.Labels "tm.standin.hash"}}' "$tag" 2>/dev/null)
	[ "$have" = "$hash" ] && return 0
	say "building stand-in $tag"
	$ENGINE build --label "tm.standin.hash=$hash" -t "$tag" "$ctx" >"$LOGS/build-$1.log" 2>&1 ||
		die "building stand-in $tag failed, see $LOGS/build-$1.log"
}

need_image() {  # need_image TAG STANDIN_DIR
	local tag=$1 label
	if $ENGINE image inspect "$tag" >/dev/null 2>&1; then
		label=$($ENGINE image inspect -f '{{index .Config.Labels "tm.standin.hash"}}' "$tag" 2>/dev/null)
		# A real image stays; a stand-in is rebuilt if standins/ changed since.
		if [ -z "$label" ] || [ "$label" = '<no value>' ]; then say "image $tag: present"; return 0; fi
	elif [ -z "${REGISTRY:-}" ]; then
		if registry_answers; then REGISTRY=yes; else REGISTRY=no; fi
	fi
	if ! $ENGINE image inspect "$tag" >/dev/null 2>&1 && [ "${REGISTRY:-}" = yes ]; then
		say "pulling $tag"
		timeout 600 $ENGINE pull "$tag" >>"$LOGS/pull.log" 2>&1 && return 0
		say "pulling $tag failed (see $LOGS/pull.log): building a stand-in"
	fi
	build_base_image
	build_standin "$2" "$tag"
	say "image $tag: stand-in ($($ENGINE run --rm "$tag" bash -c 'cat /etc/debian_version' 2>/dev/null | quiet))"
}
need_image "$PY_IMAGE" python
need_image "$PG_IMAGE" postgres

# ------------------------------------------------------------------ 3. smoke test
net=tm-prepare-$$ box=tm-prepare-$$-a
cleanup() { $ENGINE rm -f -t 0 "$box" >/dev/null 2>&1; $ENGINE network rm -f "$net" >/dev/null 2>&1; }
trap cleanup EXIT
out=$( { $ENGINE network create "$net" &&
	$ENGINE run -d --name "$box" --network "$net" "$PY_IMAGE" sleep 120 &&
	$ENGINE run --rm --network "$net" "$PY_IMAGE" python -c \
		"import socket; print('resolved', socket.gethostbyname('$box'))"; } 2>&1)
rc=$?
[ $rc = 0 ] || die "smoke test: $(quiet <<<"$out" | tail -2 | tr '\n' ' ')"
say "smoke test: containers run and find each other by name ($(grep '^resolved' <<<"$out"))"
say "ready"
