# Sourced by tests/run_all.sh and launch/*.sh: installs the Debian packages tga needs when any is
# missing (one apt-get update first). Run as root, as on the project's machines.
TGA_DEBIAN_PACKAGES=(cmake ninja-build pkg-config gcc clang libclang-rt-14-dev git
                     libyaml-dev libzstd-dev zstd libpcre2-dev libjansson-dev libopenmpi-dev openmpi-bin
                     libopenblas-dev python3-torch python3-numpy python3-venv wordnet-base)
# PyPI packages the tests use as oracles (pinned), in a venv that also sees Debian's torch/numpy.
TGA_PYPI_PACKAGES=(tokenizers==0.21.1 gguf==0.17.1 safetensors==0.5.3)

tga_install_deps() {
    local missing=()
    for p in "${TGA_DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    # node runs the GPT-2 reference encoder; any node >= 12 will do, Debian's or the machine's own
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing missing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    fi
}

# Creates (once) the Python environment for the tests at $1 and prints its interpreter's path.
tga_python_env() {
    local venv=$1
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tokenizers, gguf, safetensors" 2>/dev/null; then
        /usr/bin/python3 -m venv --system-site-packages "$venv" >&2
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${TGA_PYPI_PACKAGES[@]}" >&2
    fi
    echo "$venv/bin/python"
}
