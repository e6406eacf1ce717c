"""Prompts: minimal pairs with named role positions (:mod:`.promptset`, :mod:`.roles`) and task generators."""
