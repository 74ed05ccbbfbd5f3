#!/usr/bin/env bash
# Installs the system packages flowscaler's tests need: a real redis-server
# (sources/ tests), prometheus (promtool and end-to-end checks), protoc, and
# Node.js with npm for the Service Bus AMQP fake.
#
# Idempotent: packages already installed are left alone, and apt-get update
# only runs when something is missing. It never starts a service: tests run
# their own redis-server on a private port, and there is no init system here.
set -euo pipefail

packages=(redis-server prometheus protobuf-compiler)

missing=()
for pkg in "${packages[@]}"; do
	# dpkg-query rather than `command -v`: the package, not just one of its
	# binaries, is what we install.
	if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
		missing+=("$pkg")
	fi
done

# The Service Bus tests' AMQP fake (test/amqpfake) runs on Node.js; any
# node and npm on PATH will do, so only install Debian's when there is none.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
	missing+=(nodejs npm)
fi

if ((${#missing[@]} == 0)); then
	echo "deps: nothing to install (${packages[*]} already installed)"
	exit 0
fi

if ((EUID == 0)); then
	sudo=()
elif command -v sudo >/dev/null 2>&1; then
	sudo=(sudo)
else
	echo "deps: need root or sudo to install: ${missing[*]}" >&2
	exit 1
fi

# Debian maintainer scripts start services through invoke-rc.d, which asks
# policy-rc.d first; exit code 101 means "do not start". Only install our own
# policy if there is none, and remove only what we created.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 0755 "$policy"
	created_policy=1
fi
cleanup() {
	if ((created_policy)); then
		"${sudo[@]}" rm -f "$policy"
	fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

echo "deps: installed ${missing[*]}"
