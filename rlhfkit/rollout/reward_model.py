"""A reward model scores with its own tokenizer, whatever the policy's family.

When the reward model's tokenizer is the policy's (`same_tokenizer`: same vocabulary, special
tokens, chat template and ids for the same text) the rollout's ids, masks and positions are
reused: no second tokenization. Otherwise each conversation is rebuilt from text, exactly as
`rlhfkit rm` laid out its training pairs (`rlhfkit.data.tokenize`): the prompt rendered with the
reward model's chat template when it has one (plain text when not), the response as the
assistant's turn, then the reward model's end token (its template's end of turn, else EOS) when
the policy's response ended on EOS.
The prompt is recovered from the policy's rendered text: from rows registered with
`add_prompts` (multi-turn chats), else by stripping the policy's template around a single user
message, else (no policy template) the text itself.
"""

from __future__ import annotations

import torch

from rlhfkit.data.chat import has_chat_template, response_end_id, template_frame
from rlhfkit.data.tokenize import encode_prompts, encode_responses
from rlhfkit.models.forward import position_ids_from_mask
from rlhfkit.models.tokenizer_match import tokenizer_differences


class RewardModelScorer:
    """Scores with a `ScalarHeadModel` reward model read at each row's last valid token.

    tokenizer: the reward model's own. policy_tokenizer: the policy's; None (or the same tokenizer)
    reuses the experience's ids. normalize: subtract the model's `reward_mean` and divide by
    `reward_std` when they are set. `how` says in words which path is taken.
    """

    name = "reward model"

    def __init__(self, reward_model, tokenizer, policy_tokenizer=None, normalize: bool = True):
        self.reward_model, self.tokenizer, self.normalize = reward_model, tokenizer, normalize
        self.policy_tokenizer = policy_tokenizer
        self.differences = [] if policy_tokenizer is None else tokenizer_differences(tokenizer, policy_tokenizer)
        self.reuse_ids = not self.differences
        self._raw: dict[str, object] = {}

    @property
    def how(self) -> str:
        """One line for logs and `rlhfkit doctor`: how the reward model reads the policy's responses."""
        if self.reuse_ids:
            return "the reward model shares the policy's tokenizer: the rollout's token ids are scored as they are"
        style = "with its own chat template" if has_chat_template(self.tokenizer) \
            else "as plain text (it has no chat template)"
        return (f"the reward model's tokenizer differs from the policy's ({'; '.join(self.differences)}): each "
                f"prompt and response is re-rendered {style} and tokenized with the reward model's tokenizer")

    def add_prompts(self, rows) -> None:
        """Register prompt rows (dicts with "prompt" as loaded and "prompt_text" as rendered for the policy,
        as `rlhfkit.data.tokenize_prompts` returns) so multi-turn chats can be re-rendered exactly."""
        for row in rows:
            self._raw[row["prompt_text"]] = row["prompt"]

    def conversation(self, prompt_text: str):
        """The prompt as the user wrote it (a string or messages) behind the policy's rendered `prompt_text`."""
        if prompt_text in self._raw:
            return self._raw[prompt_text]
        policy = self.policy_tokenizer
        if policy is None or not has_chat_template(policy):
            return prompt_text
        head, tail = template_frame(policy)
        if (head or tail) and prompt_text.startswith(head) and prompt_text.endswith(tail) \
                and len(prompt_text) >= len(head) + len(tail):
            content = prompt_text[len(head):len(prompt_text) - len(tail)]
            if not any(marker in content for marker in (head.strip(), tail.strip()) if marker):
                return content
        raise ValueError("RewardModelScorer: the reward model uses another tokenizer, so it re-renders each "
                         "conversation, and this prompt is not a single user message in the policy's chat template: "
                         f"{prompt_text[:120]!r}. Register the prompt rows first: scorer.add_prompts(rows) with the "
                         "rows of rlhfkit.data.tokenize_prompts")

    def encode(self, prompts, responses: list[str], eos: list[bool]) -> list[list[int]]:
        """Reward-model token ids of each (prompt as written, response text) pair; its end token where eos[i]."""
        tok = self.tokenizer
        _, prompt_ids = encode_prompts(tok, list(prompts))
        response_ids = encode_responses(tok, list(prompts), list(responses))
        end_id = response_end_id(tok)  # as `rlhfkit rm` ended its training rows
        end = [end_id] if end_id is not None else []
        return [p + r + (end if e else []) for p, r, e in zip(prompt_ids, response_ids, eos)]

    def _retokenize(self, experience):
        """Left-padded (N, T) ids, mask, positions and last index for the reward model's tokenizer."""
        stopped = experience.stopped if experience.stopped is not None else torch.zeros_like(experience.eos)
        ended = (experience.eos & ~stopped).tolist()  # a stop string is text, not an EOS token
        prompts = [self.conversation(p) for p in experience.prompts]
        rows = self.encode(prompts, experience.responses, ended)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        last = torch.full((len(rows),), width - 1)
        return input_ids, mask, position_ids_from_mask(mask), last

    def score_ids(self, input_ids, attention_mask, position_ids, last_index) -> torch.Tensor:
        """(N,) float32 scores of (N, T) inputs read at `last_index`, normalized if asked."""
        from rlhfkit.rollout.generation import eval_mode

        model = self.reward_model
        device = next(model.parameters()).device
        with torch.no_grad(), eval_mode(model):
            scores = model.score(*(t.to(device) for t in (input_ids, attention_mask, position_ids, last_index)))
        return model.normalize(scores) if self.normalize else scores

    def score_texts(self, prompts, responses: list[str], eos: list[bool] | None = None) -> torch.Tensor:
        """(N,) scores of prompts as written (strings or messages) and response texts, with the reward model's
        own tokenizer and template; eos[i] (default True) appends its EOS, as `rlhfkit rm` trained it."""
        rows = self.encode(prompts, responses, [True] * len(responses) if eos is None else eos)
        scores = []
        for r in rows:
            ids = torch.tensor([r])
            ones = torch.ones_like(ids)
            scores.append(self.score_ids(ids, ones, position_ids_from_mask(ones), torch.tensor([len(r) - 1])))
        return torch.cat(scores)

    def __call__(self, experience) -> torch.Tensor:
        if self.reuse_ids:
            inputs = (experience.input_ids, experience.attention_mask, experience.position_ids,
                      experience.last_index)
        else:
            inputs = self._retokenize(experience)
        return self.score_ids(*inputs)


