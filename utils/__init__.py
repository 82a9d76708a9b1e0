"""Helper library of the book *How Large Language Models Are Trained*.

Each module has one job; importing :mod:`utils` itself stays cheap (no torch import) so
that notebooks and tools can load the parts they need. Every module, by job:

Book machinery (no ML)
  - :mod:`utils.nb` — profiles, knobs and their checks, seeding, device, glue, report.
  - :mod:`utils.plotting` — plotly figures that draw in the site, notebooks and nbval.
  - :mod:`utils.listing` — show the library's own code in a chapter, as Python.
  - :mod:`utils.progress` — progress bars for people, switched off for stored outputs.
  - :mod:`utils.provenance` — what produced a notebook's stored outputs (the executor).
  - :mod:`utils.network` — one fast, bounded "is the network there?" check.
  - :mod:`utils.checks` — the one ``check_int`` / ``check_number`` and their policy.
  - :mod:`utils.gpu_estimate` — a chapter's ``gpu`` profile: memory and time, estimated.

Data and text
  - :mod:`utils.data` — WikiText-2, IMDb, Tiny Shakespeare: local, download, fallback.
  - :mod:`utils.corpus` — the generated fallback corpus (results not meaningful).
  - :mod:`utils.text` — tokenizers, vocabularies, BPE, the batch-first ``batchify``.
  - :mod:`utils.batches` — the micro-batch stream, device moves, `model_device`, `eval_mode`.

Models
  - :mod:`utils.attention` — attention, masks, multi-head attention, positions.
  - :mod:`utils.models` — TransformerLM, TransformerClassifier, LSTMLM, ``mean_pool``.
  - :mod:`utils.optim` — teaching optimizers, schedules, ``decay_groups``.
  - :mod:`utils.decoding` — the one sampling loop, logit processing, prompts.
  - :mod:`utils.llama` — a Llama-style decoder, block by block (SmolLM2's shape).
  - :mod:`utils.gguf_weights` — a Llama model's weights read from a GGUF file.

Training (the trainer and its parts)
  - :mod:`utils.train` — the one training loop, ``Trainer``.
  - :mod:`utils.losses` — LM and classification losses, ``evaluate``.
  - :mod:`utils.metrics` — history, device-side step metrics, throughput and MFU.
  - :mod:`utils.precision` — bf16 / fp16 + GradScaler / fp32 and the autocast dtype.
  - :mod:`utils.checkpoint` — atomic saves, RNG state and seeding, exact resume.
  - :mod:`utils.atomic` — the one atomic write (a temporary beside it, then a rename).

Measurement
  - :mod:`utils.compute` — FLOPs (one per-token count), time, memory, published models.
  - :mod:`utils.scaling` — the ladder of model sizes, power-law fits, compute-optimal.
  - :mod:`utils.attention_cost` — time and memory of explicit vs fused attention.
  - :mod:`utils.benchmark` — several ways of doing the same work, timed side by side.
  - :mod:`utils.textmetrics` — diversity, repetition, BLEU and QA scores of text.
  - :mod:`utils.association` — association tests (WEAT) on embeddings.
  - :mod:`utils.viz` — attention and training figures, the explorer, offline bertviz.

Pretrained models (Hugging Face)
  - :mod:`utils.pretrained` — offline-first ``from_hub`` and the packaged models.
  - :mod:`utils.finetune` — fine-tuning an encoder as a classifier.
  - :mod:`utils.hub_tasks` — extractive QA and sequence-to-sequence hub models.
  - :mod:`utils.search` — sentence embeddings, semantic search, clustering.
  - :mod:`utils.export` — classifiers handed from chapter 5 to chapter 6.

Used by one chapter
  - :mod:`utils.ngram` — count-based n-gram language models (chapter 1).
  - :mod:`utils.wordvec` — skip-gram word vectors with negative sampling (chapter 2).
  - :mod:`utils.lm_recipes` — the seed tutorial's and the book's recipes (5.2).
  - :mod:`utils.ddp` — data-parallel training with ``torch.distributed`` (5.6).

Post-training (5.7, 5.8)
  - :mod:`utils.chat_data` — generated conversations whose replies can be checked exactly.
  - :mod:`utils.sft` — the assistant-only loss mask (derived twice) and its loss.
  - :mod:`utils.lora` — LoRA adapters from scratch: add, merge, save; matched to peft.
  - :mod:`utils.dpo` — direct preference optimisation from its derivation; matched to trl.
  - :mod:`utils.evaluation` — exact match, bootstrap intervals, multiple choice by
    log-likelihood, bits per byte, n-gram contamination.

Exercises (``notebooks/exercises/``)
  - :mod:`utils.grader` — the one ``check(...)``: grades a reader's answer, says what is wrong.
  - ``utils.exercises_<chapter>`` — that chapter's graders, each with a reference answer and
    known-wrong answers that the tests run:
    :mod:`utils.exercises_01`, :mod:`utils.exercises_02`, :mod:`utils.exercises_03a`, :mod:`utils.exercises_03b`, :mod:`utils.exercises_04a`, :mod:`utils.exercises_04b`, :mod:`utils.exercises_05a`, :mod:`utils.exercises_05b`, :mod:`utils.exercises_05c`, :mod:`utils.exercises_05d`, :mod:`utils.exercises_05e`, :mod:`utils.exercises_05f`, :mod:`utils.exercises_05g`, :mod:`utils.exercises_05h`, :mod:`utils.exercises_06a`, :mod:`utils.exercises_06b`, :mod:`utils.exercises_06c`, :mod:`utils.exercises_07`.
"""

__version__ = "0.1.0"
