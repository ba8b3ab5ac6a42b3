"""Readers: /proc, /sys, /etc, the kernel log and NVML as typed values.

Every reader takes a ``root`` path ("/" for this machine, a fixture or snapshot tree otherwise) and
never raises on bad input: a signal it cannot read comes back as ``None`` or an ``available=False``
value with the reason, never as zero. The types are dataclasses;
``snapshot.take_snapshot`` gathers them into one :class:`~baldr_ops.system.snapshot.Snapshot`.

Stable entry points other layers use: ``meminfo.read_meminfo(root)``, ``nvml.read_gpu_summary(root)``,
``kernel.memory_kill_evidence(since)``, ``snapshot.take_snapshot(root, interval)``.
"""
