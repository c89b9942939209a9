"""Descriptions from a language model: the real transformers pipeline with a tiny random model, offline."""

import pytest
import torch

from core.adversarial.descriptions import llm_answer, llm_descriptions, llm_messages, load_text_generator
from core.errors import ConfigError, WeightsError
from tests.adversarial.tiny_sd import clip_bpe


@pytest.fixture(scope="module")
def generator():
    from transformers import CLIPTokenizer, GPT2Config, GPT2LMHeadModel, pipeline

    vocab, merges = clip_bpe(486)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=512)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=16, n_layer=2, n_head=2,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    return pipeline("text-generation", model=model, tokenizer=tokenizer, device="cpu")


def test_the_prompt_carries_the_papers_instructions():
    messages = llm_messages("square", "triangle", ["dotted", "a red object"], 50)
    prompt = messages[-1]["content"]
    assert "50 different" in prompt and "a square" in prompt and "Never mention a triangle" in prompt
    assert "plural" in prompt and "dotted, a red object" in prompt and messages[0]["role"] == "system"


def test_sampling_is_seeded_and_unusable_answers_fail_clearly(generator):
    first = llm_answer(generator, "square", "triangle", ["dotted"], n=3, seed=1, max_new_tokens=16)
    assert first == llm_answer(generator, "square", "triangle", ["dotted"], n=3, seed=1, max_new_tokens=16)
    assert first != llm_answer(generator, "square", "triangle", ["dotted"], n=3, seed=2, max_new_tokens=16)
    # a random model writes no numbered lines: a clear error, never an empty list
    with pytest.raises(ConfigError, match="no numbered descriptions"):
        llm_descriptions(generator, "square", "triangle", ["dotted"], n=3, seed=1, max_new_tokens=16)


def test_a_model_that_is_not_cached_fails_offline_with_the_way_out():
    with pytest.raises(WeightsError, match="leave --llm unset"):
        load_text_generator("meta-llama/Meta-Llama-3-8B-Instruct", "0" * 40)
