# shellcheck shell=bash
# `step NAME CMD...`: one slow, one-time piece of scripts/dev-env.
#
# Prints exactly one progress line on stderr, "dev-env: NAME ... 12.3 s", and keeps the step's
# own output in $DEVLOOP_CACHE_DIR/logs/dev-env-NAME.log (shown, last lines, only on failure).
# Runs CMD under a lock of its own in the cache dir, so two dev-env runs (or two checkouts)
# never do the same step at once: the second waits, then finds the work done. Each step's
# command must itself install atomically (build aside, rename into place) and be quick when
# there is nothing to do; the lock only orders runs, it cannot undo a half-made result.
# With STEPS set (space-separated names), steps not named are skipped.

DEVLOOP_CACHE=${DEVLOOP_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/devloop}

step() {
  local name=$1 start log lock rc=0
  shift
  if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
    return 0
  fi
  mkdir -p "$DEVLOOP_CACHE/logs" "$DEVLOOP_CACHE/locks"
  log=$DEVLOOP_CACHE/logs/dev-env-$name.log
  lock=$DEVLOOP_CACHE/locks/dev-env-$name.lock  # not the name a script may lock itself
  start=$EPOCHREALTIME
  printf 'dev-env: %s ...' "$name" >&2
  # fd 9 holds the lock; `9>&-` keeps it from leaking into what CMD starts (e.g. dockerd),
  # which would otherwise hold the lock for as long as it lives. errexit is switched off around
  # the subshell rather than using `|| rc=$?`, which would disable it inside CMD's functions.
  local errexit=$-
  set +e
  ( set -e; flock 9; "$@" 9>&- ) 9>"$lock" >"$log" 2>&1 </dev/null
  rc=$?
  [[ $errexit != *e* ]] || set -e
  printf ' %s s\n' "$(_step_seconds "$start")" >&2
  if [ "$rc" -ne 0 ]; then
    tail -n 25 "$log" | sed 's/^/    /' >&2
    echo "dev-env: $name failed (exit $rc); its whole output is in $log" >&2
    exit "$rc"
  fi
}

_step_seconds() {
  local now=$EPOCHREALTIME
  awk -v a="$1" -v b="$now" 'BEGIN { printf "%.1f", b - a }'
}
