"""`make bench`: speed of our envs side by side with Gymnasium's and the raw MuJoCo limit.

Every figure is a median over repeats; the contenders are interleaved within each repeat so
that load on a shared machine hits them alike. Ratios (ours / theirs) are the numbers to read.
Writes runs/bench/benchmark.json and runs/bench/benchmark.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import multiprocessing
import os
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
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from envs import ENV_IDS
from envs.locomotion import LocomotionEnv, build_model
from envs.tasks import Task, Terrain

PARTS = ("env", "sampler", "meta", "memory")
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
              ratios: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Median of each contender's figure, running them interleaved `repeats` times, and for each
    named ratio (a, b) the median of the per-repeat ratios a / b (robust to the machine drifting
    between repeats, since both figures of a ratio come from the same repeat). Each figure's spread
    over the repeats is kept as `spread[name] = [min, max]`."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            samples[name].append(run())
    for name, (a, b) in ratios.items():
        samples[name] = [x / y for x, y in zip(samples[a], samples[b], strict=True)]
    result: dict[str, Any] = {name: statistics.median(values) for name, values in samples.items()}
    result["spread"] = {name: [min(values), max(values)] for name, values in samples.items()}
    return result


def bench_env_steps(robot: str, terrain: str, n_steps: int, repeats: int) -> dict[str, float]:
    """Ours vs Gymnasium's comparable env vs raw mj_step, steps/s (medians) and ratios."""
    ours = gym.make(ENV_IDS[robot], task=TERRAINS[terrain])
    peer = gym.make(GYMNASIUM_PEERS[robot])
    actions = np.random.default_rng(0).uniform(-1, 1, (n_steps, *ours.action_space.shape)).astype(np.float32)
    peer_actions = np.random.default_rng(0).uniform(
        peer.action_space.low, peer.action_space.high, (n_steps, *peer.action_space.shape)).astype(np.float32)
    raw_env = ours.unwrapped
    contenders = {
        "ours": lambda: steps_per_second(ours, actions),
        "raw_limit": lambda: raw_steps_per_second(raw_env.model, raw_env.data, raw_env.frame_skip, actions),
    }
    ratios = {"ours_over_limit": ("ours", "raw_limit")}
    if terrain == "flat":  # Gymnasium's MuJoCo envs have flat ground only: no peer for the rest
        contenders["gymnasium"] = lambda: steps_per_second(peer, peer_actions)
        ratios["ours_over_gymnasium"] = ("ours", "gymnasium")
    return median_of(repeats, contenders, ratios)


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
    result["spread"]["ours_over_two_core_limit"] = [x / 2 for x in result["spread"]["ours_over_one_thread_raw"]]
    return result


# mode -> (meta-training config fields, learner fields) over the default cheetah config.
META_MODES: dict[str, tuple[dict, dict]] = {
    # The code before the meta-update was batched: a per-task loop, the Fisher by double backward on
    # every step, one torch thread.
    "reference": ({"update_threads": 1}, {"reference_update": True}),
    # The default: the same step (equal to rounding, tested), all tasks at once, the Gauss-Newton
    # Fisher, every core in the update.
    "default": ({}, {}),
    # The option fisher_every: 5 (rllab's subsample_factor): faster, but a different, estimated curvature.
    "fisher_every_5": ({"fisher_every": 5}, {}),
}


def meta_setup(quick: bool = False):
    """(sampler, make) for meta-iteration benchmarks on the default cheetah velocity config:
    `make(fields, learner_fields)` gives that config with `fields` over it and a fresh learner
    (initial policy from the config's seed) with `learner_fields` over its MAML config."""
    import torch

    from agents.meta.maml import MAMLTRPO
    from agents.meta.meta_train import MetaTrainConfig
    from agents.policy import GaussianMLPPolicy
    from agents.runs.config import config_from_dict
    from agents.runs.rundir import load_yaml
    from agents.sampler import Sampler

    torch.set_num_threads(1)
    raw = load_yaml(Path(__file__).resolve().parent.parent / "assets/configs/maml_cheetah_velocity.yaml")
    if quick:
        raw |= {"meta_batch_size": 8, "episodes_per_task": 5}
    sampler = Sampler("cheetah", raw["horizon"])

    def make(fields: dict, learner_fields: dict | None = None) -> tuple[MetaTrainConfig, MAMLTRPO]:
        config = config_from_dict(MetaTrainConfig, raw | fields)
        torch.manual_seed(config.seed)
        policy = GaussianMLPPolicy(sampler.obs_dim, sampler.act_dim, config.hidden_sizes)
        return config, MAMLTRPO(policy, dataclasses.replace(config.maml_config(), **(learner_fields or {})))

    return sampler, make


