# Sourced by the scripts that install a Python package from PyPI into a virtual environment of
# its own under .cache (after scripts/lib/retry.sh). `venv_install DIR MODULE PACKAGE VERSION`
# creates DIR once and installs PACKAGE==VERSION into it, unless MODULE already imports there at
# that version.
venv_install() {
    local venv="$1" module="$2" package="$3" version="$4"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c \
        "import $module, sys; sys.exit($module.__version__ != '$version')" 2>/dev/null; then
        return 0
    fi
    echo "installing $package $version into $venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    retry "$venv/bin/pip" install --quiet --progress-bar off "$package==$version"
}
