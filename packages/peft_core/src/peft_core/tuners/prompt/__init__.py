"""Input prompt tuning (trainable embeddings prepended to the text input)."""
from peft_core.tuners.prompt.config import PromptConfig
from peft_core.tuners.prompt.layer import PromptCrossMaskLayer, PromptLayer
from peft_core.tuners.prompt.model import PromptTuner

__all__ = ["PromptConfig", "PromptCrossMaskLayer", "PromptLayer", "PromptTuner"]
