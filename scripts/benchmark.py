"""`make bench`: speed of our envs side by side with Gymnasium's and the raw MuJoCo limit.

Every figure is a median over repeats; the contenders are interleaved within each repeat so
that load on a shared machine hits them alike. Ratios (ours / theirs) are the numbers to read.
Writes runs/bench/benchmark.json and runs/bench/benchmark.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from agents.runs.atomic import atomic_write_text
from envs import ENV_IDS
from envs.locomotion import LocomotionEnv, build_model
from envs.tasks import Task, Terrain

GYMNASIUM_PEERS = {"cheetah": "HalfCheetah-v5", "quadruped": "Ant-v5", "walker": "Walker2d-v5"}
TERRAINS = {"flat": Task(), "rough": Task(Terrain("rough", 0.5, 0))}


def steps_per_second(env: gym.Env, actions: np.ndarray) -> float:
    """Env steps per second of `env` over `actions`, resetting when an episode ends."""
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def raw_steps_per_second(model: mujoco.MjModel, data: mujoco.MjData, frame_skip: int, actions: np.ndarray) -> float:
    """The limit: env steps per second of bare frame_skip x mj_step with the same controls."""
    start = time.perf_counter()
    for action in actions:
        data.ctrl[:] = action
        mujoco.mj_step(model, data, nstep=frame_skip)
    return len(actions) / (time.perf_counter() - start)


def threaded_raw_steps_per_second(robot: str, n_threads: int, n_steps: int) -> float:
    """The machine's real parallel limit: `n_threads` threads each stepping its own cheetah's raw
    frame_skip x mj_step (MuJoCo releases the GIL), total env steps per second.

    On a shared VM two "cores" rarely give twice one core's throughput; this measures what they give.
    """
    envs = [gym.make(ENV_IDS[robot]).unwrapped for _ in range(n_threads)]
    actions = np.random.default_rng(0).uniform(-1, 1, (n_steps, envs[0].model.nu))
    for env in envs:
        env.reset(seed=0)
    threads = [threading.Thread(target=raw_steps_per_second, args=(env.model, env.data, env.frame_skip, actions))
               for env in envs]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return n_threads * n_steps / (time.perf_counter() - start)


def median_of(repeats: int, contenders: dict[str, Callable[[], float]],
              ratios: dict[str, tuple[str, str]]) -> dict[str, float]:
    """Median of each contender's figure, running them interleaved `repeats` times, and for each
    named ratio (a, b) the median of the per-repeat ratios a / b (robust to the machine drifting
    between repeats, since both figures of a ratio come from the same repeat)."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            samples[name].append(run())
    result = {name: statistics.median(values) for name, values in samples.items()}
    for name, (a, b) in ratios.items():
        result[name] = statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))
    return result


def bench_env_steps(robot: str, terrain: str, n_steps: int, repeats: int) -> dict[str, float]:
    """Ours vs Gymnasium's comparable env vs raw mj_step, steps/s (medians) and ratios."""
    ours = gym.make(ENV_IDS[robot], task=TERRAINS[terrain])
    peer = gym.make(GYMNASIUM_PEERS[robot])
    actions = np.random.default_rng(0).uniform(-1, 1, (n_steps, *ours.action_space.shape)).astype(np.float32)
    peer_actions = np.random.default_rng(0).uniform(
        peer.action_space.low, peer.action_space.high, (n_steps, *peer.action_space.shape)).astype(np.float32)
    raw_env = ours.unwrapped
    result = median_of(repeats, {
        "ours": lambda: steps_per_second(ours, actions),
        "gymnasium": lambda: steps_per_second(peer, peer_actions),
        "raw_limit": lambda: raw_steps_per_second(raw_env.model, raw_env.data, raw_env.frame_skip, actions),
    }, {"ours_over_gymnasium": ("ours", "gymnasium"), "ours_over_limit": ("ours", "raw_limit")})
    return result


def bench_task_switch(robot: str, repeats: int) -> dict[str, float]:
    """Seconds for set_task + reset in place vs compiling a fresh model for the new task."""
    env = LocomotionEnv(robot)
    tasks = [Task(Terrain(kind, 0.5, seed)) for seed, kind in enumerate(["rough", "stairs_up", "hills", "gaps"])]

    def switch_in_place() -> float:
        start = time.perf_counter()
        for task in tasks:
            env.reset(seed=0, options={"task": task})
        return (time.perf_counter() - start) / len(tasks)

    def recompile() -> float:
        start = time.perf_counter()
        for task in tasks:
            model = build_model(env.spec_robot)
            data = mujoco.MjData(model)
            model.hfield_data[:] = env.model.hfield_data  # the terrain itself costs the same either way
            mujoco.mj_forward(model, data)
            del task
        return (time.perf_counter() - start) / len(tasks)

    return median_of(repeats, {"set_task_reset_s": switch_in_place, "recompile_s": recompile},
                     {"speedup": ("recompile_s", "set_task_reset_s")})


