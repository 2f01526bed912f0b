"""Routing inference requests: the router worker, its pure cores, and the producer SDK.

Asks the selector through :class:`~mulambda.routing.requester.Requester` (request/reply
addressing shared with the selector lives in :mod:`mulambda.kafka.reply`; this package
never imports :mod:`mulambda.selection`), then calls executors through
:mod:`mulambda.executors`.
"""
