"""fdatasync latency of 15 KB appends, three ways (run in the directory to probe).

Usage: python3 loadtest/scripts/fsprobe.py [--beside-rewrites] append keepsize zerofill
  --beside-rewrites: meanwhile a thread rewrites a 1.4 MB file (write, fsync, rename,
                     directory fsync) every 100 ms, as a control-plane change does
  append:   the file grows with each write (blocks allocated at each sync)
  keepsize: blocks reserved first with fallocate(FALLOC_FL_KEEP_SIZE), as the spool does
  zerofill: the file written with zeros first, then overwritten
"""
import ctypes
import os
import sys
import threading
import time

libc = ctypes.CDLL("libc.so.6", use_errno=True)
FALLOC_FL_KEEP_SIZE = 1


def probe(mode, n=800, size=15000):
    path = "fsprobe.bin"
    if os.path.exists(path):
        os.remove(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    span = (size + 1024) * n
    if mode == "zerofill":
        os.write(fd, b"\0" * span)
        os.fsync(fd)
    elif mode == "keepsize":
        if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, ctypes.c_long(0), ctypes.c_long(span)) != 0:
            sys.exit("fallocate failed: errno %d" % ctypes.get_errno())
        os.fsync(fd)
    elif mode != "append":
        sys.exit("unknown mode " + mode)
    times, off = [], 0
    for _ in range(n):
        t = time.perf_counter()
        os.pwrite(fd, b"x" * size, off)
        off += size
        os.fdatasync(fd)
        times.append(time.perf_counter() - t)
        time.sleep(0.0005)
    os.close(fd)
    os.remove(path)
    times.sort()
    print("%-8s p50 %.3f ms  p90 %.3f  p99 %.3f" % (
        mode, times[n // 2] * 1e3, times[int(n * 0.9)] * 1e3, times[int(n * 0.99)] * 1e3), flush=True)


def rewrite_loop(stop):
    data = b'{"x":1}' * 200000
    while not stop.is_set():
        with open("fsprobe-state.tmp", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename("fsprobe-state.tmp", "fsprobe-state.json")
        d = os.open(".", os.O_RDONLY)
        os.fsync(d)
        os.close(d)
        stop.wait(0.1)
    os.remove("fsprobe-state.json")


args = sys.argv[1:]
stop = threading.Event()
rewriter = None
if args and args[0] == "--beside-rewrites":
    args = args[1:]
    rewriter = threading.Thread(target=rewrite_loop, args=(stop,))
    rewriter.start()
try:
    for m in args or ["append", "keepsize", "zerofill"]:
        probe(m)
finally:
    stop.set()
    if rewriter:
        rewriter.join()
