"""``mvfa-lite compare-official``: mvfa-lite and the official MVFA code on the same inputs
(one CLIP state dict, the official adapter initialisation, datasets staged in the official
layout), compared on scoring, one training epoch (against a one-ulp rounding yardstick) and
speed. book/benchmarks.md explains the method and shows a full run.

The official code is never changed in place: a staged copy runs, its one ``.to('cuda')``
made ``.to(x.device)``, in its own Python, under ``driver.py``.

* ``comparison``: :func:`~.comparison.compare_official`, the parts run in order, resumable;
* ``staging``: the official code and datasets staged, the programs run in their processes;
* ``agreement``: the measures of agreement and the pass marks;
* ``report``: the speed figures and the printed table;
* ``driver``: the script that observes a program in its own interpreter (torch only).
"""
