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

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else echo "need root to run: $*" >&2; exit 1
  fi
}

# apt_install WHAT PACKAGE...: installs Debian packages (apt-get update first when one is not
# known, or when installing from the current lists fails); exits with a clear message if it can't.
apt_install() {
  local what="$1"; shift
  if ! command -v apt-get >/dev/null; then
    echo "$what is missing and there is no apt-get to install $* with; install it and run again" >&2
    exit 1
  fi
  echo "installing $*" >&2
  local p known=1
  for p in "$@"; do apt-cache show "$p" >/dev/null 2>&1 || known=; done
  if [ -z "$known" ] || ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; then
    as_root apt-get update -qq >&2 &&
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 ||
      { echo "could not install $* ($what)" >&2; exit 1; }
  fi
}

# ensure_venv VENV REQUIREMENTS: a Python virtualenv at VENV with REQUIREMENTS installed (again
# only when they, or the interpreter, changed since the last install).
ensure_venv() {
  local venv="$1" reqs="$2"
  command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys' 2>/dev/null; then
    # Debian and Ubuntu ship the venv module (and its ensurepip) in a separate package.
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
      apt_install "the python3 venv module" python3-venv
    fi
    echo "creating virtualenv $venv" >&2
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
  fi
  local stamp="$venv/.tailor-requirements.sha256" want
  want="$( { cat "$reqs"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "installing $reqs into $venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" >&2
    echo "$want" >"$stamp"
  fi
}
