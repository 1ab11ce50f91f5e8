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
