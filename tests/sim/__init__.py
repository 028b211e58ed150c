"""The deterministic simulator of the coalition protocol (docs/reliability.md, "The
deterministic simulator"), in the manner of TigerBeetle's VOPR.

Several real partner nodes (``runtime.wiring.build_node``, each on its own SQLite file)
run in one thread of one process on a simulated clock (``clock.SimClock``) over a
simulated network (``network.SimNetwork``) that drops, duplicates, delays, reorders and
partitions messages; nodes crash (their objects discarded, their databases kept) and
restart from their configuration. A seeded scheduler (``run.simulate``) interleaves a
random workload, the nodes' background steps (sealing, the outbox, the witness, expiry)
and the faults; afterwards, with the network healed, the invariants are checked
(``invariants.check``). One seed gives one run: the same seed, the same trace hash.

It is test tooling, not shipped in the wheel (as ``tests/support``): it drives the
nodes' internals (single steps instead of their threads) and writes throwaway files.
``scripts/simulate.py`` runs it by seed; ``tests/integration/test_simulator.py`` runs a
bounded number of seeds in CI.
"""
