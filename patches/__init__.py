"""Hook builders and pure-torch math. Modules named in PURE_MODULES import without ComfyUI."""
