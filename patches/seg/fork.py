"""Share the UNet prefix between the main (cond/uncond) pass and SEG's blurred pass.

The blurred pass sees exactly the cond inputs, and nothing differs from the cond pass until the first
blurred layer. So during the main pass, right before the SpatialTransformer that holds the first blurred
layer, every cond chunk is duplicated ("twin" rows appended at the end of the batch): the prefix runs once
for cond and uncond, the rest of the UNet runs once more per cond image, and only the twins get blurred
queries. The twin rows are cut off at the UNet output (so ComfyUI sees its usual batch), turned into x0
predictions and stashed. SEG's post-CFG function then asks ComfyUI for the blurred cond prediction as usual,
via calc_cond_batch, in a replay mode where the apply-model wrapper serves the stashed rows instead of
running the UNet; ComfyUI's own code still does the area/strength bookkeeping of multi-entry conds.

The fork needs values that are local to the UNet forward: they are widened on the fly by forward
pre-hooks (timestep embedding into ResBlocks, context into SpatialTransformers), an output_block_patch
(skip connections), and by widening the ControlNet middle residual at the fork. Hooks live only for the
duration of one forked forward. Anything that makes a fork unsafe or ambiguous falls back to the ordinary
separate pass (the caller runs it when no stashed prediction is served).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.batch import COND, chunk_slices
from ..engine.host import ApplyCall
from ..engine.run_state import RunState

log = logging.getLogger(__name__)

FORKING_KEY = "conduit_seg_forking"  # set in a forked call's transformer options, so nested SEGs do not fork
UNSAFE_PATCHES = ("forward_timestep_embed_patch",)  # foreign layers that read the (unwidened) embedding


def fingerprint(options: dict) -> tuple:
    """Which attention/block patches a pass runs with; another pack's extra pass differs from the main one."""
    replace = options.get("patches_replace", {})
    patches = options.get("patches", {})
    return (tuple(sorted((name, repr(k), id(f)) for name, slot in replace.items() for k, f in slot.items())),
            tuple(sorted((name, tuple(id(f) for f in fs)) for name, fs in patches.items())))


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.device == b.device and torch.equal(a, b)


@dataclass
class Entry:
    """A twin's inputs (the key) and its blurred x0 prediction."""
    call: int
    x: torch.Tensor
    t: torch.Tensor
    conds: tuple  # (c_crossattn, y, c_concat) rows
    denoised: torch.Tensor

    def matches(self, x, t, conds) -> bool:
        return _same(self.x, x) and _same(self.t, t) and all(_same(a, b) for a, b in zip(self.conds, conds))


@dataclass
class Window:
    """Per step: what the main pass stashed, until SEG's post-CFG function consumes it."""
    sigma: float | None = None
    fp: tuple | None = None
    entries: list[Entry] = field(default_factory=list)
    ambiguous: bool = False
    consumed: list[torch.Tensor] = field(default_factory=list)
    consumed_fp: tuple | None = None  # patches of the main pass that was consumed
    calls: int = 0
    served: int = 0
    missed: int = 0

    def restart(self, sigma: float) -> None:
        self.sigma, self.fp, self.entries, self.ambiguous = sigma, None, [], False
        self.consumed, self.consumed_fp = [], None

    def close(self) -> None:
        self.consumed += [e.x for e in self.entries]
        self.consumed_fp = self.fp if self.fp is not None else self.consumed_fp
        self.entries, self.fp, self.ambiguous = [], None, False


def _row_conds(c: dict, rows) -> tuple:
    out = []
    for name in ("c_crossattn", "y", "c_concat"):
        v = c.get(name)
        out.append(v[rows] if torch.is_tensor(v) else None)
    return tuple(out)


def _widen(value, idx: torch.Tensor, n: int):
    if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == n:
        return value[idx.to(value.device)]
    if isinstance(value, list) and value and all(torch.is_tensor(v) for v in value):
        return [_widen(v, idx, n) for v in value]
    return value


class ForkFlag:
    """Set once the batch really widened in this forward; everything else of the fork waits for it."""

    def __init__(self) -> None:
        self.on = False

    def __bool__(self) -> bool:
        return self.on


