"""Whether a sweep can run here, checked for every combination before any runs: the device
exists, each run fits in memory, and with --jobs N the N largest fit together.

It imports torch (a forward pass on the meta device per combination): a `--jobs N` sweep calls it on
one of its workers (local_pool.on_early_worker), so the sweep's own process stays without torch."""

from __future__ import annotations

import itertools
from typing import Any

from gradlab.config.experiment import validate
from gradlab.orchestrate.sweep_names import describe_values
from gradlab.orchestrate.sweep_plan import Member, SweepPlan, error_lines
from gradlab.vocab.datasets import known_input_shape
from gradlab.vocab.errors import ConfigError, GradlabError


def check_resources(plan: SweepPlan, jobs: int = 1) -> None:
    """The checks a run makes before it starts (the device exists, the run fits in memory), for
    every combination up front; ConfigError with every problem, naming the combinations. With
    `jobs` runs at once, the `jobs` largest of them must also fit together, in host memory (and
    on each device they share)."""
    from gradlab.build.memory import available_bytes, check_fits, human
    from gradlab.orchestrate.runner import resolve_device

    errors: list[tuple[dict[str, Any], list[str]]] = []
    needs: dict[str, list[tuple[int, Member]]] = {}  # device type -> (bytes at the peak, member)
    for member in plan.members:
        exp = validate(member.config)
        try:
            device = resolve_device(exp.device)
            shape = known_input_shape(exp.data)
            if shape is not None:
                need = check_fits(exp, shape, exp.data.classes, device.type)
                on_device = max(need.peak_training, need.peak_evaluation) - need.data
                if device.type == "cpu":
                    needs.setdefault("cpu", []).append((max(need.total, on_device + need.data), member))
                else:
                    needs.setdefault("cpu", []).append((need.data + need.generation, member))
                    needs.setdefault(device.type, []).append((on_device, member))
        except GradlabError as exc:
            errors.append((member.values, exc.lines))
    if errors:
        raise ConfigError(*error_lines(errors, plan.axes))
    if jobs <= 1:
        return
    for device_type, sizes in needs.items():
        largest = sorted(sizes, key=lambda item: item[0], reverse=True)[:jobs]
        together = sum(size for size, _ in largest)
        free = available_bytes(device_type)
        if len(largest) > 1 and free is not None and together > free:
            fits = max(1, sum(1 for _ in itertools.takewhile(lambda n: sum(s for s, _ in largest[:n]) <= free, range(1, len(largest) + 1))))
            raise ConfigError(
                f"--jobs {jobs}: {len(largest)} runs at once need up to {human(together)} of {device_type} memory together "
                f"(the largest: {describe_values(largest[0][1].values)} needs {human(largest[0][0])}) but {human(free)} is available; "
                f"use --jobs {fits} or fewer"
            )
