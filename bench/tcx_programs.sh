# A lab's tc programs off and on again, for a baseline without them in the same lab
# (tcx_toggle.c: the tcx links pinned under the node's folder are detached, their programs
# kept in a bpffs folder, and made again). Sourced by datapath.sh and conntrack_warmth.sh.
# The caller sets TCX_LAB (the lab), tmp (a temp folder holding the compiled tcx_toggle),
# SAVED (the bpffs folder for the detached programs) and FATHOM (the CLI), and defines
# in_ns.

PROGRAMS=on
programs() { # on|off: both nodes' programs
  [ "$1" = "$PROGRAMS" ] && return 0
  local op=attach n; [ "$1" = off ] && op=detach
  PROGRAMS=mixed       # until both nodes are done
  for n in node1 node2; do
    mkdir -p "$SAVED/$n" "$tmp/links-$n"
    in_ns "$TCX_LAB-$n" "$tmp/tcx_toggle" "$op" "/sys/fs/bpf/fathom/$TCX_LAB/$n/links" "$SAVED/$n" "$tmp/links-$n" \
      >/dev/null || { echo "could not $op the programs of $TCX_LAB $n" >&2; return 1; }
  done
  PROGRAMS=$1
}

programs_restore() { # on exit, whatever state a failure left them in: every saved link made again
  if [ -d "$SAVED" ]; then
    for n in node1 node2; do
      [ -d "$tmp/links-$n" ] && in_ns "$TCX_LAB-$n" "$tmp/tcx_toggle" attach "/sys/fs/bpf/fathom/$TCX_LAB/$n/links" \
        "$SAVED/$n" "$tmp/links-$n" >/dev/null
    done
  fi
  rm -rf "$SAVED"
}

# Checks once that the programs come off and back: node1's forwarded-packet counter stands
# still while they are off and moves again once they are back. "$@" sends a little
# traffic through node1. Returns 1 (with a message) when they do not.
programs_check() {
  local state c0 c1
  for state in off on; do
    programs "$state" || return 1
    c0="$(programs_forwarded)"
    "$@" >/dev/null || { echo "no traffic through $TCX_LAB with the programs $state: $*" >&2; return 1; }
    c1="$(programs_forwarded)"
    if [ "$state" = off ] && [ "$c1" != "$c0" ]; then echo "programs still run after detaching ($c0 -> $c1)" >&2; return 1; fi
    if [ "$state" = on ] && [ "$c1" = "$c0" ]; then echo "programs do not run after attaching again" >&2; return 1; fi
  done
}

programs_forwarded() { # packets node1's programs forwarded, summed over CPUs
  "$FATHOM" bpf counters --lab "$TCX_LAB" --node node1 -o json |
    jq '[.rows[] | select(.[0] == "forwarded") | .[2] | tonumber] | add // 0'
}
