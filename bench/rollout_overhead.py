"""How much does building the experience batch add over the work it cannot avoid?

Times `make_experience` (generate + policy logprobs + reference logprobs + critic values +
scores, with masks and bookkeeping) against a plain baseline doing the same work by hand:
`model.generate` of the same tokens (same seed, same sampling settings) followed by the three
forward passes the batch needs (policy and reference logits for the response positions,
critic backbone). Prints both medians and their ratio. Tiny Llama models, CPU by default.

    python bench/rollout_overhead.py [--prompts 16 --n 4 --max-new-tokens 32 --reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rlhfkit.models import ScalarHeadModel, position_ids_from_mask
from rlhfkit.models.tiny import build_tiny_classifier, build_tiny_model, build_tiny_tokenizer
from rlhfkit.rollout import FunctionScorer, GenerationSettings, make_experience

CORPUS = ["the quick brown fox jumps over the lazy dog", "what is 1 + 2 ? the answer is 3",
          "a review : the movie was very good , not bad", "0 4 5 6 7 8 9 = ."]


def baseline(policy, reference, critic, tokenizer, prompts, settings):
    """HF generate + the forwards the batch needs, with nothing else."""
    from transformers import GenerationConfig

    enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    ids = enc["input_ids"].repeat_interleave(settings.n, 0)
    mask = enc["attention_mask"].repeat_interleave(settings.n, 0)
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=True,
                              temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                              eos_token_id=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        out = policy.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        full_mask = torch.cat([mask, torch.ones_like(out[:, ids.shape[1]:])], 1)
        pos = position_ids_from_mask(full_mask)
        keep = out.shape[1] - ids.shape[1] + 1
        policy(input_ids=out, attention_mask=full_mask, position_ids=pos, logits_to_keep=keep)
        reference(input_ids=out, attention_mask=full_mask, position_ids=pos, logits_to_keep=keep)
        critic.backbone(input_ids=out, attention_mask=full_mask, position_ids=pos)
    return out


def timed(fns, reps):
    """Seconds per call of each function, interleaved (a, b, a, b, ...) so load changes hit both."""
    times = [[] for _ in fns]
    for rep in range(reps):
        for fn, out in zip(fns, times):
            torch.manual_seed(rep)
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--stop", default=None, help="a stop string that never occurs: measures the per-step "
                        "stop-string check (the baseline has none; the tokens stay the same)")
    args = parser.parse_args()

    tokenizer = build_tiny_tokenizer(CORPUS)
    size = dict(hidden_size=args.hidden, num_layers=args.layers, num_heads=4)
    policy = build_tiny_model(tokenizer, seed=0, **size).eval()
    reference = build_tiny_model(tokenizer, seed=0, **size).eval()
    critic = ScalarHeadModel(build_tiny_classifier(tokenizer, seed=1, **size)).eval()
    scorer = FunctionScorer(lambda prompts, responses: [float(len(r.split())) for r in responses])
    words = CORPUS[0].split() + CORPUS[2].split()
    prompts = [" ".join(words[i % 7: i % 7 + 2 + i % 5]) for i in range(args.prompts)]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, n=args.n, temperature=0.9,
                                  stop_strings=(args.stop,) if args.stop else ())

    def ours():
        return make_experience(policy, tokenizer, prompts, settings, reference=reference, critic=critic,
                               scorer=scorer)

    def plain():
        return baseline(policy, reference, critic, tokenizer, prompts, settings)

    # Same seed, same sampling: both sides must produce the same tokens.
    torch.manual_seed(0)
    exp = ours()
    torch.manual_seed(0)
    plain_response = plain()[:, exp.prompt_length:exp.prompt_length + exp.response_length]
    valid = exp.response_mask.bool()
    same = torch.equal(exp.response_ids[valid], plain_response[valid])
    ours(), plain()  # warm-up
    all_ours, all_plain = timed([ours, plain], args.reps)
    t_ours, t_plain = statistics.median(all_ours), statistics.median(all_plain)
    rows = args.prompts * args.n
    print(f"rows={rows} (prompts={args.prompts} x n={args.n}), new tokens={args.max_new_tokens}, "
          f"hidden={args.hidden}, layers={args.layers}, threads={torch.get_num_threads()}, same tokens={same}"
          f"{f', stop string {args.stop!r}' if args.stop else ''}")
    print(f"make_experience        median {t_ours * 1e3:8.1f} ms  min {min(all_ours) * 1e3:8.1f} ms")
    print(f"generate + 3 forwards  median {t_plain * 1e3:8.1f} ms  min {min(all_plain) * 1e3:8.1f} ms")
    print(f"ratio make_experience / baseline: median {t_ours / t_plain:.3f}, min {min(all_ours) / min(all_plain):.3f}")

if __name__ == "__main__":
    main()
