#!/usr/bin/env python3
"""Block-fetch schedulers on a shared link: average against p99 read latency.

A model of the platform benchmark's cold large-file step (make bench): N
readers, reader i reads 16 MiB of file i%4 at slot (i//4)%8 in 1 MiB reads,
so 32 ranges of 16 MiB (4 blocks of 4 MiB each) are shared by the readers.
A block fetch waits 20 ms for its first byte, then its bytes arrive in order
at an equal share of a 111 MiB/s link (at most 52 MiB/s per connection, as
the benchmark's store model measured); a read ends when its MiB of its
block has arrived. At most K fetches run; the others wait in a queue whose
order is the policy:

  fifo    first come, first served (Cistern today, K=16);
  oldest  the file that was asked for first, its earliest block first;
          with --promote D, a request that waited D ms goes first.

Usage: hack/schedsim.py [--readers 50,100]
It prints average and p99 read latency and the time the last reader ends.
The report of make bench cites it where Cistern loses on average latency.
"""
import argparse

LINK = 111.0 / 1000  # MiB per ms
CAP = 52.0 / 1000
FIRST_BYTE = 20  # ms
BLOCK_MIB, RANGE_BLOCKS, READS = 4, 4, 16


def run(readers, k, policy, promote=None, read_ahead=0):
    rd = [{"r": (i % 4, (i // 4) % 8), "p": 0, "start": 0, "lat": []} for i in range(readers)]
    got, inflight, queue, queued, first = {}, {}, [], set(), {}
    t, done = 0, 0

    def ask(r, b, cls):
        if b >= RANGE_BLOCKS or got.get((r, b), 0) >= BLOCK_MIB or (r, b) in inflight or (r, b) in queued:
            return
        first.setdefault(r[0], t)
        queued.add((r, b))
        queue.append(((first[r[0]], r[1] * RANGE_BLOCKS + b), t, r, b, cls))

    def order(q):
        if policy == "fifo":
            return (q[4], q[1])
        late = promote is not None and t - q[1] > promote
        return (0 if late else 1, q[1] if late else 0, q[0], q[4])

    while done < readers:
        for x in rd:
            if x["p"] < READS:
                b = x["p"] // BLOCK_MIB
                ask(x["r"], b, 0)
                for a in range(1, read_ahead + 1):
                    ask(x["r"], b + a, 1)
        queue.sort(key=order)
        while len(inflight) < k and queue:
            _, _, r, b, _ = queue.pop(0)
            queued.discard((r, b))
            inflight[(r, b)], got[(r, b)] = t, 0.0
        flowing = [key for key, s in inflight.items() if t - s >= FIRST_BYTE]
        if flowing:
            share = min(CAP, LINK / len(flowing))
            for key in flowing:
                got[key] = min(BLOCK_MIB, got[key] + share)
                if got[key] >= BLOCK_MIB:
                    del inflight[key]
        for x in rd:
            if x["p"] >= READS:
                continue
            if got.get((x["r"], x["p"] // BLOCK_MIB), 0) >= x["p"] % BLOCK_MIB + 1:
                x["lat"].append(t - x["start"])
                x["p"], x["start"] = x["p"] + 1, t
                done += x["p"] >= READS
        t += 1
    lats = sorted(v for x in rd for v in x["lat"])
    return sum(lats) / len(lats), lats[len(lats) * 99 // 100], t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--readers", default="50,100")
    args = ap.parse_args()
    cases = [(16, "fifo", None), (4, "fifo", None), (4, "oldest", None), (8, "oldest", None),
             (4, "oldest", 2000), (8, "oldest", 2000), (8, "oldest", 1500)]
    print("readers  K  policy   promote  avg ms  p99 ms  last ends ms")
    for n in (int(v) for v in args.readers.split(",")):
        for k, policy, promote in cases:
            avg, p99, end = run(n, k, policy, promote)
            print(f"{n:7d} {k:2d}  {policy:7s} {str(promote or '-'):>7s}  {avg:6.0f}  {p99:6.0f}  {end:6d}")


if __name__ == "__main__":
    main()
