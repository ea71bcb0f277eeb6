# shellcheck shell=bash
# OCI image archives without a container engine: one uncompressed layer made from a directory,
# a config, a manifest and an index, packed as the OCI image layout in a tar that
# `ctr images import` (and `docker load`, `podman load`, `skopeo copy oci-archive:`) read.
# Sourced by e2e/plane (the node's sandbox image) and scripts/images (the operator and the
# task image). Deterministic: the same directory and settings give the same digests.
#
#   oci_archive OUT.tar REF ROOTFS [KEY=VALUE ...]
#     REF        the image's full name, e.g. docker.io/library/busybox:1.35
#     ROOTFS     the directory whose contents become the image's one layer (owned by root)
#     user=U     config User (e.g. 65532:65532)
#     entrypoint=JSON  config Entrypoint as a JSON array, e.g. '["/usr/local/bin/dag-operator"]'
#     cmd=JSON   config Cmd as a JSON array
#     env=JSON   config Env as a JSON array (default: a PATH)
#     workdir=D  config WorkingDir
#     port=P     config ExposedPorts P/tcp (once)

# oci_json_string TEXT: TEXT as a JSON string literal (backslash, quote and control characters
# escaped; the inputs here are names and paths).
oci_json_string() {
  local s=$1
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  printf '"%s"' "$s"
}

# oci_blob DIR FILE: moves FILE into DIR/blobs/sha256/<digest>; prints "<digest> <size>".
oci_blob() {
  local dir=$1 file=$2 digest size
  digest=$(sha256sum "$file" | cut -d' ' -f1)
  size=$(stat -c %s "$file")
  mkdir -p "$dir/blobs/sha256"
  mv "$file" "$dir/blobs/sha256/$digest"
  printf '%s %s\n' "$digest" "$size"
}

oci_archive() {
  local out=$1 ref=$2 rootfs=$3
  shift 3
  local user='' entrypoint='null' cmd='null' env='["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
  local workdir='' port='' kv
  for kv in "$@"; do
    case "$kv" in
      user=*) user=${kv#user=} ;;
      entrypoint=*) entrypoint=${kv#entrypoint=} ;;
      cmd=*) cmd=${kv#cmd=} ;;
      env=*) env=${kv#env=} ;;
      workdir=*) workdir=${kv#workdir=} ;;
      port=*) port=${kv#port=} ;;
      *)
        echo "oci_archive: unknown setting $kv" >&2
        return 2
        ;;
    esac
  done
  [[ -d "$rootfs" ]] || { echo "oci_archive: $rootfs is not a directory" >&2; return 2; }
  local tag=${ref##*:}
  [[ "$tag" != "$ref" && "$tag" != */* ]] || { echo "oci_archive: $ref has no tag" >&2; return 2; }

  local work
  work=$(mktemp -d)
  local layout="$work/layout"
  mkdir -p "$layout"
  # the layer: every file owned by root, times at the epoch, names sorted
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$work/layer.tar" . || { rm -rf "$work"; return 1; }
  local layer layer_digest layer_size
  layer=$(oci_blob "$layout" "$work/layer.tar")
  layer_digest=${layer% *}
  layer_size=${layer#* }

  {
    printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{'
    printf '"Env":%s' "$env"
    [[ "$entrypoint" == null ]] || printf ',"Entrypoint":%s' "$entrypoint"
    [[ "$cmd" == null ]] || printf ',"Cmd":%s' "$cmd"
    [[ -z "$user" ]] || printf ',"User":%s' "$(oci_json_string "$user")"
    [[ -z "$workdir" ]] || printf ',"WorkingDir":%s' "$(oci_json_string "$workdir")"
    [[ -z "$port" ]] || printf ',"ExposedPorts":{"%s/tcp":{}}' "$port"
    printf '},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}' "$layer_digest"
    printf ',"history":[{"created":"1970-01-01T00:00:00Z","created_by":"dag-operator e2e/lib/oci.sh"}]}'
  } >"$work/config.json"
  local config config_digest config_size
  config=$(oci_blob "$layout" "$work/config.json")
  config_digest=${config% *}
  config_size=${config#* }

  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
  local manifest manifest_digest manifest_size
  manifest=$(oci_blob "$layout" "$work/manifest.json")
  manifest_digest=${manifest% *}
  manifest_size=${manifest#* }

  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  # io.containerd.image.name: the full name ctr imports it under; ref.name: the tag (OCI)
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}]}' \
    "$manifest_digest" "$manifest_size" "$(oci_json_string "$ref")" "$(oci_json_string "$tag")" >"$layout/index.json"
  mkdir -p "$(dirname "$out")"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out.tmp" oci-layout index.json blobs &&
    mv "$out.tmp" "$out"
  local rc=$?
  rm -rf "$work"
  return "$rc"
}
