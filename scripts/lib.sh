# Shared by the scripts: where caches live and how build dependencies get installed.
TAILOR_CACHE="${TAILOR_CACHE:-$HOME/.cache/tailor}"
export TAILOR_CACHE

# RocksDB's Rust bindings are generated with libclang; librdkafka builds with a C compiler, make
# and OpenSSL headers. Install whatever is missing (Debian/Ubuntu), or say what to install.
ensure_build_deps() {
  local missing=()
  command -v cargo >/dev/null || { echo "Rust is required: https://rustup.rs" >&2; exit 1; }
  command -v cc >/dev/null || missing+=(build-essential)
  command -v make >/dev/null || missing+=(make)
  # (libclang-cpp, often preinstalled, is not the library bindgen loads.)
  ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || [ -n "${LIBCLANG_PATH:-}" ] || missing+=(libclang-dev)
  [ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
  command -v pkg-config >/dev/null || missing+=(pkg-config)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3 python3-pip)
  if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "installing build dependencies: ${missing[*]}" >&2
      apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then
      echo "installing build dependencies: ${missing[*]}" >&2
      sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    else
      echo "missing build dependencies: ${missing[*]} — install them and run again" >&2
      exit 1
    fi
  fi
}
