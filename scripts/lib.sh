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
