"""The whole paper as one campaign: which runs first (:mod:`.order`, the claims decided as early
as the GPU-hours allow), what a launch of many rows will do and cost (:mod:`.summary`), and how
far the campaign has come (:mod:`.progress`, read from the store)."""
