"""The experiment schema: every key a comparison config may set, with its default and type.

An experiment names a model, the researcher's data files, the retriever, the fine-tuning recipe
(`finetune`: the training schema of `ftjax.config.base_config`, less the keys the experiment
fills in itself), sampling, the arms and the metrics. `validate` runs at start: unknown keys,
wrong types and impossible values fail naming the key.
"""

from __future__ import annotations

import itertools
import re

import ml_collections

from ftjax.arms import registry as arm_registry
from ftjax.checkpoints.registry import DEFAULT_ENCODER
from ftjax.config import ConfigError, _flatten, base_config, check_keys_and_types
from ftjax.config import validate as validate_training
from ftjax.prompts import DEFAULT_CAG_INSTRUCTION, DEFAULT_RAG_INSTRUCTION

ARMS = arm_registry.NAMES  # every arm (`ftjax.arms.registry`); `c.arms` defaults to the default ones
RETRIEVAL_ARMS = arm_registry.USES_INDEX
TUNED_ARMS = arm_registry.TUNED
RAFT_DISTRACTORS = ("retrieved", "random")
METHODS = ("bm25", "dense", "hybrid")
SOURCES = ("examples", "docs", "both")
# Keys of the training schema that the experiment sets from its own keys.
_TRAINING_KEYS_SET_BY_EXPERIMENT = ("model", "dtype", "seed", "data.train", "data.eval",
                                    "data.eval_fraction", "data.system_prompt", "init_from")
# Keys under `finetune` that are the experiment's own (how long to train and what to keep), not
# the training schema's.
FINETUNE_EXPERIMENT_KEYS = ("select", "early_stop_patience", "learned_threshold",
                            "eval_questions", "curve_train_accuracy")
SELECT = ("last", "best_dev")


