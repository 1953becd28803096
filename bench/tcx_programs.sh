# A lab's tc programs off and on again, for a baseline without them in the same lab
# (tcx_toggle.c: the tcx links pinned under the node's folder are detached, their programs
# kept in a bpffs folder, and made again). Sourced by datapath.sh and conntrack_warmth.sh.
# The caller sets TCX_LAB (the lab), tmp (a temp folder holding the compiled tcx_toggle)
# and SAVED (the bpffs folder for the detached programs), and defines in_ns.

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
