#!/usr/bin/env bash
# Builds the base, pause, sandbox (and operator) images with buildah, exports them as docker
# archives into $CODEEXEC_CACHE/images and imports them into containerd's k8s.io namespace.
#
# Idempotent and quick on a warm cache: an image is rebuilt only when the hash of its inputs
# (Dockerfile, the files its COPY lines name, the images it starts FROM, build args) differs
# from the hash label on the existing image; an archive is re-exported only when the image id
# changed; an import is skipped when containerd already holds the same image config.
# The base image is built once (debootstrap); remove it (`buildah rmi localhost/codeexec/base:bookworm`)
# to get a fresh Debian, which then rebuilds everything above it.
#
# Usage: hack/build-images.sh [--cluster-only]   (env: CODEEXEC_IMAGE_TAG, CONTAINERD_ADDRESS)
# --cluster-only: just the base and pause images that a bare cluster needs.
set -Eeuo pipefail
shopt -s inherit_errexit

cluster_only=false
case ${1:-} in
  "") ;;
  --cluster-only) cluster_only=true ;;
  *) echo "usage: $0 [--cluster-only]" >&2; exit 2 ;;
esac

# shellcheck source=lib/common.sh
source "$(dirname "$0")/lib/common.sh"
cd "$REPO"

TAG=${CODEEXEC_IMAGE_TAG:-0.1.0}
BASE_IMAGE=localhost/codeexec/base:bookworm
PAUSE_IMAGE=localhost/codeexec/pause:3.10
IMAGES_DIR=$CODEEXEC_CACHE/images
LOG_DIR=$IMAGES_DIR/logs
CONTAINERD_ADDRESS=${CONTAINERD_ADDRESS:-$CONTAINERD_STATE/containerd.sock}
HASH_LABEL=io.codeexec.inputs-hash

current=setup
trap 'echo "build-images: FAILED: $current (logs: $LOG_DIR)" >&2' ERR
mkdir -p "$IMAGES_DIR" "$LOG_DIR"
# Two runs at once would share build logs and half-written archives: the second one waits.
exec 9>"$IMAGES_DIR/.lock"
if ! flock -n 9; then
  echo "build-images: waiting for another run to finish" >&2
  flock 9
fi

now() { date +%s.%N; }

# report NAME START WHAT: one line per image with the time it took.
report() {
  printf '%-40s %-44s %6.1fs\n' "$1" "$3" "$(awk -v a="$2" -v b="$(now)" 'BEGIN { print b - a }')"
}

# run_logged LOGNAME CMD...: keeps build noise in a log file, shows its tail on failure.
run_logged() {
  local log=$LOG_DIR/$1.log
  shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    return 1
  fi
}

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1"; }

image_label() {
  buildah inspect --type image --format "{{index .OCIv1.Config.Labels \"$HASH_LABEL\"}}" "$1" 2>/dev/null || true
}

