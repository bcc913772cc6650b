"""The audit's HTML report: the sections (:mod:`.html`, :mod:`.omissions`), the figures
(:mod:`.plots`) and the thumbnails and plots they embed (:mod:`.assets`)."""