def bench_sampler(num_envs: int, horizon: int, repeats: int) -> dict[str, float]:
    """Our sampler vs Gymnasium's SyncVectorEnv loop, same policy (one batched forward a step), and
    both against the physics limit measured in the same repeats (the VM's speed drifts by tens of
    percent within minutes, so a limit measured earlier would skew the ratio either way).

    Limits: one thread's raw frame_skip x mj_step (times two cores), and two threads stepping raw
    physics at once (what the two cores really give). Ratios are medians of per-repeat ratios.
    """
    import torch

    from agents.policy import GaussianMLPPolicy
    from agents.sampler import Sampler

    torch.set_num_threads(1)
    sampler = Sampler("cheetah", horizon)
    policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, (64, 64))
    tasks = [Task()] * num_envs
    vector = gym.vector.SyncVectorEnv([lambda: gym.make(ENV_IDS["cheetah"]) for _ in range(num_envs)])
    raw_env = LocomotionEnv("cheetah")
    raw_actions = np.random.default_rng(0).uniform(-1, 1, (2000, raw_env.model.nu))

    def ours() -> float:
        before = sampler.env_steps
        start = time.perf_counter()
        sampler.sample(policy, tasks, 1, seed=0)
        return (sampler.env_steps - before) / (time.perf_counter() - start)

    def gym_loop() -> float:
        obs, _ = vector.reset(seed=0)
        start = time.perf_counter()
        for _ in range(horizon):
            with torch.no_grad():
                dist = policy(torch.as_tensor(obs, dtype=torch.float32))
                action = dist.sample().numpy()
            obs, *_ = vector.step(action)
        return num_envs * horizon / (time.perf_counter() - start)

    def one_thread_raw() -> float:
        raw_env.reset(seed=0)
        return raw_steps_per_second(raw_env.model, raw_env.data, raw_env.frame_skip, raw_actions)

    ours()  # builds the batch once, as any real use does
    result = median_of(repeats, {
        "ours": ours, "gymnasium_loop": gym_loop, "one_thread_raw": one_thread_raw,
        "two_thread_raw": lambda: threaded_raw_steps_per_second("cheetah", 2, len(raw_actions)),
    }, {"ours_over_gymnasium": ("ours", "gymnasium_loop"), "ours_over_one_thread_raw": ("ours", "one_thread_raw"),
        "ours_over_measured_limit": ("ours", "two_thread_raw")})
    result["ours_over_two_core_limit"] = result["ours_over_one_thread_raw"] / 2
    return result


def bench_meta_iteration(quick: bool) -> dict[str, float]:
    """One MAML-TRPO iteration of the default cheetah config: wall time and where it goes."""
    import torch

    from agents.meta.maml import MAMLTRPO
    from agents.meta.meta_train import MetaTrainConfig, meta_iteration
    from agents.policy import GaussianMLPPolicy
    from agents.runs.config import config_from_dict
    from agents.runs.rundir import load_yaml
    from agents.sampler import Sampler

    torch.set_num_threads(1)
    raw = load_yaml(Path(__file__).resolve().parent.parent / "assets/configs/maml_cheetah_velocity.yaml")
    if quick:
        raw |= {"meta_batch_size": 8, "episodes_per_task": 5}
    config = config_from_dict(MetaTrainConfig, raw)
    sampler = Sampler("cheetah", config.horizon)
    learner = MAMLTRPO(GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, config.hidden_sizes), config.maml_config())
    meta_iteration(learner, sampler, config, 0)  # warm-up: builds the batched envs
    sampler.seconds = {"simulate": 0.0, "policy": 0.0}
    record = meta_iteration(learner, sampler, config, 1)
    total = record["time_iteration"]
    parts = {"simulation": sampler.seconds["simulate"], "policy_forward": sampler.seconds["policy"],
             "adaptation": record["time_adapt"], "outer_update": record["time_meta_update"]}
    parts["other_sampling"] = max(record["time_sample"] - parts["simulation"] - parts["policy_forward"], 0.0)
    return {"tasks": config.meta_batch_size, "episodes_per_task": config.episodes_per_task,
            "env_steps": record["env_steps"], "wall_s": total, **{f"{k}_s": v for k, v in parts.items()},
            **{f"{k}_share": v / total for k, v in parts.items()}}


def isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """Run fn(*args) in a fresh process; returns (result, that process's peak memory in MiB)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (fn, *args))


def _measure(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    result = fn(*args)
    return result, peak_memory_mb()


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def to_markdown(results: dict) -> str:
    """The benchmark's tables as Markdown."""
    lines = ["# MetaLoco benchmark", "", f"machine: {results['machine']}", "",
             "## Env steps per second (single env, medians; ratios: medians of per-repeat ratios)", "",
             "| robot | terrain | ours | Gymnasium | raw limit | ours/Gymnasium | ours/limit |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for key, row in results["env_steps"].items():
        robot, terrain = key.split("/")
        lines.append(f"| {robot} ({GYMNASIUM_PEERS[robot]}) | {terrain} | {row['ours']:,.0f} | {row['gymnasium']:,.0f}"
                     f" | {row['raw_limit']:,.0f} | {row['ours_over_gymnasium']:.2f} | {row['ours_over_limit']:.2f} |")
    lines += ["", "## Task switch (seconds per switch, medians; speed-up: median of per-repeat ratios)", "",
              "| robot | set_task + reset | recompile | speed-up |", "|---|---:|---:|---:|"]
    for robot, row in results["task_switch"].items():
        lines.append(f"| {robot} | {row['set_task_reset_s'] * 1e3:.3f} ms | {row['recompile_s'] * 1e3:.2f} ms"
                     f" | {row['speedup']:.0f}x |")
    lines += ["", "## Sampler (cheetah, flat, 64x64 policy; env steps/s incl. the policy, medians)", "",
              "Limits measured in the same repeats: one thread's raw frame_skip x mj_step (the 2-core limit is"
              " twice that) and two threads stepping raw physics at once. Ratios: medians of per-repeat ratios.", "",
              "| envs | ours | Gymnasium SyncVectorEnv loop | ours/Gymnasium | 1-thread raw | 2-thread raw"
              " | ours / 2-core limit | ours / 2-thread raw | peak MiB |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, row in results["sampler"].items():
        lines.append(f"| {n} | {row['ours']:,.0f} | {row['gymnasium_loop']:,.0f} | {row['ours_over_gymnasium']:.2f} | "
                     f"{row['one_thread_raw']:,.0f} | {row['two_thread_raw']:,.0f} | "
                     f"{row['ours_over_two_core_limit']:.2f} | {row['ours_over_measured_limit']:.2f} | "
                     f"{row['peak_mb']:.0f} |")
    meta = results["meta_iteration"]
    lines += ["",
              f"## One MAML-TRPO meta-iteration ({meta['tasks']} tasks x {meta['episodes_per_task']} episodes, "
              f"{meta['env_steps']:,} env steps): {meta['wall_s']:.1f} s, peak {meta['peak_mb']:.0f} MiB", "",
              "| part | seconds | share |", "|---|---:|---:|"]
    for part in ("simulation", "policy_forward", "other_sampling", "adaptation", "outer_update"):
        lines.append(f"| {part.replace('_', ' ')} | {meta[part + '_s']:.2f} | {meta[part + '_share']:.0%} |")
    lines += ["", f"peak memory of the env benchmarks: {results['peak_memory_mb']:.0f} MiB", ""]
    return "\n".join(lines)


def main() -> None:
    """Run every measurement and write JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (under 2 minutes)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    n_steps, repeats = (1000, 3) if args.quick else (5000, 5)

    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}, "
                                f"mujoco {mujoco.__version__}, gymnasium {gym.__version__}",
                     "n_steps": n_steps, "repeats": repeats, "env_steps": {}, "task_switch": {}}
    for robot in GYMNASIUM_PEERS:
        for terrain in TERRAINS:
            row = bench_env_steps(robot, terrain, n_steps, repeats)
            results["env_steps"][f"{robot}/{terrain}"] = row
            print(f"{robot:9s} {terrain:5s} ours {row['ours']:8,.0f}/s  gymnasium {row['gymnasium']:8,.0f}/s  "
                  f"limit {row['raw_limit']:8,.0f}/s  ratio {row['ours_over_gymnasium']:.2f}", flush=True)
        row = bench_task_switch(robot, repeats)
        results["task_switch"][robot] = row
        print(f"{robot:9s} task switch {row['set_task_reset_s'] * 1e3:.3f} ms vs recompile "
              f"{row['recompile_s'] * 1e3:.2f} ms ({row['speedup']:.0f}x)", flush=True)
    results["peak_memory_mb"] = peak_memory_mb()
    results["sampler"] = {}
    for num_envs in (1, 8, 64):
        row, peak = isolated(bench_sampler, num_envs, 100 if args.quick else 200, repeats)
        row["peak_mb"] = peak
        results["sampler"][num_envs] = row
        print(f"sampler {num_envs:3d} envs: ours {row['ours']:8,.0f}/s  gymnasium loop {row['gymnasium_loop']:8,.0f}/s"
              f"  ratio {row['ours_over_gymnasium']:.2f}  of 2-core limit {row['ours_over_two_core_limit']:.2f}"
              f"  of measured 2-thread limit {row['ours_over_measured_limit']:.2f}",
              flush=True)
    meta, peak = isolated(bench_meta_iteration, args.quick)
    results["meta_iteration"] = meta | {"peak_mb": peak}
    print(f"meta-iteration {meta['wall_s']:.1f} s: simulation {meta['simulation_share']:.0%}, policy "
          f"{meta['policy_forward_share']:.0%}, adaptation {meta['adaptation_share']:.0%}, outer update "
          f"{meta['outer_update_share']:.0%}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "benchmark.json", json.dumps(results, indent=2))
    atomic_write_text(args.out / "benchmark.md", to_markdown(results))
    print(f"wrote {args.out / 'benchmark.md'}")


if __name__ == "__main__":
    main()
