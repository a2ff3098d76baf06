"""Everything that learns: policies, the sampler, MAML, EWC and the curriculum loop.

Agents reach the simulation only through the gymnasium API and `envs.batched`.
"""