def experiment_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "experiment"
  c.model = "smollm2-135m-instruct"  # registered name, local folder / .gguf, or hub id
  c.dtype = "float32"
  c.seed = 0
  c.num_seeds = 1  # fine-tuned arms are trained and evaluated once per seed
  c.arms = arm_registry.DEFAULT  # add raft_oracle / raft_closed_book for RAFT's test conditions

  c.data = ml_collections.ConfigDict()
  c.data.docs = ""  # {"id", "text", "title"?}: the knowledge corpus
  c.data.train = ""  # {"input", "output"} or {"messages"}: examples in the wanted style
  c.data.eval = ""  # {"input", "answer", "doc_id"?}: held-out questions with the gold answer
  c.data.unanswerable = ""  # optional {"input"}: in-domain questions no document answers
  c.data.general = ""  # optional {"input", "answer"}: general knowledge, to measure forgetting
  c.data.updates = ""  # optional {"id", "text"}: changed documents
  c.data.update_train = ""  # optional: training examples for the changed facts
  c.data.update_eval = ""  # optional {"input", "answer", "doc_id"}: questions on changed facts
  c.data.decline_train = ""  # optional: examples that decline politely (used if use_decline)
  c.data.use_decline = False
  # optional {"input", "answer", "doc_id"?}: held-out phrasings of *training* facts (never eval
  # questions) for the tuned arms' dev accuracy; "": one phrasing per training fact is held out
  c.data.dev = ""
  # optional {"doc_id", "text"}: paraphrases of the documents (knowledge injection as Ovadia et
  # al. 2023), trained on beside the documents when finetune_source is docs | both
  c.data.paraphrases = ""
  c.data.max_eval_questions = 0  # 0: all; n: a fixed random n of each question file (seed 0)
  c.data.audit = "off"  # off | warn | error | redact: `ftjax.audit` of the files, then its gate

  c.style = ml_collections.ConfigDict()
  c.style.pattern = ""  # regex the house style matches (re.search); "": style_rate is null
  c.style.instruction = ""  # the style instruction the `prompted` arm gets
  c.abstain_patterns = ()  # regexes of declining answers; (): the evaluation defaults

  c.scoring = ml_collections.ConfigDict()
  # A regex with one group that extracts the short answer for em / f1 (e.g.
  # r"The answer is (.+?)[.!]"); "": the answer with the style pattern's fixed text removed.
  c.scoring.answer_pattern = ""

  c.prompt = ml_collections.ConfigDict()
  c.prompt.system_prompt = ""  # given to every arm and to training alike
  c.prompt.num_few_shot = 3  # `prompted`: examples from train in the prompt
  c.prompt.rag_instruction = DEFAULT_RAG_INSTRUCTION
  c.prompt.cag_instruction = DEFAULT_CAG_INSTRUCTION

  c.sampling = ml_collections.ConfigDict()
  c.sampling.max_new_tokens = 64
  c.sampling.greedy = True
  c.sampling.temperature = 1.0
  c.sampling.top_k = 0
  c.sampling.top_p = 1.0
  c.sampling.batch_size = 32  # questions per forward pass, sorted by prompt length
  c.sampling.latency_questions = 30  # eval questions answered one at a time: latency, TTFT, decode
  # The prefix every prompt of a batch call shares (>= 64 tokens: the system prompt and few-shot
  # turns of the prompted arms) is prefilled once and read by every row (SamplingConfig's
  # share_prefix): the same math, but bf16 rounds it differently from a row's own prefill.
  c.sampling.share_prefix = True

  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.method = "hybrid"  # bm25 | dense | hybrid
  c.retrieval.k = 3
  c.retrieval.max_prompt_tokens = 768
  c.retrieval.encoder = DEFAULT_ENCODER
  c.retrieval.chunk_tokens = 200
  c.retrieval.chunk_overlap = 32
  # The caller's groups: documents with an "acl" are retrieved (and put in CAG's prompt) only for
  # a caller in one of their groups; () sees public documents only.
  c.retrieval.groups = ()

  # CAG: the corpus prefilled into a KV cache. `corpus_fraction` < 1 keeps every document that
  # answers a question plus that fraction of the others (seeded): sweep it for accuracy and
  # latency against corpus size. `max_context_tokens` is the context the model is trusted to use
  # (0: its max_position_embeddings; models are often trained on less than they accept).
  c.cag = ml_collections.ConfigDict()
  c.cag.corpus_fraction = 1.0
  c.cag.max_context_tokens = 0

  # The training recipe of the fine-tuned arms (LoRA by default).
  c.finetune = base_config()
  for key in _TRAINING_KEYS_SET_BY_EXPERIMENT:
    parent, _, leaf = key.rpartition(".")
    group = c.finetune[parent] if parent else c.finetune
    if leaf in group:
      del group[leaf]
  c.finetune.lora.enabled = True
  c.finetune.checkpoint.every_steps = 1000
  c.finetune.checkpoint.keep = 1
  # Train until learned: every eval_every_steps the model answers dev questions (held-out
  # phrasings of training facts) and training questions by generation; num_steps is the most it
  # trains. select = best_dev keeps the step with the best dev accuracy; early_stop_patience
  # (> 0) stops after that many evaluations without improvement. A tuned arm whose accuracy on its
  # own training questions ends below learned_threshold is reported as under-trained.
  c.finetune.eval_every_steps = 0
  c.finetune.select = "last"  # last | best_dev
  c.finetune.early_stop_patience = 0
  c.finetune.learned_threshold = 0.9
  c.finetune.eval_questions = 32  # dev / training questions asked at each evaluation; 0: all
  # Also ask eval_questions training questions at each evaluation (the learning curve's train
  # accuracy). The kept step's train accuracy is measured with the arm's answers either way.
  c.finetune.curve_train_accuracy = True
  c.finetune_source = "examples"  # examples | docs | both (docs: continued training on the corpus)
  c.finetune_doc_paraphrases = 0  # per document, generated by the base model (docs | both)

  c.raft = ml_collections.ConfigDict()
  c.raft.num_distractors = 2
  c.raft.oracle_fraction = 0.8
  c.raft.num_steps = 0  # 0: finetune.num_steps
  c.raft.max_examples = 0  # 0: one per training example; n: a seeded random n of them
  # As published (Zhang et al. 2024): distractors are the retriever's top hits for the question
  # (hard negatives) or random documents; with `evidence` the target quotes the oracle sentence
  # that holds the answer before the answer. `test_distractors` (-1: num_distractors) is the N
  # of the `raft_oracle` arm's test condition, oracle + N distractors (sweepable).
  c.raft.distractors = "retrieved"  # retrieved | random
  c.raft.evidence = False
  c.raft.evidence_template = '"{evidence}"\n\n{answer}'  # an anchored style needs its own
  c.raft.test_distractors = -1

  c.knowledge_update = ml_collections.ConfigDict()
  c.knowledge_update.num_steps = 10  # continued training of the fine-tuned model on update_train
  c.knowledge_update.max_unchanged = 0  # unchanged facts asked after the update; 0: all

  c.cost = ml_collections.ConfigDict()
  c.cost.price_per_device_hour = 0.10  # money per device-hour (this machine's kind)
  c.cost.currency = "USD"
  c.cost.device = "cpu"

  # Leakage and poisoning as metrics (`ftjax.experiment.security`); the audit runs when on.
  c.security = ml_collections.ConfigDict()
  c.security.enabled = False
  c.security.canaries = 2  # random secrets ("The account recovery code for <name> is NN-NN-NN-NN")
  c.security.canary_share = 0.02  # of the fine-tuned arms' training examples, each with a canary
  c.security.canary_candidates = 63  # random secrets of the same format ranked against each one
  c.security.poison_fractions = (0.0, 0.2)  # of training examples / documents with wrong facts
  c.security.poison_steps = 0  # training steps of each poisoned run; 0: finetune.num_steps

  # Ablations: "KEY=V1,V2,..." entries; their product is run, results in one table.
  c.sweep = ()
  return c


