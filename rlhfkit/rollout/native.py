"""The `native` rollout engine: our own KV-cache decode loop, which computes only what the result needs.

HF `generate` on B prompts x n samples runs the prefill of every prompt n times (the batch holds N = B * n
rows) and decodes every row until the longest is done. Here:
1. each distinct prompt is prefilled once (B rows, left-padded), and its KV cache is repeated to its n rows;
2. every decode step forwards only the rows still running: a row that produced an EOS (any of the model's
   EOS ids) or completed a stop string leaves the batch, its cache rows, attention mask and positions with it;
3. tokens are chosen as `generate` chooses them: argmax when greedy; with row keys, argmax of the keyed
   Gumbel scores of `rlhfkit.rollout.seeded` (the same draw as `SeededSampling`, so in float32 both engines
   give the same tokens for the same keys); else a multinomial draw from softmax(logits / T) under top-k / top-p.
A model the loop cannot run (sharded weights, an encoder-decoder, a cache other than HF's dynamic one) is
sampled by the fallback engine (HF generate) instead, with the reason logged once.
"""

from __future__ import annotations

import inspect
import logging

import torch

from rlhfkit.algos.masking import position_ids_from_mask
from rlhfkit.models.loading import is_sharded
from rlhfkit.models.lora import unwrap_peft
from rlhfkit.rollout.generation import (GenerationResult, GenerationSettings, check_prompts, cut_responses,
                                        decode_responses, encode_prompts, eos_token_ids, eval_mode, response_ends,
                                        stop_string_hits, stop_string_window)
from rlhfkit.rollout.seeded import filter_top_k_top_p, keyed_gumbel_scores

logger = logging.getLogger("rlhfkit.rollout")


def native_unsupported(model) -> str | None:
    """Why the native decode loop cannot run `model` (None: it can)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    base = unwrap_peft(model)[0]
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return "not a decoder-only Hugging Face model"
    if is_sharded(model):
        return "sharded (FSDP) weights: every rank must run the same decode steps (HF generate's synced_gpus)"
    params = inspect.signature(base.forward).parameters
    if not {"cache", "position_ids", "attention_mask"} <= set(params):
        return f"{type(base).__name__}.forward takes no cache / position_ids / attention_mask"
    if hasattr(base, "_supports_default_dynamic_cache") and not base._supports_default_dynamic_cache():
        return f"{type(base).__name__} needs its own cache type"
    layers = {type(layer) for layer in DynamicCache(config=config).layers}
    if not layers <= {DynamicLayer, DynamicSlidingWindowLayer}:
        return f"cache layers {sorted(t.__name__ for t in layers)} cannot be repeated and sliced per row"
    return None


def _forward(model, ids, mask, position_ids, cache, keep_one: bool):
    """Logits (A, V) float32 of each row's last position; the cache grows in place."""
    extra = {"logits_to_keep": 1} if keep_one else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=True, **extra)
    return out.logits[:, -1].float()


