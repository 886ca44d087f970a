"""The artifact and its rules: how it is stored, admitted and counted (:mod:`.artifact`), its label
regimes (:mod:`.labels`), stages (:mod:`.stages`) and generator form (:mod:`.generator`)."""
