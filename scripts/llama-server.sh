# Sourced by scripts/llama-server-test.sh and scripts/bench-local-model.sh: the llama.cpp server of
# llama-cpp-python, installed once into target/llama-venv and started on a free loopback port.
# The caller sets `root` (the repository) and `work` (a scratch directory), and must call
# `stop_llama_server` on exit.

llama_venv="$root/target/llama-venv"
llama_server_pid=""

# Installs llama-cpp-python[server] into target/llama-venv unless it is there (pip builds
# llama.cpp from source: about 10 minutes on 2 cores).
ensure_llama_server() {
    if ! "$llama_venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
        echo "installing llama-cpp-python[server] into $llama_venv (builds llama.cpp: ~10 minutes)" >&2
        python3 -m venv "$llama_venv"
        "$llama_venv/bin/pip" install --quiet --disable-pip-version-check 'llama-cpp-python[server]'
    fi
}

# The installed llama-cpp-python version.
llama_server_version() {
    "$llama_venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'
}

# start_llama_server MODEL [SERVER FLAGS...]: starts the server (alias `smollm2`, log in
# $work/server.log), waits up to 120 s until /v1/models answers, and sets `llama_url`.
start_llama_server() {
    local model=$1 port deadline
    shift
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    llama_url="http://127.0.0.1:$port/v1"
    "$llama_venv/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
        --host 127.0.0.1 --port "$port" --n_ctx 2048 "$@" >"$work/server.log" 2>&1 &
    llama_server_pid=$!
    deadline=$((SECONDS + 120))
    until curl --silent --fail --max-time 2 "$llama_url/models" >/dev/null; do
        if ! kill -0 "$llama_server_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: the llama.cpp server did not answer on $llama_url; its log:" >&2
            cat "$work/server.log" >&2
            exit 1
        fi
        sleep 1
    done
}

# Stops the server if it runs.
stop_llama_server() {
    if [ -n "$llama_server_pid" ]; then
        kill "$llama_server_pid" 2>/dev/null || true
        wait "$llama_server_pid" 2>/dev/null || true
    fi
}
