"""storybot: a storytelling robot built on a small C inference library.

Modules, one job each: engine (the native library), models (finding model files),
cli (the storybot command). Importing the package loads nothing native.
"""
__version__ = "0.1.0"
