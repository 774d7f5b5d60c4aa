#!/usr/bin/env bash
# Provides what the `kubernetes` test tier (and `wgcable lab/demo --store kubernetes`) needs:
# etcd from Debian and a real kube-apiserver, built offline from Debian's `kubernetes` source
# package (1.20.2, vendored dependencies) with Debian's Go. No package ships the API server
# binary, and only the package registries are reachable, hence the build (~3.5 min, 1.8 GB
# disk). The binary is cached outside the repo and reused:
#     ${WGCABLE_CACHE:-~/.cache/wgcable}/kube-apiserver-<version>
#
# Idempotent: with the binary cached and etcd installed, it returns in well under a second.
# Never fails the caller: without an API server the kubernetes tests are skipped, saying why.
set -uo pipefail
cd "$(dirname "$0")/.."

log() { echo "install-k8s.sh: $*"; }

cache=${WGCABLE_CACHE:-$HOME/.cache/wgcable}
version=1.20.2
# Bumped when the build recipe changes, so that a binary cached by an older recipe is rebuilt.
recipe=4
binary=$cache/kube-apiserver-$version-r$recipe

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'ok installed'; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        log "missing Debian packages and not root: $* (kubernetes tests will be skipped)"
        return 1
    fi
    log "installing Debian packages: $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# etcd is needed at run time, whether or not the API server is cached.
if ! command -v etcd >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    apt_install etcd-server etcd-client || exit 0
fi

if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    exit 0
fi

replace_vendored() {
    local vend=$work/src/vendor/$1 deb=/usr/share/gocode/src/$1
    [ -d "$vend" ] && [ -d "$deb" ] || { log "$1 sources not found"; return 1; }
    find "$vend" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -delete
    find "$deb" -maxdepth 1 \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
        -exec cp {} "$vend/" \;
}

build() {
    # The source package needs a deb-src entry; added as a separate file so nothing else changes.
    local src_list=/etc/apt/sources.list.d/wgcable-deb-src.sources
    if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ \
        && ! grep -qs '^deb-src' /etc/apt/sources.list; then
        log "adding a deb-src entry for bookworm main ($src_list)"
        cat >"$src_list" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt-get update -qq >/dev/null || return 1
    local debs=()
    local p
    for p in golang-go rsync golang-github-modern-go-reflect2-dev \
        golang-github-json-iterator-go-dev dpkg-dev; do
        installed "$p" || debs+=("$p")
    done
    if [ "${#debs[@]}" -gt 0 ]; then apt_install "${debs[@]}" || return 1; fi

    work=$cache/build
    rm -rf "$work"
    mkdir -p "$work"
    (cd "$work" && apt-get source --download-only -qq -o APT::Sandbox::User=root kubernetes) >/dev/null || return 1
    local orig
    orig=$(ls "$work"/kubernetes_*.orig.tar.* 2>/dev/null | head -n1)
    [ -n "$orig" ] || { log "no orig tarball for kubernetes $version"; return 1; }
    mkdir -p "$work/src"
    tar -xf "$orig" -C "$work/src" --strip-components=1 || return 1

    # Vendored reflect2 1.0.1 crashes under Go >= 1.18 on the first custom-object create:
    # swap it, and the json-iterator made for it, for Debian's matching copies (reflect2
    # 1.0.2, json-iterator 1.1.12); keep their tests and go.mod.
    replace_vendored github.com/modern-go/reflect2 || return 1
    replace_vendored github.com/json-iterator/go || return 1
    # go-openapi/validate treats any value whose reflect.Value DeepEquals its type's zero
    # Value as null. Under Go >= 1.18 that is every "", 0 and false, so CRD validation
    # refused `public_ip: ""` as "must be of type string: null" (Submariner writes that).
    # Only a real nil is null: the behaviour of the Go this release was built with.
    # Both copies: go-openapi's and kube-openapi's fork of it (the one CRDs use).
    local zero='if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {'
    local files
    files=$(grep -rlF "$zero" "$work/src/vendor" --include=type.go)
    [ -n "$files" ] || { log "the zero-value check to patch was not found"; return 1; }
    # shellcheck disable=SC2086
    sed -i "s/$(printf '%s' "$zero" | sed 's/[][\.*^$/]/\\&/g')/if data == nil {/" $files
    if grep -rqF "$zero" "$work/src/vendor" --include=type.go; then
        log "could not patch the zero-value check"; return 1
    fi

    # The 1.20 build expects a GOPATH layout.
    mkdir -p "$work/gopath/src/k8s.io"
    ln -sfn "$work/src" "$work/gopath/src/k8s.io/kubernetes"
    log "building kube-apiserver $version (a few minutes)"
    (
        cd "$work/gopath/src/k8s.io/kubernetes" \
            && GOPATH=$work/gopath GOCACHE=$work/gocache CGO_ENABLED=0 GOPROXY=off GOFLAGS=-mod=vendor \
                make WHAT=cmd/kube-apiserver >"$work/build.log" 2>&1
    ) || { log "build failed; see $work/build.log"; return 1; }
    local out
    out=$(find "$work/src/_output" -type f -name kube-apiserver -perm -u+x | head -n1)
    [ -n "$out" ] || { log "build produced no kube-apiserver"; return 1; }
    install -m 0755 "$out" "$binary.tmp" && mv "$binary.tmp" "$binary"
    rm -rf "$work"
    log "kube-apiserver cached at $binary"
}

mkdir -p "$cache"
started=$(date +%s)
if build; then
    log "built in $(( $(date +%s) - started )) s"
else
    log "kube-apiserver unavailable: kubernetes tests will be skipped"
fi
exit 0
