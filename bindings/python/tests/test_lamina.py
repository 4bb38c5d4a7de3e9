"""The Python bindings against the real default model (SmolLM2-135M-Instruct)."""

import json
import subprocess
import tempfile
import threading
import time

import pytest

import lamina
from conftest import CLI, MODEL

PROMPT = "The three primary colors are"
TEMPLATE = "Review: {text}\nSentiment:"
REVIEWS = [
    ("Absolutely delicious, I buy a box every month.", "positive"),
    ("Stale and tasteless, the bag arrived torn.", "negative"),
    ("My kids love these, great value for the price.", "positive"),
    ("Terrible aftertaste, I threw the rest away.", "negative"),
    ("Fresh, crunchy and not too sweet. Perfect.", "positive"),
    ("It made my dog sick. Never again.", "negative"),
    ("Best coffee I have had in years.", "positive"),
    ("Arrived melted and the seal was broken.", "negative"),
]


@pytest.fixture(scope="module")
def engine():
    return lamina.Engine(MODEL, lamina.EngineOptions())


def greedy(max_tokens=16):
    return lamina.GenerateParams(max_tokens=max_tokens, temperature=0.0)


def test_greedy_generation_matches_the_command_line(engine):
    g = engine.generate(PROMPT, greedy(), None)
    cmd = [CLI, "generate", "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "16"]
    if MODEL:
        cmd += ["--model", MODEL]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert out.endswith("\n")
    assert g.text == out[:-1]
    assert g.tokens_generated > 0
    assert g.stop_reason in (lamina.StopReason.MAX_TOKENS, lamina.StopReason.END_OF_SEQUENCE)
    assert g.decode_tokens_per_sec > 0


def test_listener_streams_pieces_and_stops_early(engine):
    pieces = []

    class Collect(lamina.TokenListener):
        def on_token(self, piece):
            pieces.append(piece)
            return len(pieces) < 3

    g = engine.generate(PROMPT, greedy(32), Collect())
    assert len(pieces) == 3
    assert g.stop_reason == lamina.StopReason.LISTENER
    assert g.text == "".join(pieces)
    full = engine.generate(PROMPT, greedy(32), None)
    assert full.text.startswith(g.text)


def test_two_chat_turns_reuse_the_cache(engine):
    messages = [lamina.ChatMessage(role="user", content="Name a fruit that is yellow.")]
    first = engine.chat(messages, greedy(24), None)
    assert first.text.strip()
    messages += [
        lamina.ChatMessage(role="assistant", content=first.text),
        lamina.ChatMessage(role="user", content="And one that is red?"),
    ]
    second = engine.chat(messages, greedy(24), None)
    assert second.text.strip()
    # The first turn's tokens came from the KV cache.
    assert second.prefill_tokens < second.prompt_tokens


def test_classify_gives_probabilities_that_sum_to_one(engine):
    scores = engine.classify("I loved it, delicious!", ["positive", "negative"], TEMPLATE)
    assert [s.label for s in scores] == ["positive", "negative"]
    assert abs(sum(s.probability for s in scores) - 1.0) < 1e-6
    assert all(0.0 < s.probability < 1.0 and s.log_prob < 0.0 for s in scores)


def examples():
    return lamina.TrainingData.EXAMPLES(
        examples=[lamina.TrainingExample.TEXT_LABEL(text=t, label=l) for t, l in REVIEWS],
        template=TEMPLATE,
    )


def test_fine_tune_save_load_and_swap_adapters(engine):
    events = []

    class Record(lamina.TrainListener):
        def on_event(self, event):
            events.append(event)
            return True

    config = lamina.TrainConfig(
        epochs=2, max_steps=4, batch_size=4, learning_rate=5e-3, validation_fraction=0.0, max_length=64
    )
    report = engine.fine_tune(examples(), config, Record())
    assert report.steps == 4 and not report.cancelled
    assert report.train_examples == len(REVIEWS)
    assert len(report.losses) == 4 and all(l > 0 for l in report.losses)
    assert report.tokens_per_sec > 0 and report.peak_gpu_bytes > 0
    steps = [e for e in events if isinstance(e, lamina.TrainEvent.STEP)]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    assert all(e.learning_rate > 0 and e.tokens_per_sec > 0 for e in steps)
    assert isinstance(events[0], lamina.TrainEvent.STARTED)
    assert isinstance(events[-1], lamina.TrainEvent.FINISHED)

    prompt = TEMPLATE.replace("{text}", "Stale, and it tasted of cardboard.")
    base = engine.generate(prompt, greedy(8), None)
    base_scores = engine.classify("Stale, and it tasted of cardboard.", ["positive", "negative"], TEMPLATE)
    with tempfile.TemporaryDirectory() as d:
        engine.save_adapter(d)
        config_json = json.load(open(f"{d}/adapter_config.json"))
        assert config_json["r"] == 8 and config_json["peft_type"] == "LORA"
        engine.load_adapter(d, "reviews")
    engine.set_adapters([lamina.AdapterWeight(name="reviews", scale=1.0)])
    tuned = engine.generate(prompt, greedy(8), None)
    tuned_scores = engine.classify("Stale, and it tasted of cardboard.", ["positive", "negative"], TEMPLATE)
    assert tuned.text != base.text
    assert abs(tuned_scores[0].probability - base_scores[0].probability) > 1e-3
    engine.clear_adapters()
    assert engine.generate(prompt, greedy(8), None).text == base.text


def test_cancel_from_another_thread(engine):
    started = threading.Event()

    class Signal(lamina.TrainListener):
        def on_event(self, event):
            if isinstance(event, lamina.TrainEvent.STEP):
                started.set()
            return True

    config = lamina.TrainConfig(epochs=50, batch_size=2, validation_fraction=0.0, max_length=64)
    result = {}

    def run():
        try:
            result["report"] = engine.fine_tune(examples(), config, Signal())
        except lamina.LaminaError.Cancelled as e:
            result["cancelled"] = str(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert started.wait(300)
    asked = time.monotonic()
    engine.cancel()
    t.join(120)
    assert not t.is_alive()
    assert "cancelled" in result, result
    assert time.monotonic() - asked < 60
    # The engine still works afterwards.
    assert engine.generate(PROMPT, greedy(4), None).tokens_generated > 0


def test_typed_errors():
    with pytest.raises(lamina.LaminaError.ModelNotFound) as e:
        lamina.Engine("/no/such/model.gguf", lamina.EngineOptions())
    assert "/no/such/model.gguf" in str(e.value)


def test_malformed_row_is_invalid_data(engine):
    bad = lamina.TrainingData.EXAMPLES(
        examples=[
            lamina.TrainingExample.PROMPT_COMPLETION(prompt="Hi", completion=" there"),
            lamina.TrainingExample.TEXT_LABEL(text="no prompt here", label="x"),
        ],
        template=None,
    )
    with pytest.raises(lamina.LaminaError.InvalidData) as e:
        engine.fine_tune(bad, lamina.TrainConfig(max_steps=1), None)
    assert "item 2" in str(e.value)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
        f.write('{"prompt": "a", "completion": "b"}\n{"prompt": 3\n')
        f.flush()
        with pytest.raises(lamina.LaminaError.InvalidData) as e:
            engine.fine_tune(lamina.TrainingData.FILE(path=f.name, template=None), lamina.TrainConfig(max_steps=1), None)
        assert f.name in str(e.value) and "line 2" in str(e.value)


def test_tokenize_and_device_info(engine):
    ids = engine.tokenize("Hello world")
    assert len(ids) >= 2 and all(isinstance(i, int) for i in ids)
    info = engine.device_info()
    assert info.backend and info.adapter_name
    assert info.peak_bytes >= info.bytes_in_use > 0


def test_a_listener_that_raises_stops_the_call_with_a_typed_error(engine):
    class Boom(lamina.TokenListener):
        def on_token(self, piece):
            raise ValueError("listener bug")

    with pytest.raises(lamina.LaminaError.Listener) as e:
        engine.generate(PROMPT, greedy(8), Boom())
    assert "listener bug" in str(e.value)

    class TrainBoom(lamina.TrainListener):
        def on_event(self, event):
            if isinstance(event, lamina.TrainEvent.STEP):
                raise RuntimeError("progress bar broke")
            return True

    config = lamina.TrainConfig(max_steps=3, batch_size=2, validation_fraction=0.0, max_length=64)
    with pytest.raises(lamina.LaminaError.Listener) as e:
        engine.fine_tune(examples(), config, TrainBoom())
    assert "progress bar broke" in str(e.value)
    # The engine still works afterwards.
    assert engine.generate(PROMPT, greedy(4), None).tokens_generated > 0


def test_listeners_may_call_cancel_and_device_info_but_not_the_engine_itself(engine):
    seen = {}

    class Reenter(lamina.TokenListener):
        def on_token(self, piece):
            seen["info"] = engine.device_info()
            engine.tokenize("again")  # would wait on itself forever: an error instead
            return True

    with pytest.raises(lamina.LaminaError.Listener) as e:
        engine.generate(PROMPT, greedy(4), Reenter())
    assert "inside one of its own listeners" in str(e.value)
    assert seen["info"].peak_bytes > 0

    class RaisesLaminaError(lamina.TokenListener):
        def on_token(self, piece):
            raise lamina.LaminaError.Cancelled("the app's own error")

    with pytest.raises(lamina.LaminaError.Listener) as e:
        engine.generate(PROMPT, greedy(4), RaisesLaminaError())
    assert "the app's own error" in str(e.value)

    class CancelsItself(lamina.TokenListener):
        def on_token(self, piece):
            engine.cancel()
            return True

    with pytest.raises(lamina.LaminaError.Cancelled):
        engine.generate(PROMPT, greedy(16), CancelsItself())
    assert engine.generate(PROMPT, greedy(4), None).tokens_generated > 0
