"""Turn one expert up or down and compare rewards.

Scores RESPONSES to PROMPT with the router's own weights and with expert K set to weight W (the others rescaled to
1 - W).
"""

from dataclasses import dataclass, field

from ..arguments import CheckpointArguments
from ..parsing import CommandParser


@dataclass
class SteerArguments:
    expert: int = field(metadata={"help": "K, the expert whose weight is set"})
    weight: float = field(metadata={"help": "W in [0, 1]; 0 removes the expert"})
    prompt: str = field(metadata={"help": "the prompt the router reads"})
    responses: list[str] = field(metadata={"help": "the responses to score"})


def make_parser() -> CommandParser:
    return CommandParser("steer", (CheckpointArguments, SteerArguments), doc=__doc__, positional=("checkpoint",))


def main(checkpoint: CheckpointArguments, steer: SteerArguments) -> None:
    from ...rewards import steer_responses
    from ...runtime import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint.checkpoint)
    result = steer_responses(model, tokenizer, steer.prompt, steer.responses, steer.expert, steer.weight)
    print("routing before: " + " ".join(f"{w:.3f}" for w in result["routing_before"]))
    print("routing after:  " + " ".join(f"{w:.3f}" for w in result["routing_after"]))
    print(f"{'reward before':>14} {'reward after':>13}  response")
    for response, before, after in zip(steer.responses, result["rewards_before"], result["rewards_after"]):
        print(f"{before:>14.4f} {after:>13.4f}  {response[:70]}")
