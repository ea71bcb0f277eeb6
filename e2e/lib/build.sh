# shellcheck shell=bash
# Build and cache the local control plane's binaries. Sourced by e2e/plane.
#
# Inputs (set by e2e/plane): E2E_DIR (the e2e/ directory).
# The cache key is derived from the versions pinned in e2e/go/**/go.mod and a hash
# of those go.mod/go.sum files plus this script, so any change to what is built or
# how it is built lands in a new cache directory; an old one is never patched.

PLANE_CACHE_ROOT="${DAGOP_PLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dag-operator/plane}"
# kubelet and pause: the real node (containerd runs its containers; pause is the sandbox image's
# one binary, compiled from the Kubernetes module's own build/pause/linux/pause.c)
PLANE_BINS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm kwok kubelet pause)

# mod_version FILE MODULE: the version MODULE is required at in go.mod FILE.
mod_version() {
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1"
}

# Sets K8S_VERSION ETCD_VERSION HELM_VERSION KWOK_VERSION PLANE_KEY PLANE_DIR PLANE_BIN.
plane_resolve() {
  local gd="$E2E_DIR/go" f hash
  K8S_VERSION=$(mod_version "$gd/go.mod" k8s.io/kubernetes)
  HELM_VERSION=$(mod_version "$gd/go.mod" helm.sh/helm/v3)
  ETCD_VERSION=$(mod_version "$gd/etcd/go.mod" go.etcd.io/etcd/server/v3)
  KWOK_VERSION=$(mod_version "$gd/kwok/go.mod" sigs.k8s.io/kwok)
  for v in K8S_VERSION HELM_VERSION ETCD_VERSION KWOK_VERSION; do
    if [[ -z "${!v}" ]]; then
      echo "plane: cannot read $v from $gd/**/go.mod" >&2
      return 1
    fi
  done
  hash=$(
    for f in go.mod go.sum etcd/go.mod etcd/go.sum kwok/go.mod kwok/go.sum; do
      printf '%s\n' "$f"
      cat "$gd/$f"
    done
    printf 'lib/build.sh\n'
    cat "$E2E_DIR/lib/build.sh"
  )
  hash=$(printf '%s' "$hash" | sha256sum | cut -c1-12)
  PLANE_KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_kwok-${KWOK_VERSION}_${hash}"
  PLANE_DIR="$PLANE_CACHE_ROOT/$PLANE_KEY"
  PLANE_BIN="$PLANE_DIR/bin"
}

# version_cmd BIN: the command line that prints BIN's version (used to prove it runs).
version_cmd() {
  case "$1" in
    etcd | kube-apiserver | kube-controller-manager | kube-scheduler | kwok | kubelet) echo "$1 --version" ;;
    pause) echo "pause -v" ;;
    kubectl) echo "kubectl version --client" ;;
    helm) echo "helm version --short" ;;
    *) return 1 ;;
  esac
}

# plane_cache_intact [quiet]: 0 when PLANE_DIR holds a complete build whose sha256
# manifest matches and whose every binary answers its version command. No go call.
plane_cache_intact() {
  local b cmd
  [[ -f "$PLANE_DIR/manifest.sha256" && -f "$PLANE_DIR/BUILD-OK" ]] || return 1
  for b in "${PLANE_BINS[@]}"; do
    [[ -x "$PLANE_BIN/$b" ]] || return 1
  done
  (cd "$PLANE_DIR" && sha256sum --quiet --strict -c manifest.sha256 >/dev/null 2>&1) || return 1
  for b in "${PLANE_BINS[@]}"; do
    cmd=$(version_cmd "$b")
    # shellcheck disable=SC2086 # cmd is a fixed word list from version_cmd
    (cd "$PLANE_BIN" && PATH="$PLANE_BIN:$PATH" timeout 20 $cmd >/dev/null 2>&1) || return 1
  done
  return 0
}

