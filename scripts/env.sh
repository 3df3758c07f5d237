# Sourced by the scripts: make sure the project's virtual environment exists and is up to date.
# Creates .venv with the pinned requirements on first use (or when requirements change).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SKEL_VENV:-$ROOT/.venv}"
ensure_venv() {
    local req="$ROOT/requirements-dev.txt" stamp="$VENV/.requirements.sha256"
    local want; want="$(cat "$ROOT/requirements.txt" "$req" | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "[env] setting up $VENV (pinned torch, numpy, faiss-cpu, ...)" >&2
        python3 -m venv "$VENV" || { echo "[env] python3 -m venv failed: install python3-venv" >&2; return 1; }
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || true
        "$VENV/bin/python" -m pip install -q -r "$req" >&2 || { echo "[env] pip install failed" >&2; return 1; }
        echo "$want" > "$stamp"
    fi
    PY="$VENV/bin/python"
}
