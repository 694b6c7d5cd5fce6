"""What every technique shares: attention chaining, batch chunks, token grids, steps and run state, layers and the
one layer grammar, the host seam (host.py), model families, safe file reading and the error type.
"""
