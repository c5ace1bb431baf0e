#!/usr/bin/env bash
# One sharded build of the deploy/k8s/cluster deployment, start to finish:
#   1. create the build's three Jobs (build/, with this build's id in their names and staging directory);
#   2. the global phase runs; when it has completed, resume the Indexed Job (every shard at once); when
#      that has completed, resume assemble, which publishes the set and moves CURRENT (a phase that fails
#      stops the build here: nothing is published and the later Jobs stay suspended);
#   3. wait until every shard pod serves the new generation (they follow CURRENT: admin.watch);
#   4. restart the roots, which load the live set at start (a root cannot reload a shard set yet), and
#      keep the newest generations (quarry index gc).
# Usage: deploy/k8s/cluster/build.sh [BUILD_ID]     (default: the UTC time, e.g. 20250131-0300)
# kubectl's current context and namespace; NAMESPACE=... picks another namespace. Other knobs: JOB_TIMEOUT_S
# (per phase, default 6 h), FOLLOW_TIMEOUT_S (shards loading the set, default 15 min), KEEP (generations
# kept, default 3), POLL_S (default 10).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$(date -u +%Y%m%d-%H%M)}
if ! [[ $build =~ ^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$ ]]; then
  echo "build id '$build': lowercase letters, digits and '-', at most 30 (it goes into Job names)" >&2
  exit 2
fi
poll_s=${POLL_S:-10}
k() { kubectl ${NAMESPACE:+--namespace "$NAMESPACE"} "$@"; }

# Until job $1 completes (0) or fails (1). Not `kubectl wait --for=condition=complete`: that would wait
# out its whole timeout on a failed Job.
wait_job() {
  local deadline=$((SECONDS + ${JOB_TIMEOUT_S:-21600})) state
  echo "waiting for job/$1"
  while :; do
    state=" $(k get "job/$1" -o jsonpath='{.status.conditions[?(@.status=="True")].type}') "
    case $state in
      *" Complete "*) echo "job/$1 completed"; return 0 ;;
      *" Failed "*)
        echo "job/$1 failed (kubectl logs job/$1); the build stops, nothing is published" >&2
        return 1 ;;
    esac
    if ((SECONDS >= deadline)); then echo "job/$1: no result in time" >&2; return 1; fi
    sleep "$poll_s"
  done
}

resume() { k patch "job/$1" --type=merge -p '{"spec":{"suspend":false}}'; }

# Whether pod $1 serves, for every collection it holds, the generation CURRENT names (`quarry admin status`
# inside the pod: its own server and the admin token in its environment).
serves_live() {
  k exec "$1" -c shard -- quarry admin status 2>/dev/null | awk '
    /^[^ ]/ { gen = $2; sub(/:$/, "", gen); n++ }
    /^  root: / { if (index($0, "(live " gen ")") == 0) stale = 1 }
    END { exit (n == 0 || stale) }'
}

jobs=$(kubectl kustomize "$here/build" | sed "s/__BUILD__/$build/g")
shards=$(awk '$1 == "completions:" { print $2; exit }' <<<"$jobs")   # the Indexed Job's: one per shard
k create -f - <<<"$jobs"
wait_job "quarry-build-global-$build"
resume "quarry-build-shards-$build"
wait_job "quarry-build-shards-$build"
resume "quarry-build-assemble-$build"
wait_job "quarry-build-assemble-$build"
k logs "job/quarry-build-assemble-$build" --tail=1

deadline=$((SECONDS + ${FOLLOW_TIMEOUT_S:-900}))
# Shards 0..N-1 of the new set only: when the count shrinks, the pods of the shards beyond it refuse the
# new set (deploy/k8s/README.md, "Changing the shard count").
selector="app.kubernetes.io/name=quarry,app.kubernetes.io/component=shard,quarry/shard in ($(seq -s, 0 $((shards - 1))))"
for pod in $(k get pods -l "$selector" --field-selector=status.phase=Running -o name); do
  until serves_live "$pod"; do
    if ((SECONDS >= deadline)); then
      echo "$pod does not serve the new generation (kubectl logs $pod); the roots keep the previous one" >&2
      exit 1
    fi
    sleep "$poll_s"
  done
  echo "$pod serves the new generation"
done

k rollout restart deployment/quarry-root
k rollout status deployment/quarry-root --timeout=15m
k exec deployment/quarry-shard-0 -c shard -- quarry index gc --root /data/root --keep "${KEEP:-3}"
echo "build $build is live"