def _choose(logits: torch.Tensor, settings: GenerationSettings, keys: torch.Tensor | None, position: int):
    """Next token (A,) from logits (A, V) float32, as HF generate chooses it."""
    if not settings.do_sample:
        return logits.argmax(dim=-1)
    if keys is not None:
        return keyed_gumbel_scores(logits, keys, position, settings.temperature, settings.top_k,
                                   settings.top_p).argmax(dim=-1)
    probs = filter_top_k_top_p(logits / settings.temperature, settings.top_k, settings.top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


def _decode(step, tokenizer, logits, cache, mask, settings, keys, eos_ids, want_logprobs):
    """The decode loop over N rows whose prefill is in `cache` and whose next-token logits are `logits` (N, V).

    step(ids (A, 1), attention mask (A, T) or None, position ids (A, 1)) -> next logits (A, V), growing `cache`;
    mask: (N, P) prompt mask; keys: (N,) row keys or None. Returns the sampled ids (N, W) (pad after a
    row's end), stop_length (N,) or None, logprobs (N, W) or None, and the decode positions computed.
    """
    n_rows, width = mask.shape[0], settings.max_new_tokens
    device = logits.device
    tokens = torch.full((n_rows, width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(n_rows, width, device=device) if want_logprobs else None
    stop_length = torch.full((n_rows,), -1, dtype=torch.long, device=device) if settings.stop_strings else None
    eos = torch.tensor(eos_ids, device=device)
    rows = torch.arange(n_rows, device=device)  # (A,) the result rows still running, in cache order
    positions = mask.sum(dim=1, keepdim=True)  # (A, 1) position of the next token (counting valid tokens only)
    attention = None if bool(mask.all()) else mask  # HF drops an all-ones mask too (same attention kernel)
    computed = 0
    for t in range(width):
        chosen = _choose(logits, settings, None if keys is None else keys[rows], t)  # (A,)
        tokens[rows, t] = chosen
        if logprobs is not None:
            logprobs[rows, t] = torch.log_softmax(logits / settings.temperature, dim=-1).gather(
                -1, chosen[:, None]).squeeze(-1)
        done = torch.isin(chosen, eos)  # (A,)
        if stop_length is not None:
            window = tokens[rows, max(0, t + 1 - stop_string_window(settings.stop_strings)):t + 1]
            hits = torch.tensor(stop_string_hits(tokenizer, window, settings.stop_strings), device=device)
            stop_length[rows[hits]] = t + 1
            done |= hits
        if t == width - 1 or bool(done.all()):
            break
        if bool(done.any()):  # drop finished rows from the batch and the cache
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, chosen, positions = rows[keep], chosen[keep], positions[keep]
            attention = None if attention is None else attention[keep]
        if attention is not None:
            attention = torch.cat([attention, attention.new_ones(len(rows), 1)], dim=1)
        logits = step(chosen[:, None], attention, positions)
        positions = positions + 1
        computed += len(rows)
    return tokens, stop_length, logprobs, computed


def native_generate(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                    prompt_ids: list[list[int]] | None = None, row_keys: torch.Tensor | None = None,
                    want_logprobs: bool = False, add_special_tokens: bool | None = None):
    """Sample `settings.n` responses per prompt with the native loop (arguments as `generate`'s).

    Returns (GenerationResult of N = B * n rows, stats dict; see `rlhfkit.rollout.engine`). With
    want_logprobs the result's logprobs (N, R) are log softmax(logits / T) of each sampled token (no top-k /
    top-p restriction), from the decode steps' own logits, as `generate(..., return_logprobs=True)` gives them.
    """
    check_prompts(prompts, tokenizer)
    device = next(model.parameters()).device
    ids, mask = (x.to(device) for x in encode_prompts(tokenizer, prompts, prompt_ids, add_special_tokens))  # (B, P)
    n = settings.n
    n_rows = len(prompts) * n
    seeded = row_keys is not None and settings.do_sample
    if seeded and len(row_keys) != n_rows:
        raise ValueError(f"{len(row_keys)} row_keys for {n_rows} rows (prompts x n); give one key per row")
    keys = row_keys.to(device) if seeded else None
    eos_ids = eos_token_ids(model, tokenizer)
    base = unwrap_peft(model)[0]
    keep_one = "logits_to_keep" in inspect.signature(base.forward).parameters
    with torch.no_grad(), eval_mode(model):
        # 1. Prefill each distinct prompt once (in groups of similar length), then give its cache and
        #    next-token logits to its n rows.
        cache, logits, prefilled = _prefill(model, base.config, ids, mask, keep_one)  # logits (B, V)
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)  # (N, V)
        prompt_mask = mask.repeat_interleave(n, dim=0)  # (N, P)
        # 2. Decode, dropping each row as it ends.
        def step(next_ids, attention_mask, position_ids):
            return _forward(model, next_ids, attention_mask, position_ids, cache, keep_one)

        tokens, stop_length, logprobs, decoded = _decode(step, tokenizer, logits, cache, prompt_mask, settings,
                                                         keys, eos_ids, want_logprobs)
    length, eos, stopped = response_ends(tokens, eos_ids, stop_length)
    response_ids, response_mask = cut_responses(tokens, length, tokenizer.pad_token_id)
    result = GenerationResult(
        prompt_ids=ids.repeat_interleave(n, dim=0), prompt_mask=prompt_mask, response_ids=response_ids,
        response_mask=response_mask, eos=eos, stopped=stopped, prompts=[p for p in prompts for _ in range(n)],
        responses=decode_responses(tokenizer, response_ids, length, stopped, settings.stop_strings),
        logprobs=None if logprobs is None else logprobs[:, :response_ids.shape[1]])
    return result, positions_stats(prefilled, int(mask.sum()), decoded, int((length - 1).sum()))


def length_groups(lengths: list[int], max_groups: int = 4) -> list[list[int]]:
    """Rows grouped by length so that each group is prefilled padded to its own longest row: the split of the
    rows sorted by length into at most `max_groups` runs that computes the fewest positions, each
    group charged 10 % of the one padded prefill (a forward's fixed cost). Returns row indices per group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    n, overhead = len(sizes), 0.1 * len(sizes) * max(sizes, default=0)
    # A group ends only where the length changes (a cut between equal lengths adds a forward and saves no
    # position), so the states are the ends of the runs of equal length: as many as distinct lengths (at
    # most the longest prompt), not rows, and the search costs the same for a batch of 64 or of 4096.
    ends = [0] + [j for j in range(1, n + 1) if j == n or sizes[j] != sizes[j - 1]]
    # best[g][b]: fewest positions for the first ends[b] sorted rows in g groups (a group ends at its longest)
    best = [[float("inf")] * len(ends) for _ in range(max_groups + 1)]
    cut = [[0] * len(ends) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for b in range(1, len(ends)):
            for a in range(g - 1, b):
                cost = best[g - 1][a] + (ends[b] - ends[a]) * sizes[ends[b] - 1] + overhead
                if cost < best[g][b]:
                    best[g][b], cut[g][b] = cost, a
    last = len(ends) - 1
    groups_used = min(range(1, max_groups + 1), key=lambda g: best[g][last]) if n else 1
    bounds, b = [], last
    for g in range(groups_used, 0, -1):
        bounds.append((ends[cut[g][b]], ends[b]))
        b = cut[g][b]
    return [order[a:b] for a, b in reversed(bounds) if b > a]


def _prefill(model, config, ids: torch.Tensor, mask: torch.Tensor, keep_one: bool):
    """Prefill (B, P) left-padded prompts: (DynamicCache of width P, next-token logits (B, V), positions run).

    Prompts are prefilled in `length_groups`, each padded only to its own longest prompt; the groups'
    caches are then left-padded to P (masked positions: never attended) and joined in row order. A cache
    with sliding-window layers (which keep only their last window) is prefilled in one padded batch.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    lengths = mask.sum(dim=1).tolist()
    groups = length_groups(lengths)
    cache = DynamicCache(config=config)
    if len(groups) <= 1 or any(type(layer) is not DynamicLayer for layer in cache.layers):
        attention = None if bool(mask.all()) else mask
        return cache, _forward(model, ids, attention, position_ids_from_mask(mask), cache, keep_one), ids.numel()
    width, parts, computed = ids.shape[1], [], 0
    for rows in groups:
        index = torch.tensor(rows, device=ids.device)
        cols = max(lengths[i] for i in rows)
        g_ids, g_mask = ids[index, width - cols:], mask[index, width - cols:]  # (b, cols) still left-padded
        g_cache = DynamicCache(config=config)
        attention = None if bool(g_mask.all()) else g_mask
        parts.append((index, g_cache, _forward(model, g_ids, attention, position_ids_from_mask(g_mask), g_cache,
                                               keep_one)))
        computed += g_ids.numel()
    inverse = torch.argsort(torch.cat([index for index, _, _ in parts]))
    for k in range(len(cache.layers)):
        def joined(name):  # (B, heads, P, head_dim): each group's states left-padded to P, rows in order
            states = [getattr(c.layers[k], name) for _, c, _ in parts]
            return torch.cat([torch.nn.functional.pad(x, (0, 0, width - x.shape[-2], 0)) for x in states])[inverse]
        cache.update(joined("keys"), joined("values"), k)
    return cache, torch.cat([logits for _, _, logits in parts])[inverse], computed


def positions_stats(prefill_computed: int, prefill_needed: int, decode_computed: int, decode_needed: int) -> dict:
    """The stats dict every engine reports (field meanings in `rlhfkit.rollout.engine`)."""
    return {"prefill_positions_computed": prefill_computed, "prefill_positions_needed": prefill_needed,
            "decode_positions_computed": decode_computed, "decode_positions_needed": decode_needed,
            "positions_computed": prefill_computed + decode_computed,
            "positions_needed": prefill_needed + decode_needed}


def hf_generate_stats(result: GenerationResult, n: int) -> dict:
    """What HF generate computed for `result`, from its masks: N x P prefill positions, then every row at
    every decode step until the longest response ended (N x (R - 1); a lower bound where generate ran
    extra steps past the last end). Needed: as for the native engine."""
    rows, width = result.prompt_mask.shape
    length = result.response_mask.sum(dim=1).long()  # (N,)
    steps = int(length.max())
    return positions_stats(rows * width, int(result.prompt_mask[::n].sum()), rows * max(steps - 1, 0),
                           int((length - 1).clamp(min=0).sum()))


class NativeEngine:
    """Sampling with our own KV-cache loop (`native_generate`) on the training policy itself; a model the
    loop cannot run goes to `fallback` (an engine on the same policy, HF generate), the reason logged once.

    After each `generate`, `last_stats` holds the positions computed and needed (see `rlhfkit.rollout.engine`).
    """

    name = "native"

    def __init__(self, policy, tokenizer, fallback):
        self.policy, self.tokenizer, self.fallback = policy, tokenizer, fallback
        self.last_stats: dict | None = None
        self._checked: tuple[int, str | None] | None = None  # (id of the policy checked, reason it cannot run)

    def sync_weights(self, policy) -> None:
        self.policy = policy  # the same module the trainer updates: nothing to copy
        self.fallback.sync_weights(policy)

    def unsupported(self) -> str | None:
        """Why this policy goes to the fallback (None: it runs natively); checked once per policy."""
        if self._checked is None or self._checked[0] != id(self.policy):
            reason = native_unsupported(self.policy)
            if reason is not None:
                logger.warning("native engine: sampling with %s instead, because of %s", self.fallback.name, reason)
            self._checked = (id(self.policy), reason)
        return self._checked[1]

    def generate(self, prompts, settings, prompt_ids=None, row_keys=None, want_logprobs=False, add_special_tokens=None):
        if self.unsupported() is not None:
            result = self.fallback.generate(prompts, settings, prompt_ids=prompt_ids, row_keys=row_keys,
                                            want_logprobs=want_logprobs, add_special_tokens=add_special_tokens)
            self.last_stats = self.fallback.last_stats
            return result
        exact = want_logprobs and next(self.policy.parameters()).dtype in (torch.float32, torch.float64)
        result, self.last_stats = native_generate(self.policy, self.tokenizer, prompts, settings, prompt_ids=prompt_ids,
                                                  row_keys=row_keys, want_logprobs=exact,
                                                  add_special_tokens=add_special_tokens)
        return result
