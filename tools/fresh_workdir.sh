# Sourced by tools/build_wheel.sh, .ci/pythons.sh and .ci/nocompiler.sh: the scratch folder a
# script removes and makes afresh on each run.
#
#   fresh_workdir SCRIPT DEFAULT [WORKDIR]   sets $work (absolute) and makes it empty
#
# A WORKDIR other than the default must be one this function made before (it leaves a marker
# file), empty or missing; none may be the checkout or hold it; an argument starting with "-"
# is refused.
# Refusals print one line and exit 2, nothing removed.
fresh_workdir() {
  local script=$1 default=$2 given=${3:-} marker=.nnc-scratch
  case "$given" in
    -*) echo "$script: $given is not a folder (options are not taken; WORKDIR defaults to $default)" >&2; exit 2 ;;
  esac
  work=$(realpath -m -- "${given:-$default}")
  case "$(pwd)/" in
    "$work"/*) echo "$script: WORKDIR $work holds the checkout; choose another" >&2; exit 2 ;;
  esac
  if [ "$work" != "$(realpath -m -- "$default")" ] && [ -e "$work" ] && [ ! -e "$work/$marker" ] && [ -n "$(ls -A -- "$work" 2>/dev/null)" ]; then
    echo "$script: $work is not empty and was not made by $script; remove it or choose another WORKDIR" >&2
    exit 2
  fi
  rm -rf -- "$work" && mkdir -p -- "$work" && touch -- "$work/$marker" \
    || { echo "$script: could not make $work afresh" >&2; exit 2; }
}
