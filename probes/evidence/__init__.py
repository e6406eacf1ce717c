"""Evidence, per prompt and per head: the task metric and behaviour, attention, patching, attribution,
activations and probes. Each module measures one kind of evidence; none decides a verdict."""
