"""Readers of what trainers write: folder layouts, run logs and configs (HF Trainer, LLaMA-Factory,
ms-swift, torchtune, axolotl, XTuner, DeepSpeed). Pure Python, no torch: discovery and the model
backend both read formats through here, so neither reaches into the other."""
