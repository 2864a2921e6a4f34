#!/usr/bin/env bash
# healthd.sh [LABEL=VALUE] — run podman HEALTHCHECKs where nothing else does.
#
# Podman 4.x schedules each container's healthcheck with a transient systemd timer
# (`systemd-run ... podman healthcheck run <id>`). Where systemd is not PID 1 (CI machines
# and containers like ours), creating the timer fails ("unable to get systemd connection to
# add healthchecks") and health stays "starting" forever. This loop does what the timers
# would do: every running container (with the label, if given) that has a healthcheck gets
# `podman healthcheck run` once per its interval. Nothing else: it neither restarts nor kills.
#
# With TM_HEALTHD_PARENT=PID it exits when that process is gone, so a test that dies
# without stopping it leaves nothing behind.
set -u
filter=${1:-}
parent=${TM_HEALTHD_PARENT:-}
declare -A interval_s last_run pid_of
to_seconds() {  # Go duration (2s, 1m30s, 500ms) -> whole seconds, at least 1
	local d=$1 total=0 n
	[[ $d =~ ^([0-9]+)h ]] && { total=$((total + ${BASH_REMATCH[1]} * 3600)); d=${d#*h}; }
	[[ $d =~ ^([0-9]+)m([^s]|$) ]] && { total=$((total + ${BASH_REMATCH[1]} * 60)); d=${d#*m}; }
	[[ $d =~ ^([0-9.]+)s$ ]] && { n=${BASH_REMATCH[1]%.*}; total=$((total + ${n:-0})); }
	((total < 1)) && total=1
	echo "$total"
}
while true; do
	if [ -n "$parent" ] && ! kill -0 "$parent" 2>/dev/null; then exit 0; fi
	now=$(date +%s)
	args=(ps -q --no-trunc)
	[ -n "$filter" ] && args+=(--filter "label=$filter")
	for id in $(podman "${args[@]}" 2>/dev/null); do
		if [ -z "${interval_s[$id]:-}" ]; then
			iv=$(podman inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Interval}}{{end}}' "$id" 2>/dev/null) || continue
			if [ -z "$iv" ] || [ "$iv" = "0s" ]; then interval_s[$id]=none; else interval_s[$id]=$(to_seconds "$iv"); fi
		fi
		[ "${interval_s[$id]}" = none ] && continue
		if [ -n "${pid_of[$id]:-}" ] && kill -0 "${pid_of[$id]}" 2>/dev/null; then continue; fi
		if (( now - ${last_run[$id]:-0} >= ${interval_s[$id]} )); then
			last_run[$id]=$now
			podman healthcheck run "$id" >/dev/null 2>&1 &
			pid_of[$id]=$!
		fi
	done
	sleep 1
done
