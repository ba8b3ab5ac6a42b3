"""`baldr-ops doctor`: judge a Snapshot with the checks in ``checks.py`` and render the verdicts.

``checks.run_checks(snapshot)`` and ``checks.check_plan_fit(meminfo_or_snapshot, footprint, floor)``
are the judges; ``render`` turns them into a table, JSON or a Prometheus textfile; ``report`` holds
the pydantic schema of the JSON document. Thresholds live in ``thresholds.RULES`` only.
"""
