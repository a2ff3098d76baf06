"""The curriculum loop: adapt -> train (EWC-regularised PPO) -> consolidate -> evaluate, per stage.

Each stage starts with a few fast adaptation steps from the current policy (vanilla policy gradient,
as MAML's inner loop, with the init's learned step sizes where it has them), trains with `EWCPPO`
for the stage's budget, folds the stage's Fisher into the regulariser, then evaluates every stage's
task so far (the performance matrix) and the held-out terrains. After every stage the whole state
goes into one checkpoint, and inside a stage every `checkpoint_every` env steps (between two PPO
rollouts) a checkpoint also holds the paused training (`agents.continual.snapshot`), so a killed run
loses at most that many steps and its resumption equals the uninterrupted run. TensorBoard event
files continue across a resumption (`agents.runs.tensorboard`).
"""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv
from tqdm import tqdm

from agents.continual.curriculum import CurriculumConfig, Schedule
from agents.continual.initial import curriculum_step_sizes, fold_context, fresh_policy, load_init
from agents.continual.regularizers import make_regularizer
from agents.continual.sb3 import EWCPPO
from agents.continual.sb3_transfer import policy_to_sb3, sb3_names, sb3_policy_kwargs, sb3_to_policy
from agents.continual.snapshot import capture_training, event_file_logger, restore_training
from agents.continual.stage import CurriculumState, StageCallback, StageProgress
from agents.meta.inner import adapt
from agents.policy import GaussianMLPPolicy, Params
from agents.runs.checkpoint import load_checkpoint, restore_rng_state
from agents.runs.config import config_to_dict
from agents.runs.rundir import MetricsLog, RunDir, latest_checkpoint, save_step_checkpoint
from agents.runs.tensorboard import EventFile
from agents.sampler import Sampler
from envs import ENV_IDS
from envs.tasks import Task

SB3_HEAD = ("action_net.weight", "action_net.bias", "log_std")  # the per-task head in SB3's names


def unanchored(task_heads: bool, anchor_log_std: bool) -> tuple[str, ...]:
    """SB3 parameter names the regulariser leaves free: each task's head in multi-head mode; in
    single-head mode the state-independent log-std unless `anchor_log_std` (its Fisher, 2 per
    entry, is orders of magnitude above the hidden layers', so anchoring it freezes exploration
    at the first task's noise)."""
    if task_heads:
        return SB3_HEAD
    return () if anchor_log_std else ("log_std",)


