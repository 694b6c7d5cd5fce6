"""Where in a COW run a model call is.

COW's sampler tells attention patches which phase a model call belongs to (inversion, a cycle, the final
pass) through one transformer_options entry; SOW's modulation reads it. Both sides use this key, so neither
technique imports the other.
"""
PHASE_KEY = "conduit_cow"
