"""Which generator a command line names: `default` (the best offline model installed), `local` (the embedded SmolLM2), a
GGUF model (a `.gguf` file, a folder holding one, or a split model's name such as `qwen2.5-coder-1.5b-instruct`,
converted once), a causal LM's folder or Hub id, or an OpenAI-compatible server's URL, each behind the disk cache. A
new kind of generator is one more branch here."""

import warnings

from ...runtime import QWEN25_CODER_1_5B, default_generator_path, gguf_model_path, split_model_installed
from .cache import CachedGenerator
from .endpoint import EndpointGenerator
from .local import LocalGenerator


# The best small offline describer and judge measured (docs/results.md): the default once its extra is installed.
BEST_OFFLINE = QWEN25_CODER_1_5B


def default_generator_spec() -> str:
    """What `default` names: the best offline model when its part wheels are installed, else the embedded SmolLM2
    (with one warning saying what to install)."""
    if split_model_installed(BEST_OFFLINE):
        return BEST_OFFLINE.name
    warnings.warn(f"generator: the default describer and judge is the embedded SmolLM2-135M-Instruct, whose "
                  f"descriptions and judgments are close to chance; `pip install \"hf-smoe[{BEST_OFFLINE.extra}]\"` "
                  f"makes it {BEST_OFFLINE.name} (offline, 1.1 GB).", stacklevel=3)
    return "local"


def offline_generators() -> list:
    """The specs of the offline generators installed here: the embedded SmolLM2, and the best offline model when its
    extra is installed."""
    return ["local"] + ([BEST_OFFLINE.name] if split_model_installed(BEST_OFFLINE) else [])


def load_generator(spec: str = "default", *, model: str | None = None, cache_dir=None, device=None,
                   show_progress: bool = True) -> CachedGenerator:
    """A cached generator from a command-line spec: `default` (`default_generator_spec`), `local` (the embedded
    SmolLM2-135M-Instruct as a causal LM), a GGUF model, a folder or Hub id of any causal LM, or the URL of an
    OpenAI-compatible server (`model`: the model name it should use)."""
    if spec == "default":
        spec = default_generator_spec()
    if spec.startswith(("http://", "https://")):
        generator = EndpointGenerator(spec, model=model)
    else:
        generator = LocalGenerator(local_generator_source(spec), device=device)
    return CachedGenerator(generator, cache_dir=cache_dir, show_progress=show_progress)


def local_generator_source(spec: str) -> str:
    """The folder or Hub id a local generator spec loads from; GGUF models are converted on first use."""
    if spec == "local":
        return str(default_generator_path())
    converted = gguf_model_path(spec)
    return spec if converted is None else str(converted)


def judge_spec(generator: str, generator_model: str | None, judge: str | None, judge_model: str | None) -> tuple:
    """(spec, model) of the judge a command line names: the describer's unless `judge` / `judge_model` say
    otherwise."""
    return judge or generator, judge_model or generator_model


def load_judge(generator: str = "default", generator_model: str | None = None, judge: str | None = None,
               judge_model: str | None = None, cache_dir=None) -> CachedGenerator:
    """The cached judge of a command line alone (`judge_spec`), for work that needs no describer."""
    spec, model = judge_spec(generator, generator_model, judge, judge_model)
    return load_generator(spec, model=model, cache_dir=cache_dir)


def load_describer_and_judge(generator: str = "default", generator_model: str | None = None, judge: str | None = None,
                             judge_model: str | None = None, cache_dir=None) -> tuple:
    """The cached describer and judge of a command line; the judge defaults to the describer itself (one model
    loaded once)."""
    describer = load_generator(generator, model=generator_model, cache_dir=cache_dir)
    if judge_spec(generator, generator_model, judge, judge_model) == (generator, generator_model):
        return describer, describer
    return describer, load_judge(generator, generator_model, judge, judge_model, cache_dir)
