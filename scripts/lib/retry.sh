# Sourced by the scripts that fetch from a package registry. `retry CMD...` runs CMD up to three
# times, 15 s and then 45 s apart, so that a registry's passing failure (a reset connection, a
# timeout that pip does not retry itself) does not fail a whole test run. CMD must be safe to run
# again after a failure part way (pip download, pip install and apt-get are).
retry() {
    local delays=(15 45) try=1 status
    until "$@"; do
        status=$?
        if [ "$try" -gt "${#delays[@]}" ]; then
            echo "$(basename "$0"): gave up after $try tries: $*" >&2
            return "$status"
        fi
        echo "$(basename "$0"): try $try failed: $*; trying again in ${delays[try - 1]} s" >&2
        sleep "${delays[try - 1]}"
        try=$((try + 1))
    done
}
