"""The quickstart's comparisons of the SFT policy's own samples (`policy_pairs`): what the labeller is given
is two samples of the policy per prompt, seeded, and what it returns is written for the reward model."""

from __future__ import annotations

import json

from rlhfkit.tasks.reviews import ReviewsTask


class RecordingTask(ReviewsTask):
    """The reviews task, but every pair is kept with the first response chosen: shows what was labelled."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def label_pairs(self, prompts, responses_a, responses_b, seed=0):
        self.seen.append((list(prompts), list(responses_a), list(responses_b)))
        rows = [{"prompt": p, "chosen": a, "rejected": b} for p, a, b in zip(prompts, responses_a, responses_b)]
        return rows, {"pairs": len(rows), "near_ties_dropped": 0}


def test_policy_pairs_are_two_seeded_samples_of_the_policy_per_prompt(tmp_path):
    from rlhfkit.models import load_causal_lm, load_tokenizer
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.quickstart import policy_pairs
    from rlhfkit.rollout import GenerationSettings, make_engine
    from rlhfkit.trainers.common import set_seed

    task = RecordingTask()
    model = save_tiny(tmp_path / "policy", task.corpus(), level="word", seed=0, hidden_size=32, num_layers=2,
                      num_heads=4)
    path, info = policy_pairs(task, model, tmp_path / "pairs.jsonl", prompts=300, seed=3, max_new_tokens=6)
    prompts, first, second = task.seen[0]
    assert len(prompts) == len(first) == len(second) == 300 and info["pairs"] == 300
    assert set(prompts) <= set(task.prompts()) and len(set(prompts)) > 10   # drawn as the task's data draws them
    assert sum(a != b for a, b in zip(first, second)) > 250   # two independent samples, not one twice
    rows = [json.loads(line) for line in open(path)]
    assert rows == [{"prompt": p, "chosen": a, "rejected": b} for p, a, b in zip(prompts, first, second)]
    # they are the policy's samples: the same seeded draw from the policy itself gives the same texts
    tokenizer, policy = load_tokenizer(model), load_causal_lm(model).eval()
    set_seed(3)
    redo = make_engine("native", policy, tokenizer).generate(prompts[:256], GenerationSettings(max_new_tokens=6, n=2))
    assert redo.responses[0::2] == first[:256] and redo.responses[1::2] == second[:256]
    # the same seed gives the same pairs; another seed other samples
    policy_pairs(task, model, tmp_path / "again.jsonl", prompts=300, seed=3, max_new_tokens=6)
    policy_pairs(task, model, tmp_path / "other.jsonl", prompts=300, seed=4, max_new_tokens=6)
    assert task.seen[1] == task.seen[0] and task.seen[2][1] != task.seen[0][1]


def test_the_reward_model_gets_the_written_pairs_and_the_policy_comparisons(tmp_path):
    from rlhfkit.models.tiny import save_tiny
    from rlhfkit.quickstart import QuickstartConfig, _preferences

    task = RecordingTask()
    model = save_tiny(tmp_path / "policy", task.corpus(), level="word", seed=0, hidden_size=32, num_layers=2,
                      num_heads=4)
    data, summary = {"prefs_train": str(tmp_path / "written.jsonl")}, {}
    cfg = QuickstartConfig(fast=True, output=str(tmp_path))
    files = _preferences(cfg, task, model, data, tmp_path, summary)
    assert files == (data["prefs_train"], str(tmp_path / "data" / "prefs_policy.jsonl"))
    assert data["prefs_policy"] == files[1] and summary["policy_pairs"]["pairs"] == 40   # the fast preset's 40

    class AllTies(RecordingTask):
        def label_pairs(self, prompts, responses_a, responses_b, seed=0):
            return [], {"pairs": 0, "near_ties_dropped": len(prompts)}

    summary = {}
    assert _preferences(cfg, AllTies(), model, dict(data), tmp_path, summary) == (data["prefs_train"],)
    assert summary["policy_pairs"]["near_ties_dropped"] == 40   # recorded, but no empty file for the reward model
    arithmetic = QuickstartConfig(task="arithmetic", fast=True, output=str(tmp_path))
    assert _preferences(arithmetic, task, model, {}, tmp_path, {}) == ()   # no reward model, no pairs