def load_reward_scorer(path, policy_tokenizer, dtype="float32", device="cpu", trust_remote_code: bool = False,
                       normalize: bool = True) -> RewardModelScorer:
    """The reward model in `path` with its own tokenizer, deciding once whether it reads the policy's ids.

    The tokenizer saved with the reward model is used; a folder without one falls back to the
    policy's tokenizer only when the model's embeddings cover it (else a ConfigError).
    """
    from rlhfkit.config import ConfigError
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.models.scalar_head import load_reward_model

    model = load_reward_model(path, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    rows = model.backbone.get_input_embeddings().weight.shape[0]
    try:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    except (ConfigError, ValueError):
        if rows < len(policy_tokenizer):
            raise ConfigError(f"{path}: the reward model has no tokenizer saved beside it and its {rows} embeddings "
                              f"do not cover the policy's {len(policy_tokenizer)} tokens; save the tokenizer it was "
                              "trained with into the folder (tokenizer.save_pretrained)") from None
        tokenizer = policy_tokenizer
    if len(tokenizer) > rows:
        raise ConfigError(f"{path}: its tokenizer has {len(tokenizer)} tokens but the model embeds only {rows}; "
                          "the folder's tokenizer does not belong to this reward model")
    return RewardModelScorer(model, tokenizer, policy_tokenizer=policy_tokenizer, normalize=normalize)
