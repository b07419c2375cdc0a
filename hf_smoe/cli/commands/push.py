"""Upload a checkpoint folder to the Hub.

Uploads what the checkpoint owns (config, weights, remote code, tokenizer files, card) in one commit; nothing else in
the folder leaves the machine.
"""

from dataclasses import dataclass, field

from ..parsing import CommandParser


@dataclass
class PushArguments:
    checkpoint: str = field(metadata={"help": "a folder written by `smoe train` / `smoe demo`"})
    repo_id: str = field(metadata={"metavar": "ORG/NAME", "help": "the Hub repo (created if needed)"})
    private: bool = field(default=False, metadata={
        "help": "create the repo private (an existing one keeps its visibility)"})
    revision: str | None = field(default=None, metadata={"help": "branch to push to (created if needed)"})


def make_parser() -> CommandParser:
    return CommandParser("push", PushArguments, doc=__doc__, positional=("checkpoint", "repo_id"))


def main(push: PushArguments) -> None:
    from ...hub import push_checkpoint

    print(f"Pushed: {push_checkpoint(push.checkpoint, push.repo_id, private=push.private, revision=push.revision)}")
