"""The family matrix: padding, rollout, scoring, EOS and chat-template invariances on tiny models
of eight Hugging Face families, each saved to a folder and read back by the real loading code.

Mutations that make these tests fail (each tried; see docs/models.md):
- logprobs / padding: `position_ids_from_mask` returning `arange(T)` (GPT-2, OPT, ... shift positions).
- rollout vs forward: `make_experience` dividing generate's logits by 1 instead of the temperature.
- scores / values: `last_index_from_mask` returning T - 1 (a right-padded row is read on a pad).
- score on the last real token: `Experience.last_index` one column late (TRL's bug).
- EOS: `eos_token_ids` keeping only `tokenizer.eos_token_id` (Llama 3's <|eot_id|> no longer stops).
- training rows end where generation stops: `response_end_id` returning EOS (Llama 3 rows end
  <|eot_id|><|end_of_text|>, Gemma 2 <end_of_turn>\n<eos>: the RM is trained on a token it never reads).
- rendered once: `encode_prompts` always adding special tokens (a second BOS before the template's);
  `is_rendered` returning False (a stored, already rendered prompt gets the template twice).
"""

import pytest
import torch

from rlhfkit.data.collate import collate_sft
from rlhfkit.data.tokenize import tokenize_prompts, tokenize_sft
from rlhfkit.models import (load_causal_lm, load_critic, load_reward_model, load_tokenizer, position_ids_from_mask,
                            response_logprobs)
from rlhfkit.models.families import FAMILIES, build_family_model, build_family_tokenizer, save_family
from rlhfkit.rollout import GenerationSettings, RewardModelScorer, eos_token_ids, generate, make_experience
from tests.models.padding import pad_batch

