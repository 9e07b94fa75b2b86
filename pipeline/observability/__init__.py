"""Seeing the fleet: counters the ingest and collectors keep, Prometheus metrics
made from them at scrape time, and the live web console (``console/``).

Nothing here sits on the per-message path except :meth:`RobotCounters.accepted`
(a few integer additions); everything else is read when Prometheus or the
console asks.
"""
