"""The five verdicts a claim can get, and what each means in the words the report shows beside its badge."""

VERDICTS: dict[str, str] = {
    "supported": "the head attends as claimed and patching it moves the answer: attention and effect agree",
    "attention_only": "the head attends as claimed but patching it changes nothing: the story is decorative",
    "effect_only": "the head matters for the answer, but not by attending where the claim says",
    "refuted": "the head neither attends as claimed nor matters for the answer",
    "inconclusive": "the intervals are too wide to decide with this many prompts",
}
