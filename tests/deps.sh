# Sourced by tests/run_all.sh and launch/*.sh: installs the Debian packages tga needs when any is
# missing (one apt-get update first). Run as root, as on the project's machines.
TGA_DEBIAN_PACKAGES=(cmake ninja-build pkg-config gcc libyaml-dev libzstd-dev libopenmpi-dev openmpi-bin
                     libopenblas-dev python3-torch python3-numpy git)

tga_install_deps() {
    local missing=()
    for p in "${TGA_DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing missing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q
        apt-get install -y -q "${missing[@]}"
    fi
}
