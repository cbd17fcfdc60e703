"""The kbld-compatible one-shot core.

Config, search rules, references, rendering, resolving, the registry client and image builds:
everything `devloop resolve` needs, and nothing of the loop or the targets.
"""
