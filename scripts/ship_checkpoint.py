r"""Ship a trained checkpoint with its provenance and evaluation figures (into assets/checkpoints).

    python scripts/ship_checkpoint.py --checkpoint runs/maml/checkpoints/latest.pt --run runs/maml \
        --evaluation runs/eval/results.json --out assets/checkpoints/maml_cheetah_velocity.pt

The evaluation must have measured this very policy (its `policy_sha256` for one method equals the
checkpoint's). The shipped file keeps the checkpoint's policy, config, code commit and observation
layout, and adds `metadata["evaluation"]`: the evaluation's settings, summary, gains and
comparisons, and which of its methods this policy was. With `--run`, the budget (wall time, env
steps) is summed from the run's metrics log, which spans every resume, plus the budget of the
checkpoint a run started from (`init`). `tests/runs/
test_shipped_checkpoints.py` checks every shipped file for these records.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.runs.checkpoint import load_checkpoint, policy_sha256, save_checkpoint
from agents.runs.cli import DEBUG_HELP, check_writable, run_script
from agents.runs.layout import check_layout

EVALUATION_KEYS = ("config", "intervals", "methods", "tasks_per_seed", "summary", "gains", "versus")
# checkpoint kind -> its metrics log (a context adapter's budget is its own; its teacher's is in metadata["teacher"])
METRICS = {"maml": "meta_train.jsonl", "pretrained": "pretrain.jsonl", "context": "context.jsonl"}


def run_budget(run: Path, kind: str, up_to: int) -> dict[str, float | int]:
    """Wall time and env steps summed over a run's metrics log up to iteration `up_to` (the last
    row of each step wins)."""
    path = run / "metrics" / METRICS.get(kind, "")
    if kind not in METRICS or not path.is_file():
        raise ValueError(f"run: no metrics log {path} for a {kind!r} checkpoint")
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row["step"] <= up_to:
                rows[row["step"]] = row
    if not rows or any("env_steps" not in r or "time_iteration" not in r for r in rows.values()):
        raise ValueError(f"run: {path} lacks env_steps or time_iteration per step")
    return {"wall_time_s": round(sum(r["time_iteration"] for r in rows.values()), 1),
            "env_steps": int(sum(r["env_steps"] for r in rows.values())), "source": str(path.name)}


def main() -> None:
    """Check that the evaluation measured this checkpoint, then write it with its records to --out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--checkpoint", type=Path, required=True, help="the trained checkpoint")
    parser.add_argument("--evaluation", type=Path, required=True, help="results.json of evaluate_adaptation.py")
    parser.add_argument("--out", type=Path, required=True, help="the shipped file to write")
    parser.add_argument("--run", type=Path, help="the run directory: sum the budget from its metrics log")
    args = parser.parse_args()
    check_writable(args.out, "out")
    checkpoint = load_checkpoint(args.checkpoint)
    check_layout(checkpoint, "checkpoint")
    metadata = dict(checkpoint.metadata)
    for key in ("config", "provenance", "observation"):
        if key not in metadata:
            raise ValueError(f"checkpoint: its metadata has no {key!r} (made before provenance was recorded; retrain)")
    try:
        evaluation = json.loads(args.evaluation.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"evaluation: cannot read {args.evaluation} as JSON ({err})") from err
    digest = policy_sha256(checkpoint.policy)
    hashes = evaluation.get("metadata", {}).get("policy_sha256", {})
    method = next((name for name, value in hashes.items() if value == digest), None)
    if method is None:
        raise ValueError(f"evaluation: {args.evaluation} did not measure this checkpoint's policy "
                         f"(methods {sorted(hashes)} have other parameters)")
    if args.run is not None:
        metadata["budget"] = run_budget(args.run, metadata.get("kind", ""), checkpoint.iteration)
        if "init" in metadata:  # a run started from another checkpoint: its budget counts too
            start = metadata["init"]["budget"]
            metadata["budget"]["wall_time_s"] = round(metadata["budget"]["wall_time_s"] + start["wall_time_s"], 1)
            metadata["budget"]["env_steps"] += int(start["env_steps"])
            metadata["budget"]["source"] += f" + init {metadata['init']['path']}"
    metadata["evaluation"] = {"method": method, **{key: evaluation[key] for key in EVALUATION_KEYS},
                              "by_experience": evaluation.get("by_experience", []),
                              "metadata": {k: v for k, v in evaluation["metadata"].items() if k != "policy_sha256"}}
    save_checkpoint(args.out, policy=checkpoint.policy, robot=checkpoint.robot, env_id=checkpoint.env_id,
                    iteration=checkpoint.iteration, stage=checkpoint.stage, extra_state=checkpoint.extra_state,
                    metadata=metadata)
    print(f"shipped {args.out} ({method} in {args.evaluation}; budget {metadata.get('budget')})")


if __name__ == "__main__":
    run_script(main)
