"""The judge's YES threshold calibrated per description on the describing split: the threshold search, a judge
that says NO to everything but ranks perfectly, calibration that reads only describing prompts, a judge without
probabilities, and `smoe interpret --check-judge --calibrate-threshold` end to end."""

import json
import warnings
from unittest import mock

import numpy as np
import pytest
import torch

from hf_smoe.data import split_pairs
from hf_smoe.interpret import ReadingSettings
from hf_smoe.interpret.describe import distinct_prompts, interpret_experts
from hf_smoe.interpret.fidelity import calibrated_threshold, fidelity_sample
from hf_smoe.interpret.generators.base import Judgment
from hf_smoe.interpret.judge_checks import judge_agreement, judge_check_markdown, judge_check_prompts
from hf_smoe.interpret.prompts import judge_prompt
from test_interpret import Scripted, interpret_check, matches, pearson, tiny_lm  # noqa: F401 (tiny_lm: a fixture)


def brute_force_threshold(probabilities, targets) -> float:
    """Every candidate tried one by one: the best binary fidelity, ties to the candidate closest to 0.5."""
    values = sorted(set(probabilities))
    candidates = [values[0]] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [np.nextafter(values[-1], 2.0)]
    scores = [pearson([p >= t for p in probabilities], targets) for t in candidates]
    best = max(scores)
    return min((t for t, s in zip(candidates, scores) if abs(s - best) < 1e-12), key=lambda t: abs(t - 0.5))


def test_the_threshold_search_equals_a_brute_force_over_every_candidate():
    rng = np.random.default_rng(4)
    for _ in range(5):
        probabilities = np.round(rng.random(60), 2).tolist()  # repeated values among them
        targets = (rng.random(60) + 0.8 * np.asarray(probabilities)).tolist()
        chosen = calibrated_threshold(torch.tensor(probabilities, dtype=torch.float64), torch.tensor(targets))
        assert chosen == pytest.approx(brute_force_threshold(probabilities, targets), abs=1e-12)
    # nothing to tell thresholds apart (constant targets): the candidate closest to the judge's own 0.5
    assert calibrated_threshold(torch.tensor([0.1, 0.3, 0.45, 0.9]), torch.ones(4)) == pytest.approx(0.375)
    assert calibrated_threshold(torch.tensor([]), torch.tensor([])) == 0.5


class RecordingRanker(Scripted):
    """NO to every prompt, yet P(YES) is higher on every matching prompt (0.30-0.34) than on any other (0.05-0.09);
    records every prompt it judged (no describing of its own)."""

    def judge(self, prompts):
        self._record(prompts)
        return [Judgment(False, (0.3 if matches(prompt) else 0.05) + 0.01 * (len(prompt) % 5), "NO")
                for prompt in prompts]


CATEGORIES = ("cooking", "travel", "music")


def category_texts(first: int, count: int) -> tuple[list, list]:
    texts = [f"{category} question {i}" for i in range(first, first + count) for category in CATEGORIES]
    return texts, [text.split()[0] for text in texts]


def test_a_judge_that_says_no_but_ranks_perfectly_reaches_ideal_fidelity_once_calibrated():
    texts, categories = category_texts(0, 8)
    describing = category_texts(100, 8)
    descriptions = {category: category for category in CATEGORIES}
    judge = RecordingRanker()
    check = judge_agreement(judge, texts, categories, descriptions, calibration=describing)
    assert check["ideal_fidelity"] == 0.0  # the paper's binary answer: all NO, no variance
    # independently: each description's measuring answers at its threshold against its category membership
    fidelities = []
    for name in sorted(descriptions):
        threshold = check["thresholds"][name]
        assert 0.09 < threshold <= 0.30
        answers = [judgment.probability >= threshold for judgment in judge.judge(
            [prompt for prompt in judge.calls[:3 * len(texts)] if prompt_description(prompt) == name])]
        fidelities.append(pearson(answers, [c == name for c in categories]))
    assert np.mean(fidelities) == pytest.approx(1.0) and check["ideal_fidelity_calibrated"] == pytest.approx(1.0)
    assert all(check["yes_rates_calibrated"][name][c] == (c == name) for name in CATEGORIES for c in CATEGORIES)
    assert check["calibration_prompts"] == len(describing[0])
    lines = "\n".join(judge_check_markdown(check))
    assert "calibrated on 24 prompts of the describing half" in lines and "at the calibrated thresholds: 1.000" in lines


def prompt_description(prompt: str) -> str:
    return prompt.split("Feature description:\n")[1].split("\nInput text:")[0]


