"""Helpers shared by the models and rollout tests: padded batches and unpadded reference passes."""

import torch


def pad_batch(prompts, responses, pad_id=0, prompt_fill=None, response_fill=None, extra_left=0, extra_right=0):
    """[left-padded prompts | right-padded responses] -> input_ids, attention_mask, response_mask.

    prompts, responses: lists of id lists. The padding slots are filled with `prompt_fill` /
    `response_fill` ids when given (real tokens: masks, not ids, must decide), else `pad_id`.
    extra_left / extra_right add columns of padding to every row.
    """
    width_p = max(len(p) for p in prompts) + extra_left
    width_r = max(len(r) for r in responses) + extra_right
    ids, mask, resp_mask = [], [], []
    for p, r in zip(prompts, responses):
        left = [prompt_fill if prompt_fill is not None else pad_id] * (width_p - len(p))
        right = [response_fill if response_fill is not None else pad_id] * (width_r - len(r))
        ids.append(left + p + r + right)
        mask.append([0] * len(left) + [1] * (len(p) + len(r)) + [0] * len(right))
        resp_mask.append([1.0] * len(r) + [0.0] * len(right))
    return torch.tensor(ids), torch.tensor(mask), torch.tensor(resp_mask)


def solo_logprobs(model, prompt, response, temperature=1.0):
    """log-probs of `response` after `prompt`, one unpadded sequence, from the full logits: (len(response),)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    start = len(prompt)
    return torch.stack([logp[start - 1 + t, tok] for t, tok in enumerate(response)])


def build_tiny_gpt2(tokenizer, seed=0):
    """A random 2-layer GPT-2 (learned absolute positions): unlike RoPE, wrong position ids under
    left padding change its outputs, so padding tests on it can fail."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config).eval()