def bench_meta_iteration(quick: bool, repeats: int) -> dict:
    """MAML-TRPO meta-iterations of the default cheetah config in each of `META_MODES`, interleaved:
    wall time and where it goes (medians), and each mode's speed-up over the reference (median of
    per-repeat ratios). Every mode runs on the same sampled data: iteration 1 of the same seed."""
    from agents.meta.meta_train import meta_iteration

    sampler, make = meta_setup(quick)

    def one_iteration(mode: str) -> dict:
        config, learner = make(*META_MODES[mode])
        sampler.seconds = {"simulate": 0.0, "policy": 0.0}
        record = meta_iteration(learner, sampler, config, 1)
        parts = {"simulation": sampler.seconds["simulate"], "policy_forward": sampler.seconds["policy"],
                 "adaptation": record["time_adapt"], "outer_update": record["time_meta_update"]}
        parts["other_sampling"] = max(record["time_sample"] - parts["simulation"] - parts["policy_forward"], 0.0)
        return {"wall_s": record["time_iteration"], **{f"{k}_s": v for k, v in parts.items()}}

    one_iteration("default")  # warm-up: builds the batched envs
    samples: dict[str, list[dict]] = {mode: [] for mode in META_MODES}
    for _ in range(repeats):
        for mode in META_MODES:
            samples[mode].append(one_iteration(mode))
    config, learner = make({})
    result: dict = {"tasks": config.meta_batch_size, "episodes_per_task": config.episodes_per_task,
                    "horizon": config.horizon,
                    "env_steps": 2 * config.meta_batch_size * config.episodes_per_task * config.horizon,
                    "repeats": repeats, "modes": {}}
    for mode, runs in samples.items():
        row = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        row |= {key.removesuffix("_s") + "_share": statistics.median(run[key] / run["wall_s"] for run in runs)
                for key in runs[0] if key != "wall_s"}
        row["wall_s_range"] = [min(run["wall_s"] for run in runs), max(run["wall_s"] for run in runs)]
        speedups = [ref["wall_s"] / run["wall_s"] for ref, run in zip(samples["reference"], runs, strict=True)]
        row["speedup_over_reference"] = statistics.median(speedups)
        row["speedup_range"] = [min(speedups), max(speedups)]
        result["modes"][mode] = row
    layer_sizes = [learner.policy.obs_dim, *config.hidden_sizes, learner.policy.act_dim]
    result["exact_update_floor"] = exact_update_floor(result, layer_sizes, config.maml_config().cg_iters)
    return result


def product_multiply_adds(layer_sizes: list[int], train_steps: int, valid_steps: int) -> int:
    """Matrix multiply-adds of one exact Fisher-vector product of the MAML-TRPO update (one inner
    step), for an MLP policy with `layer_sizes` (input, hidden..., output): `A^T G A v`, with
    `A = I - lr * H_train` a Hessian-vector product on the train steps (a tangent forward, then the
    tangent of the backward), applied twice, and `G = J^T M J` a tangent forward and a backward on
    the valid steps at the adapted parameters. The first layer's input has no tangent."""
    weights = [a * b for a, b in itertools.pairwise(layer_sizes)]
    first, rest = weights[0], sum(weights[1:])
    tangent_forward = first + 2 * rest
    hessian_vector = tangent_forward + 2 * rest + 2 * rest + first  # + tangents of input and weight grads
    backward = rest + first + rest  # input grads past layer one, weight grads of every layer
    return train_steps * 2 * hessian_vector + valid_steps * (tangent_forward + backward)


def matmul_rate(layer_sizes: list[int], tasks: int, rows: int, repeats: int) -> float:
    """The fastest multiply-adds per second of the policy's layers as batched matrix products over
    `tasks` x `rows` inputs (the update's shapes), on every core, best of `repeats`."""
    import torch

    from agents.meta.meta_train import torch_threads

    with torch_threads(None):
        inputs = [torch.randn(tasks, rows, a) for a in layer_sizes[:-1]]
        weights = [torch.randn(tasks, a, b) for a, b in itertools.pairwise(layer_sizes)]
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for x, w in zip(inputs, weights, strict=True):
                torch.bmm(x, w)
            best = min(best, time.perf_counter() - start)
    return tasks * rows * sum(w.shape[1] * w.shape[2] for w in weights) / best


