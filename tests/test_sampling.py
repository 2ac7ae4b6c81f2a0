"""Sampling, penalties, stop conditions and logprobs, checked against transformers' processors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mistralrs import UserError, load
from mistralrs.backends import get_ops
from mistralrs.engine.params import SamplingParams
from mistralrs.engine.sampling import Sampler
from mistralrs.engine.stop import StopStrings

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 64


def logits_row(seed=0):
    return np.random.default_rng(seed).normal(0, 2.0, VOCAB).astype(np.float32)


def kept_by_transformers(logits, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> set[int]:
    from transformers.generation import logits_process as lp

    scores = torch.tensor(logits)[None] / temperature
    if top_k:
        scores = lp.TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1.0:
        scores = lp.TopPLogitsWarper(top_p)(None, scores)
    if min_p > 0.0:
        scores = lp.MinPLogitsWarper(min_p)(None, scores)
    return set(torch.nonzero(torch.isfinite(scores[0])).flatten().tolist())


@pytest.mark.parametrize(
    "settings",
    [{"top_k": 5}, {"top_p": 0.6}, {"min_p": 0.2}, {"top_k": 8, "top_p": 0.8}, {"top_p": 0.9, "min_p": 0.05}],
)
def test_filters_keep_the_same_tokens_as_transformers(backend, settings):
    ops = get_ops(backend, cpu=True)
    logits = logits_row(3)
    sampler = Sampler(ops, SamplingParams(temperature=0.8, seed=7, **settings), {}, VOCAB)
    drawn = Counter(int(ops.item(sampler.sample(ops.asarray(logits)))) for _ in range(600))
    kept = kept_by_transformers(logits, 0.8, **settings)
    assert set(drawn) <= kept
    # The most likely kept tokens must actually be drawn (the filter is not too strict).
    assert len(set(drawn)) >= min(len(kept), 3)


def test_sampling_frequencies_follow_softmax(backend):
    ops = get_ops(backend, cpu=True)
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0] + [-30.0] * (VOCAB - 5), dtype=np.float32)
    sampler = Sampler(ops, SamplingParams(temperature=1.0, seed=1), {}, VOCAB)
    n = 4000
    counts = Counter(int(ops.item(sampler.sample(ops.asarray(logits)))) for _ in range(n))
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    for token in range(5):
        stderr = np.sqrt(probs[token] * (1 - probs[token]) / n)
        assert abs(counts[token] / n - probs[token]) < 5 * stderr


def test_repetition_penalty_matches_transformers(backend):
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    ops = get_ops(backend, cpu=True)
    logits = logits_row(4)
    context = [1, 5, 5, 9, 30, 63]
    sampler = Sampler(ops, SamplingParams(repetition_penalty=1.3), {}, VOCAB)
    sampler.observe_prompt(context)
    ours = ops.to_numpy(sampler.process(ops.asarray(logits)))
    ref = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([context]), torch.tensor(logits)[None])[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6)


def test_presence_frequency_penalties_and_bias_follow_openai(backend):
    """OpenAI: logit -= presence * [count > 0] + frequency * count, over generated tokens."""
    ops = get_ops(backend, cpu=True)
    logits = logits_row(5)
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, logit_bias={3: 10.0, 4: -100.0})
    sampler = Sampler(ops, params, {}, VOCAB)
    for token in [7, 7, 7, 8]:
        sampler.observe(token)
    ours = ops.to_numpy(sampler.process(ops.asarray(logits)))
    expected = logits.copy()
    expected[7] -= 0.5 + 0.25 * 3
    expected[8] -= 0.5 + 0.25 * 1
    expected[3] += 10.0
    expected[4] -= 100.0
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_greedy_logprobs_match_transformers(backend, tiny_model_dir):
    folder = tiny_model_dir("llama")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    prompt = list(range(20, 52))
    llm = load(folder, backend=backend, dtype="f32")
    done = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True, top_logprobs=3))
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([prompt + done.token_ids])).logits[0], -1).numpy()
    for i, entry in enumerate(done.logprobs):
        row = ref[len(prompt) - 1 + i]
        assert entry.token_id == done.token_ids[i]
        assert entry.logprob == pytest.approx(row[entry.token_id], abs=1e-4)
        assert [t for t, _, _ in entry.top] == np.argsort(-row)[:3].tolist()
        assert entry.top[0][0] == entry.token_id  # greedy picks the top alternative


def test_same_seed_same_output(backend, tiny_model_dir):
    llm = load(tiny_model_dir("qwen3"), backend=backend, dtype="f32")
    prompt = list(range(40, 60))

    def sample(seed):
        return llm.generate(prompt, SamplingParams(temperature=1.0, seed=seed, max_tokens=24, ignore_eos=True))

    assert sample(11).token_ids == sample(11).token_ids
    assert sample(11).token_ids != sample(12).token_ids


def test_stream_pieces_join_to_text_and_stop_strings(backend, tiny_model_dir):
    llm = load(tiny_model_dir("qwen2"), backend=backend, dtype="f32")
    prompt = "def main():\n    return"
    greedy = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    stream = llm.stream(prompt, greedy)
    pieces = [chunk.text for chunk in stream]
    full = stream.completion
    assert "".join(pieces) == full.text == llm.tokenizer.decode(full.token_ids)
    assert full.finish_reason == "length" and full.usage.completion_tokens == 30
    # Stop at a string that appears in the middle of the greedy answer.
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=[stop]))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


def test_eos_ends_generation_without_appearing_in_text(backend, tiny_model_dir):
    llm = load(tiny_model_dir("qwen3"), backend=backend, dtype="f32")
    eos = sorted(llm.eos_token_ids)[0]
    done = llm.generate([10, 11, 12], SamplingParams(temperature=0, max_tokens=5, logit_bias={eos: 100.0}))
    assert done.token_ids == [eos] and done.text == "" and done.finish_reason == "stop"


def test_stop_strings_hold_back_partial_matches():
    stops = StopStrings(["</end>"])
    assert stops.feed("hello </e") == ("hello ", False)
    assert stops.feed("nd> ignored") == ("", True)
    stops = StopStrings(["<<"])
    assert stops.feed("a <") == ("a ", False)
    assert stops.feed("b") == ("<b", False)
    assert stops.flush() == ""


@pytest.mark.parametrize(
    "field, value",
    [("temperature", 3.0), ("top_p", 0.0), ("top_k", -1), ("min_p", 1.5), ("max_tokens", 0),
     ("presence_penalty", 5.0), ("top_logprobs", 50), ("repetition_penalty", 0.0)],
)
def test_invalid_sampling_params_name_the_field(field, value):
    with pytest.raises(UserError) as info:
        SamplingParams(**{field: value}).validate(VOCAB)
    assert info.value.param == field and field in info.value.message


def test_logit_bias_outside_vocabulary():
    with pytest.raises(UserError, match="outside the vocabulary"):
        SamplingParams(logit_bias={VOCAB + 5: 1.0}).validate(VOCAB)
