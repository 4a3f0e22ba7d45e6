"""The benchmark suite (``nox -s bench``, ``python -m peft_core.bench``; not part of the tests).

For real-size architectures built from configs with random weights and each method preset registered at run time:
trainable parameters, training-step peak memory and median step time, as ratios to full fine-tuning and to a frozen
``no_grad`` forward of the same model, next to Hugging Face PEFT's implementation of the same method. Every
configuration is measured in a fresh process. See ``docs/benchmarks.md``.

Modules: :mod:`~peft_core.bench.configs` (what to measure), :mod:`~peft_core.bench.workloads` (models, inputs,
losses), :mod:`~peft_core.bench.measure` (one configuration), :mod:`~peft_core.bench.peft_ref`
(Hugging Face PEFT), :mod:`~peft_core.bench.runner` (fresh processes, weight cache), :mod:`~peft_core.bench.report`
(ratios, JSON, Markdown, PNG), :mod:`~peft_core.bench.cli` (the command line).
"""