@contextmanager
def _forked_forward(unet: torch.nn.Module, fork_module: torch.nn.Module, n: int, idx: torch.Tensor, cou: list,
                    on_fork: Callable[[dict], None], sink: list, flag: ForkFlag):
    """While active, the UNet forward widens its batch from n to len(idx) rows at fork_module.

    The fork only happens when the fork module sees exactly the rows and chunks this wrapper saw: a wrapper
    inside ours that adds rows (another pack's reference branch, say) makes it a plain forward."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepBlock

    n_new = int(idx.numel())

    def pre(module, args, kwargs):
        x = args[0]
        if module is fork_module and not flag and x.shape[0] == n:
            options = args[2] if len(args) > 2 else kwargs.get("transformer_options")
            if not isinstance(options, dict) or list(options.get("cond_or_uncond") or []) != cou:
                return None
            x = _widen(x, idx, n)
            on_fork(options)
            flag.on = True
        if not flag or x.shape[0] != n_new:
            return None
        return (x,) + tuple(_widen(a, idx, n) for a in args[1:]), {k: _widen(v, idx, n) for k, v in kwargs.items()}

    def strip(module, inputs, output):
        if not flag or output.shape[0] != n_new:
            return None
        sink.append(output[n:])
        return output[:n]

    tail = [unet.middle_block, *unet.output_blocks]
    handles = [m.register_forward_pre_hook(pre, with_kwargs=True)
               for block in tail for m in block if isinstance(m, (TimestepBlock, SpatialTransformer))]
    handles.append(unet.out.register_forward_hook(strip))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _widen_all(args: tuple, kwargs: dict, idx: torch.Tensor, n: int) -> tuple[tuple, dict]:
    return tuple(_widen(a, idx, n) for a in args), {k: _widen(v, idx, n) for k, v in kwargs.items()}


def _batch_rows(args: tuple, kwargs: dict) -> set[int]:
    return {v.shape[0] for v in (*args, *kwargs.values()) if torch.is_tensor(v) and v.dim() > 0}


@contextmanager
def _forked_dit_forward(dit: torch.nn.Module, blocks: list[torch.nn.Module], final: torch.nn.Module | None, n: int,
                        idx: torch.Tensor, cou: list, on_fork: Callable[[dict], None], sink: list, flag: ForkFlag):
    """The DiT form: a transformer has no skip connections, so widening every per-row input (image and text
    tokens, modulation vector, RoPE table) at the first blurred block and again at each later block (they get
    the forward's unwidened locals) and at the final layer is all it takes. The output of the whole model is
    cut back to n rows."""
    n_new = int(idx.numel())
    first = blocks[0]

    def widened(args, kwargs):
        args, kwargs = _widen_all(args, kwargs, idx, n)
        options = kwargs.get("transformer_options")
        if isinstance(options, dict) and list(options.get("cond_or_uncond") or []) == cou:
            options = dict(options)  # each block may get its own copy of the options: widen the one it reads
            on_fork(options)
            kwargs["transformer_options"] = options
        return args, kwargs

    def pre(module, args, kwargs):
        if module is first and not flag:
            options = kwargs.get("transformer_options")
            if not isinstance(options, dict) or list(options.get("cond_or_uncond") or []) != cou \
                    or _batch_rows(args, kwargs) != {n}:
                return None
            flag.on = True
            return widened(args, kwargs)
        if not flag or n_new not in _batch_rows(args, kwargs):
            return None
        return widened(args, kwargs)

    def strip(module, inputs, output):
        if not flag or not torch.is_tensor(output) or output.shape[0] != n_new:
            return None
        sink.append(output[n:])
        return output[:n]

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in blocks]
    if final is not None:
        handles.append(final.register_forward_pre_hook(pre, with_kwargs=True))
    handles.append(dit.register_forward_hook(strip))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class PrefixFork:
    """Apply-model wrapper + stash for one SEG patch (one instance per patched model). On a DiT (dit=True)
    make_replace gives a joint-attention Op (patches/engine/dit_attention.py) instead of an attn1 make."""

    def __init__(self, uid: str, fork_key: tuple[str, int], replace_keys: list[tuple],
                 make_replace: Callable[[int, int, ForkFlag], Callable],
                 is_active: Callable[[Any, float], bool], dit: bool = False) -> None:
        self.dit = dit
        self.replay_key = f"conduit_seg_replay_{uid}"
        self.skip_key = f"conduit_seg_skip_{uid}"
        self.fork_key = fork_key  # (block, id) of the SpatialTransformer where the batch widens
        self.replace_keys = replace_keys
        self.make_replace = make_replace  # (n_orig, n_new, flag) -> make(inner) for the twin rows
        self.is_active = is_active
        self.state: RunState[Window] = RunState(Window)

    # -- apply-model wrapper -------------------------------------------------------------------------------
    def __call__(self, call: ApplyCall) -> torch.Tensor:
        opts = call.options
        if opts.get(self.replay_key):
            return self._serve(call)
        if opts.get(self.skip_key) or opts.get(FORKING_KEY):
            return call.proceed()
        sigma = float(call.t.flatten()[0])
        plan = self._plan(call, sigma)
        if plan is None:
            return call.proceed()
        return self._fork(call, sigma, *plan)

    def _plan(self, call: ApplyCall, sigma: float):
        opts = call.options
        cou = list(opts.get("cond_or_uncond") or [])
        if getattr(call.model, "diffusion_model", None) is None:
            return None  # wrapped by something that hides the model: run the ordinary pass
        if COND not in cou or not self.is_active(call.model, sigma):
            return None
        if any(k in opts.get("patches", {}) for k in UNSAFE_PATCHES):
            return None
        if self.dit and any(call.c.get(k) is not None for k in ("control", "attention_mask")):
            return None  # DiT ControlNet residuals and masks are added per row by the forward: not widened
        n = call.x.shape[0]
        if n % len(cou):
            return None
        win = self.state.at(sigma)
        if win.sigma != sigma:
            win.restart(sigma)
        fp = fingerprint(opts)
        slices = [s for kind, s in chunk_slices(n, cou) if kind == COND]
        if any(_same(call.x[s], seen) for s in slices for seen in win.consumed):
            # this step's blurred prediction was already used: another pack's extra pass, unless it carries
            # the main pass's own patches (the same step run again: a new run on a host without run resets)
            if win.consumed_fp is None or fp != win.consumed_fp:
                return None
            win.restart(sigma)
        if win.fp is not None and fp != win.fp:
            return None  # another pack's extra pass during this step
        if not self._fits(call, n + sum(s.stop - s.start for s in slices)):
            return None
        fork_module = self._fork_module(call.model)
        if fork_module is None:
            return None
        win.fp = fp
        return cou, slices, fork_module

    @staticmethod
    def _fits(call: ApplyCall, rows: int) -> bool:
        if call.x.device.type == "cpu":
            return True
        import comfy.model_management as mm

        shape = [rows] + list(call.x.shape[1:])
        return call.model.memory_required(shape) * 1.5 < mm.get_free_memory(call.x.device)

    def _fork_module(self, model) -> torch.nn.Module | None:
        """The transformer that holds the first blurred layer, where the batch widens (asked of the family)."""
        from ..engine.families import family_of_model
        from .guidance import NODE  # guidance imports this module, so its name is read at call time

        return family_of_model(model, NODE, ("unet", "dit")).transformer(model.diffusion_model, *self.fork_key)

    def _fork(self, call: ApplyCall, sigma: float, cou: list, slices: list[slice], fork_module) -> torch.Tensor:
        from ..engine.attention import chain_at
        from ..engine.host import options_with_replace

        n = call.x.shape[0]
        src = torch.cat([torch.arange(s.start, s.stop) for s in slices]).to(call.x.device)
        idx = torch.cat([torch.arange(n, device=src.device), src])
        n_new = int(idx.numel())
        mo = {"transformer_options": dict(call.options)}
        flag = ForkFlag()
        make = self.make_replace(n, n_new, flag)
        for key in self.replace_keys:
            if self.dit:
                from ..engine.dit_attention import options_with_block

                mo = options_with_block(mo, key[:2], make)
            else:
                mo = options_with_replace(mo, chain_at(mo, "attn1", key, make), "attn1", key)
        opts = mo["transformer_options"]
        opts[FORKING_KEY] = True
        patches = dict(opts.get("patches", {}))

        def widen_skip(h, hsp, transformer_options):
            if flag and h.shape[0] == n_new and hsp.shape[0] == n:
                hsp = _widen(hsp, idx, n)
            return h, hsp

        patches["output_block_patch"] = [widen_skip] + list(patches.get("output_block_patch", []))
        opts["patches"] = patches
        control = call.c.get("control")
        twin_chunks = len(slices)
        uuids = opts.get("uuids")

        def on_fork(options: dict) -> None:
            options["cond_or_uncond"] = cou + [COND] * twin_chunks
            if isinstance(uuids, list) and len(uuids) == len(cou):
                options["uuids"] = uuids + [u for u, kind in zip(uuids, cou) if kind == COND]
            if isinstance(control, dict) and control.get("middle"):
                control["middle"] = [_widen(r, idx, n) for r in control["middle"]]

        c = dict(call.c)
        c["transformer_options"] = opts
        sink: list = []
        with self._forked(call.model, fork_module, n, idx, cou, on_fork, sink, flag):
            out = call.run(call.x, call.t, c)
        if len(sink) != 1:
            log.debug("SEG fork did not take place in this call (%d outputs); the separate pass will run",
                      len(sink))
            return out
        denoised = call.model.model_sampling.calculate_denoised(call.t[src], sink[0].float(), call.x[src])
        self._stash(call, sigma, slices, denoised)
        return out

    def _forked(self, model, fork_module, n, idx, cou, on_fork, sink, flag):
        if not self.dit:
            return _forked_forward(model.diffusion_model, fork_module, n, idx, cou, on_fork, sink, flag)
        from ..engine.families import family_of_model
        from .guidance import NODE

        dit = model.diffusion_model
        tail = family_of_model(model, NODE, ("dit",)).blocks_from(dit, self.fork_key)
        return _forked_dit_forward(dit, tail, getattr(dit, "final_layer", None), n, idx, cou, on_fork, sink, flag)

    def _stash(self, call: ApplyCall, sigma: float, slices: list[slice], denoised: torch.Tensor) -> None:
        win = self.state.at(sigma)
        win.calls += 1
        start = 0
        for s in slices:
            size = s.stop - s.start
            entry = Entry(win.calls, call.x[s], call.t[s], _row_conds(call.c, s), denoised[start:start + size])
            start += size
            if any(e.call != entry.call and e.matches(entry.x, entry.t, entry.conds) for e in win.entries):
                win.ambiguous = True  # same inputs from two calls (e.g. two ControlNets): do not guess
            win.entries.append(entry)

    # -- replay -------------------------------------------------------------------------------------------
    def _serve(self, call: ApplyCall) -> torch.Tensor:
        win = self.state.at(float(call.t.flatten()[0]))
        cou = list(call.options.get("cond_or_uncond") or [0])
        out = []
        for _, s in chunk_slices(call.x.shape[0], cou):
            conds = _row_conds(call.c, s)
            hit = next((e for e in win.entries if e.matches(call.x[s], call.t[s], conds)), None)
            if hit is None:
                win.missed += 1
                out.append(torch.zeros_like(call.x[s]))
            else:
                win.served += 1
                out.append(hit.denoised.to(call.x.dtype))
        return torch.cat(out)

    def replay(self, args: dict) -> torch.Tensor | None:
        """The stashed blurred cond prediction for this post-CFG call, or None if the fork did not cover it."""
        from ..engine.host import calc_cond_batch, options_with_transformer_keys

        sigma = float(torch.as_tensor(args["sigma"]).flatten()[0])
        win = self.state.at(sigma)
        if win.sigma != sigma:
            win.restart(sigma)
        win.consumed.append(args["input"])  # later passes of this step (other packs') are not forked
        if not win.entries or win.ambiguous:
            win.close()
            return None
        conds = [{k: v for k, v in c.items() if k != "control"} if isinstance(c, dict) else c for c in args["cond"]]
        opts = options_with_transformer_keys(args["model_options"], **{self.replay_key: True})
        win.served = win.missed = 0
        try:
            out = calc_cond_batch(args["model"], [conds], args["input"], args["sigma"], opts)[0]
        finally:
            ok = win.served > 0 and win.missed == 0
            win.close()
        return out if ok else None

    def separate_pass_options(self, model_options: dict) -> dict:
        """Options for the ordinary blurred pass: this fork stays out of it."""
        from ..engine.host import options_with_transformer_keys

        return options_with_transformer_keys(model_options, **{self.skip_key: True})
