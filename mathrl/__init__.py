"""Shared code for the SFT / GRPO comparison scripts (config, data, prompts, models, checkpoints, metrics).

Every top-level script imports from here; nothing in this package is copied into a script.
"""
