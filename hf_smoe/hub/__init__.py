"""Publishing a checkpoint: its model card (`card`, rendered from `hub_cards/`) and its push to the Hugging Face Hub
(`push`). It renders results it is given and computes none, so it sits low among the rooms, beside evaluation:
training, `smoe interpret` and `smoe push` all write through it, and it needs nothing but the runtime.
"""

from .card import is_hub_id, write_expert_table, write_model_card
from .push import check_repo_id, push_checkpoint

__all__ = ["check_repo_id", "is_hub_id", "push_checkpoint", "write_expert_table", "write_model_card"]
