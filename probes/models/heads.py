"""How the kit names an attention head, in every stage: ``(layer, head)``, the query head's index within its layer
(grouped-query models: the key/value head it reads is :func:`probes.models.architecture.kv_head_of`). Plain types
only, so stages that must not load torch (a spec's checks, the report) can name heads too."""

Head = tuple[int, int]