# debian_mirror SUITE: the URI apt on this host uses for SUITE (one-line .list or deb822 .sources).
debian_mirror() {
  local f uris lists=() sources=()
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    if [[ -f $f ]]; then lists+=("$f"); fi
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    if [[ -f $f ]]; then sources+=("$f"); fi
  done
  uris=$(
    if ((${#lists[@]})); then
      awk -v s="$1" '$1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == s) print $2 }' "${lists[@]}"
    fi
    if ((${#sources[@]})); then
      awk -v s="$1" 'BEGIN { RS = ""; FS = "\n" }
        { uri = ""; deb = 0; hit = 0; off = 0
          for (i = 1; i <= NF; i++) {
            n = split($i, w, /[ \t]+/)
            if (w[1] == "URIs:") uri = w[2]
            if (w[1] == "Types:") for (j = 2; j <= n; j++) if (w[j] == "deb") deb = 1
            if (w[1] == "Suites:") for (j = 2; j <= n; j++) if (w[j] == s) hit = 1
            if (w[1] == "Enabled:" && w[2] == "no") off = 1
          }
          if (uri != "" && deb && hit && !off) print uri }' "${sources[@]}"
    fi
  )
  echo "${uris%%$'\n'*}"
}

# remove_tree DIR: never follows mounts a failed debootstrap may have left (/proc, /dev binds).
remove_tree() {
  local mounts
  mounts=$(findmnt -R -n -l -o TARGET "$1" || true)  # findmnt fails when there are none
  if [[ -n $mounts ]]; then sort -r <<<"$mounts" | xargs umount -l; fi
  rm -rf --one-file-system "$1"
}

build_base() {
  current=$BASE_IMAGE
  local start mirror security rootfs c mnt
  start=$(now)
  # The cluster's own e2e tests run plain pods from the base image, so it goes into containerd too.
  if image_exists "$BASE_IMAGE"; then
    export_and_import base "$BASE_IMAGE" "$start" "present, kept"
    return
  fi
  for rootfs in "$CODEEXEC_CACHE"/base-rootfs.*; do
    if [[ -d $rootfs ]]; then remove_tree "$rootfs"; fi  # left by an interrupted run
  done
  mirror=$(debian_mirror bookworm)
  security=$(debian_mirror bookworm-security)
  [[ -n $mirror ]] || { echo "no apt source for bookworm in /etc/apt" >&2; false; }
  rootfs=$(mktemp -d "$CODEEXEC_CACHE/base-rootfs.XXXXXX")
  mkdir -p "$CODEEXEC_CACHE/debootstrap-debs"
  run_logged base-debootstrap debootstrap --variant=minbase --cache-dir="$CODEEXEC_CACHE/debootstrap-debs" \
    bookworm "$rootfs" "$mirror"

  cp -a hack/base-image/rootfs/. "$rootfs/"
  rm -f "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [[ -n $security ]]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"
  # The same trimming the dpkg excludes apply to later installs; the runtime provides /dev,
  # hostname and resolv.conf (debootstrap copied the build host's).
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log \
    "$rootfs"/etc/hostname "$rootfs"/etc/resolv.conf
  find "$rootfs/dev" -mindepth 1 -delete

  c=$(buildah from scratch)
  mnt=$(buildah mount "$c")
  cp -a "$rootfs/." "$mnt/"
  buildah umount "$c" >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd '["/bin/bash"]' "$c"
  buildah commit --quiet --rm "$c" "$BASE_IMAGE" >/dev/null
  remove_tree "$rootfs"
  export_and_import base "$BASE_IMAGE" "$start" "built (debootstrap $mirror)"
}

build_pause() {
  current=$PAUSE_IMAGE
  local start dir src hash work c
  start=$(now)
  dir=$(cd / && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  src=$dir/build/pause/linux/pause.c
  [[ -f $src ]] || { echo "$src not found" >&2; false; }
  # This function's own text is an input too: it holds the compiler flags.
  hash=$( { sha256sum "$src"; echo "$K8S_VERSION"; declare -f build_pause; } | sha256sum | cut -c1-64)
  if [[ $(image_label "$PAUSE_IMAGE") == "$hash" ]]; then
    export_and_import pause "$PAUSE_IMAGE" "$start" "up to date"
    return
  fi
  work=$(mktemp -d)
  gcc -static -O2 -Wall -DVERSION="$K8S_VERSION" -o "$work/pause" "$src"
  strip "$work/pause"
  c=$(buildah from scratch)
  buildah copy --quiet "$c" "$work/pause" /pause >/dev/null
  # 65535 as in Kubernetes' own pause image: not root, no files of its own.
  buildah config --entrypoint '["/pause"]' --user 65535:65535 --label "$HASH_LABEL=$hash" "$c"
  buildah commit --quiet --rm "$c" "$PAUSE_IMAGE" >/dev/null
  rm -rf "$work"
  export_and_import pause "$PAUSE_IMAGE" "$start" "built"
}

# copy_sources DOCKERFILE: the context paths its COPY/ADD lines name (shell form, no --from).
copy_sources() {
  awk 'toupper($1) == "COPY" || toupper($1) == "ADD" {
         if ($0 ~ /--from=/) next
         n = 0; for (i = 2; i <= NF; i++) if ($i !~ /^--/) a[++n] = $i
         for (i = 1; i < n; i++) print a[i] }' "$1"
}

# inputs_hash DOCKERFILE CONTEXT BUILD_ARGS...: what decides whether an image must be rebuilt.
inputs_hash() {
  local dockerfile=$1 context=$2 from src
  shift 2
  {
    sha256sum "$dockerfile"
    printf '%s\n' "$@"
    while read -r from; do
      echo "$from $(image_id "$from" 2>/dev/null || echo stage)"
    done < <(awk 'toupper($1) == "FROM" { print $2 }' "$dockerfile")
    for src in $(copy_sources "$dockerfile"); do
      # Bytecode caches are left out (and kept out of the build by .dockerignore): running the
      # tests must not make an image look out of date.
      find "$context/$src" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 stat -c '%a %n'
      find "$context/$src" -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    done
  } | sha256sum | cut -c1-64
}

# npm_args DOCKERFILE: for a Dockerfile declaring `ARG NPM_CONFIG_REGISTRY`, the host npm's
# registry and CA file (a TLS-inspecting proxy's CA is only in the host's bundle).
npm_args() {
  local cafile
  grep -q '^ARG NPM_CONFIG_REGISTRY' "$1" && command -v npm >/dev/null || return 0
  echo "--build-arg=NPM_CONFIG_REGISTRY=$(npm config get registry)"
  cafile=$(npm config get cafile)
  if [[ -f $cafile ]]; then
    echo "--volume=$cafile:/run/codeexec-npm-ca.crt:ro"
    echo "--build-arg=NPM_CONFIG_CAFILE=/run/codeexec-npm-ca.crt"
  fi
}

# pip_args DOCKERFILE: for a Dockerfile declaring `ARG PIP_CERT`, the host pip's CA file and
# index (a TLS-inspecting proxy's CA is only in the host's bundle), like npm_args.
pip_args() {
  local cafile index
  grep -q '^ARG PIP_CERT' "$1" && command -v pip3 >/dev/null || return 0
  cafile=${PIP_CERT:-$(pip3 config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'\$/\1/p" || true)}
  if [[ -f $cafile ]]; then
    echo "--volume=$cafile:/run/codeexec-pip-ca.crt:ro"
    echo "--build-arg=PIP_CERT=/run/codeexec-pip-ca.crt"
  fi
  index=${PIP_INDEX_URL:-$(pip3 config list 2>/dev/null | sed -n "s/^global\.index-url='\(.*\)'\$/\1/p" || true)}
  if [[ -n $index ]]; then echo "--build-arg=PIP_INDEX_URL=$index"; fi
}

# build_dockerfile NAME DOCKERFILE CONTEXT
build_dockerfile() {
  local name=$1 dockerfile=$2 context=$3 image=localhost/codeexec/$1:$TAG start hash args
  current=$image
  start=$(now)
  mapfile -t args < <(npm_args "$dockerfile"; pip_args "$dockerfile")
  hash=$(inputs_hash "$dockerfile" "$context" "${args[@]}")
  if [[ $(image_label "$image") == "$hash" ]]; then
    export_and_import "$name" "$image" "$start" "up to date"
    return
  fi
  run_logged "$name" buildah bud --pull=never --network host --layers --force-rm --label "$HASH_LABEL=$hash" \
    "${args[@]}" -f "$dockerfile" -t "$image" "$context"
  export_and_import "$name" "$image" "$start" "built"
}

# export_and_import NAME IMAGE START WHAT
export_and_import() {
  local name=$1 image=$2 start=$3 what=$4 id tar
  id=$(image_id "$image")
  tar=$IMAGES_DIR/${image##*/}.tar
  tar=${tar/:/-}
  if [[ ! -f $tar || $(cat "$tar.id" 2>/dev/null) != "$id" ]]; then
    rm -f "$tar.tmp"
    run_logged "$name-export" buildah push --quiet "$image" "docker-archive:$tar.tmp:$image"
    mv "$tar.tmp" "$tar"
    echo "$id" >"$tar.id"
    what+=", exported"
  fi
  if [[ ! -S $CONTAINERD_ADDRESS ]]; then
    what+=", containerd not running"
  elif [[ $(containerd_config_digest "$image") == "$(archive_config_digest "$tar")" ]]; then
    what+=", in containerd"
  else
    run_logged "$name-import" "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_ADDRESS" -n k8s.io images import "$tar"
    what+=", imported"
  fi
  report "$image" "$start" "$what"
}

# archive_config_digest TAR: digest of the image config inside a docker archive.
archive_config_digest() {
  local config
  config=$(tar -xOf "$1" manifest.json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["Config"])')
  echo "sha256:$(tar -xOf "$1" "$config" | sha256sum | cut -c1-64)"
}

# containerd_config_digest IMAGE: digest of the image config containerd holds for IMAGE (or nothing).
containerd_config_digest() {
  local manifest
  manifest=$("$CONTAINERD_BIN/ctr" --address "$CONTAINERD_ADDRESS" -n k8s.io images ls "name==$1" | awk 'NR == 2 { print $3 }')
  [[ -n $manifest ]] || return 0
  "$CONTAINERD_BIN/ctr" --address "$CONTAINERD_ADDRESS" -n k8s.io content get "$manifest" |
    python3 -c 'import json, sys; print(json.load(sys.stdin).get("config", {}).get("digest", ""))'
}

build_base
build_pause
if $cluster_only; then exit 0; fi
for dockerfile in sandbox_images/*/Dockerfile; do
  name=$(basename "$(dirname "$dockerfile")")
  build_dockerfile "$name" "$dockerfile" sandbox_images
done
if [[ -f operator/Dockerfile ]]; then
  build_dockerfile operator operator/Dockerfile .
fi
# Servers the e2e tests run beside the sandboxes (not shipped): localhost/codeexec/e2e-<dir>.
for dockerfile in tests/e2e/images/*/Dockerfile; do
  dir=$(dirname "$dockerfile")
  build_dockerfile "e2e-$(basename "$dir")" "$dockerfile" "$dir"
done
