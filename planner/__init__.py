"""Energy-flexibility planning for the pot line: plans of line amperage and shell
heat-exchanger duty over a horizon, made with the twin as the model (docs/planning.md).

Pure compute (no protocols, no files beyond the plan's own JSON and scenario TOML):

* ``planner.plan`` — the plan file the daemon executes;
* ``planner.scenarios`` — price days and grid requests;
* ``planner.rollouts`` — a schedule run on the twin (reduced model or full plant);
* ``planner.optimise`` — sequential LP (HiGHS) on the twin's step responses, refusals;
* ``planner.receding`` — departure from the prediction and re-planning;
* ``planner.report`` / ``planner.check`` — plan against flat operation.
"""
