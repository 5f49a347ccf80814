#!/bin/sh
# Runs the container's command as the vitq user (uid 1000). Started as root (the default), it first hands the
# storage and data directories to vitq when a bind mount or an old volume left them to another uid, so any
# host directory works. Started with `user:` set, it runs the command as that user unchanged.
set -e
if [ "$(id -u)" = 0 ]; then
  for dir in "${VITQ_STORAGE:-/var/lib/vitq/storage}" "${VITQ_DATA_DIR:-/data}"; do
    mkdir -p "$dir" 2>/dev/null || true
    setpriv --reuid=vitq --regid=vitq --init-groups test -w "$dir" ||
      chown vitq:vitq "$dir" 2>/dev/null || echo "entrypoint: $dir is not writable by vitq (read-only mount?)" >&2
  done
  exec env HOME=/home/vitq USER=vitq setpriv --reuid=vitq --regid=vitq --init-groups "$@"
fi
exec "$@"
