#!/bin/sh
# folio-orders.sh FILE...: the sizes of the page-cache folios the kernel
# allocates when each FILE is read cold (its cached pages dropped first),
# from the filemap:mm_filemap_add_to_page_cache tracepoint. Needs root and
# perf. Used to show why warm small-file reads through FUSE cost more than
# native ones on this kernel: a FUSE inode's page cache is built of order-0
# (4 KiB) folios, while ext4 and tmpfs give a 64 KiB file one folio.
set -eu
[ $# -gt 0 ] || { echo "usage: $0 FILE..." >&2; exit 2; }
command -v perf >/dev/null || { echo "$0: needs perf (apt-get install linux-perf)" >&2; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "$@"; do
	# Drop the file's clean cached pages, so the read below adds them.
	dd if="$f" iflag=nocache count=0 status=none
done
cat >"$out/read.sh" <<'SCRIPT'
for f in "$@"; do cat "$f" >/dev/null; done
SCRIPT
perf record -q -o "$out/perf.data" -e filemap:mm_filemap_add_to_page_cache -- sh "$out/read.sh" "$@" 2>/dev/null
printf '%-10s %-8s %s\n' folios order bytes-each
perf script -i "$out/perf.data" -F comm,trace 2>/dev/null |
	awk '$1 == "cat" { for (i = 2; i <= NF; i++) if ($i ~ /^order=/) { sub("order=", "", $i); n[$i]++ } }
	     END { for (o in n) printf "%-10d %-8d %d\n", n[o], o, 4096 * 2 ^ o }' | sort -k2 -n