def test_calibration_reads_only_describing_prompts_and_sets_the_binary_answers():
    texts = [f"topic{i % 3} prompt{i}" for i in range(150)]  # 60 describing, 90 measuring
    describe_texts, measure_texts = texts[:60], texts[60:]
    routing = torch.softmax(3 * torch.randn(150, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    describe_routing, measure_routing = routing[:60], routing[60:]
    judge = RecordingRanker()
    plain = interpret_experts(Scripted(), judge, describe_routing, describe_texts, measure_routing, measure_texts,
                              random_baseline=False,
                              settings=ReadingSettings.paper(top_n=5, per_stratum=8))
    measured_calls = list(judge.calls)
    judge.calls.clear()
    result = interpret_experts(Scripted(), judge, describe_routing, describe_texts, measure_routing, measure_texts,
                               random_baseline=False,
                               settings=ReadingSettings.paper(top_n=5, per_stratum=8, calibrate_threshold=True))
    calibration_calls = [call for call in judge.calls if call not in measured_calls]
    assert calibration_calls and judge.calls[len(calibration_calls):] == measured_calls  # calibration first
    assert all(call.split("Input text:\n")[1].split("\nDecision rule:")[0] in describe_texts
               for call in calibration_calls)
    # each threshold is the search on the describing sample (seeded as the measuring one), then applied on test
    sampler = torch.Generator().manual_seed(0)
    for k, (expert, before) in enumerate(zip(result["experts"], plain["experts"])):
        rows, _ = fidelity_sample(describe_routing[:, k], sampler, 8)
        own = judge.judge([call for call in calibration_calls if prompt_description(call) == expert["description"]])
        assert len(own) == len(rows)
        probabilities = torch.tensor([j.probability for j in own], dtype=torch.float64)
        assert expert["threshold"] == calibrated_threshold(probabilities, describe_routing[rows, k])
        assert expert["judgments"] == [p >= expert["threshold"] for p in expert["yes_probabilities"]]
        assert expert["description_fidelity"] == pytest.approx(
            pearson(expert["judgments"], measure_routing[expert["sample"], k]), abs=1e-6)
        assert expert["fidelity_probability"] == before["fidelity_probability"]
        assert before["description_fidelity"] == 0.0 and "threshold" not in before


def test_a_judge_without_probabilities_warns_once_and_keeps_the_result():
    texts, categories = category_texts(0, 5)
    descriptions = {category: category for category in CATEGORIES}
    plain = judge_agreement(Scripted(), texts, categories, descriptions)
    with pytest.warns(UserWarning, match="no P\\(YES\\)") as caught:
        calibrated = judge_agreement(Scripted(), texts, categories, descriptions, calibration=category_texts(50, 5))
    assert calibrated == plain and len(caught) == 1
    routing = torch.softmax(torch.randn(15, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = interpret_experts(Scripted(), Scripted(), routing, texts, routing, texts,
                                   settings=ReadingSettings.paper(top_n=3, per_stratum=4))
        after = interpret_experts(Scripted(), Scripted(), routing, texts, routing, texts,
                                  settings=ReadingSettings.paper(top_n=3, per_stratum=4, calibrate_threshold=True))
    assert after.pop("settings")["calibrate_threshold"] and not before.pop("settings")["calibrate_threshold"]
    assert after == before


def test_smoe_interpret_check_judge_calibrate_threshold_end_to_end(checkpoint_and_data, tiny_lm, capsys):
    _, _, pairs, tmp_path = checkpoint_and_data
    descriptions = {"cooking": "asks about cooking or food", "programming": "asks about programming or code",
                    "health": "asks about health", "travel": "asks about travel"}
    (tmp_path / "descriptions.yaml").write_text("".join(f"{k}: {v}\n" for k, v in descriptions.items()))
    assert interpret_check(tmp_path, tiny_lm, tmp_path / "descriptions.yaml", "--check-prompts", "3",
                           "--calibrate-threshold") == 0
    out = capsys.readouterr().out
    assert "calibrated on" in out and "at the calibrated thresholds" in out
    check = json.loads((tmp_path / "checkpoint" / "interpretation.json").read_text())["results"]["judge_check"]
    assert check["job"]["calibrate_threshold"] is True and set(check["thresholds"]) == set(descriptions)
    assert -1 <= check["ideal_fidelity_calibrated"] <= 1 and check["ideal_fidelity"] is not None
    halves = split_pairs(pairs, seed=0, validation=0.0, test=0.5, group_by="prompt")
    texts, rows = distinct_prompts(halves["train"]["prompt"])
    expected = judge_check_prompts(texts, [halves["train"][row]["category"] for row in rows], 3, seed=0)
    assert check["calibration_prompts"] == len(expected[0])
    # the judge met only describing prompts while calibrating: a recording judge in its place
    judge = RecordingRanker()
    judge.identity = "recording"
    with mock.patch("hf_smoe.interpret.checkpoint.load_judge", return_value=judge):
        assert interpret_check(tmp_path, tiny_lm, tmp_path / "descriptions.yaml", "--check-prompts", "3",
                               "--calibrate-threshold", "--output-dir", str(tmp_path / "recorded")) == 0
    measuring, rows = distinct_prompts(halves["test"]["prompt"])
    measured = judge_check_prompts(measuring, [halves["test"][row]["category"] for row in rows], 3, seed=0)[0]
    asked = [judge_prompt(descriptions[name], text, "question") for half in (measured, expected[0])
             for name in sorted(descriptions) for text in half]
    assert judge.calls == asked and not set(expected[0]) & set(measuring)
