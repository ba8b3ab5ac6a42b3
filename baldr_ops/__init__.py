"""baldr-ops: run big open models with MAX on unified-memory NVIDIA machines.

Layers (data flows one way): ``system`` readers -> ``doctor`` judges -> actors (``shim``,
``launch``, ``engines.max``) -> renderers in ``cli``. Keep imports here empty: ``baldr-ops --help``
and ``doctor`` must start fast and never pull in torch, transformers or MAX.
"""

__version__ = "0.1.0"
