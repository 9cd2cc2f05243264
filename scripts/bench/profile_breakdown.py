"""Summarises `perf script -F comm,tid,ip,sym,dso` output of the host
(recorded with --call-graph dwarf) into the parts of a request's life, for
scripts/bench/profile.sh.

Usage: profile_breakdown.py STACKS LOAD_JSON CPU_TICKS CLK_TCK LOAD_SECONDS

Each sample is put in the first part, in the order of PARTS, whose test
matches it, so a SQLite read made by a key-value call of the guest counts
as "SQLite reads", not as "host calls from the guest". Guest code is a
sample whose innermost frame lies in code wasmtime compiled (perf map
"[JIT]"/perf-*.map); its calls into the host are under those host
functions instead.
"""

import collections
import json
import re
import sys


def samples(path):
    """Yields (thread name, [frames innermost first]); a frame is (symbol, dso)."""
    comm, frames = None, []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if comm is not None:
                    yield comm, frames
                comm, frames = None, []
            elif line[0] in " \t":
                body = line.strip().split(" ", 1)
                rest = body[1] if len(body) > 1 else "?"
                m = re.match(r"(.*) \(([^()]*)\)$", rest)
                sym, dso = (m.group(1), m.group(2)) if m else (rest, "")
                sym = re.sub(r"::h[0-9a-f]{16}", "", sym)
                sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
                frames.append((sym, dso))
            else:
                comm = line.split()[0]
    if comm is not None:
        yield comm, frames


def has(frames, *needles):
    return any(n in sym for sym, _ in frames for n in needles)


def is_guest(frames):
    if not frames:
        return False
    sym, dso = frames[0]
    return "[JIT]" in dso or "perf-" in dso or sym.startswith("wasm[")


# (part, test). First match wins; see the module doc.
PARTS = [
    ("SQLite writer thread (group commit, fsync)", lambda c, f: c.startswith("sqlite-wr")),
    ("SQLite reads (request and reader threads)", lambda c, f: has(f, "sqlite3")),
    ("read cache of the embedded store", lambda c, f: has(f, "ReadCache")),
    ("other threads (log writer, epoch, readers)", lambda c, f: not c.startswith("wasmshop") or c.startswith("wasmshop-")),
    ("guest code (the component's own work)", lambda c, f: is_guest(f)),
    ("instantiation (wasmtime)", lambda c, f: has(f, "InstancePre<T>::_instantiate")),
    ("instance teardown (store drop, memory reset)", lambda c, f: has(f, "drop_in_place<wasmtime::runtime::store::Store")),
    ("key-value calls in the host", lambda c, f: has(f, "keyvalue::", "KeyValueStore")),
    ("messaging calls in the host", lambda c, f: has(f, "messaging::", "MessageBroker")),
    ("other host calls from the guest (WASI, HTTP types, lifting)", lambda c, f: has(f, "cabi_entrypoint", "HostFunc", "component-trampolines", "resume_fiber", "wasmtime_wasi")),
    ("request set-up and finish in the host (route, Spin headers, telemetry, access log)", lambda c, f: has(f, "component::serve::{{closure}}", "telemetry::", "tracing_subscriber")),
    ("HTTP/1 and TCP (hyper, kernel)", lambda c, f: has(f, "hyper::", "tcp_", "writev", "__libc_recv", "poll_read", "poll_write", "front_door")),
    ("tokio scheduling and idle", lambda c, f: has(f, "park", "epoll_wait", "schedule_task", "futex")),
]


def main():
    stacks, load_json, ticks, clk_tck, load_seconds = sys.argv[1:6]
    with open(load_json) as f:
        load = json.load(f)
    counts = collections.Counter()
    leaves = collections.Counter()
    total = 0
    for comm, frames in samples(stacks):
        total += 1
        for part, test in PARTS:
            if test(comm, frames):
                counts[part] += 1
                break
        else:
            counts["other"] += 1
        if frames:
            leaves[frames[0][0][:110]] += 1
    if total == 0:
        sys.exit("perf recorded no samples of the host: is the host busy, and may perf sample it?")
    cpu_seconds = int(ticks) / int(clk_tck)
    # loadgen's `requests` counts the measured seconds only; the CPU ticks
    # span its warm-up too, so scale requests to the whole load.
    requests = load["rps"] * float(load_seconds)
    bad = load.get("non_2xx", 0) + load.get("errors", 0)
    print(f"load: {load['rps']:.0f} req/s, p50 {load['p50_ms']:.2f} ms, p99 {load['p99_ms']:.2f} ms, non-2xx/errors {bad}")
    if requests:
        print(f"host CPU: {cpu_seconds:.2f} s over the load = {cpu_seconds / float(load_seconds):.2f} cores, "
              f"{1e6 * cpu_seconds / requests:.0f} µs per request")
    print(f"\n{total} samples of the host; share by part of the request's life:")
    for part, n in counts.most_common():
        per_request = ""
        if requests:
            per_request = f"  ~{1e6 * cpu_seconds * n / total / requests:6.0f} µs/request"
        print(f"  {100 * n / total:5.1f}%{per_request}  {part}")
    print("\nfunctions most samples end in:")
    for sym, n in leaves.most_common(15):
        print(f"  {100 * n / total:5.1f}%  {sym}")
    if bad:
        sys.exit("the row had non-2xx answers or errors: its profile is not the row's")


if __name__ == "__main__":
    main()
