"""probe kit: settle claims about attention heads with attention, causal and representational evidence."""

from probes.errors import ProbesError
from probes.models import load_model
from probes.prompts import PromptSet

__all__ = ["ProbesError", "PromptSet", "load_model"]
