# Shared by scripts/agent and scripts/test: make sure Debian packages are present, installing
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
