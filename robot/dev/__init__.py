"""Tooling for developers: benchmarks, the board bundle, quantization and evaluation.

Nothing here runs on the robot: `storybot bundle` copies only the runtime modules of
`robot/` (not this folder) onto the board.
"""
