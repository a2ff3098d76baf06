"""Metric-based retrieval: embeddings, nearest keys, a library's files, and the evaluation's protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.meta.adaptation_result import AdaptationConfig
from agents.meta.context_train import ContextConfig, load_context_policy, train_context
from agents.meta.evaluation import compare, step_seed
from agents.meta.pretrain import PretrainConfig, pretrain, save_pretrained
from agents.meta.retrieval import Skill, SkillLibrary, embed_episodes, load_library, tasks_of_kind, train_kinds
from agents.meta.skill_build import SkillBuildConfig, build_library, retrieval_accuracy
from agents.runs.config import config_to_dict
from agents.runs.rundir import latest_checkpoint, prepare_run_dir
from agents.sampler import Sampler
from envs.tasks import CHEETAH_TRAIN_TERRAINS
from envs.terrain import terrain_kinds

TINY_BUILD = dict(family="cheetah_terrain", iterations=1, tasks_per_iteration=1, episodes_per_task=2, horizon=15,
                  key_tasks=2, probe_episodes=2, accuracy_tasks=2, num_threads=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny base policy, teacher and context adapter on cheetah_terrain."""
    folder = tmp_path_factory.mktemp("retrieval")
    tiny = dict(family="cheetah_terrain", iterations=1, tasks_per_iteration=2, episodes_per_task=1, horizon=15,
                hidden_sizes=(16, 16), num_threads=1)
    base = PretrainConfig(**tiny)
    base_path = save_pretrained(folder / "base.pt", pretrain(base, progress=False), base, 1)
    teacher = PretrainConfig(**tiny, privileged_in_obs=True)
    teacher_path = save_pretrained(folder / "teacher.pt", pretrain(teacher, progress=False), teacher, 1)
    context = ContextConfig(family="cheetah_terrain", teacher=str(teacher_path), history=3, hidden_sizes=(8,),
                            iterations=1, tasks_per_iteration=2, episodes_per_task=1, horizon=15, num_threads=1)
    run = prepare_run_dir(folder / "context", config=config_to_dict(context))
    train_context(context, run, progress=False)
    return {"base": base_path, "context": latest_checkpoint(folder / "context")}


def test_tasks_of_kind_and_the_training_kinds():
    assert train_kinds("cheetah_terrain") == [k for k in terrain_kinds() if k in CHEETAH_TRAIN_TERRAINS]
    tasks = tasks_of_kind("cheetah_terrain", "hills", 3, seed=5)
    assert [t.terrain.kind for t in tasks] == ["hills"] * 3 and len({t.terrain.seed for t in tasks}) == 3
    with pytest.raises(ValueError, match="gaps"):
        tasks_of_kind("cheetah_terrain", "gaps", 1, seed=0)  # a held-out kind is no training kind


def test_the_nearest_key_is_retrieved(files):
    encoder = load_context_policy(files["context"])
    keys = [np.array([0.0, 0.0]), np.array([1.0, 0.0]), np.array([0.0, 5.0])]
    library = SkillLibrary("cheetah_terrain", encoder.teacher, encoder,
                           [Skill(f"s{i}", encoder.teacher, k.astype(np.float32), "flat") for i, k in enumerate(keys)])
    assert library.nearest(torch.tensor([[0.1, 0.1], [0.9, -0.3], [0.2, 3.0], [0.6, 0.0]])) == [0, 1, 2, 1]


def test_an_embedding_averages_the_adapter_over_steps_with_history(files):
    encoder = load_context_policy(files["context"])
    sampler = Sampler("cheetah", 10, num_threads=1)
    try:
        episodes = sampler.sample(encoder, tasks_of_kind("cheetah_terrain", "rough", 2, 0), 3, seed=1)
    finally:
        sampler.close()
    embeddings = embed_episodes(encoder, episodes)
    assert embeddings.shape == (2, encoder.adapter.embed_dim)
    from agents.meta.context import history_windows

    batch = episodes[1]
    windows = history_windows(batch.observations, batch.actions, batch.mask, encoder.adapter.history)[1:]
    with torch.no_grad():
        torch.testing.assert_close(embeddings[1], encoder.adapter(windows.reshape(-1, *windows.shape[2:])).mean(0))


def test_a_library_is_built_saved_and_checked_on_load(tmp_path, files):
    from agents.runs.checkpoint import load_checkpoint

    base = load_checkpoint(files["base"]).policy
    encoder = load_context_policy(files["context"])
    library = build_library(base, encoder, SkillBuildConfig(**TINY_BUILD), progress=False)
    assert [s.kind for s in library.skills] == train_kinds("cheetah_terrain")
    assert all(not torch.equal(s.policy.mean_net[0].weight, base.mean_net[0].weight) for s in library.skills)
    accuracy = library.records["accuracy"]
    assert set(accuracy["per_kind"]) == set(CHEETAH_TRAIN_TERRAINS) and 0 <= accuracy["overall"] <= 1
    assert library.records["budget"]["env_steps"] > 0
    library.save(tmp_path / "lib", files["context"], files["base"])
    loaded = load_library(tmp_path / "lib", "cheetah_terrain")
    for a, b in zip(library.skills, loaded.skills, strict=True):
        np.testing.assert_array_equal(a.key, b.key)
        torch.testing.assert_close(a.policy.state_dict(), b.policy.state_dict())
    with pytest.raises(ValueError, match="quadruped"):
        load_library(tmp_path / "lib", "quadruped_terrain_physics")
    index = json.loads((tmp_path / "lib" / "library.json").read_text())
    first, second = (tmp_path / "lib" / entry["file"] for entry in index["skills"][:2])
    second.write_bytes(first.read_bytes())
    with pytest.raises(ValueError, match="other parameters"):
        load_library(tmp_path / "lib")


