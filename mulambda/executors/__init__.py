"""Talking to executors: the protocol clients and the companion sidecar beside each one.

http            HttpClient: the one request/response path (pooling, bounds, error mapping)
tfserving       TFServingClient: TF Serving REST calls over it
oip             OIPClient: OIP v2 calls over it, bodies in either dialect
dispatch        infer_on: one call to a candidate in the protocol it speaks (the router's)
companion       Companion: registers an executor, heartbeats, probes clients, deregisters
registration    executor registrations on Kafka: publish, tombstone, read back
heartbeats      StatusReader: model state and load read into an ExecutorStatus
client_probes   ClientProber: the registered clients and the latency probes to them
companion_stats the companion's counters and their Prometheus view
probe           the probe endpoint clients serve, client registrations, the timed GET

Wire types, errors and codecs of the protocols are :mod:`mulambda.protocols`.
"""
