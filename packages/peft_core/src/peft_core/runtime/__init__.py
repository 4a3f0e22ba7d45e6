"""Run infrastructure shared by the task packages (video_swin_vpetl, vse_infty, vl_adapter_vlpet, ...).

- :mod:`.config`: nested-dataclass configs from YAML / JSON files plus ``section.key=value`` overrides.
- :mod:`.checkpointing`: atomic training checkpoints with RNG state, format-checked reading.
- :mod:`.distributed`: torchrun / DDP process group from the environment, duplicate-free eval sharding.
- :mod:`.session`: the start of a run (output folder, config.yaml, log file, seed, device, AMP), the NaN guard.
- :mod:`.cli`: the shared ``train`` / ``compare`` / ``demo`` sub-commands and one-line user errors.

None of it is specific to a PETL method; it lives in peft_core so that every task package uses one mechanism.
"""
