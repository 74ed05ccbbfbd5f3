#!/usr/bin/env bash
# Builds (once per machine) the third-party binaries the end-to-end test
# runs: kube-apiserver and kube-controller-manager, KEDA's operator and
# metrics adapter, and Debian's etcd. They live outside the repository in a
# cache keyed by version, so only the first run pays for the builds (43
# minutes on a busy two-core machine); later runs reuse them.
#
# Prints nothing but progress; the driver finds the binaries under
# $FLOWSCALER_E2E_CACHE with the same layout.
set -euo pipefail

GO=${GO:-go}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
KEDA_VERSION=${KEDA_VERSION:-v2.21.0}
CACHE=${FLOWSCALER_E2E_CACHE:-$HOME/.cache/flowscaler-e2e}

# Two packages compile at a time: peak memory stays near 3.5 GB (linking
# kube-apiserver) and the other work on a two-core machine still gets a turn.
export GOFLAGS="${GOFLAGS:-} -p=2"
export CGO_ENABLED=0

log() { printf 'e2e-build: %s\n' "$*"; }

k8s_dir=$CACHE/kubernetes-$K8S_VERSION
keda_dir=$CACHE/keda-$KEDA_VERSION
etcd_dir=$CACHE/etcd

build_kubernetes() {
	if [[ -x $k8s_dir/bin/kube-apiserver && -x $k8s_dir/bin/kube-controller-manager ]]; then
		log "kubernetes $K8S_VERSION: cached in $k8s_dir/bin"
		return
	fi
	log "kubernetes $K8S_VERSION: building (cold: about 15 min on 2 cores)"
	local mod=$k8s_dir/module
	mkdir -p "$mod" "$k8s_dir/bin"
	# k8s.io/kubernetes points its staging modules at its own tree with
	# replace directives, which `go install pkg@version` refuses. A scratch
	# module requiring it, with each staging module replaced by its published
	# twin (v1.X.Y is published as v0.X.Y), builds the same commands.
	local gomod
	gomod=$(cd "$mod" && GOFLAGS=-mod=mod "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
	[[ -f $gomod ]] || { log "no go.mod for k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
	local staging=v0.${K8S_VERSION#v1.}
	local goversion
	goversion=$("$GO" env GOVERSION)
	{
		echo "module flowscaler.e2e/kubernetes"
		echo
		echo "go ${goversion#go}"
		echo
		echo "require k8s.io/kubernetes $K8S_VERSION"
		echo
		grep -oE '^[[:space:]]*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" |
			awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
	} >"$mod/go.mod"
	printf 'package main\n' >"$mod/main.go"
	(
		cd "$mod"
		"$GO" mod download
		GOFLAGS="$GOFLAGS -mod=mod" "$GO" get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION"
		# Clients refuse a server whose version string is empty, so stamp the
		# build the way Kubernetes' own build does.
		local minor=${K8S_VERSION#v1.}
		minor=${minor%%.*}
		local pkg=k8s.io/component-base/version
		local ld="-s -w -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
		ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
		"$GO" build -mod=mod -ldflags "$ld" -o "$k8s_dir/bin/.tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
	)
	mv "$k8s_dir/bin/.tmp/kube-apiserver" "$k8s_dir/bin/.tmp/kube-controller-manager" "$k8s_dir/bin/"
	rmdir "$k8s_dir/bin/.tmp"
	log "kubernetes $K8S_VERSION: built"
}

build_keda() {
	if [[ -x $keda_dir/bin/keda && -x $keda_dir/bin/keda-adapter && -d $keda_dir/crd ]]; then
		log "keda $KEDA_VERSION: cached in $keda_dir"
		return
	fi
	log "keda $KEDA_VERSION: building (cold: about 30 min on 2 cores)"
	mkdir -p "$keda_dir/bin"
	local dir
	dir=$(cd /tmp && GOFLAGS= "$GO" mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[[ -d $dir ]] || { log "no module directory for github.com/kedacore/keda/v2@$KEDA_VERSION"; exit 1; }
	# KEDA's go.mod has replace directives too: build inside a copy of the
	# module (the module cache is read-only).
	rm -rf "$keda_dir/src"
	cp -r "$dir" "$keda_dir/src"
	chmod -R u+w "$keda_dir/src"
	(
		cd "$keda_dir/src"
		local ld="-s -w -X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION"
		"$GO" build -ldflags "$ld" -o "$keda_dir/bin/.tmp/" ./cmd/operator ./cmd/adapter
	)
	mv "$keda_dir/bin/.tmp/operator" "$keda_dir/bin/keda"
	mv "$keda_dir/bin/.tmp/adapter" "$keda_dir/bin/keda-adapter"
	rmdir "$keda_dir/bin/.tmp"
	rm -rf "$keda_dir/crd"
	cp -r "$keda_dir/src/config/crd/bases" "$keda_dir/crd"
	log "keda $KEDA_VERSION: built"
}

fetch_etcd() {
	if [[ -x $etcd_dir/usr/bin/etcd ]]; then
		log "etcd: cached in $etcd_dir"
		return
	fi
	# Debian's etcd 3.4 serves kube-apiserver 1.36 and 1.37 well enough for
	# this test. Only the package file is fetched and unpacked: nothing is
	# installed and no service starts.
	log "etcd: fetching Debian's etcd-server"
	local tmp
	tmp=$(mktemp -d)
	(cd "$tmp" && apt-get download etcd-server >/dev/null 2>&1) ||
		(apt-get update -q >/dev/null && cd "$tmp" && apt-get download etcd-server)
	mkdir -p "$etcd_dir"
	dpkg-deb -x "$tmp"/etcd-server_*.deb "$etcd_dir"
	rm -rf "$tmp"
	[[ -x $etcd_dir/usr/bin/etcd ]] || { log "etcd-server package has no usr/bin/etcd"; exit 1; }
	log "etcd: unpacked"
}

start=$SECONDS
fetch_etcd
build_keda
build_kubernetes
log "done in $((SECONDS - start))s"
