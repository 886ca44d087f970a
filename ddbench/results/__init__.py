"""Results: the record of a cell (:mod:`~ddbench.results.records`), the store and the one reader
(:mod:`~ddbench.results.store`), a board's facts (:mod:`~ddbench.results.board`) rendered as the
Markdown boards (:mod:`~ddbench.results.leaderboard`) and the site (:mod:`~ddbench.results.site`),
the one plotting helper (:mod:`~ddbench.results.plotting`), regressions
(:mod:`~ddbench.results.compare`) and the table of a run (:mod:`~ddbench.results.report`).

None of these modules imports torch or the harness: boards and comparisons work from records
alone, with no plugin installed.
"""
