#!/usr/bin/env python3
"""Independent reference implementation of gossip-election's pinned placement.

It shares no code with the Rust crate: it uses the `xxhash` package from PyPI.
Run `pip install xxhash && python3 scripts/placement_vectors.py > tests/data/placement_vectors.txt`
to regenerate the vectors that `tests/placement.rs` checks.

Output format, one case a line:
  score <resource> <name> <hex score>
  rank <resource> <tickets> <name,name,...> -> <name,name,...>
Names and resources never contain spaces or commas here.
"""
import xxhash

M = (1 << 64) - 1


def fmix64(k):
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & M
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & M
    k ^= k >> 33
    return k


def score(resource, name):
    r = xxhash.xxh3_64_intdigest(resource.encode("utf-8"), seed=0)
    n = xxhash.xxh3_64_intdigest(name.encode("utf-8"), seed=0)
    return fmix64(r ^ n)


def desired(resource, names, tickets):
    ranked = sorted(names, key=lambda n: (-score(resource, n), n.encode("utf-8")))
    return ranked[:tickets]


def main():
    score_cases = [
        ("echo", "w0"), ("echo", "w1"), ("echo", "w2"), ("billing-cron", "w3"),
        ("ünïcode-rés", "node-a"), ("x", "y"), ("a" * 64, "worker-17"),
        ("mail-sender", "10.0.0.1:7946"), ("日本語", "ノード"), ("e", "e"),
    ]
    for r, n in score_cases:
        print(f"score {r} {n} {score(r, n):016x}")

    fleets = {
        "w": [f"w{i}" for i in range(5)],
        "ip": ["10.0.0.1:7946", "10.0.0.2:7946", "10.0.0.3:7946"],
        "node": ["node-a", "node-b", "node-c", "node-d"],
        "big": [f"worker-{i:03}" for i in range(40)],
        "host": [f"host{i}.example" for i in range(12)],
    }
    rank_cases = [
        ("echo", "w", 1), ("echo", "w", 2), ("echo", "w", 5), ("billing-cron", "w", 3),
        ("echo", "ip", 1), ("ünïcode-rés", "node", 2),
    ]
    resources = ["echo", "scheduler", "cron-nightly", "mail", "reindex", "ü", "billing-cron",
                 "r" * 64, "queue/drain", "metrics-push"]
    for i, r in enumerate(resources):
        for j, fleet in enumerate(["big", "host", "node", "w"]):
            rank_cases.append((r, fleet, 1 + (i + j) % 4))
    for r, fleet, tickets in rank_cases:
        names = fleets[fleet]
        print(f"rank {r} {tickets} {','.join(names)} -> {','.join(desired(r, names, tickets))}")


if __name__ == "__main__":
    main()
