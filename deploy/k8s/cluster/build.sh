#!/usr/bin/env bash
# One sharded build of the deploy/k8s/cluster deployment, start to finish:
#   1. create the build's three Jobs (build/, with this build's id in their names and staging directory);
#   2. the global phase runs; when it has completed, resume the Indexed Job (every shard at once); when
#      that has completed, resume assemble, which publishes the set and moves CURRENT (a phase that fails
#      stops the build here: nothing is published and the later Jobs stay suspended);
#   3. wait until every shard pod serves the new generation (they follow CURRENT: admin.watch);
#   4. wait until every root pod serves it: the roots follow CURRENT too (admin.watch), each with a
#      coordinated reload (every shard replica loads the set, then the root swaps to it at once; while a
#      replica refuses it, that root keeps serving the previous set); then keep the newest generations
#      (quarry index gc).
# When the new set's shard count differs from the roots' list (generate.py --shards N rewrote the files;
# a root refuses a set of another count), the regenerated manifests are applied once the set is published:
# the shards before 3, the roots (a rolling update) before 4; after 4 the Deployments of shards beyond the
# new count are deleted (deploy/k8s/README.md, "Changing the shard count").
# Usage: deploy/k8s/cluster/build.sh [BUILD_ID]     (default: the UTC time, e.g. 20250131-0300)
# kubectl's current context and namespace; NAMESPACE=... picks another namespace. Other knobs: JOB_TIMEOUT_S
# (per phase, default 6 h), FOLLOW_TIMEOUT_S (the shards, then the roots, serving the new set: each, default
# 15 min), KEEP (generations kept, default 3), POLL_S (default 10).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$(date -u +%Y%m%d-%H%M)}
if ! [[ $build =~ ^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$ ]]; then
  echo "build id '$build': lowercase letters, digits and '-', at most 30 (it goes into Job names)" >&2
  exit 2
fi
poll_s=${POLL_S:-10}
k() { kubectl ${NAMESPACE:+--namespace "$NAMESPACE"} "$@"; }
follow_s=${FOLLOW_TIMEOUT_S:-900}
shard_pods=app.kubernetes.io/name=quarry,app.kubernetes.io/component=shard
root_pods=app.kubernetes.io/name=quarry,app.kubernetes.io/component=root

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

# Whether pod $1 (container $2: shard or root) serves, for every collection it holds, the generation
# CURRENT names (`quarry admin status` inside the pod: its own server and the admin token in its
# environment; per collection a line `<name> <generation>: ...`, then `  root: ... (live <generation>)`).
serves_live() {
  k exec "$1" -c "$2" -- quarry admin status 2>/dev/null | awk '
    /^[^ ]/ { gen = $2; sub(/:$/, "", gen); n++ }
    /^  root: / { if (index($0, "(live " gen ")") == 0) stale = 1 }
    END { exit (n == 0 || stale) }'
}

jobs=$(kubectl kustomize "$here/build" | sed "s/__BUILD__/$build/g")
shards=$(awk '$1 == "completions:" { print $2; exit }' <<<"$jobs")   # the Indexed Job's: one per shard
indexes=$(seq -s, 0 $((shards - 1)))
# The roots' shard list (QUARRY_CLUSTER__SHARDS: a JSON list holding one list of replicas per shard).
roots_list=$(k get deployment/quarry-root \
  -o 'jsonpath={.spec.template.spec.containers[?(@.name=="root")].env[?(@.name=="QUARRY_CLUSTER__SHARDS")].value}') ||
  { echo "no deployment/quarry-root: kubectl apply -k $here first" >&2; exit 1; }
roots_shards=$(($(tr -cd '[' <<<"$roots_list" | wc -c) - 1))
if ((roots_shards != shards)); then
  echo "the roots list $roots_shards shards, this build makes $shards: once it is published, $here is" \
    "applied (the shards, then the roots), then any shard Deployment beyond $((shards - 1)) is deleted"
fi
k create -f - <<<"$jobs"
wait_job "quarry-build-global-$build"
resume "quarry-build-shards-$build"
wait_job "quarry-build-shards-$build"
resume "quarry-build-assemble-$build"
wait_job "quarry-build-assemble-$build"
k logs "job/quarry-build-assemble-$build" --tail=1

if ((roots_shards != shards)); then
  # Everything but the roots: new shards' Deployments (their pods load the live set at start), the rest
  # unchanged. The old roots keep serving the previous set meanwhile (they refuse the new one).
  echo "applying $here but the roots"
  k apply -k "$here" -l 'app.kubernetes.io/component!=root'
  for i in $(seq 0 $((shards - 1))); do
    k rollout status "deployment/quarry-shard-$i" --timeout="${follow_s}s" || {
      echo "deployment/quarry-shard-$i is not rolled out (kubectl describe deployment/quarry-shard-$i);" \
        "the roots keep the previous set" >&2
      exit 1
    }
  done
fi

deadline=$((SECONDS + follow_s))
# Shards 0..N-1 of the new set only: when the count shrinks, the pods of the shards beyond it refuse the
# new set (deploy/k8s/README.md, "Changing the shard count").
selector="$shard_pods,quarry/shard in ($indexes)"
for pod in $(k get pods -l "$selector" --field-selector=status.phase=Running -o name); do
  until serves_live "$pod" shard; do
    if ((SECONDS >= deadline)); then
      echo "$pod does not serve the new generation (kubectl logs $pod); the roots keep the previous one" >&2
      exit 1
    fi
    sleep "$poll_s"
  done
  echo "$pod serves the new generation"
done

if ((roots_shards != shards)); then
  echo "applying $here: the roots' new shard list (a rolling update; each new root loads the live set)"
  k apply -k "$here"
fi

# Every root serves the live set: each switches by itself (admin.watch), before or after the shard pods
# above reported (its coordinated reload asks them too; one that already has the set answers unchanged).
# The pods are listed again after each one that does, so pods a rollout or the HPA adds are checked too
# and pods it removes drop out.
deadline=$((SECONDS + follow_s))
roots_live=" "
while :; do
  pods=$(k get pods -l "$root_pods" --field-selector=status.phase=Running -o name) || pods=""
  pending=""
  for pod in $pods; do
    if [[ $roots_live != *" $pod "* ]]; then pending=$pod; break; fi
  done
  if [[ -n $pods && -z $pending ]]; then break; fi
  if [[ -n $pending ]] && serves_live "$pending" root; then
    roots_live+="$pending "
    echo "$pending serves the new generation"
    continue
  fi
  if ((SECONDS >= deadline)); then
    if [[ -z $pending ]]; then
      echo "no root pod is running (kubectl get pods -l $root_pods)" >&2
    else
      echo "$pending does not serve the new generation (kubectl logs $pending: a root that cannot switch" \
        "says why, e.g. which shard replica refused the set); it keeps serving the previous one" >&2
    fi
    exit 1
  fi
  sleep "$poll_s"
done

if ((roots_shards != shards)); then
  # No root asks the shards beyond the new count any more.
  surplus=$(k get deployments -l "$shard_pods,quarry/shard notin ($indexes)" -o 'jsonpath={.items[*].metadata.name}')
  if [[ -n $surplus ]]; then
    echo "deleting the shards beyond the new count: $surplus"
    # shellcheck disable=SC2086  # one name per word
    k delete deployment,service,poddisruptionbudget $surplus --ignore-not-found
  fi
fi
k exec deployment/quarry-shard-0 -c shard -- quarry index gc --root /data/root --keep "${KEEP:-3}"
echo "build $build is live"
