"""Conditional Balance: Balanced Style (StyleAligned in the top-lambda_S layers), its reference branch, the
ControlNet timestep gate and Selective LoRA.
"""
