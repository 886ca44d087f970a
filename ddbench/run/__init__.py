"""Running a benchmark: suites and their cells (:mod:`.suite`), the harness that runs a cell
(:mod:`.harness`), the distillation worker (:mod:`.worker`), published-row reproduction
(:mod:`.reproduce`) and what a run records about its environment (:mod:`.provenance`)."""