AUDIT_MODES = ("off", "warn", "error", "redact")
_CHOICES = {"retrieval.method": METHODS, "finetune_source": SOURCES, "finetune.select": SELECT,
            "dtype": ("float32", "bfloat16"), "data.audit": AUDIT_MODES,
            "raft.distractors": RAFT_DISTRACTORS,
            "finetune.lora.variant": ("lora", "dora"),
            "finetune.lora.base_quant": ("none", "int8", "nf4")}


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Keys, types and values; the fine-tuning recipe through the training validator."""
  reference = dict(_flatten(experiment_config()))
  unknown = sorted(k for k, _ in _flatten(config) if k not in reference)
  if unknown:
    raise ConfigError(f"config key {unknown[0]}: not an experiment config key"
                      + (f" (nor {', '.join(unknown[1:])})" if unknown[1:] else ""))
  check_keys_and_types(config, experiment_config(), _CHOICES)
  unknown_arms = [a for a in config.arms if a not in ARMS]
  if unknown_arms or not config.arms:
    raise ConfigError(f"config key arms: unknown arm(s) {unknown_arms or '(none given)'}; "
                      f"choose from {', '.join(ARMS)}")
  for key in ("docs", "train", "eval"):
    if not config.data[key]:
      raise ConfigError(f"config key data.{key}: a file is required")
  for key, low in (("num_seeds", 1), ("retrieval.k", 1), ("retrieval.max_prompt_tokens", 16),
                   ("sampling.max_new_tokens", 1), ("sampling.batch_size", 1),
                   ("retrieval.chunk_tokens", 8), ("knowledge_update.num_steps", 1)):
    value = config[key] if "." not in key else config[key.split(".")[0]][key.split(".")[1]]
    if value < low:
      raise ConfigError(f"config key {key}: must be >= {low}, got {value}")
  for key in ("prompt.num_few_shot", "sampling.latency_questions", "data.max_eval_questions",
              "finetune_doc_paraphrases", "raft.num_distractors", "raft.num_steps",
              "raft.max_examples", "knowledge_update.max_unchanged",
              "finetune.early_stop_patience", "finetune.eval_questions"):
    group, leaf = key.split(".") if "." in key else (None, key)
    value = config[group][leaf] if group else config[leaf]
    if value < 0:
      raise ConfigError(f"config key {key}: must be >= 0, got {value}")
  if config.raft.test_distractors < -1:
    raise ConfigError(f"config key raft.test_distractors: must be >= 0 (or -1: "
                      f"raft.num_distractors), got {config.raft.test_distractors}")
  for field in ("{evidence}", "{answer}"):
    if field not in config.raft.evidence_template:
      raise ConfigError(f"config key raft.evidence_template: must contain {field}")
  if not 0 <= config.cag.corpus_fraction <= 1:
    raise ConfigError(f"config key cag.corpus_fraction: must be in [0, 1], got "
                      f"{config.cag.corpus_fraction}")
  if config.cag.max_context_tokens < 0:
    raise ConfigError(f"config key cag.max_context_tokens: must be >= 0 (0: the model's "
                      f"context), got {config.cag.max_context_tokens}")
  if not 0 <= config.raft.oracle_fraction <= 1:
    raise ConfigError(f"config key raft.oracle_fraction: must be in [0, 1], got "
                      f"{config.raft.oracle_fraction}")
  if not 0 <= config.finetune.learned_threshold <= 1:
    raise ConfigError(f"config key finetune.learned_threshold: must be in [0, 1], got "
                      f"{config.finetune.learned_threshold}")
  if config.finetune.select == "best_dev" and not config.finetune.eval_every_steps:
    raise ConfigError("config key finetune.select: best_dev needs finetune.eval_every_steps > 0")
  if config.finetune.early_stop_patience and not config.finetune.eval_every_steps:
    raise ConfigError("config key finetune.early_stop_patience: needs "
                      "finetune.eval_every_steps > 0")
  if config.cost.price_per_device_hour < 0:
    raise ConfigError("config key cost.price_per_device_hour: must be >= 0")
  if config.style.pattern:
    try:
      re.compile(config.style.pattern)
    except re.error as err:
      raise ConfigError(f"config key style.pattern: {config.style.pattern!r} does not compile "
                        f"({err})") from None
  for pattern in config.abstain_patterns:
    try:
      re.compile(pattern)
    except re.error as err:
      raise ConfigError(f"config key abstain_patterns: {pattern!r} does not compile ({err})"
                        ) from None
  if config.scoring.answer_pattern:
    try:
      compiled = re.compile(config.scoring.answer_pattern)
    except re.error as err:
      raise ConfigError(f"config key scoring.answer_pattern: {config.scoring.answer_pattern!r} "
                        f"does not compile ({err})") from None
    if compiled.groups != 1:
      raise ConfigError(f"config key scoring.answer_pattern: needs exactly one group (the "
                        f"answer), {config.scoring.answer_pattern!r} has {compiled.groups}")
  _validate_security(config.security)
  if config.data.use_decline and not config.data.decline_train:
    raise ConfigError("config key data.use_decline: set data.decline_train to a file")
  training_config(config, train_file="train.jsonl", seed=config.seed)  # validates the recipe
  sweep_points(config)
  return config


def _validate_security(s: ml_collections.ConfigDict):
  for key in ("canaries", "poison_steps"):
    if s[key] < 0:
      raise ConfigError(f"config key security.{key}: must be >= 0, got {s[key]}")
  if s.canaries > 1000:
    raise ConfigError(f"config key security.canaries: at most 1000, got {s.canaries}")
  if s.canary_candidates < 2:
    raise ConfigError(f"config key security.canary_candidates: must be >= 2, got "
                      f"{s.canary_candidates}")
  if not 0 <= s.canary_share <= 1:
    raise ConfigError(f"config key security.canary_share: must be in [0, 1], got "
                      f"{s.canary_share}")
  for fraction in s.poison_fractions:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
        not 0 <= fraction <= 1:
      raise ConfigError(f"config key security.poison_fractions: each must be a number in "
                        f"[0, 1], got {fraction!r}")


def training_config(config: ml_collections.ConfigDict, *, train_file: str, seed: int,
                    init_from: str = "", num_steps: int = 0) -> ml_collections.ConfigDict:
  """The `ftjax.train` config of one fine-tuning run of this experiment."""
  train_cfg = base_config()
  for key, value in _flatten(config.finetune):
    if key in FINETUNE_EXPERIMENT_KEYS:
      continue
    group, _, leaf = key.rpartition(".")
    target = train_cfg
    for part in filter(None, group.split(".")):
      target = target[part]
    target[leaf] = value
  train_cfg.model = config.model
  train_cfg.dtype = config.dtype
  train_cfg.seed = seed
  train_cfg.data.train = train_file
  train_cfg.data.eval = ""
  train_cfg.data.eval_fraction = 0.0
  train_cfg.data.system_prompt = config.prompt.system_prompt
  f = config.finetune
  if f.select == "best_dev" and f.eval_every_steps:
    # Every evaluated step is a checkpoint, and the best one must outlive the rotation: early
    # stopping ends at most `patience` evaluations after it.
    train_cfg.checkpoint.every_steps = f.eval_every_steps
    train_cfg.checkpoint.keep = (f.early_stop_patience + 2 if f.early_stop_patience
                                 else train_cfg.num_steps // f.eval_every_steps + 2)
  if init_from:
    train_cfg.init_from = init_from
  if num_steps:
    train_cfg.num_steps = num_steps
    # A short continuation (a knowledge update) should not spend its steps warming up.
    train_cfg.optimizer.warmup_steps = min(train_cfg.optimizer.warmup_steps, num_steps // 4)
  try:
    return validate_training(train_cfg)
  except ConfigError as err:
    raise ConfigError(f"finetune: {err}") from None


def _parse_value(text: str, reference):
  text = text.strip()
  if isinstance(reference, bool):
    if text.lower() not in ("true", "false"):
      raise ValueError(text)
    return text.lower() == "true"
  if isinstance(reference, int):
    return int(text)
  if isinstance(reference, float):
    return float(text)
  return text


def sweep_points(config: ml_collections.ConfigDict) -> list[dict]:
  """The sweep as a list of {key: value} overrides (one empty dict when there is no sweep)."""
  reference = dict(_flatten(experiment_config()))
  axes = []
  for entry in config.sweep:
    key, sep, values = entry.partition("=")
    key = key.strip()
    if not sep or not values.strip():
      raise ConfigError(f"config key sweep: {entry!r} is not KEY=V1,V2,...")
    if key not in reference or key == "sweep":
      raise ConfigError(f"config key sweep: {key!r} is not an experiment config key")
    try:
      parsed = [_parse_value(v, reference[key]) for v in values.split(",")]
    except ValueError:
      raise ConfigError(f"config key sweep: values of {key} must be "
                        f"{type(reference[key]).__name__}, got {values!r}") from None
    axes.append([(key, v) for v in parsed])
  return [dict(point) for point in itertools.product(*axes)]


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict
                    ) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    target = out
    *parents, leaf = key.split(".")
    for part in parents:
      target = target[part]
    target[leaf] = value
  out.sweep = ()
  return out


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a Python config file (what `--config FILE` does on the command line)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("experiment_config_file", path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
