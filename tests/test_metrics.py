"""hf_smoe.metrics vs independent numpy implementations of App. A (Eq. 8-20) and hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from hf_smoe import metrics


# ---------------------------------------------------------------- independent numpy references (loops on purpose)

def np_top(weights_k, n):
    order = sorted(range(len(weights_k)), key=lambda i: (-weights_k[i], i))  # ties -> lower index
    return order[:n]


def np_spec_category(chosen, rejected, categories, labels):
    n, k = chosen.shape
    correct = chosen > rejected
    scores = []
    for e in range(k):
        rows = [i for i in range(n) if categories[i] == labels[e]]
        if not rows:
            continue
        acc = [np.mean([correct[i, j] for i in rows]) for j in range(k)]
        scores.append(acc[e] - np.mean(acc))
    return np.mean(scores) if scores else math.nan


def np_spec_top(chosen, rejected, routing, m):
    n, k = chosen.shape
    correct = chosen > rejected
    size = min(n, max(1, math.ceil(m * n / 100 - 1e-9)))
    scores = []
    for e in range(k):
        rows = np_top(list(routing[:, e]), size)
        acc = [np.mean([correct[i, j] for i in rows]) for j in range(k)]
        scores.append(acc[e] - np.mean(acc))
    return np.mean(scores)


def np_flip(base, steered, attributes, undesired=False):
    values = []
    for a in sorted(set(attributes.tolist())):
        rows = [i for i in range(len(base)) if attributes[i] == a and ((base[i] > 0) == undesired)]
        if not rows:
            continue
        for w in range(steered.shape[0]):
            values.append(np.mean([(steered[w, i] > 0) != undesired for i in rows]))
    return np.mean(values) if values else math.nan


def np_fidelity(z, p, experts):
    values = []
    for k in sorted(set(experts.tolist())):
        zk, pk = z[experts == k], p[experts == k]
        if len(zk) < 2 or zk.std() == 0 or pk.std() == 0:
            values.append(0.0)
        else:
            values.append(np.corrcoef(zk, pk)[0, 1])
    return np.mean(values)


def np_purity(routing, categories, labels, n):
    return np.mean([np.mean([categories[i] == labels[e] for i in np_top(list(routing[:, e]), n)])
                    for e in range(routing.shape[1])])


def np_labels(routing, categories, num_categories, n):
    labels = []
    for e in range(routing.shape[1]):
        counts = np.bincount([categories[i] for i in np_top(list(routing[:, e]), n)], minlength=num_categories)
        labels.append(int(np.argmax(counts)))  # argmax: first (lowest) category on ties
    return labels


def np_entropy(p):
    p = np.asarray(p, dtype=np.float64)
    return -sum(x * math.log(x) for x in p if x > 0)


# ---------------------------------------------------------------- random inputs

@pytest.fixture(params=[0, 1, 2])
def rng(request):
    return np.random.default_rng(request.param)


def routing(rng, n, k):
    logits = rng.normal(size=(n, k)) * 3
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


def t(x):
    return torch.as_tensor(np.asarray(x))


def test_random_basic_metrics(rng):
    n, k = 60, 4
    chosen, rejected = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    pi = routing(rng, n, k)
    assert metrics.pairwise_accuracy(t(chosen[:, 0]), t(rejected[:, 0])).item() == pytest.approx(
        np.mean(chosen[:, 0] > rejected[:, 0]))
    assert metrics.routing_entropy(t(pi)).item() == pytest.approx(
        np.mean([np_entropy(r) for r in pi]) / math.log(k), abs=1e-5)
    assert metrics.global_entropy(t(pi)).item() == pytest.approx(np_entropy(pi.mean(0)) / math.log(k), abs=1e-5)
    d = chosen - rejected
    corr = np.corrcoef(d.T)
    expected = np.mean([corr[i, j] ** 2 for i in range(k) for j in range(i + 1, k)])
    assert metrics.expert_correlation(t(chosen), t(rejected)).item() == pytest.approx(expected, abs=1e-5)


def test_random_category_metrics(rng):
    n, k, c = 80, 4, 3
    val, test = routing(rng, n, k), routing(rng, n, k)
    val_cat, test_cat = rng.integers(0, c, n), rng.integers(0, c, n)
    labels = metrics.expert_category_labels(t(val), t(val_cat), c, top_n=10)
    assert labels.tolist() == np_labels(val, val_cat, c, 10)
    assert metrics.category_coverage(labels, c).item() == pytest.approx(len(set(labels.tolist())) / c)
    assert metrics.expert_purity(t(test), t(test_cat), labels, top_n=10).item() == pytest.approx(
        np_purity(test, test_cat, labels.tolist(), 10))


def test_random_specialization(rng):
    n, k, c = 70, 5, 3
    chosen, rejected = rng.normal(size=(n, k)), rng.normal(size=(n, k))
    cat, labels = rng.integers(0, c, n), rng.integers(0, c, k)
    got = metrics.expert_specialization(t(chosen), t(rejected), t(cat), t(labels), c).item()
    assert got == pytest.approx(np_spec_category(chosen, rejected, cat, labels), abs=1e-6)
    pi = routing(rng, n, k)
    for m in (10, 25, 3.5):
        got = metrics.expert_specialization_top(t(chosen), t(rejected), t(pi), m).item()
        assert got == pytest.approx(np_spec_top(chosen, rejected, pi, m), abs=1e-6)


def test_random_flip_rates(rng):
    n, w, a = 90, 4, 3
    base, steered, attrs = rng.normal(size=n), rng.normal(size=(w, n)), rng.integers(0, a, n)
    assert metrics.flip_rate(t(base), t(steered), t(attrs)).item() == pytest.approx(np_flip(base, steered, attrs))
    assert metrics.undesired_flip_rate(t(base), t(steered), t(attrs)).item() == pytest.approx(
        np_flip(base, steered, attrs, undesired=True))


def test_random_fidelity(rng):
    n, k = 120, 4
    z, p, experts = rng.integers(0, 2, n), rng.random(n), rng.integers(0, k, n)
    got = metrics.description_fidelity(t(z), t(p), t(experts)).item()
    assert got == pytest.approx(np_fidelity(z.astype(float), p, experts), abs=1e-6)


# ---------------------------------------------------------------- hand-computed cases from the definitions

def test_specialization_category_by_hand():
    # 2 experts, categories 0/1, two examples each. Expert 0 right on both cat-0 pairs, expert 1 on none:
    # Acc_0(0)=1, Acc_1(0)=0 -> Spec_0 = 1 - 0.5 = 0.5; on cat 1 expert 1 right on 1/2, expert 0 on 1/2 -> Spec_1 = 0
    chosen = torch.tensor([[1., 0.], [1., 0.], [1., 1.], [0., 0.]])
    rejected = torch.zeros(4, 2)
    categories = torch.tensor([0, 0, 1, 1])
    labels = torch.tensor([0, 1])
    per = metrics.expert_specialization(chosen, rejected, categories, labels, 2, per_expert=True)
    assert per.tolist() == [0.5, 0.0]
    assert metrics.expert_specialization(chosen, rejected, categories, labels, 2).item() == 0.25


def test_specialization_category_with_no_examples():
    # expert 1 is labelled with category 2, which has no test example: left out of the mean
    chosen = torch.tensor([[1., 0.], [1., 0.]])
    rejected = torch.zeros(2, 2)
    per = metrics.expert_specialization(chosen, rejected, torch.tensor([0, 0]), torch.tensor([0, 2]), 3,
                                        per_expert=True)
    assert per[0].item() == 0.5 and math.isnan(per[1].item())
    assert metrics.expert_specialization(chosen, rejected, torch.tensor([0, 0]), torch.tensor([0, 2]), 3).item() == 0.5
    assert math.isnan(metrics.expert_specialization(chosen, rejected, torch.tensor([0, 0]), torch.tensor([1, 2]),
                                                    3).item())


def test_specialization_top_by_hand_with_ties_and_idle_expert():
    # N=10, m=10% -> one example per expert. Expert 1 has weight 0 everywhere (never the argmax): its top example is
    # the lowest index, 0 (stable tie order). Expert 0's top is example 3.
    pi = torch.zeros(10, 2)
    pi[:, 0] = 1.0
    pi[3, 0] = 2.0
    correct = torch.zeros(10, 2)
    correct[3, 0] = 1.0   # expert 0 right on its top example, expert 1 not: Spec_0 = 1 - 0.5
    correct[0, 0] = 1.0   # on example 0 (expert 1's top) expert 0 right, expert 1 wrong: Spec_1 = 0 - 0.5
    per = metrics.expert_specialization_top(correct, torch.zeros(10, 2), pi, 10, per_expert=True)
    assert per.tolist() == [0.5, -0.5]
    assert metrics.top_percent_count(10, 10) == 1 and metrics.top_percent_count(5, 10) == 1
    assert metrics.top_percent_count(101, 10) == 11 and metrics.top_percent_count(3, 100) == 3


def test_top_examples_tie_order():
    pi = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.5, 0.5]])
    assert metrics.top_examples(pi, 3).tolist() == [[2, 0, 1], [0, 1, 3]]


def test_purity_and_coverage_by_hand():
    pi = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    categories = torch.tensor([0, 0, 1, 0])
    labels = metrics.expert_category_labels(pi, categories, 3, top_n=2)
    assert labels.tolist() == [0, 0]  # expert 1's top-2 = {2 (cat 1), 3 (cat 0)}: a tie goes to category 0
    assert metrics.category_coverage(labels, 3).item() == pytest.approx(1 / 3)
    assert metrics.expert_purity(pi, categories, labels, top_n=2).item() == pytest.approx((1 + 0.5) / 2)


def test_flip_rate_by_hand():
    base = torch.tensor([-1., -1., 0., 2., 3.])  # misclassified at w=0: 0, 1, 2 (a tie is wrong); correct: 3, 4
    steered = torch.tensor([[1., -1., -1., 1., -1.],   # w1: 1/3 flips, 1/2 undesired
                            [1., 1., 0., 1., 1.]])     # w2: 2/3 flips, 0 undesired
    assert metrics.flip_rate(base, steered).item() == pytest.approx(0.5)
    assert metrics.undesired_flip_rate(base, steered).item() == pytest.approx(0.25)
    table = metrics.flip_rate(base, steered, return_table=True)
    assert table.shape == (1, 2) and table[0].tolist() == pytest.approx([1 / 3, 2 / 3])
    # bool flags are taken as correctness directly; a 1-D steered is one weight
    assert metrics.flip_rate(base > 0, steered[0] > 0).item() == pytest.approx(1 / 3)


def test_flip_rate_no_misclassified_pairs():
    base = torch.tensor([1., 1., -1.])
    steered = torch.tensor([[1., -1., 1.]])
    attrs = torch.tensor([0, 0, 1])  # attribute 0 has no misclassified pair -> left out; attribute 1 flips
    assert metrics.flip_rate(base, steered, attrs).item() == 1.0
    assert math.isnan(metrics.flip_rate(torch.ones(3), steered).item())
    assert math.isnan(metrics.undesired_flip_rate(-torch.ones(3), steered).item())


def test_fidelity_by_hand_and_constant_judgments():
    z = torch.tensor([1., 1., 0., 0.])
    p = torch.tensor([0.9, 0.7, 0.2, 0.0])
    expected = np.corrcoef([1, 1, 0, 0], [0.9, 0.7, 0.2, 0.0])[0, 1]
    assert metrics.description_fidelity(z, p).item() == pytest.approx(expected, abs=1e-6)
    # constant judgments (or constant routing) -> DF_k = 0, still averaged over experts
    experts = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    zz = torch.cat([z, torch.ones(4)])
    pp = torch.cat([p, torch.tensor([0.1, 0.5, 0.3, 0.2])])
    per = metrics.description_fidelity(zz, pp, experts, per_expert=True)
    assert per[1].item() == 0.0
    assert metrics.description_fidelity(zz, pp, experts).item() == pytest.approx(expected / 2, abs=1e-6)
    assert metrics.description_fidelity(z, torch.full((4,), 0.3)).item() == 0.0
    # an expert with no sample is left out
    per = metrics.description_fidelity(z, p, torch.zeros(4, dtype=torch.long), num_experts=2, per_expert=True)
    assert math.isnan(per[1].item())
    assert metrics.description_fidelity(z, p, torch.zeros(4, dtype=torch.long), num_experts=2).item() == \
        pytest.approx(expected, abs=1e-6)


def test_perfect_fidelity_is_one():
    z = torch.tensor([0, 1, 0, 1])
    assert metrics.description_fidelity(z, z.float() * 0.5 + 0.1).item() == pytest.approx(1.0)


def np_auc(scores, matches):
    """Every (matching, other) pair counted: 1 when the matching prompt scores higher, 1/2 on a tie."""
    positives = [s for s, m in zip(scores, matches) if m]
    negatives = [s for s, m in zip(scores, matches) if not m]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_judgment_auc_by_hand_with_a_tie():
    # matching 0.9, 0.8 vs other 0.8, 0.1: pairs 1 + 1 + 1/2 (the tie) + 1 = 3.5 of 4
    auc = metrics.judgment_auc(torch.tensor([0.9, 0.8, 0.8, 0.1]), torch.tensor([True, False, True, False]))
    assert auc.item() == pytest.approx(0.875)
    assert metrics.judgment_auc(torch.tensor([0.2, 0.1]), torch.tensor([True, False])).item() == 1.0
    assert metrics.judgment_auc(torch.tensor([0.2, 0.1]), torch.tensor([False, True])).item() == 0.0
    assert metrics.judgment_auc(torch.full((4,), 0.3), torch.tensor([True, False, True, False])).item() == 0.5
    for matches in (torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), torch.zeros(0).bool()):
        assert math.isnan(metrics.judgment_auc(torch.rand(len(matches)), matches).item())


@pytest.mark.parametrize("seed", range(4))
def test_judgment_auc_equals_counting_every_pair(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 12, size=60) / 11  # coarse values: many ties within and across the classes
    matches = rng.random(60) < 0.3
    got = metrics.judgment_auc(torch.tensor(scores), torch.tensor(matches)).item()
    assert got == pytest.approx(np_auc(scores, matches), abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_run_on_cuda():
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    pi = torch.softmax(torch.randn(50, 3, generator=g), dim=1)
    cat = torch.randint(0, 3, (50,), generator=g)
    labels = torch.tensor([0, 1, 2])
    cases = [
        (metrics.expert_specialization, (chosen, rejected, cat, labels, 3)),
        (metrics.expert_specialization_top, (chosen, rejected, pi)),
        (metrics.flip_rate, (chosen[:, 0], rejected.T)),
        (metrics.undesired_flip_rate, (chosen[:, 0], rejected.T, cat)),
        (metrics.description_fidelity, (cat % 2, pi[:, 0], cat)),
        (metrics.top_examples, (pi, 5)),
        (metrics.judgment_auc, (pi[:, 0], cat == 0)),
    ]
    for fn, args in cases:
        cpu = fn(*args)
        gpu = fn(*[a.cuda() if isinstance(a, torch.Tensor) else a for a in args])
        assert gpu.device.type == "cuda"
        torch.testing.assert_close(gpu.cpu(), cpu, equal_nan=True)
