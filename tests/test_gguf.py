"""Any GGUF model as a generator or a backbone: a tiny random Qwen2 written with gguf-py's `GGUFWriter` (F32 tensors
under llama.cpp's names, a byte-level BPE vocabulary with merges, a ChatML template) is converted once into the cache
keyed by its digest, an interrupted conversion leaves nothing finished, a model cut into part packages is joined and
its digest checked, and `load_generator` runs on the result."""

import hashlib
import importlib
import itertools
import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import gguf
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from hf_smoe.bench import bench_judge
from hf_smoe.errors import InputError
from hf_smoe.interpret.generators.loading import load_generator
from hf_smoe.runtime import gguf_sources
from hf_smoe.runtime.gguf_sources import SplitModel, gguf_model_path
from hf_smoe.runtime.conversion import is_converted
from hf_smoe.runtime.loading import load_backbone_model, resolve_backbone
from hf_smoe.testing import CHATML_TEMPLATE, WORDS

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
ANSWERS = ["YES", "NO", "Yes", "No", "yes", "no"]
PACKAGES = itertools.count()


def byte_level_vocabulary():
    """(tokens in id order, merges as "a b" strings) of a small byte-level BPE that knows YES and NO whole."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=CONTROL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(WORDS + ANSWERS)] * 8 + ANSWERS * 50, trainer)
    vocab = tokenizer.get_vocab()
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return sorted(vocab, key=vocab.get), [m if isinstance(m, str) else " ".join(m) for m in merges]


def tiny_qwen2(vocab_size: int, seed: int = 0) -> Qwen2ForCausalLM:
    """A tiny Qwen2 causal LM with every weight drawn wide (biases and norms too), so a misplaced tensor shows."""
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=0,
                         eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def write_tiny_gguf(path: Path, seed: int = 0) -> Qwen2ForCausalLM:
    """Writes a tiny Qwen2 as an F32 GGUF file the way llama.cpp lays one out; returns the model written."""
    tokens, merges = byte_level_vocabulary()
    model = tiny_qwen2(len(tokens), seed)
    config = model.config
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_name("tiny-qwen2")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in CONTROL_TOKENS else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_chat_template(CHATML_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        stem, suffix = name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(the tiny GGUF file, the model it holds, its bytes)."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf"
    model = write_tiny_gguf(path)
    return path, model, path.read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_SMOE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def finished_conversions(cache: Path) -> list:
    return [folder for folder in (cache / "gguf").glob("*") if folder.is_dir() and is_converted(folder)]


def test_conversion_gives_the_original_model_keyed_by_digest(tiny, cache):
    path, model, data = tiny
    folder = gguf_model_path(str(path))
    assert folder.parent == cache / "gguf"
    assert folder.name == f"{hashlib.sha256(data).hexdigest()[:16]}-tiny-qwen2"
    converted = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert all(len(tokenizer.encode(answer, add_special_tokens=False)) == 1 for answer in ANSWERS)


def test_an_unchanged_file_is_neither_converted_nor_hashed_again(tiny, cache, monkeypatch):
    path = tiny[0]
    first = gguf_model_path(str(path))

    def fail(*args, **kwargs):
        raise AssertionError("converted or hashed again")

    monkeypatch.setattr("hf_smoe.runtime.conversion.convert_gguf", fail)
    monkeypatch.setattr(hashlib, "sha256", fail)
    assert gguf_model_path(str(path)) == first
    assert gguf_model_path(str(path.parent)) == first  # the folder holding it names the same file


def test_a_changed_file_converts_again(tiny, cache, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copyfile(tiny[0], path)
    first = gguf_model_path(str(path))
    other = write_tiny_gguf(path, seed=1)
    second = gguf_model_path(str(path))
    assert second != first and second.name.startswith(hashlib.sha256(path.read_bytes()).hexdigest()[:16])
    ids = torch.tensor([[5, 17, 42]])
    with torch.no_grad():
        torch.testing.assert_close(AutoModelForCausalLM.from_pretrained(second)(ids).logits, other(ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_an_interrupted_conversion_leaves_nothing_finished(tiny, cache, monkeypatch):
    path = tiny[0]

    def killed(*args, **kwargs):  # the weights are already written by now: the conversion stops midway
        raise KeyboardInterrupt

    monkeypatch.setattr("hf_smoe.runtime.conversion.AutoTokenizer.from_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        gguf_model_path(str(path))
    assert finished_conversions(cache) == []
    assert [p.name for p in (cache / "gguf").iterdir() if p.suffix != ".lock"] == ["digests.json"]
    monkeypatch.undo()
    monkeypatch.setenv("HF_SMOE_CACHE", str(cache))
    rerun = gguf_model_path(str(path))
    assert finished_conversions(cache) == [rerun]


def test_processes_converting_at_once_convert_once_and_all_get_the_folder(tiny, cache, monkeypatch):
    from hf_smoe.runtime import conversion

    calls, convert = [], conversion.convert_gguf

    def slow_convert(*args, **kwargs):  # long enough that the other thread asks while this one converts
        calls.append(args)
        time.sleep(0.5)
        convert(*args, **kwargs)

    monkeypatch.setattr(conversion, "convert_gguf", slow_convert)
    with ThreadPoolExecutor(max_workers=3) as pool:
        folders = list(pool.map(lambda _: gguf_model_path(str(tiny[0])), range(3)))
    assert len(calls) == 1 and len(set(folders)) == 1 and is_converted(folders[0])


def test_a_folder_with_two_gguf_files_is_one_error(tiny, cache, tmp_path):
    shutil.copyfile(tiny[0], tmp_path / "a.gguf")
    shutil.copyfile(tiny[0], tmp_path / "b.gguf")
    with pytest.raises(InputError, match=r"holds 2 GGUF files \(a\.gguf, b\.gguf\)"):
        gguf_model_path(str(tmp_path))
    with pytest.raises(InputError, match="no such GGUF file"):
        gguf_model_path(str(tmp_path / "missing.gguf"))


def test_a_gguf_file_is_a_backbone(tiny, cache):
    """`--backbone model.gguf`: the reward model's backbone is the converted model's base, whose last hidden state
    is the causal LM's own (the state before its output head), and a missing file is one error naming the flag."""
    path, model, _ = tiny
    assert resolve_backbone(str(path)) == str(gguf_model_path(str(path)))
    reward_model, tokenizer = load_backbone_model(str(path), "sparse", 3, seed=0)
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        hidden = reward_model.backbone(input_ids=ids).last_hidden_state
        expected = model(ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    with pytest.raises(InputError, match=r"^backbone: no such GGUF file"):
        resolve_backbone(str(path.with_name("missing.gguf")))


def test_other_specs_are_not_gguf(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert gguf_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") is None
    assert gguf_model_path(str(tmp_path)) is None  # a model folder stays a model folder


def write_parts(root: Path, package: str, chunks) -> None:
    """One package per chunk, holding it as data/partNN.bin (None: that part is not installed)."""
    for n, chunk in enumerate(chunks, start=1):
        if chunk is not None:
            (root / package.format(n=n) / "data").mkdir(parents=True)
            (root / package.format(n=n) / "__init__.py").write_text("raise ImportError('never imported')\n")
            (root / package.format(n=n) / "data" / f"part{n:02d}.bin").write_bytes(chunk)


@pytest.fixture
def split(tiny, tmp_path, monkeypatch):
    """(a SplitModel of the tiny GGUF cut in three, registered by name; its three chunks; a function that installs
    part packages on sys.path)."""
    data = tiny[2]
    part_size = math.ceil(len(data) / 3)
    chunks = [data[i:i + part_size] for i in range(0, len(data), part_size)]
    package = f"tiny_split_{next(PACKAGES)}_part{{n}}"  # a new name per test: importlib caches what it found
    model = SplitModel(name="tiny-split", package=package, parts=3, part_file="data/part{n:02d}.bin",
                       part_size=part_size, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(gguf_sources.SPLIT_MODELS, model.name, model)

    def install(parts):
        root = tmp_path / "site"
        write_parts(root, package, parts)
        monkeypatch.syspath_prepend(str(root))
        importlib.invalidate_caches()

    return model, chunks, install


def test_a_split_model_is_joined_checked_and_converted(split, tiny, cache):
    model, chunks, install = split
    install(chunks)
    folder = gguf_model_path("tiny-split")
    assert (cache / "gguf" / "tiny-split.gguf").read_bytes() == tiny[2]
    assert folder.name == f"{hashlib.sha256(tiny[2]).hexdigest()[:16]}-tiny-split" and is_converted(folder)


@pytest.mark.parametrize("damage, message", [
    ("missing", r"part 2 of 3 \(package tiny_split_\d+_part2\), which is not installed.*hf-smoe\[describer\]"),
    ("short", r"part 3 of tiny-split .* is \d+ bytes, expected \d+ bytes.*hf-smoe\[describer\]"),
    ("corrupt", r"sha256 [0-9a-f]{64}, not [0-9a-f]{64}: a part is damaged.*hf-smoe\[describer\]"),
    ("swapped", r"sha256 [0-9a-f]{64}, not [0-9a-f]{64}: a part is damaged"),
], ids=["missing", "short", "corrupt", "swapped"])
def test_a_damaged_split_model_is_one_error_and_leaves_no_join(split, cache, damage, message):
    model, chunks, install = split
    parts = list(chunks)
    if damage == "missing":
        parts[1] = None
    elif damage == "short":
        parts[2] = parts[2][:-1]
    elif damage == "corrupt":
        parts[1] = bytes([parts[1][0] ^ 1]) + parts[1][1:]
    else:
        parts[0], parts[1] = parts[1], parts[0]
    install(parts)
    with pytest.raises(InputError, match=message):
        gguf_model_path("tiny-split")
    assert not (cache / "gguf").exists() or not any(p.suffix in (".gguf", ".partial")
                                                    for p in (cache / "gguf").iterdir())


def test_load_generator_runs_a_gguf_file(tiny, cache, tmp_path):
    generator = load_generator(str(tiny[0]), cache_dir=tmp_path / "answers", show_progress=False)
    [answer] = generator.generate(["hello how are you today ?"], max_new_tokens=4)
    assert isinstance(answer, str)
    converted = finished_conversions(cache)
    assert converted == [gguf_model_path(str(tiny[0]))]


def test_bench_judge_takes_a_gguf_file_as_the_judge(tiny, cache):
    """`smoe bench judge --backbone x.gguf` times the converted model, as `--generator x.gguf` would run it."""
    results = bench_judge(str(tiny[0]), num_prompts=3, batch_size=2)[str(tiny[0])]
    assert results["prompts"] == 3 and results["batched_vs_one_at_a_time_max_probability_gap"] < 1e-4
    assert finished_conversions(cache) == [gguf_model_path(str(tiny[0]))]
