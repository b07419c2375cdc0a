"""`smoe serve`: personalized rewards over HTTP, in the protocols RL trainers already speak (OpenRLHF, verl/vLLM,
TEI / huggingface_hub, and a native API with explanations), every request routed by its user through one shared
backbone pass, and new users learned from labeled pairs while serving."""

from .app import create_app
from .background import free_port, serving_in_background
from .errors import RequestError
from .service import RewardService

__all__ = ["RequestError", "RewardService", "create_app", "free_port", "serving_in_background"]
