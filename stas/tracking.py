"""Tracking: which run, denoising step and CFG branch a transformer call belongs to.

Read at call time from what the pipeline and the transformer say, never from a patched scheduler
(a wrapper around ``scheduler.step`` hides its signature, and diffusers pipelines inspect that
signature: CogVideoXDPMScheduler then loses its seeded noise). Each `HookContext` (``record``,
``steer``, ``enhance``) owns one `Tracker`; trackers share nothing and are removed on exit.

At each call of a hooked transformer (a forward pre-hook) the tracker reads, in this order:

1. **Cache context** (diffusers >= 0.42: ``transformer.cache_context(name, step_index=i,
   num_inference_steps=N)``). ``WanPipeline`` gives name ("cond" / "uncond"), step index and N;
   Wan image-to-video the name only; CogVideoX "cond_uncond" (its batch is ``[uncond, cond]``);
   Wan video-to-video none. diffusers stores the context only in the `StateManager` of stateful
   hooks, so the tracker registers one do-nothing stateful ``ModelHook`` (`_ContextProbe`) on each
   transformer to receive it. This is diffusers' semi-internal hook API (pinned: diffusers 0.42.x);
   it is used here and nowhere else.
2. **The run**: a pipeline call sets its scheduler's timesteps (a new tensor each time), so a new
   ``pipe.scheduler.timesteps`` object (or a new scheduler, swapped in at any time) starts a new run;
   so does a cache-context step index that goes back.
3. **The step**: the context's ``step_index`` where given; else a new step starts whenever
   ``pipe._current_timestep`` (set by every diffusers pipeline to the loop's ``t``; a new tensor
   object per step) is a different object than at the previous call. Identity, not value: reading
   the value would be a host sync. Steps are therefore the *executed* ones: video-to-video with
   strength 0.5 of 4 steps has 2 steps, at its own timesteps.
4. **Steps in the run** N: the context's ``num_inference_steps``, else ``pipe._num_timesteps``
   (the executed count every pipeline sets before its loop), else ``len(scheduler.timesteps)``.
5. **Branches**: the context name where it is a branch, else the adapter's call order / batch
   layout (`stas.adapters.Adapter.branches`), with CFG on when the pipeline's guidance scale > 1.

A bare transformer (no pipeline) is one run of one step; every call is step 0.

Devices and dtypes are never read from parameters (under offloading they sit on ``meta`` or the
CPU until used): hooks take them from the block output they see (`DeviceTensors`).

`block_skipped` tells whether diffusers' own step caches (FirstBlockCache, MagCache, SeaCache) or
layer skipping replaced a block's computation: such a block is neither recorded nor steered.

**Context parallelism** (diffusers 0.42: ``transformer.enable_parallelism(config=ContextParallelConfig(
ring_degree=... | ulysses_degree=...))``) is read from the transformer itself, at every call: its
``_parallel_config``. Wan's ``_cp_plan`` splits ``hidden_states`` along the token axis at the input of
``blocks.0`` and gathers at ``proj_out``, so every block hook sees one contiguous slice of the call's
video tokens (`TokenShard`: diffusers' ``tensor.chunk`` / ``tensor_split`` over the flattened
ring x ulysses mesh). A context that does not support it, or a split elsewhere than at block 0 (a
custom ``cp_plan``, another family), raises `ContextParallelError` on entering or at the first
transformer call, before any block runs.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.distributed
from diffusers.hooks.hooks import BaseState, HookRegistry, ModelHook, StateManager
from torch.nn import functional as F

from .adapters import get_adapter

if torch.distributed.is_available():
    import torch.distributed._functional_collectives as funcol


def _ref(obj):
    """A weak reference where possible (tensors, schedulers), else a strong one."""
    if obj is None:
        return lambda: None
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


class _ContextProbe(ModelHook):
    """A stateful diffusers hook that does nothing but receive the cache context of each call."""

    _is_stateful = True

    def __init__(self):
        super().__init__()
        self.state_manager = StateManager(_NoState)

    @property
    def context(self):
        return self.state_manager._context

    def reset_state(self, module):
        return module


class _NoState(BaseState):
    def reset(self, *args, **kwargs):
        pass


class Tracker:
    """Run / step / branch bookkeeping for one context (see module docstring).

    Public attributes, valid inside a listener's ``on_call``: ``run`` (0, 1, ... within this
    context), ``step``, ``num_steps``, ``call_in_step``, ``cfg``, ``branches`` ([(name, batch
    slice)]), ``layout`` (`stas.TokenLayout`), ``timestep`` (the pipeline's ``t`` tensor of this
    step, or None), ``input_device`` (device of the latent the transformer was called with),
    ``shard`` (`TokenShard` of this rank under diffusers' context parallelism, else None).
    """

    def __init__(self, adapter, listener):
        self.adapter = adapter
        self.listener = listener          # has on_run_start(tracker) and on_call(tracker)
        self.run = -1
        self.step = 0
        self.num_steps = 1
        self.call_in_step = 0
        self.cfg = False
        self.branches = [("cond", slice(None))]
        self.layout = None
        self.timestep = None
        self.input_device = None
        self.shard = None
        self._run_key = None              # weak refs of (scheduler, scheduler.timesteps) of this run
        self._t_ref = _ref(None)
        self._handles = []
        self._probes = []                 # (transformer, registry, hook name, registry created by us)

    # -- life cycle --------------------------------------------------------------------------
    def install(self):
        try:
            for t in self.adapter.transformers:
                self._handles.append(t.register_forward_pre_hook(self._pre_call, with_kwargs=True))
                self._add_probe(t)
        except BaseException:
            self.uninstall()
            raise

    def _add_probe(self, transformer):
        if not hasattr(transformer, "cache_context"):  # not a diffusers CacheMixin: no contexts to read
            return
        created = not hasattr(transformer, "_diffusers_hook")
        reg = HookRegistry.check_if_exists_or_initialize(transformer)
        name = f"stas_tracking_{id(self)}"
        reg.register_hook(_ContextProbe(), name)
        self._probes.append((transformer, reg, name, created))

    def uninstall(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for transformer, reg, name, created in self._probes:
            reg.remove_hook(name, recurse=False)
            if not reg.hooks:  # leave the module as found: no forward override, no empty registry
                fwd = transformer.__dict__.get("forward")
                if getattr(fwd, "__self__", None) is transformer and getattr(fwd, "__func__", None) is \
                        type(transformer).forward:
                    del transformer.__dict__["forward"]
                if created:
                    del transformer._diffusers_hook
        self._probes.clear()

    # -- what the call says --------------------------------------------------------------------
    def _context(self, transformer):
        for t, reg, name, _ in self._probes:
            if t is transformer:
                hook = reg.hooks.get(name)
                return hook.context if hook is not None else None
        return None

    def _pre_call(self, module, args, kwargs):
        ad = self.adapter
        pipe = ad.pipe
        ctx = self._context(module)
        step_index = getattr(ctx, "step_index", None)
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        self.input_device = x.device
        if pipe is None:  # a bare transformer: one run, one step
            new_run, step, t = self.run < 0, 0, None
        else:
            sched = getattr(pipe, "scheduler", None)
            ts = getattr(sched, "timesteps", None)
            key = (sched, ts)
            new_run = self.run < 0 or self._run_key is None or any(r() is not o for r, o in zip(self._run_key, key)) \
                or (step_index is not None and step_index < self.step)
            t = getattr(pipe, "_current_timestep", None)
            marker = t if t is not None else kwargs.get("timestep")  # a new object per step
            if new_run:
                self._run_key = tuple(_ref(o) for o in key)
            if step_index is not None:
                step = step_index
            elif new_run:
                step = 0
            else:
                step = self.step + (marker is None or marker is not self._t_ref())
            self._t_ref = _ref(marker)
        if new_run:
            self.run += 1
            self.step, self.call_in_step = step, 0
            self.num_steps = self._num_steps(ctx)
            self.cfg = ad.cfg_on()
        elif step != self.step:
            self.step, self.call_in_step = step, 0
        else:
            self.call_in_step += 1
        self.timestep = t if isinstance(t, torch.Tensor) else None
        self.layout = ad.layout(args, kwargs)
        cp = _context_parallel_for(self.listener, ad, module)
        self.shard = None if cp is None else TokenShard(*cp, self.layout.num_tokens)
        batch = ad.latent_shape(args, kwargs)[0]
        self.branches = ad.branches(getattr(ctx, "name", None), self.call_in_step, batch, self.cfg)
        if new_run:
            self.listener.on_run_start(self)  # may raise (e.g. K > N): before any block ran
        self.listener.on_call(self)

    def _num_steps(self, ctx) -> int:
        pipe = self.adapter.pipe
        if pipe is None:
            return 1
        n = getattr(ctx, "num_inference_steps", None)
        if n is None:
            n = getattr(pipe, "_num_timesteps", None)
        if n is None:
            ts = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
            n = 1 if ts is None else len(ts)
        return int(n)


def _context_parallel_for(context, adapter, transformer):
    """`context_parallel` of ``transformer``; raises `ContextParallelError` where it is on and the hook
    ``context`` does not support it."""
    cp = context_parallel(adapter, transformer)
    if cp is not None and not getattr(context, "supports_context_parallel", False):
        raise ContextParallelError(f"stas.{type(context).__name__} does not support diffusers' context parallelism "
                                   "(enable_parallelism with a ContextParallelConfig); run it on one GPU")
    return cp


def block_skipped(module) -> bool:
    """Whether a diffusers hook replaced ``module``'s computation in the call that just ran.

    True when one of the block's diffusers hooks is a step cache whose shared state says the
    remaining blocks are not computed (FirstBlockCache and MagCache ``should_compute = False``,
    SeaCache ``skip_remaining``; for the head block of FirstBlockCache the output is then the
    cache's estimate of the last block's output) or a layer-skip hook with dropout 1 (the block
    returns its input). Reads Python state only (no host sync). False for a block with no
    diffusers hooks, which is the case the compiled path sees.
    """
    reg = getattr(module, "_diffusers_hook", None)
    if reg is None:
        return False
    for hook in reg.hooks.values():
        if type(hook).__name__ == "TransformerBlockSkipHook" and math.isclose(getattr(hook, "dropout", 0.0), 1.0):
            return True
        sm = getattr(hook, "state_manager", None)
        if sm is None or getattr(sm, "_context", None) is None:
            continue
        state = sm.get_state()
        if getattr(state, "should_compute", True) is False or getattr(state, "skip_remaining", False) is True:
            return True
    return False


class ContextParallelError(NotImplementedError):
    """Raised where diffusers' context parallelism is on and STAS cannot map its token split."""


class TokenShard:
    """The contiguous slice of a call's video tokens that this rank's blocks see under diffusers'
    context parallelism, and the collectives that make per-rank reductions global.

    diffusers splits the (B, L, D) input of ``blocks.0`` along L over the W ranks of the flattened
    ring x ulysses mesh: ``tensor.chunk(W, 1)[rank]`` (``EquipartitionSharder``, L divisible by W,
    asserted by diffusers) or, with ``ulysses_anything`` / ``ring_anything``, ``tensor.tensor_split(W,
    1)[rank]`` (``PartitionAnythingSharder``: the first L mod W ranks hold one token more). Both are
    ``tensor_split``'s slices when W divides L, so ``sizes`` is that rule; rank r holds tokens
    ``[lo, hi)`` = ``[sum(sizes[:r]), sum(sizes[:r + 1]))``.

    Collectives are torch's functional ones (``torch.distributed._functional_collectives``, as
    diffusers' own Ulysses attention uses), each followed by its ``wait_tensor``: on CUDA the compute
    stream waits for the collective (no host sync); ``torch.compile`` traces both without a graph break.
    """

    def __init__(self, group, rank: int, world: int, num_tokens: int):
        self.group, self.rank, self.world, self.num_tokens = group, rank, world, num_tokens
        q, r = divmod(num_tokens, world)
        self.sizes = [q + (i < r) for i in range(world)]
        self.lo = sum(self.sizes[:rank])
        self.hi = self.lo + self.sizes[rank]

    def __repr__(self):
        return f"TokenShard(rank {self.rank} of {self.world}: tokens [{self.lo}, {self.hi}) of {self.num_tokens})"

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """(W, *t.shape): every rank's ``t`` (same shape on all ranks), in rank order."""
        g = funcol.wait_tensor(funcol.all_gather_tensor(t.contiguous(), 0, self.group))
        return g.view(self.world, *t.shape)

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise max of ``t`` over the ranks."""
        return funcol.wait_tensor(funcol.all_reduce(t, "max", self.group))

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's per-token values (hi - lo, ...) padded with zeros to max(sizes) tokens."""
        n = max(self.sizes) - x.shape[0]
        return x if n == 0 else F.pad(x, (0, 0) * (x.dim() - 1) + (0, n))

    def unpad(self, g: torch.Tensor) -> torch.Tensor:
        """(W, max(sizes), ...) gathered padded slices -> (num_tokens, ...) in sequence order."""
        if len(set(self.sizes)) == 1:
            return g.reshape(self.num_tokens, *g.shape[2:])
        return torch.cat([g[r, :n] for r, n in enumerate(self.sizes)])

    def gather_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's per-token values (hi - lo, ...) -> all tokens' values (num_tokens, ...)."""
        return self.unpad(self.all_gather(self.pad(x)))


_CP_SPLIT, _CP_GATHER = "ContextParallelSplitHook", "ContextParallelGatherHook"


def context_parallel(adapter, transformer):
    """``(process group, rank, world size)`` of diffusers' context parallelism on ``transformer``, or
    None when it is off.

    Raises `ContextParallelError` unless the split is the one `TokenShard` describes: the family's
    blocks return (B, L, D) video tokens (Wan), the first block's input ``hidden_states`` is split
    along dim 1 and no other block splits or gathers (diffusers' Wan ``_cp_plan``; a custom
    ``cp_plan`` that splits elsewhere is refused).
    """
    cp = getattr(getattr(transformer, "_parallel_config", None), "context_parallel_config", None)
    if cp is None:
        return None
    if adapter.family != "wan":
        raise ContextParallelError(f"stas: diffusers' context parallelism is supported for Wan transformers only "
                                   f"(the token split of diffusers' Wan _cp_plan); this is {adapter.family}")
    for i, blk in enumerate(adapter.blocks(transformer)):
        reg = getattr(blk, "_diffusers_hook", None)
        hooks = [] if reg is None else [h for h in reg.hooks.values() if type(h).__name__ in (_CP_SPLIT, _CP_GATHER)]
        spec = hooks[0].metadata.get("hidden_states") if len(hooks) == 1 and type(hooks[0]).__name__ == _CP_SPLIT \
            else None
        token_split = getattr(spec, "split_dim", None) == 1 and not getattr(spec, "split_output", True)
        if (i == 0) != token_split or (i > 0 and hooks):
            raise ContextParallelError(
                "stas: this context-parallel plan does not split the video tokens at the input of the first block "
                f"and nowhere else (block {i}: {[type(h).__name__ for h in hooks] or 'no split'}); record and steer "
                "support diffusers' Wan _cp_plan (enable_parallelism without cp_plan=...)")
    mesh = cp._flattened_mesh
    group = mesh.get_group()
    return group, torch.distributed.get_rank(group), mesh.size()


class DeviceTensors:
    """Small named tensors (indices, masks, positions) that follow the device of the block output.

    ``on(device)`` moves them all there, once, when a hook sees a block output on another device
    than they are on (offloading: the latent the transformer is called with may sit elsewhere
    than the block computation). Values are kept."""

    def __init__(self, **tensors):
        self.__dict__["_t"] = dict(tensors)

    def __getattr__(self, name):
        try:
            return self.__dict__["_t"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self.__dict__["_t"][name] = value

    def on(self, device) -> "DeviceTensors":
        t = self.__dict__["_t"]
        for k, v in t.items():
            if isinstance(v, torch.Tensor) and v.device != device:
                t[k] = v.to(device)
        return self


class HookContext:
    """Base for context managers that hook the blocks of a pipeline's transformer(s).

    Subclasses implement ``_validate()`` (raise before anything is registered), ``_register()``
    (return a list of hook handles) and may implement ``on_run_start(tracker)`` /
    ``on_call(tracker)`` (called by this context's own `Tracker`). On any exit every hook is
    removed, also when the body or a subclass's ``_close`` raises.
    """

    prepend = False  # register block hooks before (True) or after existing ones
    supports_context_parallel = False  # hooks that map diffusers' token split (`TokenShard`)

    def __init__(self, pipe):
        self.pipe = pipe
        self.adapter = get_adapter(pipe)
        self.tracker = None
        self._handles = []
        self._hooked = []

    def _validate(self):
        pass

    def _register(self) -> list:
        return []

    def on_run_start(self, tracker):
        pass

    def on_call(self, tracker):
        pass

    def _hook_blocks(self, block_ids, make_hook):
        """Register ``make_hook(i)`` as forward hook on block ``i`` of every transformer."""
        handles = []
        for t in self.adapter.transformers:
            blocks = self.adapter.blocks(t)
            for i in block_ids:
                handles.append(blocks[i].register_forward_hook(make_hook(i), prepend=self.prepend))
        return handles

    def __enter__(self):
        self._validate()
        self.adapter = get_adapter(self.pipe)  # the pipeline's components as they are now
        for t in self.adapter.transformers:  # context parallelism switched on before entering: checked now
            _context_parallel_for(self, self.adapter, t)
        self._hooked = list(self.adapter.transformers)
        self.tracker = Tracker(self.adapter, self)
        try:
            self.tracker.install()
            self._handles = self._register()
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def _remove_hooks(self):
        try:
            for h in self._handles:
                h.remove()
            self._handles = []
        finally:
            if self.tracker is not None:
                self.tracker.uninstall()

    def _close(self):
        """Finish the context's work (subclasses); hooks are removed by `__exit__` regardless."""

    def __exit__(self, exc_type, *exc):
        try:
            self._close()
        finally:
            self._remove_hooks()
        if exc_type is None and self.adapter.pipe is not None:
            now = get_adapter(self.pipe).transformers
            if any(a is not b for a, b in zip(now, self._hooked)) or len(now) != len(self._hooked):
                raise RuntimeError(f"{type(self).__name__}: the pipeline's transformer was replaced inside the "
                                   "context; the new one was not hooked. Swap components before entering.")
        return False
