"""Selecting executors: the view of every executor, policies, and the selector worker.

Answers selection requests through :mod:`mulambda.kafka.reply`; this package never
imports :mod:`mulambda.routing`.
"""
