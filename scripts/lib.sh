# Shared by scripts/run, scripts/test and scripts/bench: a project virtualenv, installed from the project's files.
# Usage: . scripts/lib.sh; ensure_venv ".[test]"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CHATGPT_APISERVER_VENV:-$ROOT/.venv}"

# ensure_debian_packages COMMAND:PACKAGE ... installs each PACKAGE whose COMMAND is missing.
ensure_debian_packages() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "==> installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
  local extras="${1:-.}"
  local python="${PYTHON:-python3}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating virtualenv in $VENV" >&2
    "$python" -m venv "$VENV" || {
      echo "==> python3 -m venv failed; installing Debian's python3-venv" >&2
      apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
      "$python" -m venv "$VENV"
    }
  fi
  # Reinstall only when the package definition changed.
  local stamp="$VENV/.installed-$(echo "$extras" | tr -c 'a-z' '_')"
  local digest
  digest="$(cat "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "==> installing chatgpt-apiserver$([ "$extras" = . ] || echo " ${extras#.}") into $VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip >/dev/null
    (cd "$ROOT" && "$VENV/bin/pip" install -q --disable-pip-version-check -e "$extras")
    echo "$digest" > "$stamp"
  fi
}
