"""Batched sampling with HF `generate` (KV cache), returning padded ids and explicit masks.

Prompts are left-padded so every row's response starts in the same column; responses are
right-padded. A response keeps every token up to and including its first EOS (or the token
that completes a stop string) and nothing after, found from the ids themselves: never by
comparing with `pad_token_id`, which may equal EOS.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from rlhfkit.data.chat import end_of_turn_id
from rlhfkit.models.loading import is_sharded


@dataclass
class GenerationSettings:
    """How responses are sampled."""

    max_new_tokens: int
    """Most tokens per response; a response cut here has eos=False."""
    temperature: float = 1.0
    """Logits are divided by it before sampling (and before computing logprobs)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Sample among the k most likely tokens (0 = off)."""
    n: int = 1
    """Samples per prompt, laid out in consecutive groups: rows i*n .. i*n+n-1 share prompt i."""
    stop_strings: tuple[str, ...] = ()
    """A response also ends after the token that completes one of these strings."""
    do_sample: bool = True
    """False: greedy decoding (temperature, top_p and top_k are then ignored by sampling)."""

    def __post_init__(self):
        if isinstance(self.stop_strings, str):
            self.stop_strings = (self.stop_strings,)
        self.stop_strings = tuple(self.stop_strings)
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature > 0, "temperature must be > 0 (use do_sample=False for greedy decoding)"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0 (0 turns it off)"),
            (self.n >= 1, "n (samples per prompt) must be >= 1"),
            (all(isinstance(s, str) and s for s in self.stop_strings), "stop_strings must be non-empty strings"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerationSettings: {message}; got {self}")


@dataclass
class GenerationResult:
    """Sampled responses for B prompts x n samples (N = B * n rows)."""

    prompt_ids: torch.Tensor  # (N, P) int64, left-padded
    prompt_mask: torch.Tensor  # (N, P) int64, 1 on prompt tokens
    response_ids: torch.Tensor  # (N, R) int64, right-padded with pad_token_id
    response_mask: torch.Tensor  # (N, R) float32, 1 up to and including the EOS / stop token
    eos: torch.Tensor  # (N,) bool, ended on its own (EOS token or stop string), False if cut at max_new_tokens
    stopped: torch.Tensor  # (N,) bool, ended by a stop string (a subset of eos)
    prompts: list[str]  # N prompt texts (each repeated n times)
    responses: list[str]  # N response texts, without padding and EOS; ends with its stop string if stopped
    logprobs: torch.Tensor | None = None  # (N, R) float32 log softmax(logits / T) of each sampled token, with
    # return_logprobs; values after a response's end have no meaning


@contextmanager
def eval_mode(*models):
    """Eval mode (no dropout) for the duration, then each model's previous mode back."""
    models = [m for m in models if m is not None]
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@contextmanager
def _plain_generation_config(model):
    """Hide the model's saved generation config while generating.

    transformers fills every unset option from `model.generation_config` (a checkpoint may ship
    repetition_penalty, top_k=50, min_length, ...); any such processor would sample from a
    distribution other than softmax(logits / T), and the logprobs would no longer match.
    """
    from transformers import GenerationConfig

    from rlhfkit.models.lora import unwrap_peft

    base, _ = unwrap_peft(model)
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS, its chat template's end-of-turn token (e.g. Llama 3's <|eot_id|>) and any EOS
    ids in the model's generation config."""
    from rlhfkit.models.lora import unwrap_peft

    ids = [tokenizer.eos_token_id, end_of_turn_id(tokenizer)]  # a chat template's end of turn stops a reply too
    config_eos = getattr(unwrap_peft(model)[0].generation_config, "eos_token_id", None)
    ids += config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]
    ids = sorted({int(i) for i in ids if i is not None})
    if not ids:
        raise ValueError("the tokenizer has no eos_token and the model's generation config no eos_token_id")
    return ids


def stop_string_hits(tokenizer, tail_ids: torch.Tensor, stop_strings) -> list[bool]:
    """Does each row's tail (A, w) of generated ids, decoded without special tokens, contain a stop string?"""
    tails = tokenizer.batch_decode(tail_ids, skip_special_tokens=True)
    return [any(s in text for s in stop_strings) for text in tails]


def stop_string_window(stop_strings) -> int:
    """Generated tokens to decode per check: more than any stop string can span."""
    return max(len(s) for s in stop_strings) + 4


