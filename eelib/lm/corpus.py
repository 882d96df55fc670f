"""The course language model's corpus: Tiny Shakespeare, read from a path or downloaded, its sha256
checked either way, and split by characters into a training and a validation part.

Used by the training of the model (`eelib.lm.train`) and of its exit heads (``python -m eelib.lm.exits
train``, `eelib.lm.exits`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from eelib._util.cache import DownloadError, data_dir, download, file_digest
from eelib.lm.model import END_OF_TEXT

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CORPUS_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
CORPUS_FILE = "tinyshakespeare.txt"


def load_corpus(path: str | os.PathLike | None = None, *, sha256: str = CORPUS_SHA256,
                timeout: float = 30.0) -> str:
    """The Tiny Shakespeare corpus as text, its sha256 checked.

    Args:
        path: a copy of the file. None: download it from ``CORPUS_URL`` into the eelib data
            cache (kept for next time; see `eelib._util.cache`).
        sha256: the expected digest.
        timeout: seconds before an unreachable download gives up.

    Raises:
        ValueError: the file at ``path`` has another sha256 (another or a damaged file).
        FileNotFoundError: no file at ``path``.
        DownloadError: the download failed or did not match the checksum.
    """
    if path is None:
        try:
            file = download(CORPUS_URL, data_dir() / CORPUS_FILE, checksum=sha256, algorithm="sha256",
                            timeout=timeout)
        except DownloadError as err:
            raise DownloadError(f"{err}. Offline, give a copy of the corpus: --corpus PATH") from err
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise FileNotFoundError(f"corpus={str(file)!r} is not a file; give the Tiny Shakespeare text "
                                    f"({CORPUS_URL}) or leave it out to download it")
        actual = file_digest(file, "sha256")
        if actual != sha256.lower():
            raise ValueError(f"corpus={str(file)!r} has sha256 {actual}, not {sha256.lower()}: it is not the "
                             f"Tiny Shakespeare text from {CORPUS_URL} (or it is damaged)")
    return file.read_text(encoding="utf-8")


def split_corpus(text: str) -> tuple[str, str]:
    """Split by characters: ``text[:len(text) * 9 // 10]`` trains, the rest (last 10%) validates."""
    cut = len(text) * 9 // 10
    return text[:cut], text[cut:]


# --- the tokenizer ---------------------------------------------------------------------------

def train_tokenizer(text: str, vocab_size: int) -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``text``, as a transformers tokenizer.

    ``<|endoftext|>`` is its only special token (bos, eos and unk, as in GPT-2).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT, model_max_length=None)
