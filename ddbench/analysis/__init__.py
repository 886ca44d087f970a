"""Running analyses of distilled data over a store's artifacts (:mod:`.runner`) and their pages
(:mod:`.pages`); the analysis interface itself is :mod:`ddbench.contracts.analysis`."""
