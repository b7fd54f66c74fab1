"""The GIL is released while Rust computes: a Python thread keeps running during a call."""

import threading
import time

import numpy as np

import divrl


def test_python_threads_run_during_a_long_call():
    rng = np.random.default_rng(0)
    cands = rng.normal(size=(8000, 16, 32))
    ref = rng.normal(size=(64, 32))
    divrl.select(cands[:10], ref, 6, kind="gp-mi")  # warm-up (thread pool, caches)
    # Enough sets for a call of at least ~0.3 s on this machine, whatever its speed and load.
    sets = 50
    while True:
        start = time.perf_counter()
        divrl.select(cands[:sets], ref, 6, kind="gp-mi")
        if time.perf_counter() - start >= 0.3 or sets == len(cands):
            break
        sets = min(len(cands), sets * 4)

    # The spinning thread records the longest time it went without running. Were the GIL held
    # through the call, that gap would span the whole call.
    longest = [0.0]
    stop = threading.Event()

    def spin():
        last = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last)
            last = now

    worker = threading.Thread(target=spin)
    worker.start()
    time.sleep(0.05)
    call_start = time.perf_counter()
    divrl.select(cands[:sets], ref, 6, kind="gp-mi")
    call = time.perf_counter() - call_start
    stop.set()
    worker.join()
    assert call > 0.2, f"call too short to tell ({call:.3f} s)"
    assert longest[0] < 0.5 * call, f"the thread stalled {longest[0]:.3f} s of a {call:.3f} s call"