def exact_update_floor(meta: dict, layer_sizes: list[int], cg_iters: int) -> dict:
    """The least time the default update's conjugate gradient can take on this machine (its products'
    multiply-adds at the fastest matrix-product rate, elementwise work free), and what it implies
    with the default mode's measured sampling: the least share of an iteration the exact update can
    have and the most speed-up over the reference it allows."""
    steps = meta["tasks"] * meta["episodes_per_task"] * meta["horizon"]
    macs = product_multiply_adds(layer_sizes, steps, steps)
    rate = matmul_rate(layer_sizes, meta["tasks"], meta["episodes_per_task"] * meta["horizon"], 20)
    cg_s = cg_iters * macs / rate
    default = meta["modes"]["default"]
    rest_s = sum(default[f"{part}_s"] for part in ("simulation", "policy_forward", "other_sampling", "adaptation"))
    return {"layer_sizes": layer_sizes, "cg_iters": cg_iters, "product_multiply_adds": macs,
            "matmul_multiply_adds_per_s": rate, "cg_floor_s": cg_s, "default_outside_update_s": rest_s,
            "update_share_floor": cg_s / (rest_s + cg_s),
            "speedup_ceiling": meta["modes"]["reference"]["wall_s"] / (rest_s + cg_s)}


def bench_meta_peak_memory(quick: bool, mode: str) -> float:
    """Peak resident MiB of a process that runs two meta-iterations in `mode` only (run it isolated)."""
    from agents.meta.meta_train import meta_iteration

    sampler, make = meta_setup(quick)
    config, learner = make(*META_MODES[mode])
    for iteration in range(2):
        meta_iteration(learner, sampler, config, iteration)
    return peak_memory_mb()


def bench_task_switch_memory(switches: int) -> dict[str, float]:
    """Resident memory growth over `switches` task switches of a cheetah with a renderer attached
    (set_task + reset + one rendered frame each, the heightfield re-uploaded every time); run isolated.
    Growth is counted after a warm-up that fills the terrain cache (256 heightfields, a bounded cost)."""
    from envs.tasks import TaskDistribution

    env = LocomotionEnv("cheetah", render_mode="rgb_array")
    warm_up = 300  # more than the 256 heightfields that envs.locomotion keeps cached
    tasks = TaskDistribution("cheetah_terrain", seed=0).sample(switches + warm_up)
    for task in tasks[:warm_up]:
        env.reset(seed=0, options={"task": task})
        env.render()
    before = current_memory_mb()
    start = time.perf_counter()
    for task in tasks[warm_up:]:
        env.reset(seed=0, options={"task": task})
        env.render()
    seconds = time.perf_counter() - start
    after = current_memory_mb()
    env.close()
    return {"switches": switches, "rss_before_mb": before, "rss_after_mb": after, "growth_mb": after - before,
            "seconds_per_switch_and_frame": seconds / switches}


def current_memory_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


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


def _spread(row: dict, key: str, fmt: str) -> str:
    """`median (min-max)` of one figure of a benchmark row."""
    low, high = row["spread"][key]
    return f"{row[key]:{fmt}} ({low:{fmt}}-{high:{fmt}})"


