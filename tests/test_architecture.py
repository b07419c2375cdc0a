"""The package's layering, read from the source with `ast`: no import cycles, every room imports only from the
rooms below it, no module too long to read top to bottom. Lazy imports inside functions count like any other: a
cycle that only closes at run time is still a cycle."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "hf_smoe"
SOURCES = {PACKAGE: ROOT / "hf_smoe", f"{PACKAGE}.modeling": ROOT / "modeling"}

# The rooms from the bottom up: a room imports only from rooms on earlier lines, never from its own line's
# neighbours or from later lines. (`testing` serves the tests alone.)
LAYERS = (
    ("modeling",),                            # the remote code: torch and transformers only
    ("errors",),                              # the user-facing exception types
    ("runtime", "testing"),                   # devices and dtypes, loading models, output folders, processes
    ("losses",),                              # the objective (Eq. 2-7)
    ("metrics",),                             # the paper's metrics
    ("data",),                                # preference formats -> one pair schema; splits; users
    ("features",),                            # tokenizing pairs, the feature caches
    ("hub", "evaluation"),                    # model cards and pushing; evaluating a head, probes, plots
    ("training", "personalization", "interpret"),  # training; routers, adaptation, steering; describing experts
    ("rewards", "trl"),                       # rewards for online RL; the TRL trainer
    ("serve",),                               # the reward server
    ("reproduce", "bench"),                   # the paper's tables and figures; the benchmarks
    ("cli",),                                 # the `smoe` commands
)
LAYER_OF = {room: height for height, rooms in enumerate(LAYERS) for room in rooms}
MAX_LINES = 500


def module_files() -> dict:
    """{dotted module name: file} for every module of the package (the `evaluate` scripts included)."""
    modules = {}
    for prefix, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([prefix, *parts])] = path
    return modules


MODULES = module_files()


def is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def imported_modules(name: str, path: Path) -> set:
    """The package's modules that `name` imports, wherever the import statement stands."""
    package = name if is_package(name) else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import name` imports the submodule pkg.name when there is one, else pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def room(name: str) -> str:
    """The room a module belongs to: the first name below the package (`hf_smoe.data.formats.shp` -> `data`)."""
    return name.split(".")[1] if name != PACKAGE else PACKAGE


def test_every_room_has_a_layer():
    assert {room(name) for name in MODULES} - {PACKAGE} <= set(LAYER_OF)
    assert set(LAYER_OF) <= {room(name) for name in MODULES}


def test_no_import_cycles():
    """Depth-first search over the module graph; the first cycle found is reported as a chain of modules."""
    done, stack = set(), []

    def visit(name):
        if name in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(name):] + [name]))
        if name in done:
            return
        stack.append(name)
        for target in sorted(GRAPH[name]):
            visit(target)
        stack.pop()
        done.add(name)

    for name in sorted(GRAPH):
        visit(name)


def test_rooms_import_only_downward():
    upward = sorted(f"{name} ({room(name)}) imports {target} ({room(target)})"
                    for name, targets in GRAPH.items() if name != PACKAGE
                    for target in targets if room(target) != room(name) and target != PACKAGE
                    and LAYER_OF[room(target)] >= LAYER_OF[room(name)])
    assert not upward, "\n".join(upward)


def test_modules_never_import_the_package_root():
    """The root's `__init__` imports the rooms (it registers the model and names the public API), so a room that
    imported it back would close a cycle."""
    assert not sorted(name for name, targets in GRAPH.items() if PACKAGE in targets)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_too_long_to_read(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]}: {lines} lines"


def test_the_documented_public_names_stay_where_they_are_documented():
    """The names DESIGN.md marks as API, imported from the paths it gives them."""
    from hf_smoe import SMoERewardConfig, SMoERewardModel, SMoERewardOutput, evaluate_module_path  # noqa: F401
    from hf_smoe.losses import moe_preference_loss  # noqa: F401
    from hf_smoe.rewards import smoe_reward  # noqa: F401
    from hf_smoe.trl import SMoERewardTrainer  # noqa: F401

    assert callable(SMoERewardModel.from_backbone)
