"""Sampling on Ray actors against the local sampler, on this machine (needs the `ray` extra).

One call samples what one sampling phase of a default meta-iteration samples: 20 cheetah tasks x
10 episodes x 200 steps with a 64x64 policy. Measured side by side, interleaved, in one run: the
local sampler (two shards on two threads), the Ray sampler with two local actors (the same
episodes), an empty round trip to both actors, and the actors' stepping time (policy and
physics), whose difference from the call's time is what does not shrink with more actors (sending
the jobs, resets, returning and assembling the episodes). From those, the expected time of the
same call on N machines of two cores each (2N actors): stepping / N + the rest, a model, not a
measurement.

    python scripts/benchmark_ray.py --out assets/results   # then python scripts/update_readme.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import machine, write_results

from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.ray_backend import check_backend, connect

TASKS, EPISODES, HORIZON = 20, 10, 200
MACHINES = (1, 2, 4, 8)


def measure(repeats: int) -> dict:
    """The figures of the module docstring, medians over `repeats` interleaved repeats."""
    import torch

    from agents.policy import GaussianMLPPolicy
    from agents.runs.ray_sampler import RaySampler
    from agents.sampler import Sampler
    from envs.tasks import TaskDistribution

    torch.set_num_threads(1)
    connect(num_cpus=2)
    tasks = TaskDistribution("cheetah_velocity", 0).sample(TASKS)
    local, remote = Sampler("cheetah", HORIZON), RaySampler("cheetah", HORIZON)
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(local.obs_dim, local.act_dim, (64, 64))
    samples: dict[str, list[float]] = {"local_s": [], "ray_s": [], "ray_shard_s": [], "round_trip_s": []}
    try:
        for sampler in (local, remote):  # warm-up: builds the envs once, as any real use does
            sampler.sample(policy, tasks, EPISODES, seed=0)
        for repeat in range(repeats):
            for name, sampler in (("local_s", local), ("ray_s", remote)):
                before = dict(sampler.seconds)
                started = time.perf_counter()
                sampler.sample(policy, tasks, EPISODES, seed=repeat)
                samples[name].append(time.perf_counter() - started)
                if sampler is remote:  # the actors' stepping (policy + physics; shards side by side count once)
                    samples["ray_shard_s"].append(sum(sampler.seconds[k] - before[k] for k in before))
            samples["round_trip_s"].append(remote.round_trip_seconds(calls=20))
        env_steps = remote.env_steps // (repeats + 1)
    finally:
        remote.close()
        local.close()
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["spread"] = {name: [min(values), max(values)] for name, values in samples.items()}
    result["env_steps_per_call"] = env_steps
    result["local_steps_per_s"] = env_steps / result["local_s"]
    result["ray_steps_per_s"] = env_steps / result["ray_s"]
    result["ray_over_local"] = result["local_s"] / result["ray_s"]
    result["overhead_s"] = max(result["ray_s"] - result["ray_shard_s"], 0.0)
    # N machines of two cores: 2N shards, each 1/N of today's shard work, plus the same overhead.
    result["model_seconds"] = {str(n): result["ray_shard_s"] / n + result["overhead_s"] for n in MACHINES}
    return result


def to_markdown(results: dict, level: int = 1) -> str:
    """The figures as Markdown; `level` is the title's heading level."""
    head = "#" * level
    r = results["ray"]
    model = ", ".join(f"{n} machine{'s' if n != '1' else ''} {seconds:.2f} s ({r['ray_s'] / seconds:.1f}x)"
                      for n, seconds in r["model_seconds"].items())
    return "\n".join([
        f"{head} Sampling on Ray vs the local sampler", "",
        f"{results['machine']}; ray {results['ray_version']}; {results['repeats']} interleaved repeats, medians "
        "(min-max). One call: 20 cheetah tasks x 10 episodes x 200 steps, 64x64 policy "
        f"({r['env_steps_per_call']:,} env steps).", "",
        "| sampler | seconds per call | env steps/s |", "|---|---:|---:|",
        f"| local (2 shards on 2 threads) | {r['local_s']:.2f} ({r['spread']['local_s'][0]:.2f}-"
        f"{r['spread']['local_s'][1]:.2f}) | {r['local_steps_per_s']:,.0f} |",
        f"| Ray, 2 local actors (same episodes) | {r['ray_s']:.2f} ({r['spread']['ray_s'][0]:.2f}-"
        f"{r['spread']['ray_s'][1]:.2f}) | {r['ray_steps_per_s']:,.0f} |", "",
        f"On one machine Ray is {r['ray_over_local']:.2f}x the local sampler's speed. An empty round trip to both "
        f"actors takes {r['round_trip_s'] * 1e3:.1f} ms; a call spends {r['ray_shard_s']:.2f} s stepping (policy "
        f"and physics, on the actors) and {r['overhead_s'] * 1e3:.0f} ms on the rest (sending the jobs, resets, "
        "returning and assembling the episodes), which more actors would not shrink.", "",
        f"Expected time of the same call on N two-core machines (2N actors; stepping / N + the rest; a model, "
        f"not measured; speed-up over one machine's Ray call in brackets): {model}.", ""])


def main() -> None:
    """Measure and write `benchmark_ray.json` / `.md` to --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    check_writable(args.out, "out")
    check_backend("ray", None)
    if args.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {args.repeats}")
    import ray

    results = {"machine": machine(), "ray_version": ray.__version__, "repeats": args.repeats,
               "ray": measure(args.repeats)}
    write_results(args.out, "benchmark_ray", results, to_markdown(results))
    print(to_markdown(results))


if __name__ == "__main__":
    run_script(main)
