#!/bin/sh
# Write OVERLAY/secrets.env for `kubectl apply -k OVERLAY`: a new API token, a new cluster
# secret and the database URL (given, or for the dev overlay a new in-cluster PostgreSQL
# password and its URL). Never overwrites: rotating the cluster secret restarts every
# coordinator and worker, so do it on purpose (edit the file, apply).
#   deploy/new-secrets.sh deploy/overlays/production 'postgresql://user:pass@db:5432/taskmaster'
#   deploy/new-secrets.sh deploy/overlays/dev
set -eu

usage() { echo "usage: $0 OVERLAY_DIR [DATABASE_URL]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
overlay=$1
url=${2:-}
[ -f "$overlay/kustomization.yaml" ] || { echo "$0: $overlay has no kustomization.yaml" >&2; exit 2; }
out=$overlay/secrets.env
[ ! -e "$out" ] || { echo "$0: $out exists; not overwriting it" >&2; exit 1; }

# 32 random bytes as 64 hex digits: safe in a URL and in an env file.
random() { od -An -N32 -tx1 /dev/urandom | tr -d ' \n'; }

umask 077
if [ -z "$url" ]; then
  if ! grep -q 'components/postgres' "$overlay/kustomization.yaml"; then
    echo "$0: $overlay uses an external PostgreSQL: give its DATABASE_URL" >&2
    exit 2
  fi
  password=$(random)
  url="postgresql://postgres:$password@taskmaster-postgres:5432/taskmaster"
fi
case $url in
  postgresql://*|postgres://*) ;;
  *) echo "$0: DATABASE_URL must start with postgresql://" >&2; exit 2 ;;
esac
case $url in
  *"
"*) echo "$0: DATABASE_URL must be one line" >&2; exit 2 ;;
esac

tmp=$out.tmp.$$
trap 'rm -f "$tmp"' EXIT
{
  [ -z "${password:-}" ] || echo "postgres-password=$password"
  echo "database-url=$url"
  echo "api-token=$(random)"
  echo "cluster-secret=$(random)"
} >"$tmp"
mv "$tmp" "$out"
trap - EXIT
echo "wrote $out (keep it out of version control)"
