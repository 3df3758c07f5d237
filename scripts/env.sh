# Sourced by the scripts: make sure the project's virtual environment exists and is up to date.
# Creates .venv with the pinned requirements on first use (or when requirements change). Two
# scripts started at once on a fresh clone would both install into the same folder (pip's
# half-removed "~ip" left behind): the setup holds an flock on $VENV.lock, and the second
# finds the environment ready once the first is done.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SKEL_VENV:-$ROOT/.venv}"
_venv_ready() {   # $1: the requirements' hash the environment must have been made from
    [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" = "$1" ]
}
_venv_setup() {   # $1: requirements-dev.txt, $2: its hash (with requirements.txt)
    _venv_ready "$2" && return 0   # made by another script while this one waited for the lock
    echo "[env] setting up $VENV (pinned torch, numpy, faiss-cpu, ...)" >&2
    python3 -m venv "$VENV" || { echo "[env] python3 -m venv failed: install python3-venv" >&2; return 1; }
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
    "$VENV/bin/python" -m pip install -q -r "$1" >&2 || { echo "[env] pip install failed" >&2; return 1; }
    echo "$2" > "$VENV/.requirements.sha256"
}
ensure_venv() {
    local req="$ROOT/requirements-dev.txt"
    local want; want="$(cat "$ROOT/requirements.txt" "$req" | sha256sum | cut -d' ' -f1)"
    if ! _venv_ready "$want"; then
        mkdir -p "$(dirname "$VENV")"
        if command -v flock >/dev/null; then
            ( flock 9 && _venv_setup "$req" "$want" ) 9>"$VENV.lock" || return 1
        else
            _venv_setup "$req" "$want" || return 1
        fi
    fi
    PY="$VENV/bin/python"
}
