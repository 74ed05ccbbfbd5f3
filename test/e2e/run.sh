#!/usr/bin/env bash
# `make e2e`: flowscaler with KEDA on a real control plane.
#
# Builds (or reuses) the components, then runs the test binary inside a
# fresh network namespace of its own, so every port is private and nothing
# on the host can answer in place of a component. The test starts each
# component as its own child and kills it by PID; on the way out this script
# kills whatever is still left in the namespace (by PID, from `ip netns
# pids`) and deletes the namespace. Component logs stay in the printed
# directory when the run fails.
#
# It skips nothing: without root, ip, a compiler or a component it fails and
# says why.
set -euo pipefail
cd "$(dirname "$0")/../.."

GO=${GO:-go}
CACHE=${FLOWSCALER_E2E_CACHE:-$HOME/.cache/flowscaler-e2e}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
export FLOWSCALER_E2E_CACHE=$CACHE K8S_VERSION KEDA_VERSION

fail() {
	echo "e2e: FAIL: $*" >&2
	exit 1
}

((EUID == 0)) || fail "must run as root: it creates a network namespace with ip netns"
if ! command -v ip >/dev/null 2>&1; then
	echo "e2e: installing iproute2 (for ip netns)"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iproute2 >/dev/null ||
		fail "cannot install iproute2"
fi
command -v ip >/dev/null 2>&1 || fail "ip (iproute2) is not on PATH"

bash test/deps.sh
bash test/e2e/build.sh || fail "building the components failed (see above)"

work=$(mktemp -d "${TMPDIR:-/tmp}/flowscaler-e2e.XXXXXX")
mkdir -p "$work/logs"
ns=flowscaler-e2e-$$
status=1

cleanup() {
	if ip netns list 2>/dev/null | grep -qw "^$ns"; then
		# The test kills its own children; whatever is still in the
		# namespace was started by this run, so it goes by PID too.
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		ip netns delete "$ns" || echo "e2e: could not delete network namespace $ns" >&2
	fi
	if ((status == 0)); then
		rm -rf "$work"
	else
		echo "e2e: component logs kept in $work/logs" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "e2e: building flowscaler and the test"
"$GO" build -o "$work/flowscaler" ./cmd/flowscaler
(cd test/e2e && "$GO" vet ./... && "$GO" test -c -o "$work/e2e.test" .)

for tool in redis-server prometheus; do
	command -v "$tool" >/dev/null 2>&1 || fail "$tool is not on PATH after test/deps.sh"
done

ip netns add "$ns" || fail "cannot create network namespace $ns"
ip netns exec "$ns" ip link set lo up

echo "e2e: running in network namespace $ns"
set +e
ip netns exec "$ns" env \
	E2E_LOG_DIR="$work/logs" \
	E2E_ETCD="$CACHE/etcd/usr/bin/etcd" \
	E2E_KUBE_APISERVER="$CACHE/kubernetes-$K8S_VERSION/bin/kube-apiserver" \
	E2E_KUBE_CONTROLLER_MANAGER="$CACHE/kubernetes-$K8S_VERSION/bin/kube-controller-manager" \
	E2E_KEDA_OPERATOR="$CACHE/keda-$KEDA_VERSION/bin/keda" \
	E2E_KEDA_ADAPTER="$CACHE/keda-$KEDA_VERSION/bin/keda-adapter" \
	E2E_KEDA_CRDS="$CACHE/keda-$KEDA_VERSION/crd" \
	E2E_FLOWSCALER="$work/flowscaler" \
	E2E_REDIS_SERVER="$(command -v redis-server)" \
	E2E_PROMETHEUS="$(command -v prometheus)" \
	"$work/e2e.test" -test.v -test.count=1 -test.timeout=20m
status=$?
set -e
if ((status == 0)); then
	echo "e2e: PASS"
else
	echo "e2e: FAIL (exit $status)"
fi
exit $status
