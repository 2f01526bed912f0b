"""The harness the fault suite and the benchmark scripts (``benchmarks/``) share.

Library code, not scripts: faults (a local platform as processes, open-loop load,
accounting) and selection-quality evaluations (an in-process platform, scoring, plots).

* :mod:`mulambda.harness.infra` — a private Kafka and Redis through
  ``deploy/local/infra.sh``;
* :mod:`mulambda.harness.platform` — :class:`~mulambda.harness.platform.LocalPlatform`,
  the whole platform (that infrastructure, selectors, routers, executors, companions) as local
  processes, with kills and restarts;
* :mod:`mulambda.harness.load` — open-loop load of hand-written-equivalent inference requests;
* :mod:`mulambda.harness.readers` — group-less readers of the reply and request topics;
* :mod:`mulambda.harness.verify` — the pure accounting (lost, duplicates, errors, recovery);
* :mod:`mulambda.harness.scenarios` — the issue-10 faults and the run that measures one.

Used by ``tests/faults`` (targets asserted) and ``benchmarks/bench_faults.py`` (longer runs,
figures printed). The evaluations (``benchmarks/bench_replay.py``,
``benchmarks/bench_overload.py``):

* :mod:`mulambda.harness.inprocess` — selector, router and recording synthetic executors
  in one process over real Kafka and Redis;
* :mod:`mulambda.harness.evaluation` — the pure scoring (utility, oracles, SLO outcome,
  confidence intervals and ties);
* :mod:`mulambda.harness.reporting` — CSV/JSON result files and small PNG plots.
"""
