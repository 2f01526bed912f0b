"""Benchmark harnesses: faults (a local platform as processes, open-loop load,
accounting) and selection-quality evaluations (an in-process platform, scoring, plots).

* :mod:`mulambda.bench.infra` — a private Kafka and Redis through ``deploy/local/infra.sh``;
* :mod:`mulambda.bench.platform` — :class:`~mulambda.bench.platform.LocalPlatform`, the whole
  platform (that infrastructure, selectors, routers, executors, companions) as local
  processes, with kills and restarts;
* :mod:`mulambda.bench.load` — open-loop load of hand-written-equivalent inference requests;
* :mod:`mulambda.bench.readers` — group-less readers of the reply and request topics;
* :mod:`mulambda.bench.verify` — the pure accounting (lost, duplicates, errors, recovery);
* :mod:`mulambda.bench.scenarios` — the issue-10 faults and the run that measures one.

Used by ``tests/faults`` (targets asserted) and ``benchmarks/bench_faults.py`` (longer runs,
figures printed). The evaluations (``benchmarks/bench_replay.py``,
``benchmarks/bench_overload.py``):

* :mod:`mulambda.bench.inprocess` — selector, router and recording synthetic executors
  in one process over real Kafka and Redis;
* :mod:`mulambda.bench.evaluation` — the pure scoring (utility, oracles, SLO outcome,
  confidence intervals and ties);
* :mod:`mulambda.bench.reporting` — CSV/JSON result files and small PNG plots.
"""