def _stop_string_criteria(tokenizer, stop_strings, prompt_length: int, n_rows: int):
    """A stopping criterion that also records, per row, how many tokens completed a stop string.

    Each step decodes only the last few generated tokens of each row (a window longer than any
    stop string), so the cost per step does not grow with the response.
    """
    from transformers import StoppingCriteria

    window = stop_string_window(stop_strings)

    class StopStrings(StoppingCriteria):
        def __init__(self):
            self.stop_length = torch.full((n_rows,), -1, dtype=torch.long)  # -1: not stopped

        def __call__(self, input_ids, scores, **kwargs):
            generated = input_ids.shape[1] - prompt_length
            hits = stop_string_hits(tokenizer, input_ids[:, -min(window, generated):], stop_strings)
            for row, hit in enumerate(hits):
                if self.stop_length[row] < 0 and hit:
                    self.stop_length[row] = generated
            return (self.stop_length >= 0).to(input_ids.device)

    return StopStrings()


def _truncate_at_stop(text: str, stop_strings) -> str:
    ends = [text.find(s) + len(s) for s in stop_strings if s in text]
    return text[:min(ends)] if ends else text


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B id lists -> left-padded ids (B, P) int64 and their mask (B, P) int64."""
    width = max(len(ids) for ids in prompt_ids)
    ids = torch.tensor([[pad_id] * (width - len(row)) + list(row) for row in prompt_ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompt_ids], dtype=torch.long)
    return ids, mask


def encode_prompts(tokenizer, prompts, prompt_ids, add_special_tokens):
    """Left-padded (B, P) ids and mask, from given ids or by tokenizing the texts."""
    if prompt_ids is None:
        if add_special_tokens is None:
            # A chat template already writes BOS / role tokens into the text (same rule as rlhfkit.data).
            add_special_tokens = getattr(tokenizer, "chat_template", None) is None
        prompt_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    elif len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts; give one id list per prompt")
    empty = [i for i, ids in enumerate(prompt_ids) if len(ids) == 0]
    if empty:
        raise ValueError(f"prompt {empty[0]} ({prompts[empty[0]]!r}) has no tokens; every prompt needs at least one")
    return left_pad(prompt_ids, tokenizer.pad_token_id)


def check_prompts(prompts, tokenizer) -> None:
    """Raise a ValueError (saying how to fix it) unless prompts is a non-empty list of texts and tokenizer has a pad."""
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load it with rlhfkit.models.load_tokenizer "
                         "(which reuses EOS as pad) or set tokenizer.pad_token")


def generate(model, tokenizer, prompts: list[str], settings: GenerationSettings,
             add_special_tokens: bool | None = None, prompt_ids: list[list[int]] | None = None,
             row_keys: torch.Tensor | None = None, return_logprobs: bool = False) -> GenerationResult:
    """Sample `settings.n` responses per prompt with HF `generate` (KV cache on).

    prompts: B texts (chat template already applied if any). prompt_ids: their token ids when
    already tokenized (e.g. by rlhfkit.data.tokenize_prompts), else the texts are tokenized with
    add_special_tokens (default: True unless the tokenizer has a chat template, which already
    puts BOS / role tokens in the text).
    Returns a `GenerationResult` of N = B * n rows. Sampling uses exactly softmax(logits / T)
    restricted by top-k / top-p; the model's saved generation config is ignored.
    row_keys: (B * n,) int64, one per row: sample with `SeededSampling` instead (each row's tokens
    then depend only on its key, not on the rest of the batch; see rlhfkit.rollout.seeded).
    return_logprobs: also return each sampled token's log softmax(logits / settings.temperature), no
    top-k / top-p restriction (as `response_logprobs`), from the decode steps' raw logits
    (`output_logits`, held as (N, R, V) float32 until generate returns). In float32 they equal a full
    forward's to ~2e-6 (measured; the KV-cached decode sums in another order); in bf16 they do not.
    """
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    check_prompts(prompts, tokenizer)
    device = next(model.parameters()).device
    ids, mask = encode_prompts(tokenizer, prompts, prompt_ids, add_special_tokens)
    n = settings.n
    prompt_ids = ids.repeat_interleave(n, dim=0).to(device)  # (N, P)
    prompt_mask = mask.repeat_interleave(n, dim=0).to(device)  # (N, P)
    n_rows, prompt_length = prompt_ids.shape
    eos_ids = eos_token_ids(model, tokenizer)

    seeded = row_keys is not None and settings.do_sample
    processors = []
    if seeded:
        if len(row_keys) != n_rows:
            raise ValueError(f"{len(row_keys)} row_keys for {n_rows} rows (prompts x n); give one key per row")
        from rlhfkit.rollout.seeded import SeededSampling
        # Greedy over keyed Gumbel-perturbed logits = a sample that depends only on the row's key.
        processors.append(SeededSampling(row_keys.to(device), prompt_length, settings.temperature, settings.top_k,
                                         settings.top_p))
    sampling = dict(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k) \
        if settings.do_sample and not seeded else {}
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample and not seeded,
                              eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, use_cache=True, **sampling,
                              **(dict(output_logits=True, return_dict_in_generate=True) if return_logprobs else {}))
    stop = _stop_string_criteria(tokenizer, settings.stop_strings, prompt_length, n_rows) \
        if settings.stop_strings else None
    with torch.no_grad(), eval_mode(model), _plain_generation_config(model):
        out = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                             stopping_criteria=StoppingCriteriaList([stop] if stop else []),
                             logits_processor=LogitsProcessorList(processors), synced_gpus=is_sharded(model))
    step_logits = out.logits if return_logprobs else None  # R tensors (N, V), before any logits processor
    out = out.sequences if return_logprobs else out
    response_ids = out[:, prompt_length:]  # (N, W)
    stop_length = stop.stop_length.to(device) if stop else None
    length, eos, stopped = response_ends(response_ids, eos_ids, stop_length)
    response_ids, response_mask = cut_responses(response_ids, length, tokenizer.pad_token_id)

    logprobs = None
    if step_logits is not None:
        # One (N, V) step at a time, no stacked copy; steps past `width` are never read.
        logprobs = torch.stack([torch.log_softmax(step_logits[t].float() / settings.temperature, dim=-1)
                                .gather(-1, response_ids[:, t, None]).squeeze(-1)
                                for t in range(response_ids.shape[1])], dim=1)
        del step_logits
    return GenerationResult(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, response_ids=response_ids,
        response_mask=response_mask, eos=eos, stopped=stopped, prompts=[p for p in prompts for _ in range(n)],
        responses=decode_responses(tokenizer, response_ids, length, stopped, settings.stop_strings), logprobs=logprobs)


def response_ends(response_ids: torch.Tensor, eos_ids: list[int], stop_length: torch.Tensor | None):
    """Length of each response: through its first EOS, or through the token completing a stop string.

    response_ids: (N, W) as sampled; stop_length: (N,) tokens generated when a stop string first
    appeared (-1: never), or None. Returns length (N,) int64, eos (N,) bool and stopped (N,) bool.
    """
    width = response_ids.shape[1]
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))  # (N, W)
    has_eos = is_eos.any(dim=1)
    eos_length = torch.where(has_eos, is_eos.long().argmax(dim=1) + 1, width)  # (N,)
    stop_length = stop_length if stop_length is not None else torch.full_like(eos_length, -1)
    stopped = (stop_length > 0) & (~has_eos | (stop_length < eos_length))
    return torch.where(stopped, stop_length, eos_length), has_eos | stopped, stopped


def cut_responses(response_ids: torch.Tensor, length: torch.Tensor, pad_id: int):
    """(N, W) sampled ids and lengths (N,) -> right-padded ids (N, R) with R = max length, and their mask (N, R)."""
    width = max(int(length.max()), 1)
    columns = torch.arange(width, device=response_ids.device)
    response_mask = (columns[None, :] < length[:, None]).float()  # (N, R)
    return response_ids[:, :width].masked_fill(response_mask == 0, pad_id), response_mask


def decode_responses(tokenizer, response_ids: torch.Tensor, length: torch.Tensor, stopped: torch.Tensor,
                     stop_strings) -> list[str]:
    """N response texts without padding and EOS, each cut after its stop string if stopped."""
    texts = tokenizer.batch_decode([row[:k].tolist() for row, k in zip(response_ids, length.tolist())],
                                   skip_special_tokens=True)
    return [_truncate_at_stop(t, stop_strings) if s else t for t, s in zip(texts, stopped.tolist())]
