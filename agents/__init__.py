"""Everything that learns, in three rooms over a shared floor.

- `agents.policy`, `agents.sampler`, `agents.episodes`: what every room uses (the policy, the one
  episode-collection path and the container it returns).
- `agents.meta`: meta-learning; how an initialisation is learned (MAML-TRPO, multi-task
  pretraining) and judged (adaptation evaluation).
- `agents.continual`: lifelong learning; keeping skills across a curriculum (EWC and L2, the SB3
  bridge, schedules, the curriculum loop, its metrics and report).
- `agents.runs`: the run workflow every room uses (run directories, the one checkpoint format,
  config parsing, atomic writes, statistics, videos).

Imports point down: `continual` may use `meta` (a curriculum starts from a meta-learned
initialisation and adapts with its inner step), both use `runs` and the shared floor, and `runs`
uses only the shared floor. Agents reach the simulation only through the gymnasium API and
`envs.batched`.
"""