# plane_build: build every binary into a fresh directory, write the manifest, verify,
# then move it into place atomically. Safe to run concurrently (flock).
plane_build() {
  plane_resolve
  mkdir -p "$PLANE_CACHE_ROOT"
  local lock="$PLANE_CACHE_ROOT/.lock"
  exec {lockfd}>"$lock"
  flock "$lockfd"
  if plane_cache_intact; then
    flock -u "$lockfd"
    exec {lockfd}>&-
    echo "plane: binaries cached and intact: $PLANE_BIN"
    return 0
  fi

  local gobin
  gobin=$(command -v go || true)
  [[ -n "$gobin" ]] || gobin=/usr/local/go/bin/go
  if [[ ! -x "$gobin" ]]; then
    echo "plane: go not found (looked on PATH and /usr/local/go/bin)" >&2
    return 1
  fi

  local tmp="$PLANE_CACHE_ROOT/.build-$PLANE_KEY.$$"
  # We hold the lock, so any other .build-* directory is left over from a killed build.
  rm -rf "$PLANE_CACHE_ROOT"/.build-*
  mkdir -p "$tmp/bin"
  local start end
  start=$(date +%s)
  echo "plane: building $PLANE_KEY (k8s $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, kwok $KWOK_VERSION)"
  echo "plane: into $tmp; this takes tens of minutes on 2 cores the first time"

  # The release's commit time, from the module proxy's .info, is the build date: reproducible.
  local k8s_date minor
  k8s_date=$(cd "$E2E_DIR/go" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$gobin" list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
  [[ -n "$k8s_date" ]] || k8s_date=1970-01-01T00:00:00Z
  minor=${K8S_VERSION#v1.}
  minor=${minor%%.*}

  local kv x ldk ldhelm ldetcd
  ldk="-s -w"
  for kv in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x="-X $kv"
    ldk+=" $x.gitVersion=$K8S_VERSION $x.gitMajor=1 $x.gitMinor=$minor"
    ldk+=" $x.gitTreeState=clean $x.buildDate=$k8s_date"
  done
  x="-X helm.sh/helm/v3"
  ldhelm=" $x/internal/version.version=$HELM_VERSION $x/internal/version.metadata="
  ldhelm+=" $x/internal/version.gitTreeState=clean"
  ldhelm+=" $x/pkg/lint/rules.k8sVersionMajor=1 $x/pkg/lint/rules.k8sVersionMinor=$minor"
  ldhelm+=" $x/pkg/chartutil.k8sVersionMajor=1 $x/pkg/chartutil.k8sVersionMinor=$minor"
  ldetcd="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION"

  local -a env=(GOTOOLCHAIN=local GOFLAGS=-mod=readonly CGO_ENABLED=0)
  local rc=0
  (
    set -e
    cd "$E2E_DIR/go"
    echo "plane: go build kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet helm"
    # One invocation so the shared k8s.io/* packages compile once. An -X naming a
    # package absent from a binary is ignored by the linker, so one flag set serves all.
    env "${env[@]}" nice -n 19 "$gobin" build -trimpath -ldflags "$ldk$ldhelm" -o "$tmp/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet \
      helm.sh/helm/v3/cmd/helm
    # the sandbox ("pause") container's binary, from the same release's source: static, so the
    # image that holds it needs nothing else (scripts/images)
    k8s_src=$(env "${env[@]}" "$gobin" list -m -f '{{.Dir}}' k8s.io/kubernetes)
    echo "plane: cc pause ($k8s_src/build/pause/linux/pause.c)"
    cc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION" -o "$tmp/bin/pause" "$k8s_src/build/pause/linux/pause.c"
    cd "$E2E_DIR/go/etcd"
    echo "plane: go build etcd"
    env "${env[@]}" nice -n 19 "$gobin" build -trimpath -ldflags "$ldetcd" -o "$tmp/bin/etcd" go.etcd.io/etcd/server/v3
    cd "$E2E_DIR/go/kwok"
    echo "plane: go build kwok"
    env "${env[@]}" nice -n 19 "$gobin" build -trimpath -ldflags "-s -w" -o "$tmp/bin/kwok" sigs.k8s.io/kwok/cmd/kwok
  ) || rc=$?
  if ((rc != 0)); then
    echo "plane: build FAILED (exit $rc); partial output left in $tmp" >&2
    flock -u "$lockfd"
    exec {lockfd}>&-
    return "$rc"
  fi
  end=$(date +%s)

  (cd "$tmp" && sha256sum bin/* >manifest.sha256)
  {
    echo "key=$PLANE_KEY"
    echo "kubernetes=$K8S_VERSION"
    echo "etcd=$ETCD_VERSION"
    echo "helm=$HELM_VERSION"
    echo "kwok=$KWOK_VERSION"
    echo "go=$("$gobin" env GOVERSION)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$((end - start))"
  } >"$tmp/build-info"
  touch "$tmp/BUILD-OK"
  rm -rf "$PLANE_DIR"
  mv "$tmp" "$PLANE_DIR"
  if ! plane_cache_intact; then
    echo "plane: built binaries fail their version check in $PLANE_BIN" >&2
    flock -u "$lockfd"
    exec {lockfd}>&-
    return 1
  fi
  flock -u "$lockfd"
  exec {lockfd}>&-
  echo "plane: built in $((end - start))s: $PLANE_BIN"
}
