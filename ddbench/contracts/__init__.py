"""What a plugin writes against: the interfaces (:mod:`.interfaces`), a distillation's checkpoints
(:mod:`.checkpoint`), an artifact's training recipe (:mod:`.recipe`), the hooks
(:mod:`.hookspecs`), the analysis and executor kinds (:mod:`.analysis`, :mod:`.executor`), option
checks (:mod:`.options`) and a method's departures from its official code (:mod:`.deviations`)."""
