"""Measuring: how many rounds (Plan), interleaved samplers with the cyclic
GC paused, and the summaries (median, p99, ratios with their spread over
blocks of rounds) every timed scenario reports."""
from __future__ import annotations

import contextlib
import gc
import random
import time

BLOCKS = 5                  # noise estimate: ratio per block of rounds


class Plan:
    """Iteration counts: rounds are interleaved passes over all contenders."""

    def __init__(self, quick: bool, instructions=None):
        self.quick = quick
        # callgrind runs take a minute: in full runs, or when asked for
        self.instructions = not quick if instructions is None else instructions

        def pick(full, fast):
            return fast if quick else full
        self.warmup = pick(50, 10)
        self.read_rounds = pick(5000, 400)
        self.write_rounds = pick(600, 40)
        self.wal_ticks = pick(100, 20)
        self.close_rounds = pick(1000, 80)
        self.capped_closes = pick(3, 1)
        self.ckpt_rounds, self.ckpt_batch = pick(1000, 150), 100
        self.connect_rounds, self.connect_batch = pick(1000, 150), 20
        self.scan_rounds, self.scan_repeat = pick(60, 8), 5
        self.plugin_files, self.plugin_per_file = pick(4, 2), pick(75, 25)
        self.plugin_rounds = pick(5, 1)
        self.burst_rounds = pick(80, 4)
        self.instruction_ticks = pick(1000, 100)



@contextlib.contextmanager
def _gc_paused():
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _timed_batch(fn, batch=1):
    """A sampler: runs fn `batch` times, returns ns per call."""
    clock = time.perf_counter_ns

    def sample():
        start = clock()
        for _ in range(batch):
            fn()
        return (clock() - start) / batch
    return sample


def _interleave(samplers: dict, rounds: int, warmup: int, *, limits=None, collect_every=200,
                seed=0):
    """Run each sampler once per round, in a fresh random order every round.
    `limits` caps the number of rounds of some contenders.  Returns
    {name: [ns, ...]} without the warm-up rounds.

    The order is shuffled (reproducibly, from `seed`) rather than rotated:
    a sample is faster when the one before it ran the same code, which is
    still in the caches.  A fixed rotation of [plain, Python subclass,
    ours, ours truncate] put plain after one of ours in every round and
    ours after the Python subclass in three rounds of four, and that alone
    added 1.2 points to our connect+close ratio (docs/performance.md,
    "Measuring").  Shuffled, every contender follows every other equally
    often in the long run."""
    names = list(samplers)
    limits = limits or {}
    out = {name: [] for name in names}
    order = list(names)
    shuffle = random.Random(seed).shuffle
    with _gc_paused():
        for r in range(warmup + rounds):
            shuffle(order)
            for name in order:
                cap = limits.get(name)
                if cap is not None and r - warmup >= cap:
                    continue
                if cap is not None and r < warmup:
                    continue    # capped contenders are too slow to warm up
                value = samplers[name]()
                if r >= warmup:
                    out[name].append(value)
            if r % collect_every == collect_every - 1:
                gc.collect()    # closed connections sit in cycles (3.11+)
    return out


def _percentile(sorted_values, q):
    if not sorted_values:
        return None
    index = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def _median(values):
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _summary(samples, *, p99=True):
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_us": _median(ordered) / 1e3,
        "p99_us": _percentile(ordered, 0.99) / 1e3 if p99 else None,
        "min_us": ordered[0] / 1e3,
    }


def _block_medians(samples):
    """Median in each of BLOCKS consecutive blocks: [low, high] in us."""
    if len(samples) < BLOCKS * 5:
        return None
    size = len(samples) / BLOCKS
    medians = [_median(samples[round(i * size):round((i + 1) * size)]) / 1e3
               for i in range(BLOCKS)]
    return [min(medians), max(medians)]


def _block_ratios(samples, base_samples):
    """Ratio of medians in BLOCKS consecutive blocks: (low, high)."""
    if min(len(samples), len(base_samples)) < BLOCKS * 5:
        return None

    def block(values, i):
        # Both series are in time order: block i spans the same rounds.
        size = len(values) / BLOCKS
        return values[round(i * size):round((i + 1) * size)]
    ratios = [_median(block(samples, i)) / _median(block(base_samples, i))
              for i in range(BLOCKS)]
    return [min(ratios), max(ratios)]


def _results(raw: dict, base: str, *, p99=True, labels=None, notes=None):
    """Per-contender summaries with the ratio to `base`."""
    base_median = _median(raw[base])
    rows = {}
    for name, samples in raw.items():
        row = {"label": (labels or {}).get(name, name), **_summary(samples, p99=p99)}
        row["ratio"] = row["median_us"] * 1e3 / base_median
        row["ratio_blocks"] = _block_ratios(samples, raw[base])
        row["median_blocks_us"] = _block_medians(samples)
        if notes and name in notes:
            row["note"] = notes[name]
        rows[name] = row
    return rows

