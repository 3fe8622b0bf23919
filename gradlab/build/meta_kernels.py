"""PyTorch's Python meta kernels without torch._dynamo.

On the `meta` device most operations (addmm for a Linear, the activations, the norms) run PyTorch's
Python meta kernels and decompositions (torch._meta_registrations, torch._decomp, torch._refs). Each
is wrapped to keep torch.compile from tracing into it, and that wrapper imports torch._dynamo the
first time it is called (about 0.7 s on an idle 2-core machine, most of what a memory estimate
costs in a fresh process). gradlab never compiles, so where dynamo is not loaded yet every such
wrapper's function is marked as its own "dynamo-disabled" version, the cache the wrapper looks up
before it imports dynamo (orchestrate.train does the same for the optimizer). The same functions
run, so the shapes and the bytes are the same; a process that has imported dynamo is left alone.

The kernels still import sympy (elementwise type promotion checks for sympy expressions), which
costs about 0.3 s: that is the floor of a meta-device forward in a fresh process.
"""

from __future__ import annotations

import sys

_marked = False


def without_dynamo() -> bool:
    """Mark every dynamo-disable wrapper PyTorch has made so far so that calling it does not import
    torch._dynamo; False (nothing done) when dynamo is loaded already. Once per process: the
    wrappers are made when torch's modules are imported, which `import torch` has done."""
    global _marked
    if "torch._dynamo" in sys.modules:
        return False
    if _marked:
        return True
    import gc
    import types

    import torch._compile

    # every wrapper is a closure of this one code object, holding the wrapped function as `fn`
    wrapper_code = torch._compile._disable_dynamo(lambda: None).__code__
    cell = wrapper_code.co_freevars.index("fn")
    for obj in gc.get_objects():
        if type(obj) is types.FunctionType and obj.__code__ is wrapper_code:
            fn = obj.__closure__[cell].cell_contents
            if getattr(fn, "__dynamo_disable", None) is None:
                fn.__dynamo_disable = fn
    _marked = True
    return True
