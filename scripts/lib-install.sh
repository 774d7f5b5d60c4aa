# Shared by scripts/install.sh and scripts/install-test.sh (sourced, not run).

# apt_for_tools DEBS_ARRAY TOOLS_ARRAY: installs the Debian packages when any tool is missing.
apt_for_tools() {
    local -n _debs=$1 _tools=$2
    local t missing=0
    for t in "${_tools[@]}"; do command -v "$t" >/dev/null 2>&1 || missing=1; done
    [ "$missing" = 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "$0: Debian packages are missing and only root can install them: ${_debs[*]}" >&2
        exit 1
    fi
    echo "$0: installing Debian packages: ${_debs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${_debs[@]}" >/dev/null
}

# pip_when_changed STAMP SPEC: installs SPEC (editable) into .venv unless STAMP holds the
# current pyproject.toml.
pip_when_changed() {
    local stamp=$1 spec=$2
    if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
        echo "$0: installing Python dependencies ($spec) into .venv"
        .venv/bin/pip install -q --disable-pip-version-check -e "$spec"
        cp pyproject.toml "$stamp"
    fi
}
