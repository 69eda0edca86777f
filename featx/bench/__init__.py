"""Pipelines and reports: a YAML pipeline checked (:mod:`.pipeline`) and run
(:mod:`.run`, with the networks' stages in :mod:`.stages`) into a report
(:mod:`.report`); several datasets in one suite (:mod:`.suite`, beside published
figures in :mod:`.references`); and the offline demo (:mod:`.demo`)."""
