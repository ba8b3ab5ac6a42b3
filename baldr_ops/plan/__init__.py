"""Plans: between the judges and the actors. A :class:`~baldr_ops.plan.model.LaunchRequest` (what
the user asked) becomes a :class:`~baldr_ops.plan.model.LaunchPlan` (what to run, with which
environment, judged to fit, watched how) in :func:`~baldr_ops.plan.planner.plan_launch`.

`launch` and `compile` both plan here and neither imports the other; `fit` is the memory
judgement doctor renders too. Importing this package is cheap (doctor imports ``plan.fit``).
"""
