"""A reward model of another family scores with its own tokenizer and template; a critic must not.

Mutations tried: `RewardModelScorer.reuse_ids` forced True (the GPT-2 reward model reads Llama 3
ids: the cross-family scores change); `tokenizer_differences` ignoring the chat template (the
template test fails); `check_critic_base` comparing nothing (the critic test fails).
"""

import copy

import pytest
import torch

from rlhfkit.config import ConfigError
from rlhfkit.data.tokenize import tokenize_prompts
from rlhfkit.models import check_critic_base, load_causal_lm, load_reward_model, load_tokenizer, same_tokenizer
from rlhfkit.models.families import save_family
from rlhfkit.rollout import GenerationSettings, load_reward_scorer, make_experience

PROMPTS = ["what is 1 + 2 ?", "tell me a short story about a cat ."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    return {
        "llama3": save_family("llama3", root / "llama3", seed=0),
        "llama3_rm": save_family("llama3", root / "llama3_rm", seed=2, head="score"),
        "gpt2_rm": save_family("gpt2", root / "gpt2_rm", seed=1, head="score", n_embd=32),
        "qwen2_rm": save_family("qwen2", root / "qwen2_rm", seed=3, head="score"),
    }


def _rollout(folders, scorer_path, n=3, chat=False):
    tok = load_tokenizer(folders["llama3"])
    policy = load_causal_lm(folders["llama3"]).eval()
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS] if chat else PROMPTS
    rows, _ = tokenize_prompts([{"prompt": p} for p in prompts], tok, 64)
    scorer = load_reward_scorer(scorer_path, tok)
    torch.manual_seed(0)
    exp = make_experience(policy, tok, [r["prompt_text"] for r in rows], GenerationSettings(max_new_tokens=5, n=n),
                          prompt_ids=[r["prompt_ids"] for r in rows], scorer=scorer)
    return tok, scorer, exp


def _direct(rm, ids_rows):
    return torch.cat([rm.score(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in ids_rows])


def test_gpt2_reward_model_scores_a_llama3_policy_as_plain_text(folders):
    _, scorer, exp = _rollout(folders, folders["gpt2_rm"])
    assert not scorer.reuse_ids and "plain text" in scorer.how
    gpt2 = load_tokenizer(folders["gpt2_rm"])
    rm = load_reward_model(folders["gpt2_rm"])
    rows = []
    for i in range(exp.batch_size):
        prompt = PROMPTS[i // 3]  # the text as written, not the policy's rendered template
        ids = gpt2(prompt)["input_ids"] + gpt2(exp.responses[i], add_special_tokens=False)["input_ids"]
        rows.append(ids + ([gpt2.eos_token_id] if exp.eos[i] else []))
    assert max(max(r) for r in rows) < len(gpt2)
    torch.testing.assert_close(exp.scores, _direct(rm, rows), atol=1e-6, rtol=0)


def test_qwen_reward_model_uses_its_own_chat_template(folders):
    _, scorer, exp = _rollout(folders, folders["qwen2_rm"], chat=True)
    assert not scorer.reuse_ids and "its own chat template" in scorer.how
    qwen = load_tokenizer(folders["qwen2_rm"])
    rm = load_reward_model(folders["qwen2_rm"])
    rows = []
    for i in range(exp.batch_size):
        text = qwen.apply_chat_template([{"role": "user", "content": PROMPTS[i // 3]}], tokenize=False,
                                        add_generation_prompt=True)
        assert text.count("<|im_start|>user") == 1
        ids = qwen(text, add_special_tokens=False)["input_ids"]
        ids += qwen(exp.responses[i], add_special_tokens=False)["input_ids"]
        rows.append(ids + ([qwen.eos_token_id] if exp.eos[i] else []))
    torch.testing.assert_close(exp.scores, _direct(rm, rows), atol=1e-6, rtol=0)


def test_same_family_reward_model_reuses_the_rollout_ids(folders):
    _, scorer, exp = _rollout(folders, folders["llama3_rm"])
    assert scorer.reuse_ids and "as they are" in scorer.how
    rm = load_reward_model(folders["llama3_rm"])
    rows = [exp.input_ids[i][exp.attention_mask[i].bool()].tolist() for i in range(exp.batch_size)]
    torch.testing.assert_close(exp.scores, _direct(rm, rows), atol=1e-5, rtol=0)


def test_multi_turn_prompts_need_registering(folders):
    tok = load_tokenizer(folders["llama3"])
    scorer = load_reward_scorer(folders["gpt2_rm"], tok)
    chat = [{"role": "user", "content": "say hi"}, {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "how are you ?"}]
    rows, _ = tokenize_prompts([{"prompt": chat}], tok, 64)
    with pytest.raises(ValueError, match="add_prompts"):
        scorer.conversation(rows[0]["prompt_text"])
    scorer.add_prompts(rows)
    assert scorer.conversation(rows[0]["prompt_text"]) == chat


def test_same_tokenizer_means_vocab_specials_and_template(folders):
    a = load_tokenizer(folders["llama3"])
    assert same_tokenizer(a, load_tokenizer(folders["llama3_rm"]))
    assert not same_tokenizer(a, load_tokenizer(folders["gpt2_rm"]))
    other_template = copy.deepcopy(a)
    other_template.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert not same_tokenizer(a, other_template)
    other_pad = copy.deepcopy(a)
    other_pad.pad_token = "<|eot_id|>"
    assert same_tokenizer(a, other_pad)  # pads are masked: which id fills them never matters


def test_critic_from_another_vocabulary_is_refused(folders):
    tok = load_tokenizer(folders["llama3"])
    with pytest.raises(ConfigError, match="--critic"):
        check_critic_base(folders["gpt2_rm"], tok)
    check_critic_base(folders["llama3_rm"], tok)
    check_critic_base(folders["llama3"], tok)


def test_reward_folder_without_a_tokenizer(folders, tmp_path):
    rm = load_reward_model(folders["llama3_rm"])
    rm.base.save_pretrained(str(tmp_path / "bare"))
    scorer = load_reward_scorer(tmp_path / "bare", load_tokenizer(folders["llama3"]))
    assert scorer.reuse_ids
    small = load_tokenizer(folders["gpt2_rm"])
    small.add_tokens([f"<extra_{i}>" for i in range(50)])  # more tokens than the model embeds
    with pytest.raises(ConfigError, match="do not cover"):
        load_reward_scorer(tmp_path / "bare", small)
