"""lm-evaluation-harness backend: `FtjaxLM` scores and generates with ftjax's forward and
`generate`, so any lm_eval task runs on a ftjax model (a registered name, folder or workdir).

lm_eval (0.4.x) finds models only in its own registry (`@register_model`) and reads no entry
points, so the bare `lm_eval --model ftjax` command fails ("no model for this name", checked
with 0.4.13): `--model ftjax` resolves only once this module is imported. The command
`python -m ftjax.harness` imports it and then hands its arguments, lm_eval's own flags, to
lm_eval's CLI unchanged.

From Python: `lm_eval.simple_evaluate(model=FtjaxLM("smollm2-135m-instruct"), tasks=[...])`.

Tokenization follows lm_eval's `hf` backend (same encode-pair split, prefix token and rolling
windows), so log-likelihoods agree with `--model hf` on the same checkpoint. Requests are sorted
by length (longest first) and batched: right-padded, with padding masked by `segment_ids`.
"""

from __future__ import annotations

from typing import Any

import jax
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from ftjax.generation.decoding import SamplingConfig
from ftjax.generation.scoring import continuation_scores
from ftjax.generation.text import generate

DEFAULT_BATCH_SIZE = 8


class HarnessArgumentError(ValueError):
  """A bad --model_args value (reported as one `error:` line by the CLI)."""


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _int_arg(name: str, value, minimum: int = 1) -> int:
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise HarnessArgumentError(f"--model_args {name}={value!r} is not an integer") from None
  if number < minimum:
    raise HarnessArgumentError(f"--model_args {name}={value} must be >= {minimum}")
  return number


def _bool_arg(name: str, value) -> bool | None:
  if value is None or isinstance(value, bool):
    return value
  if str(value).lower() in ("true", "1", "yes"):
    return True
  if str(value).lower() in ("false", "0", "no"):
    return False
  raise HarnessArgumentError(f"--model_args {name}={value!r} is not true or false")


@register_model("ftjax")
class FtjaxLM(TemplateLM):
  """An lm_eval model over `ftjax.load(model)` (adapters of a LoRA workdir included).

  model_args: model (name, folder, .gguf or workdir; or pass `pretrained=` a ftjax.Pretrained),
  batch_size, max_length (default: the model's context), max_gen_toks (default 256), dtype
  (compute dtype, default float32), add_bos_token (default: the tokenizer's own behaviour).
  """

  def __init__(self, model: str | None = None, pretrained: Any = None,
               batch_size: int | str | None = DEFAULT_BATCH_SIZE, max_length: int | None = None,
               max_gen_toks: int = 256, dtype: str = "float32",
               add_bos_token: bool | None = None, **unused):
    super().__init__()
    if pretrained is None or isinstance(pretrained, str):
      name = model or pretrained
      if not name:
        raise HarnessArgumentError("--model_args model=NAME_OR_WORKDIR is required")
      import ftjax
      pretrained = ftjax.load(name, dtype=dtype)
    self.model = pretrained
    self.tokenizer = pretrained.tokenizer
    cfg = pretrained.config
    self._lora = None
    if pretrained.adapters is not None:  # applied at the adapters' own scale, as generate does
      cfg, self._lora = pretrained.adapters.model_config(cfg), pretrained.adapters.params
    self._cfg = cfg
    if batch_size in (None, "auto") or str(batch_size).startswith("auto"):
      batch_size = DEFAULT_BATCH_SIZE  # no memory probing: a fixed size compiles once
    self._batch_size = _int_arg("batch_size", batch_size)
    self._max_length = _int_arg("max_length", max_length or cfg.max_position_embeddings, 2)
    self._max_gen_toks = _int_arg("max_gen_toks", max_gen_toks)
    self.add_bos_token = _bool_arg("add_bos_token", add_bos_token)

  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def prefix_token_id(self) -> int:
    # As lm_eval's hf backend: the token an empty context is conditioned on.
    if self.tokenizer.bos_token_id is not None:
      return self.tokenizer.bos_token_id
    return self.tokenizer.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def batch_size(self) -> int:
    return self._batch_size

  @property
  def tokenizer_name(self) -> str:
    return self.tokenizer.name_or_path.replace("/", "__")

  def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                 left_truncate_len: int | None = None, **kwargs) -> list[int]:
    if add_special_tokens is None:
      add_special_tokens = self.add_bos_token
      bos = self.tokenizer.decode(self.prefix_token_id)
      if bos and string.startswith(bos):  # the text carries its BOS already
        add_special_tokens = False
    special = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    ids = self.tokenizer.encode(string, **special)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, chat_history: list[dict[str, str]],
                          add_generation_prompt: bool = True) -> str:
    return self.tokenizer.apply_chat_template(
        chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
        continue_final_message=not add_generation_prompt)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """(sum of log p(continuation), continuation is greedy) per (key, context, continuation)."""
    results = continuation_scores(self.model, [(context, continuation)
                                               for _, context, continuation in requests],
                                  batch_size=self.batch_size, max_length=self.max_length)
    for (key, _, _), answer in zip(requests, results):
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, answer)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """log p(text) over disjoint windows of max_length tokens, each conditioned on the prefix
    token or the previous window's last token (as lm_eval's hf backend)."""
    windows, owners = [], []
    for index, (string,) in enumerate(req.args for req in requests):
      for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
          token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)):
        windows.append((None, context, continuation))
        owners.append(index)
    totals = [0.0] * len(requests)
    for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows)):
      totals[owner] += logprob
    for req, total in zip(requests, totals):
      self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Continuations by `ftjax.generation.generate`, cut at the request's `until` strings and at
    EOS; greedy unless do_sample. Requests with the same gen_kwargs are batched by length."""
    eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    groups: dict[str, list[int]] = {}
    for index, req in enumerate(requests):
      groups.setdefault(repr(sorted(req.args[1].items())), []).append(index)
    results = [""] * len(requests)
    for indices in groups.values():
      gen_kwargs = dict(requests[indices[0]].args[1])
      until = handle_stop_sequences(gen_kwargs.pop("until", None), eos=eos)
      max_new = _int_arg("max_gen_toks", gen_kwargs.pop(
          "max_gen_toks", gen_kwargs.pop("max_new_tokens", self._max_gen_toks)))
      do_sample = bool(gen_kwargs.pop("do_sample", False))
      temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
      greedy = not do_sample or temperature == 0.0
      sampling = SamplingConfig(max_new_tokens=max_new, greedy=greedy,
                                temperature=1.0 if greedy else temperature,
                                top_p=float(gen_kwargs.pop("top_p", 1.0) or 1.0),
                                stop_strings=tuple(until))
      max_context = self.max_length - max_new
      if max_context < 1:
        raise ValueError(f"max_gen_toks {max_new} leaves no room in max_length {self.max_length}")
      prompts = {i: self.tok_encode(requests[i].args[0], left_truncate_len=max_context)
                 for i in indices}
      ordered = sorted(indices, key=lambda i: -len(prompts[i]))
      for start in range(0, len(ordered), self.batch_size):
        chunk = ordered[start:start + self.batch_size]
        completions = generate(self.model, [prompts[i] for i in chunk], sampling, chat=False)
        for index, completion in zip(chunk, completions):
          text = postprocess_generated_text(completion.text, until, None)
          results[index] = text
          self.cache_hook.add_partial("generate_until", requests[index].args, text)
    return results

  def get_model_info(self) -> dict:
    return {"model_num_parameters": int(sum(x.size for x in jax.tree.leaves(self.model.params))),
            "model_dtype": self._cfg.dtype, "lora": self._lora is not None}
