#!/usr/bin/env python3
"""Where a proxy's instructions go, by owner: reads `callgrind_annotate --threshold=100 DUMP`
(self cost per source file and function; inlined code counts in the file it came from) and
sums it into tokio/mio, httparse, bytes, the prototype's own code, std/core, memcpy/memset,
the allocator and the libc system-call wrappers. Prints Ir per request with -n N (requests in
the dump; instr.sh's default is 2000).

Usage: where.py DUMP [-n REQUESTS] [--top K]
"""
import re, subprocess, sys
from collections import Counter

args = sys.argv[1:]
if not args or args[0] in ("-h", "--help"):
    print(__doc__); sys.exit(0)
dump, requests, top = args[0], 2000, 25
if "-n" in args: requests = int(args[args.index("-n") + 1])
if "--top" in args: top = int(args[args.index("--top") + 1])

text = subprocess.run(["callgrind_annotate", "--threshold=100", "--auto=no", dump],
                      capture_output=True, text=True, check=True).stdout
total = int(re.search(r"^([\d,]+) .*PROGRAM TOTALS", text, re.M).group(1).replace(",", ""))
line_re = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+\S+(?: \([ \d.]+%\))?\s+\S+(?: \([ \d.]+%\))?\s+(.*)$")

def owner(file, function, obj):
    if "libc.so" in obj or "ld-linux" in obj:
        if re.search(r"mem(cpy|move|set)|memcmp|bcmp", function): return "libc memcpy/memset"
        if re.search(r"malloc|free|realloc|_int_|tcache|arena|calloc", function): return "allocator (glibc malloc)"
        return "libc system-call wrappers"
    if file.startswith("/rustc/"):
        file = ""  # std code: owned by the function it is inlined into (below)
    if "/tokio-" in file or "/mio-" in file:
        return tokio_part(file.split("/src/", 1)[-1])
    for key, name in (("/httparse-", "httparse"), ("/bytes-", "bytes"), ("h1-proto/src", "h1-proto (codec, edits, loop)"),
                      ("/hyper-", "hyper, hyper-util"), ("/futures-", "futures-util"), ("/http-", "http (HeaderMap, Uri)"),
                      ("/work/", "sekisho's crates")):
        if key in file: return name
    # std/core/alloc code inlined somewhere: give it to the crate of the function it sits in.
    if function.startswith("tokio::runtime::task::raw::poll"):
        # The connection task's whole future is inlined here: std code of ours and tokio's.
        return "std code inlined into the task's poll (ours or tokio's)"
    if re.match(r"<?(tokio|mio)::", function):
        return tokio_part(function.lstrip("<").replace("::", "/"))
    for key, name in (("httparse::", "httparse"), ("h1_proto::", "h1-proto (codec, edits, loop)"),
                      ("hyper", "hyper, hyper-util"), ("futures_util::", "futures-util"), ("http::", "http (HeaderMap, Uri)"),
                      ("sekisho", "sekisho's crates")):
        if function.startswith(key) or f"<{key}" in function: return name
    if "Hasher" in function or "hash_one" in function: return "std hashing (SipHash)"
    if "Timespec" in function: return "tokio timers (clock, wheel, sleep)"
    return "std/core/alloc (other)"

def tokio_part(path):
    """tokio by job: timers, readiness and socket I/O, or the scheduler and tasks."""
    if re.search(r"(^|/)time/|sleep|timeout|clock", path): return "tokio timers (clock, wheel, sleep)"
    if re.search(r"(^|/)(io|net)/|mio|selector|poll_evented", path):
        return "tokio I/O (epoll driver, readiness, read/write)"
    return "tokio scheduler and tasks"

owners, functions = Counter(), Counter()
in_table = False
for line in text.splitlines():
    if "file:function" in line: in_table = True; continue
    if not in_table: continue
    if not line.strip() and owners: break
    m = line_re.match(line)
    if not m: continue
    ir = int(m.group(1).replace(",", ""))
    if ir == total: continue  # inclusive entries of main and its callers
    rest = m.group(2)
    obj = rest[rest.rfind("[") + 1:-1] if rest.endswith("]") else ""
    place = rest[:rest.rfind(" [")] if obj else rest
    file, _, function = place.partition(":")
    owners[owner(file, function, obj)] += ir
    functions[function.split(" [")[0]] += ir

counted = sum(owners.values())
print(f"{dump}: {total:,} Ir = {total / requests:,.0f} Ir/request (self cost found for {counted / total:.1%})")
print()
print("| owner | Ir/request | share |")
print("|---|---:|---:|")
for name, ir in owners.most_common():
    print(f"| {name} | {ir / requests:,.0f} | {ir / total:.1%} |")
print()
print(f"Top {top} functions (self, inlined code included):")
print()
for function, ir in functions.most_common(top):
    print(f"* {ir / requests:,.0f} Ir/request ({ir / total:.1%}) {function[:150]}")