class Curriculum:
    """Runs one curriculum config in one run directory.

    Args:
        config: the validated curriculum.
        run: the prepared run directory (fresh or resumed).
        progress: show progress bars.
    """

    def __init__(self, config: CurriculumConfig, run: RunDir, progress: bool = True) -> None:
        # Small MLPs run fastest on one thread; the physics threads use the cores.
        torch.set_num_threads(1)
        self.config = config
        self.run = run
        self.progress = progress
        self.env_id = ENV_IDS[config.robot]
        self.pool_tasks = [stage.task() for stage in config.stages]
        self.held_out_tasks = [stage.task() for stage in config.evaluation.held_out]
        self.sampler = Sampler(config.robot, config.horizon, height_scan=config.height_scan,
                               goal_in_obs=config.goal_in_obs)
        self.policy = self._initial_policy()
        self.step_sizes = curriculum_step_sizes(config)
        self.model = self._make_model()
        self.schedule = Schedule(config)
        self.heads: dict[int, Params] = {}  # pool index -> its output layer (config.task_heads)
        self.state = CurriculumState()
        self.log = MetricsLog(run.metrics, "stages")
        self._tb_sizes: dict[str, int] = {}  # event-file sizes of the checkpoint resumed from
        self._events: dict[str, EventFile] = {}  # open event files: "curriculum", "stage_<k>"

    # --- setup ------------------------------------------------------------------------------

    def _initial_policy(self) -> GaussianMLPPolicy:
        cfg = self.config
        if cfg.init == "scratch":
            return fresh_policy(self.sampler.obs_dim, self.sampler.act_dim, cfg.hidden_sizes, cfg.seed)
        start = load_init(cfg.init, cfg.robot, self.sampler.obs_dim, self.sampler.act_dim)
        if isinstance(start, GaussianMLPPolicy):
            return start
        # A context adapter: its estimate from experience on the first listed stage, folded in.
        policy, experience_return = fold_context(start, self.sampler, self.pool_tasks[0], cfg.adapt_episodes,
                                                 seed=20_000 + cfg.seed)
        if self.progress:
            print(f"init: context adapter, its estimate from {cfg.adapt_episodes} episodes on "
                  f"{cfg.stages[0].label} (return {experience_return:.1f}) folded into the policy")
        return policy

    def _make_env(self, task: Task, seed: int = 0) -> VecEnv:
        cfg = self.config
        return make_vec_env(self.env_id, n_envs=cfg.ppo.n_envs, seed=cfg.seed + seed,
                            env_kwargs={"task": task, "height_scan": cfg.height_scan, "goal_in_obs": cfg.goal_in_obs,
                                        "max_episode_steps": cfg.horizon})

    def _make_model(self) -> EWCPPO:
        cfg = self.config
        reg = cfg.regularizer
        regularizer = None if reg.kind == "none" else make_regularizer(reg.kind, strength=reg.strength,
                                                                        mode=reg.mode, gamma=reg.gamma,
                                                                        normalize=reg.normalize,
                                                                        floor=reg.fisher_floor,
                                                                        memory_size=reg.memory_size,
                                                                        replay_batch=reg.replay_batch,
                                                                        seed=cfg.seed,
                                                                        prune_share=reg.prune_share)
        model = EWCPPO("MlpPolicy", self._make_env(self.pool_tasks[0]), regularizer=regularizer,
                       policy_kwargs=sb3_policy_kwargs(self.policy), seed=cfg.seed, device="cpu", verbose=0,
                       **{k: v for k, v in config_to_dict(cfg.ppo).items() if k != "n_envs"})
        policy_to_sb3(self.policy, model.policy)
        return model

    # --- the loop ---------------------------------------------------------------------------

    def run_all(self) -> CurriculumState:
        """Run (or resume) every stage; returns the final state."""
        cfg = self.config
        resumed, paused = self._resume()
        if not resumed:
            self.state.random_returns, self.state.random_held_out = self._random_references()
            self.state.pool_returns = [[] for _ in self.pool_tasks]
        self._curriculum_events()
        try:
            while (pool_index := self.schedule.next_stage(self.state.history, self.state.pool_returns)) is not None:
                if paused is not None and (paused_pool := paused["progress"]["pool_index"]) != pool_index:
                    raise ValueError(f"checkpoint: the paused stage trains pool task {paused_pool}, "
                                     f"but the schedule continues with {pool_index}")
                record = self.run_stage(len(self.state.history), pool_index, paused)
                paused = None
                label = cfg.stages[pool_index].label
                print(f"stage {record['stage']} {label:16s} adapt {record['return_before_adapt']:8.1f} -> "
                      f"{record['return_after_adapt']:8.1f}  trained {record['return_after_training']:8.1f}  "
                      f"distance {record['distance']:5.2f} m  mean over seen {record['mean_seen']:8.1f}",
                      flush=True)
        finally:
            for events in self._events.values():
                events.close()
            self._events.clear()
        self.sampler.close()
        return self.state

    def run_stage(self, stage: int, pool_index: int, paused: dict | None = None) -> dict:
        """Adapt, train, consolidate and evaluate one stage; checkpoint; return its record.

        `paused`: the stage as a mid-stage checkpoint left it (`_resume`); its adaptation is done
        and its training continues where it stopped.
        """
        cfg = self.config
        task = self.pool_tasks[pool_index]
        if paused is None:
            if cfg.task_heads and pool_index in self.heads:
                self.policy.load_head(self.heads[pool_index])  # a retrained task resumes its own head
            adaptation = self._adapt(task, stage)
            policy_to_sb3(self.policy, self.model.policy)
            if stage > 0 and cfg.reset_critic:
                self._fresh_critic(stage)
            start = int(self.model.num_timesteps)
            progress = StageProgress(stage, pool_index, adaptation, start=start, saved_at=start)
            if cfg.evaluation.curve_every:  # the curve starts where training starts: after the adaptation
                progress.eval_curve.append([0, adaptation["return_after_adapt"]])
        else:
            progress = StageProgress(**paused["progress"])
        self._train(task, progress, paused)
        curve = progress.curve
        if self.model.regularizer is not None:  # (PackNet prunes the SB3 weights here, so it comes first)
            reg = cfg.regularizer
            self.model.consolidate(None, n_states=reg.memory_size if reg.kind == "replay" else reg.fisher_states,
                                   include_critic=cfg.regularizer.critic,
                                   exclude=unanchored(cfg.task_heads, cfg.regularizer.anchor_log_std))
        self.policy = sb3_to_policy(self.model.policy, self.policy.min_log_std)
        if cfg.task_heads:
            self.heads[pool_index] = self.policy.head()
        row, distance = self._evaluate_matrix_row(stage, pool_index)
        held_out = self._evaluate(self.held_out_tasks)[0] if self.held_out_tasks else []
        # The ladder's criterion, judged for every schedule: the trained policy covers the distance.
        success = distance >= cfg.evaluation.success_distance
        self.state.matrix.append(row)
        self.state.held_out.append(held_out)
        self.state.curves.append(curve)
        if cfg.evaluation.curve_every:  # and ends with the stage's evaluation
            trained = int(self.model.num_timesteps - progress.start)
            if not progress.eval_curve or progress.eval_curve[-1][0] < trained:
                progress.eval_curve.append([trained, row[stage]])
        self.state.eval_curves.append(progress.eval_curve)
        record = {
            "step": stage + 1,
            "stage": stage,
            "pool_index": pool_index,
            "label": cfg.stages[pool_index].label,
            "task": task.to_dict(),
            **progress.adaptation,
            "value_before": progress.adaptation["return_before_adapt"] - self.state.random_returns[pool_index],
            "return_after_training": row[stage],
            "distance": distance,
            "success": bool(success),
            "mean_seen": float(np.mean(row[: stage + 1])),
            "held_out": held_out,
            "train_steps": int(curve[-1][0]) if curve else 0,
        }
        strengths = getattr(self.model.regularizer, "raw_equivalent_strengths", None)
        if strengths:  # EWC: the lambda the raw Fisher of this stage would need (= lambda when raw)
            record["raw_equivalent_strength"] = strengths[-1]
        self.state.history.append(record)
        self.state.retries = self.schedule.retries
        self.state.seconds += progress.elapsed()
        self.log.append(record)
        self._log_tensorboard(record, row)
        self._save()
        return record

    def _log_tensorboard(self, record: dict, row: list[float]) -> None:
        """Curriculum-level figures of a finished stage (step = stage): the adaptation, the matrix
        row, each earlier stage's forgetting so far (its return after its own stage minus its return
        now, as `agents.continual.metrics.forgetting`; positive = lost), the held-out returns."""
        stage = record["stage"]
        writer = self._curriculum_events()
        for key in ("return_before_adapt", "return_after_adapt", "return_after_training", "distance",
                    "mean_seen"):
            writer.add_scalar(f"curriculum/{key}", record[key], stage)
        matrix = self.state.matrix
        columns = self._matrix_columns([r["pool_index"] for r in self.state.history])
        labels = [self.config.stages[pool].label for pool in columns]
        for column, (label, value) in enumerate(zip(labels, row, strict=False)):
            if math.isfinite(value):
                writer.add_scalar(f"matrix/{column}_{label}", value, stage)
                if column < stage:
                    writer.add_scalar(f"forgetting/{column}_{label}", matrix[column][column] - value, stage)
        for label, value in zip((s.label for s in self.config.evaluation.held_out), record["held_out"],
                                strict=True):
            writer.add_scalar(f"held_out/{label}", value, stage)
        writer.flush()

    def _curriculum_events(self) -> EventFile:
        """The curriculum-level event file, opened on first use (continued after a resume)."""
        if "curriculum" not in self._events:
            self._events["curriculum"] = EventFile(self.run.tb / "curriculum", self._tb_sizes.get("curriculum"))
        return self._events["curriculum"]

    def _matrix_columns(self, seen: list[int]) -> list[int]:
        """Pool indices of R's columns: the stages so far (`seen`), then, for a fixed schedule, the
        ones to come."""
        future = list(range(len(seen), len(self.pool_tasks))) if self.config.schedule == "fixed" else []
        return seen + future

    def _adapt(self, task: Task, stage: int) -> dict[str, float]:
        """A few vanilla policy-gradient steps on the new task. Returns the deterministic (mean-action)
        return before and after, as the performance matrix measures it, and the stochastic return of
        the adaptation's own episodes (the ones the steps learned from) before and after."""
        cfg = self.config
        params = {name: p.detach() for name, p in self.policy.named_parameters()}
        seed = cfg.seed * 1000 + stage * 10
        deterministic_before = self._evaluate([task], params=[params])[0][0]
        if cfg.adapt_stages == "first" and stage > 0:  # no adaptation: before and after are the same policy
            return {"return_before_adapt": deterministic_before, "return_after_adapt": deterministic_before,
                    "adapted": False}
        first = self.sampler.sample(self.policy, [task], cfg.adapt_episodes, params=params, seed=seed)[0]
        episodes = first
        for k in range(cfg.adapt_steps):
            adapted = {n: p.detach() for n, p in adapt(self.policy, params, episodes, self.step_sizes, True,
                                                                step=k).items()}
            # A method that freezes weights (PackNet) keeps them: the step moves only the free ones.
            regularizer = self.model.regularizer
            params = adapted if regularizer is None else regularizer.keep_frozen(adapted, params,
                                                                                 sb3_names(self.policy))
            episodes = self.sampler.sample(self.policy, [task], cfg.adapt_episodes, params=params,
                                           seed=seed + k + 1)[0]
        with torch.no_grad():
            for name, p in self.policy.named_parameters():
                p.copy_(params[name])
        return {"return_before_adapt": deterministic_before, "adapted": True,
                "return_after_adapt": self._evaluate([task], params=[params])[0][0],
                "stochastic_return_before_adapt": float(first.total_returns().mean()),
                "stochastic_return_after_adapt": float(episodes.total_returns().mean())}

    def _fresh_critic(self, stage: int) -> None:
        """Re-initialise the value function and the optimiser state for a new task.

        The critic is task-specific: one fitted to the previous task's reward biases the new
        task's advantages towards the old skill (seen here: PPO on "run backward" after "run
        forward" made backward returns worse with the old critic, better with a fresh one).
        The actor, which carries the skills, is kept.
        """
        policy = self.model.policy
        torch.manual_seed(self.config.seed * 1000 + stage)
        policy.mlp_extractor.value_net.apply(partial(policy.init_weights, gain=np.sqrt(2)))
        policy.value_net.apply(partial(policy.init_weights, gain=1.0))
        policy.optimizer = policy.optimizer_class(policy.parameters(), lr=self.config.ppo.learning_rate,
                                                  **policy.optimizer_kwargs)

    def _train(self, task: Task, progress: StageProgress, paused: dict | None) -> None:
        """EWC-regularised PPO on the stage's task (a ladder stops it early once its rung test holds);
        with `paused`, continues the training a mid-stage checkpoint holds."""
        cfg = self.config
        stage = progress.stage
        name = f"stage_{stage}"
        events = EventFile(self.run.tb / name, self._tb_sizes.get(name) if paused is not None else None)
        self._events[name] = events
        self.model.set_env(self._make_env(task, seed=1000 * (stage + 1)))
        self.model.set_logger(event_file_logger(events))
        call_end = None  # where the learn() call a mid-stage checkpoint interrupted was to end
        if paused is None:
            self.model.set_random_seed(cfg.seed + stage)
            if self.model.ep_info_buffer is not None:  # (None before the first learn())
                self.model.ep_info_buffer.clear()  # the curve is this stage's episodes only
        else:
            restore_training(self.model, paused["training"])
            restore_rng_state(paused["rng"])  # last: nothing may draw from the RNGs before learn()
            call_end = paused["call_end"]
        chunk = cfg.evaluation.eval_every if cfg.schedule == "ladder" else cfg.steps_per_stage
        done = self.model.num_timesteps - progress.start
        bar = tqdm(total=cfg.steps_per_stage, initial=min(done, cfg.steps_per_stage), unit="step",
                   desc=f"stage {stage} {task.describe()}", disable=not self.progress, leave=False)
        callback = StageCallback(self, progress, cfg.checkpoint_every, bar)
        while True:
            done = self.model.num_timesteps - progress.start
            if call_end is not None:
                steps, call_end = call_end - self.model.num_timesteps, None
            elif done < cfg.steps_per_stage:
                steps = min(chunk, cfg.steps_per_stage - done)
            else:
                break
            self.model.learn(steps, callback=callback, reset_num_timesteps=False, progress_bar=False)
            if cfg.schedule == "ladder":
                probe = sb3_to_policy(self.model.policy, self.policy.min_log_std)
                _, distance = self._evaluate([task], probe)
                if distance[0] >= cfg.evaluation.success_distance:
                    break
        bar.close()
        self._events.pop(name).close()

    # --- evaluation -------------------------------------------------------------------------

    def _evaluate(self, tasks: list[Task], policy: GaussianMLPPolicy | None = None,
                  params: list[Params] | None = None) -> tuple[list[float], list[float]]:
        """Mean deterministic return and distance of `policy` (default: current) on each task.

        `params`: optional parameters per task (e.g. each with its task's head).
        """
        if not tasks:
            return [], []
        episodes = self.sampler.sample(policy or self.policy, tasks, self.config.evaluation.episodes,
                                       params=params, seed=10_000 + self.config.seed, deterministic=True)
        returns = [float(e.total_returns().mean()) for e in episodes]
        distances = [float(e.info["distance"].mean()) for e in episodes]
        return returns, distances

    def evaluate_training_policy(self, progress: StageProgress) -> float:
        """The deterministic return of the policy PPO is training, on the stage's task (as R measures it)."""
        policy = sb3_to_policy(self.model.policy, self.policy.min_log_std)
        params = {name: p.detach() for name, p in policy.named_parameters()}
        return self._evaluate([self.pool_tasks[progress.pool_index]], params=[params])[0][0]

    def _task_params(self, pool_index: int) -> Params:
        """The current parameters as pool task `pool_index` uses them: its own head (the current head
        if it has none); with PackNet only the weights of tasks up to it (a fixed schedule's stage)."""
        head = self.heads.get(pool_index)
        params = self.policy.with_head(head if head is not None else self.policy.head())
        if self.model.regularizer is not None:
            params = self.model.regularizer.task_params(params, pool_index, sb3_names(self.policy))
        return params

    def _random_references(self) -> tuple[list[float], list[float]]:
        """Returns of a randomly initialised policy (the 0 of the normalisation)."""
        torch.manual_seed(self.config.seed + 12345)
        random_policy = GaussianMLPPolicy(self.sampler.obs_dim, self.sampler.act_dim, self.policy.hidden_sizes)
        return (self._evaluate(self.pool_tasks, random_policy)[0],
                self._evaluate(self.held_out_tasks, random_policy)[0])

    def _evaluate_matrix_row(self, stage: int, pool_index: int) -> tuple[list[float], float]:
        """Row `stage` of R: the tasks of stages so far (and, for a fixed schedule, the ones to come)."""
        cfg = self.config
        seen = [record["pool_index"] for record in self.state.history] + [pool_index]
        columns = self._matrix_columns(seen)
        per_task = cfg.task_heads or getattr(self.model.regularizer, "per_task_params", False)
        params = [self._task_params(i) for i in columns] if per_task else None
        returns, distances = self._evaluate([self.pool_tasks[i] for i in columns], params=params)
        n_columns = self.schedule.total_stages()
        row = [math.nan] * n_columns
        for column, value in enumerate(returns):
            row[column] = value
        evaluated = dict(zip(seen, returns, strict=False))  # a retrained task counts once per evaluation
        for pool, value in evaluated.items():
            self.state.pool_returns[pool].append(value - self.state.random_returns[pool])
        return row, distances[len(seen) - 1]

    # --- checkpoints ------------------------------------------------------------------------

    def _save(self, policy: GaussianMLPPolicy | None = None, paused: dict | None = None) -> None:
        """Checkpoint step-<env steps so far>.pt: after a stage (`policy` = the stage's result), or
        inside one (`paused`: `save_paused`'s record, `policy` = the one in training)."""
        extra = {
            "sb3_policy": dict(self.model.policy.state_dict()),
            "sb3_optimizer": self.model.policy.optimizer.state_dict(),
            "num_timesteps": int(self.model.num_timesteps),
            "state_json": json.dumps(self.state.to_dict()),
            "heads": {str(pool): head for pool, head in self.heads.items()},
            "tb_sizes": {name: events.size() for name, events in self._events.items()},
        }
        if paused is not None:
            extra["paused_stage"] = paused
            label = f"{self.config.stages[paused['progress']['pool_index']].label} (in training)"
        else:
            label = self.state.history[-1]["label"]
        save_step_checkpoint(self.run, int(self.model.num_timesteps), keep=2, policy=policy or self.policy,
                             robot=self.config.robot, stage=len(self.state.history),
                             regularizer=self.model.regularizer, extra_state=extra,
                             metadata={"kind": "curriculum", "label": label})

    def save_paused(self, progress: StageProgress, call_end: int) -> None:
        """Checkpoint the stage in training, between two rollouts (`_StageCallback`); `call_end`: the
        num_timesteps at which the running learn() call ends."""
        progress.saved_at = int(self.model.num_timesteps)
        training = capture_training(self.model)
        self._save(policy=sb3_to_policy(self.model.policy, self.policy.min_log_std),
                   paused={"progress": progress.to_dict(), "call_end": int(call_end), "training": training})

    def _resume(self) -> tuple[bool, dict | None]:
        """Load the newest checkpoint of a resumed run. Returns (whether one was loaded, the paused
        stage it holds, with the RNG state to continue it, or None after a finished stage)."""
        path = latest_checkpoint(self.run) if self.run.resumed else None
        if path is None:
            return False, None
        checkpoint = load_checkpoint(path, expected_robot=self.config.robot)
        self.policy = checkpoint.policy
        self.model.policy.load_state_dict(checkpoint.extra_state["sb3_policy"])
        self.model.policy.optimizer.load_state_dict(checkpoint.extra_state["sb3_optimizer"])
        self.model.num_timesteps = int(checkpoint.extra_state["num_timesteps"])
        if self.model.regularizer is not None and checkpoint.regularizer_state is not None:
            self.model.regularizer.load_state_dict(checkpoint.regularizer_state)
        self.state = CurriculumState(**json.loads(checkpoint.extra_state["state_json"]))
        self.heads = {int(pool): head for pool, head in checkpoint.extra_state.get("heads", {}).items()}
        self.schedule.retries = self.state.retries
        self.log = MetricsLog(self.run.metrics, "stages", resume_step=len(self.state.history))
        self._tb_sizes = dict(checkpoint.extra_state.get("tb_sizes", {}))
        paused = checkpoint.extra_state.get("paused_stage")
        if paused is None:
            print(f"resumed after stage {len(self.state.history) - 1} from {path}")
            return True, None
        progress = paused["progress"]
        print(f"resumed stage {progress['stage']} at env step {paused['training']['num_timesteps'] - progress['start']}"
              f" of {self.config.steps_per_stage} from {path}")
        return True, {**paused, "rng": checkpoint.rng_state}
