"""VSE-infty image-text retrieval with PETL methods from peft_core."""