def to_markdown(results: dict, level: int = 1) -> str:
    """The benchmark's tables as Markdown (medians, with the min-max over repeats in brackets);
    `level` is the heading level of the title (README sections use a deeper one)."""
    head = "#" * level
    lines = [f"{head} MetaLoco benchmark", "",
             f"{results['machine']}; {results['repeats']} repeats, contenders interleaved within each; every ratio "
             "is the median of per-repeat ratios (both figures from the same repeat).", ""]
    if results.get("env_steps"):
        lines += [f"{head}# Env steps per second (single env; {results['env_repeats']} short repeats of "
                  f"{results['env_steps_per_repeat']:,} steps)", "",
                  "| robot | terrain | ours | Gymnasium | raw `frame_skip x mj_step` limit | ours / Gymnasium "
                  "| ours / limit |", "|---|---|---:|---:|---:|---:|---:|"]
        for key, row in results["env_steps"].items():
            robot, terrain = key.split("/")
            peer = (f"{row['gymnasium']:,.0f} ({GYMNASIUM_PEERS[robot]})", _spread(row, "ours_over_gymnasium", ".2f")) \
                if "gymnasium" in row else ("none (Gymnasium has flat ground only)", "")
            lines.append(f"| {robot} | {terrain} | {row['ours']:,.0f} | {peer[0]} | {row['raw_limit']:,.0f} | "
                         f"{peer[1]} | {_spread(row, 'ours_over_limit', '.2f')} |")
    if results.get("task_switch"):
        lines += ["", f"{head}# Task switch in place vs recompiling", "",
                  "| robot | set_task + reset | recompile | speed-up |", "|---|---:|---:|---:|"]
        for robot, row in results["task_switch"].items():
            lines.append(f"| {robot} | {row['set_task_reset_s'] * 1e3:.3f} ms | {row['recompile_s'] * 1e3:.2f} ms"
                         f" | {_spread(row, 'speedup', '.0f')}x |")
    if results.get("sampler"):
        lines += ["", f"{head}# Sampler (cheetah, flat, 64x64 policy; env steps/s including the policy)", "",
                  "Limits measured in the same repeats: two threads stepping raw physics at once (what the two "
                  "cores really give) and one thread's raw `frame_skip x mj_step` times two.", "",
                  "| envs | ours | Gymnasium SyncVectorEnv loop | ours / loop | ours / 2-thread raw "
                  "| ours / (2 x 1-thread raw) | peak MiB |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for n, row in results["sampler"].items():
            lines.append(f"| {n} | {row['ours']:,.0f} | {row['gymnasium_loop']:,.0f} | "
                         f"{_spread(row, 'ours_over_gymnasium', '.2f')} | "
                         f"{_spread(row, 'ours_over_measured_limit', '.2f')} | "
                         f"{_spread(row, 'ours_over_two_core_limit', '.2f')} | {row['peak_mb']:.0f} |")
    if results.get("meta_iteration"):
        meta = results["meta_iteration"]
        lines += ["", f"{head}# MAML-TRPO meta-iteration ({meta['tasks']} tasks x {meta['episodes_per_task']} "
                      f"episodes, {meta['env_steps']:,} env steps; {meta['repeats']} interleaved repeats)", "",
                  "`reference`: the per-task loop with the Fisher by double backward on every step, one torch "
                  "thread (the code before batching). `default`: all tasks at once, the Gauss-Newton Fisher, "
                  "every core in the update (the same step, tested). `fisher_every_5`: as the default with the "
                  "Fisher on every 5th step (an option: it learned less per iteration, see below).", "",
                  "| mode | seconds | speed-up | simulation | policy forward | other sampling "
                  "| adaptation | outer update |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for mode, row in meta["modes"].items():
            low, high = row["wall_s_range"]
            slow, shigh = row["speedup_range"]
            shares = " | ".join(f"{row[part + '_share']:.0%}" for part in
                                ("simulation", "policy_forward", "other_sampling", "adaptation", "outer_update"))
            lines.append(f"| {mode} | {row['wall_s']:.2f} ({low:.2f}-{high:.2f}) | "
                         f"{row['speedup_over_reference']:.2f}x ({slow:.2f}-{shigh:.2f}) | {shares} |")
        if "exact_update_floor" in meta:
            floor = meta["exact_update_floor"]
            lines += ["", f"The exact update's floor here: each Fisher-vector product needs "
                      f"{floor['product_multiply_adds'] / 1e9:.2f} G multiply-adds (policy "
                      f"{'-'.join(map(str, floor['layer_sizes']))}), and batched matrix products of those shapes "
                      f"reach {floor['matmul_multiply_adds_per_s'] / 1e9:.0f} G per second on every core, so CG's "
                      f"{floor['cg_iters']} products take at least {floor['cg_floor_s']:.2f} s with all elementwise "
                      f"work free. With the default's {floor['default_outside_update_s']:.2f} s outside the update, "
                      f"the exact update is at least {floor['update_share_floor']:.0%} of an iteration and the "
                      f"iteration at most {floor['speedup_ceiling']:.2f}x the reference."]
        lines += ["", "Peak resident memory of a process running two meta-iterations: "
                  + ", ".join(f"{mode} {peak:.0f} MiB" for mode, peak in meta["peak_mb"].items()) + "."]
    if results.get("memory"):
        mem = results["memory"]
        lines += ["", f"{head}# Memory over {mem['switches']} task switches with a renderer attached", "",
                  f"Resident memory {mem['rss_before_mb']:.0f} MiB -> {mem['rss_after_mb']:.0f} MiB "
                  f"({mem['growth_mb']:+.1f} MiB), counted after a warm-up that fills the terrain cache; "
                  f"{mem['seconds_per_switch_and_frame'] * 1e3:.1f} ms per switch and software-rendered frame."]
    if "peak_memory_mb" in results:
        lines += ["", f"Peak resident memory of the env benchmarks: {results['peak_memory_mb']:.0f} MiB."]
    lines.append("")
    return "\n".join(lines)


def machine() -> str:
    """The processor and the versions that speed figures depend on."""
    return (f"{platform.processor() or platform.machine()}, {platform.python_version()}, mujoco {mujoco.__version__}, "
            f"gymnasium {gym.__version__}")


def write_results(out: Path, stem: str, results: dict, markdown: str) -> None:
    """`out/<stem>.json` and `out/<stem>.md`, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stem}.json", json.dumps(results, indent=2))
    atomic_write_text(out / f"{stem}.md", markdown)
    print(f"wrote {out / f'{stem}.md'}")


def main() -> None:
    """Run every measurement and write JSON and Markdown."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (under 2 minutes)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    args = parser.parse_args()
    check_writable(args.out, "out")  # before any work
    n_steps, repeats = (1000, 3) if args.quick else (5000, 5)

    results: dict = {"machine": machine(), "n_steps": n_steps, "repeats": repeats, "parts": args.parts}
    if "env" in args.parts:
        results["env_steps"], results["task_switch"] = {}, {}
        # Short, many repeats: this shared machine's speed changes within seconds, and a ratio is
        # only as good as the pairing of its two figures.
        results["env_steps_per_repeat"], results["env_repeats"] = max(n_steps // 5, 500), 3 * repeats
        for robot in GYMNASIUM_PEERS:
            for terrain in TERRAINS:
                row = bench_env_steps(robot, terrain, results["env_steps_per_repeat"], results["env_repeats"])
                results["env_steps"][f"{robot}/{terrain}"] = row
                peer = f"gymnasium {row['gymnasium']:8,.0f}/s  ratio {row['ours_over_gymnasium']:.2f}" \
                    if "gymnasium" in row else "(no Gymnasium peer)"
                print(f"{robot:9s} {terrain:5s} ours {row['ours']:8,.0f}/s  limit {row['raw_limit']:8,.0f}/s  {peer}",
                      flush=True)
            row = bench_task_switch(robot, repeats)
            results["task_switch"][robot] = row
            print(f"{robot:9s} task switch {row['set_task_reset_s'] * 1e3:.3f} ms vs recompile "
                  f"{row['recompile_s'] * 1e3:.2f} ms ({row['speedup']:.0f}x)", flush=True)
        results["peak_memory_mb"] = peak_memory_mb()
    if "sampler" in args.parts:
        results["sampler"] = {}
        for num_envs in (1, 8, 64):
            row, peak = isolated(bench_sampler, num_envs, 100 if args.quick else 200, repeats)
            row["peak_mb"] = peak
            results["sampler"][num_envs] = row
            print(f"sampler {num_envs:3d} envs: ours {row['ours']:8,.0f}/s  gymnasium loop "
                  f"{row['gymnasium_loop']:8,.0f}/s  ratio {row['ours_over_gymnasium']:.2f}  of 2-core limit "
                  f"{row['ours_over_two_core_limit']:.2f}  of measured 2-thread limit "
                  f"{row['ours_over_measured_limit']:.2f}", flush=True)
    if "meta" in args.parts:
        meta, _ = isolated(bench_meta_iteration, args.quick, 2 if args.quick else repeats)
        meta["peak_mb"] = {mode: isolated(bench_meta_peak_memory, args.quick, mode)[0] for mode in META_MODES}
        results["meta_iteration"] = meta
        for mode, row in meta["modes"].items():
            print(f"meta-iteration {mode:13s} {row['wall_s']:5.2f} s ({row['speedup_over_reference']:.2f}x the "
                  f"reference): simulation {row['simulation_share']:.0%}, policy {row['policy_forward_share']:.0%}, "
                  f"adaptation {row['adaptation_share']:.0%}, outer update {row['outer_update_share']:.0%}",
                  flush=True)
    if "memory" in args.parts:
        results["memory"], _ = isolated(bench_task_switch_memory, 200 if args.quick else 1000)
        print(f"memory: {results['memory']['growth_mb']:+.1f} MiB over {results['memory']['switches']} task "
              "switches with a renderer", flush=True)

    write_results(args.out, "benchmark", results, to_markdown(results))


if __name__ == "__main__":
    run_script(main)
