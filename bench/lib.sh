# Shared by the bench scripts, sourced from the repository root.

# need CMD [PACKAGE]: installs the Debian package (default: CMD) when CMD is missing.
need() {
  command -v "$1" >/dev/null || { apt-get update -qq && apt-get install -y -qq "${2:-$1}" >/dev/null; }
}

# release_pd: builds the release pd and sets $pd to it.
release_pd() {
  cargo build --release --locked --bin pd >/dev/null
  pd="$PWD/target/release/pd"
}

# serve_bg HOME: starts the release `pd --home HOME serve` on a free loopback port in the
# background, its output beside HOME; sets $pid and $url once it listens.
serve_bg() {
  target/release/pd --home "$1" serve --listen 127.0.0.1:0 > "$1.serve.out" 2> "$1.serve.err" &
  pid=$!
  until grep -q listening "$1.serve.out" 2>/dev/null; do
    kill -0 "$pid" || { cat "$1.serve.err"; exit 1; }
    sleep 0.1
  done
  url=$(sed -n 's/.*listening on //p' "$1.serve.out")
}

# mem: the VmRSS and VmHWM of process $pid, on one line.
mem() { awk '/VmRSS|VmHWM/ {printf "%s %d MB  ", $1, $2/1024} END {print ""}' "/proc/$pid/status"; }