NAMES = sorted(FAMILIES)
PROMPTS = ["what is 1 + 2 ?", "tell me a short story about a cat and a dog ."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{family: (policy folder, reward-model folder)}, built once per module."""
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        out[name] = (save_family(name, root / "policy", seed=0),
                     save_family(name, root / "rm", seed=1, head="score"))
    return out


def _policy(folders, name):
    path = folders[name][0]
    return load_tokenizer(path), load_causal_lm(path).eval()


def _words(tokenizer, n, seed):
    """n ordinary (non-special) token ids."""
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    g = torch.Generator().manual_seed(seed)
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=g).tolist()]


@pytest.mark.parametrize("name", NAMES)
def test_logprobs_do_not_depend_on_left_padding(folders, name):
    tok, model = _policy(folders, name)
    rows, _ = tokenize_prompts([{"prompt": p} for p in PROMPTS], tok, 64)
    prompts = [r["prompt_ids"] for r in rows]
    responses = [_words(tok, 5, 0), _words(tok, 3, 1)]
    ids, mask, resp_mask = pad_batch(prompts, responses, pad_id=tok.pad_token_id, extra_left=3)
    batch = response_logprobs(model, ids, mask, position_ids_from_mask(mask), 5)
    assert len(prompts[0]) < len(prompts[1])  # row 0 is left-padded
    for i, (p, r) in enumerate(zip(prompts, responses)):
        alone = torch.tensor([p + r])
        ones = torch.ones_like(alone)
        solo = response_logprobs(model, alone, ones, position_ids_from_mask(ones), len(r))[0]
        torch.testing.assert_close(batch[i, :len(r)], solo, atol=1e-5, rtol=0)


def _eos_bias(model, token_ids, value):
    """Add `value` to the logits of `token_ids` (a forward hook on the output layer); returns the handle."""
    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_ids] += value
        return output

    return model.get_output_embeddings().register_forward_hook(hook)


@pytest.mark.parametrize("name", NAMES)
def test_rollout_logprobs_equal_a_fresh_forward(folders, name):
    tok, model = _policy(folders, name)
    rows, _ = tokenize_prompts([{"prompt": p} for p in PROMPTS], tok, 64)
    settings = GenerationSettings(max_new_tokens=6, temperature=0.7, n=3)
    torch.manual_seed(0)
    exp = make_experience(model, tok, [r["prompt_text"] for r in rows], settings,
                          prompt_ids=[r["prompt_ids"] for r in rows])
    fresh = response_logprobs(model, exp.input_ids, exp.attention_mask, exp.position_ids, exp.response_length,
                              temperature=0.7)
    m = exp.response_mask.bool()
    torch.testing.assert_close(exp.logprobs[m], fresh[m], atol=1e-5, rtol=0)
    # and each row alone, unpadded
    for i in range(exp.batch_size):
        keep = exp.attention_mask[i].bool()
        alone = exp.input_ids[i][keep][None]
        k = int(exp.response_mask[i].sum())
        ones = torch.ones_like(alone)
        solo = response_logprobs(model, alone, ones, position_ids_from_mask(ones), k, temperature=0.7)[0]
        torch.testing.assert_close(exp.logprobs[i, :k], solo, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_scores_and_values_do_not_depend_on_padding(folders, name):
    tok = load_tokenizer(folders[name][1])
    rm = load_reward_model(folders[name][1])
    critic = load_critic(folders[name][1]).eval()
    seqs = [_words(tok, 7, 2), _words(tok, 3, 3)]
    solo_scores = [rm.score(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in seqs]
    solo_values = [critic.values(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long))[0] for s in seqs]
    width = max(map(len, seqs)) + 2
    for side in ("left", "right"):
        ids, mask = [], []
        for s in seqs:
            pad = [tok.pad_token_id] * (width - len(s))
            ids.append(pad + s if side == "left" else s + pad)
            mask.append([0] * len(pad) + [1] * len(s) if side == "left" else [1] * len(s) + [0] * len(pad))
        ids, mask = torch.tensor(ids), torch.tensor(mask)
        scores = rm.score(ids, mask)
        values = critic.values(ids, mask)
        for i, s in enumerate(seqs):
            torch.testing.assert_close(scores[i:i + 1], solo_scores[i], atol=1e-5, rtol=0)
            torch.testing.assert_close(values[i][mask[i].bool()], solo_values[i], atol=1e-5, rtol=0)


def _biased_experience(folders, name, bias=5.0, max_new_tokens=4, n=8, with_scorer=True):
    """A rollout whose policy favours EOS (some rows end on EOS, some are cut), scored by the family's RM."""
    tok, model = _policy(folders, name)
    fam = FAMILIES[name]
    handle = _eos_bias(model, [tok.convert_tokens_to_ids(fam.eos)], bias)
    eos_ids = eos_token_ids(model, tok)
    rm = load_reward_model(folders[name][1])
    rows, _ = tokenize_prompts([{"prompt": p} for p in PROMPTS], tok, 64)
    try:
        torch.manual_seed(3)
        exp = make_experience(model, tok, [r["prompt_text"] for r in rows],
                              GenerationSettings(max_new_tokens=max_new_tokens, n=n),
                              prompt_ids=[r["prompt_ids"] for r in rows],
                              scorer=RewardModelScorer(rm, tok) if with_scorer else None)
    finally:
        handle.remove()
    return tok, rm, exp, eos_ids


@pytest.mark.parametrize("name", NAMES)
def test_score_lands_on_the_last_real_token(folders, name):
    tok, rm, exp, eos_ids = _biased_experience(folders, name)
    lengths = exp.response_mask.sum(1).long()
    assert exp.eos.any() and (~exp.eos).any(), "the biased rollout should hold rows of both kinds"
    for i in range(exp.batch_size):
        k = int(lengths[i])
        ids = exp.response_ids[i]
        if exp.eos[i]:
            assert int(ids[k - 1]) in eos_ids  # the real EOS is inside the mask ...
        else:
            assert k == exp.response_length and int(ids[k - 1]) not in eos_ids  # cut at max_new_tokens
        assert not exp.response_mask[i, k:].any()  # ... and no pad after it is
        assert exp.input_ids[i, exp.last_index[i]] == ids[k - 1]
        alone = torch.cat([exp.prompt_ids[i][exp.prompt_mask[i].bool()], ids[:k]])[None]
        solo = rm.score(alone, torch.ones_like(alone))
        torch.testing.assert_close(exp.scores[i:i + 1], solo, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_training_rows_end_where_generation_stops(folders, name):
    """SFT / reward-model rows end with one end token, inside the loss mask, that generation stops at:
    the template's end of turn (Llama 3 <|eot_id|>, not <|eot_id|><|end_of_text|>), else EOS. The
    reward model is then trained reading the token it reads on rollouts; pads stay outside the mask."""
    tok, model = _policy(folders, name)
    rows = [{"prompt": "say hi", "response": "hi there"},
            {"prompt": "what is 1 + 2 ?", "response": "the answer is 3 , i am fine , thank you ."}]
    examples, _ = tokenize_sft(rows, tok, 128)
    batch = collate_sft(examples, tok.pad_token_id)
    fam = FAMILIES[name]
    end = tok.convert_tokens_to_ids(fam.end_of_turn or fam.eos)
    assert end in eos_token_ids(model, tok)
    prompts, _ = tokenize_prompts(rows, tok, 64)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["input_ids"][i, n - 1] == end and batch["loss_mask"][i, n - 1] == 1
        assert not batch["loss_mask"][i, n:].any() and not batch["attention_mask"][i, n:].any()
        # prompt as the rollout tokenizes it, the reply's own tokens, one end token: the rollout's layout
        reply = e["input_ids"][len(prompts[i]["prompt_ids"]):-1]
        assert e["input_ids"][:len(prompts[i]["prompt_ids"])] == prompts[i]["prompt_ids"]
        assert not set(reply) & set(eos_token_ids(model, tok)), tok.decode(reply)
        assert tok.decode(reply, skip_special_tokens=True).strip() == rows[i]["response"]


def _stop_tokens(name):
    fam = FAMILIES[name]
    return sorted(set(fam.generation_eos) | {fam.eos} | ({fam.end_of_turn} if fam.end_of_turn else set()))


@pytest.mark.parametrize("name,stop", [(n, s) for n in NAMES for s in _stop_tokens(n)])
def test_generation_stops_at_each_eos_id(folders, name, stop):
    tok, model = _policy(folders, name)
    stop_id = tok.convert_tokens_to_ids(stop)
    handle = _eos_bias(model, [stop_id], 5.0)
    try:
        torch.manual_seed(0)
        gen = generate(model, tok, PROMPTS, GenerationSettings(max_new_tokens=6, n=6))
    finally:
        handle.remove()
    lengths = gen.response_mask.sum(1).long()
    assert (lengths < 6).any()
    for i in range(len(gen.responses)):
        row = gen.response_ids[i, :lengths[i]].tolist()
        if stop_id in row:
            assert row.index(stop_id) == len(row) - 1 and gen.eos[i]  # stopped right there
        assert stop not in gen.responses[i]


@pytest.mark.parametrize("name", NAMES)
def test_chat_prompt_is_rendered_once(folders, name):
    tok = load_tokenizer(folders[name][0])
    fam = FAMILIES[name]
    chat = [{"role": "user", "content": "say hi"}]
    rows, _ = tokenize_prompts([{"prompt": chat}, {"prompt": "what is 1 + 2 ?"}], tok, 64)
    for row in rows:
        ids = row["prompt_ids"]
        if tok.bos_token_id is not None and tok.bos_token_id != tok.eos_token_id:
            bos_count = ids.count(tok.bos_token_id)
            assert bos_count == (1 if fam.prepend_bos else 0), f"{bos_count} BOS in {tok.decode(ids)!r}"
            if fam.prepend_bos:
                assert ids[0] == tok.bos_token_id
        text = row["prompt_text"]
        if fam.chat_template:
            once = tok.apply_chat_template(
                [{"role": "user", "content": row["prompt"]}] if isinstance(row["prompt"], str) else row["prompt"],
                tokenize=False, add_generation_prompt=True)
            assert text == once
            assert ids == tok(once, add_special_tokens=False)["input_ids"]
            # a prompt stored already rendered is not rendered a second time
            again, _ = tokenize_prompts([{"prompt": text}], tok, 64)
            assert again[0]["prompt_text"] == text and again[0]["prompt_ids"] == ids
        # generate tokenizes a rendered prompt text to the same ids
        gen = generate(load_causal_lm(folders[name][0]), tok, [text], GenerationSettings(max_new_tokens=1))
        assert gen.prompt_ids[0][gen.prompt_mask[0].bool()].tolist() == ids


def test_family_tokenizers_keep_their_conventions(folders):
    """The fixtures themselves: pads, BOS rules and several EOS ids as each family ships them."""
    no_pad = {n for n in NAMES if FAMILIES[n].pad is None}
    assert {"gpt2", "llama3", "pythia", "mistral"} <= no_pad
    for name in NAMES:
        raw = build_family_tokenizer(name)
        assert (raw.pad_token is None) == (name in no_pad)
        tok, model = _policy(folders, name)
        assert tok.pad_token_id is not None  # load_tokenizer reuses EOS
        first = tok("hello")["input_ids"][0]
        assert (first == tok.bos_token_id) == FAMILIES[name].prepend_bos
        eos = model.generation_config.eos_token_id
        assert len(eos if isinstance(eos, list) else [eos]) == max(1, len(FAMILIES[name].generation_eos))
    assert load_causal_lm(folders["gpt2"][0]).config.tie_word_embeddings
    assert not load_causal_lm(folders["llama3"][0]).config.tie_word_embeddings


@pytest.mark.parametrize("name", ["llama3", "gemma2", "phi3"])
def test_template_end_of_turn_stops_without_a_generation_config_list(name):
    """A folder whose generation_config.json lists only the tokenizer's EOS still stops at the turn's end,
    since training rows end with it (mutation: `eos_token_ids` without `end_of_turn_id` fails this)."""
    tok = build_family_tokenizer(name)
    model = build_family_model(name, tok)
    model.generation_config.eos_token_id = tok.eos_token_id
    assert eos_token_ids(model, tok) == sorted({tok.eos_token_id,
                                                tok.convert_tokens_to_ids(FAMILIES[name].end_of_turn)})


@pytest.mark.parametrize("name", NAMES)
def test_critic_from_the_policy_folder(folders, name):
    """`--critic <policy>`: the causal LM's backbone under a new, zeroed scalar head, on the policy's ids."""
    critic = load_critic(folders[name][0])
    policy = load_causal_lm(folders[name][0])
    backbone = critic.backbone.state_dict()
    prefix = critic.base.base_model_prefix
    lm = {k.split(".", 1)[1]: v for k, v in policy.state_dict().items() if k.split(".", 1)[0] == prefix}
    assert backbone.keys() == lm.keys() and all(torch.equal(backbone[k], lm[k]) for k in lm)
    ids = torch.tensor([_words(load_tokenizer(folders[name][0]), 6, 4)])
    assert torch.equal(critic.values(ids, torch.ones_like(ids)), torch.zeros(1, 6))