def test_accuracy_counts_the_kinds_whose_own_skill_is_nearest(files, monkeypatch):
    import agents.meta.skill_build as skill_build

    encoder = load_context_policy(files["context"])
    kinds = ["flat", "rough", "hills"]
    library = SkillLibrary("cheetah_terrain", encoder.teacher, encoder,
                           [Skill(k, encoder.teacher, np.array([float(i), 0.0], dtype=np.float32), k)
                            for i, k in enumerate(kinds)])
    # Probes of flat land on flat's key, of rough half on rough's and half on hills', of hills on flat's.
    fake = {"flat": [[0.0, 0], [0.1, 0]], "rough": [[1.0, 0], [1.9, 0]], "hills": [[0.2, 0], [0.0, 1]]}
    monkeypatch.setattr(skill_build, "probe_embeddings", lambda probe, enc, sampler, kind, *rest: np.array(fake[kind]))
    accuracy = retrieval_accuracy(library, None, SkillBuildConfig(**TINY_BUILD))
    assert accuracy["per_kind"] == {"flat": 1.0, "rough": 0.5, "hills": 0.0}
    assert accuracy["overall"] == pytest.approx(0.5) and accuracy["chance"] == pytest.approx(1 / 3)


def test_the_evaluation_starts_each_task_from_its_retrieved_skill(tmp_path, files):
    from agents.runs.checkpoint import load_checkpoint

    base = load_checkpoint(files["base"]).policy
    encoder = load_context_policy(files["context"])
    library = build_library(base, encoder, SkillBuildConfig(**TINY_BUILD), progress=False)
    tasks = tasks_of_kind("cheetah_terrain", "hills", 1, 3) + tasks_of_kind("cheetah_terrain", "flat", 1, 3)
    config = AdaptationConfig(steps=1, episodes_per_task=2, horizon=12, seeds=(0,), bootstrap_reps=50, num_threads=1)
    result = compare({"retrieval": library, "probe": base}, tasks, "cheetah", config)
    assert result.returns["retrieval"][0, :, 0] == pytest.approx(result.returns["probe"][0, :, 0])
    names = result.retrieved["retrieval"][0]
    sampler = Sampler("cheetah", 12, num_threads=1)
    try:
        probe = sampler.sample(base, tasks, 2, seed=step_seed(0, 0))
        chosen = [library.skills[i] for i in library.nearest(embed_episodes(encoder, probe))]
        after = sampler.sample(base, tasks, 2, params=[s.policy.parameters_dict() for s in chosen],
                               seed=step_seed(0, 1))
    finally:
        sampler.close()
    assert names == [s.name for s in chosen]
    np.testing.assert_allclose(result.returns["retrieval"][0, :, 1], [float(e.total_returns().mean()) for e in after],
                               rtol=1e-6)


def test_the_evaluation_script_runs_retrieval_from_a_library_folder(tmp_path, files, load_script):
    from agents.runs.checkpoint import load_checkpoint

    library = build_library(load_checkpoint(files["base"]).policy, load_context_policy(files["context"]),
                            SkillBuildConfig(**TINY_BUILD), progress=False)
    library.save(tmp_path / "lib", files["context"], files["base"])
    cli = load_script("evaluate_adaptation")
    common = ["--family", "cheetah_terrain", "--tasks", "2", "--steps", "1", "--episodes", "2", "--horizon", "10",
              "--seeds", "0", "--num-threads", "1", "--quiet"]
    with pytest.raises(ValueError, match="library: no library.json"):
        cli.main(["--methods", "retrieval", "--library", str(tmp_path), "--out", str(tmp_path / "no"), *common])
    cli.main(["--methods", "retrieval,pretrained", "--library", str(tmp_path / "lib"), "--pretrained",
              str(files["base"]), "--also", f"flat={tmp_path / 'lib' / 'skill_flat.pt'}", "--out",
              str(tmp_path / "eval"), *common])
    data = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert data["methods"] == ["retrieval", "pretrained", "flat"]  # a fixed skill: the control for retrieval
    assert data["metadata"]["sources"]["flat"].endswith("skill_flat.pt")
    assert len(data["retrieved"]["retrieval"][0]) == 2
    assert data["metadata"]["training"]["retrieval"]["accuracy"]["chance"] == pytest.approx(0.2)
