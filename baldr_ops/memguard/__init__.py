"""The memory guard: keep a unified-memory host alive through model load and serving.

``policy`` judges samples (pure), ``sample`` reads them from the system readers, ``reclaim`` acts
on the page cache, ``blackbox`` keeps the last minutes where a reboot cannot erase them, and
``runtime`` puts these to work for an owner (launch's supervisor, compile). Below `launch` and
`compile`, which both use it; importing the package itself is free (doctor reads black boxes).
"""
