"""The `smoe` command line: one module per command under `commands/`, each a set of argument dataclasses parsed by
one shared `HfArgumentParser`-based parser (`parsing.py`) and a thin `main` over the library function it runs."""
