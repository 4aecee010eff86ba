"""Hook plumbing shared by `stas.record` and `stas.steer`.

* `StepTracker` knows, during a pipeline call, which denoising step and which classifier-free
  guidance branch the transformer is running. It wraps the pipeline scheduler's ``set_timesteps``
  (a new run starts; the number of steps N is known) and ``step`` (one denoising step ends) on the
  instance, and counts transformer calls in between. Every diffusers pipeline drives its scheduler
  this way, so no pipeline code is copied or replaced. One tracker per pipeline is shared by all
  active contexts (reference counted) and unpatched when the last one exits.
* `HookContext` is the context-manager base: it registers plain torch hooks and always removes
  them, also when the body raises.

Outside a pipeline (a bare transformer called by hand) every call is step 0 of one run, branch
``cond``.
"""

from __future__ import annotations

import weakref

import torch

from .adapters import get_adapter


class StepTracker:
    """Denoising step / CFG branch bookkeeping for one pipeline (see module docstring)."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.run = -1          # index of the current pipeline call (increments at set_timesteps)
        self.num_steps = 1     # N of the current run (1 outside a pipeline)
        self.step = 0          # current denoising step
        self.call_in_step = 0  # transformer calls seen in this step
        self.cfg = False       # classifier-free guidance on in the current run
        self.timesteps = None  # (N,) float CPU tensor of the run's timesteps (None outside a pipeline)
        self.layout = None     # TokenLayout of the current transformer call
        self.branches = [("cond", slice(None))]  # [(name, batch slice)] of the current call
        self.listeners = []    # objects with on_run_start(tracker) / on_call(tracker)
        self._handles = []
        self._sched = None
        self._refs = 0

    # -- life cycle --------------------------------------------------------------------------
    def acquire(self):
        if self._refs == 0:
            self._install()
        self._refs += 1

    def release(self):
        self._refs -= 1
        if self._refs == 0:
            self._uninstall()

    def _install(self):
        pipe = self.adapter.pipe
        sched = getattr(pipe, "scheduler", None) if pipe is not None else None
        if sched is not None:
            orig_set, orig_step = sched.set_timesteps, sched.step

            def set_timesteps(*args, **kwargs):
                out = orig_set(*args, **kwargs)
                self.timesteps = sched.timesteps.detach().float().cpu()
                self.cfg = self.adapter.cfg_on()
                self._new_run(len(sched.timesteps))
                return out

            def step(*args, **kwargs):
                out = orig_step(*args, **kwargs)
                self.step += 1
                self.call_in_step = 0
                return out

            sched.set_timesteps, sched.step = set_timesteps, step  # instance attributes shadow the class
            self._sched = sched
        try:
            for t in self.adapter.transformers:
                self._handles.append(t.register_forward_pre_hook(self._pre_call, with_kwargs=True))
                self._handles.append(t.register_forward_hook(self._post_call))
        except BaseException:
            self._uninstall()
            raise

    def _uninstall(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._sched is not None:
            for name in ("set_timesteps", "step"):
                self._sched.__dict__.pop(name, None)
            self._sched = None

    # -- events ------------------------------------------------------------------------------
    def _new_run(self, num_steps: int):
        self.run += 1
        self.num_steps, self.step, self.call_in_step = num_steps, 0, 0
        for lis in list(self.listeners):
            lis.on_run_start(self)  # may raise (e.g. K > N): the pipeline stops before any step

    def _pre_call(self, module, args, kwargs):
        if self.run < 0:  # called outside a pipeline: one run, one step
            self._new_run(1)
        if self._sched is None:
            self.step = 0
        self.layout = self.adapter.layout(args, kwargs)
        batch = self.adapter.latent_shape(args, kwargs)[0]
        self.branches = self.adapter.branches(self.call_in_step, batch, self.cfg)
        for lis in list(self.listeners):
            lis.on_call(self)

    def _post_call(self, module, args, output):
        self.call_in_step += 1


_TRACKERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def tracker_for(obj) -> StepTracker:
    """The shared `StepTracker` of a pipeline or transformer (created on first use)."""
    tr = _TRACKERS.get(obj)
    if tr is None:
        tr = _TRACKERS[obj] = StepTracker(get_adapter(obj))
    return tr


class HookContext:
    """Base for context managers that hook the blocks of a pipeline's transformer(s).

    Subclasses implement ``_validate()`` (raise before anything is registered), ``_register()``
    (return a list of hook handles) and may implement ``on_run_start``/``on_call`` (tracker events).
    """

    prepend = False  # register block hooks before (True) or after existing ones

    def __init__(self, pipe):
        self.pipe = pipe
        self.adapter = get_adapter(pipe)
        self.tracker = None
        self._handles = []

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
        self.tracker = tracker_for(self.pipe)
        self.tracker.acquire()
        try:
            self.tracker.listeners.append(self)
            self._handles = self._register()
        except BaseException:
            self._close()
            raise
        return self

    def _close(self):
        for h in self._handles:
            h.remove()
        self._handles = []
        if self.tracker is not None:
            if self in self.tracker.listeners:
                self.tracker.listeners.remove(self)
            self.tracker.release()
            self.tracker = None

    def __exit__(self, *exc):
        self._close()
        return False
