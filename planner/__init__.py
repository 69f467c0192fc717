"""Energy-flexibility planning for the pot line: plans of line amperage and shell
heat-exchanger duty over a horizon, made with the twin as the model.

Pure compute (no protocols, no files beyond the plan's own JSON): ``planner.plan`` holds
the plan file the daemon executes; the optimiser, the rollouts on the twin's kernels and
the scenarios live beside it.
"""
