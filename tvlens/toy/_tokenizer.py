"""A word-level tokenizer for the embedded model (whitespace split, one token per word)."""

from __future__ import annotations

from pathlib import Path

from tvlens.toy._world import BOS, PAD, UNK, vocabulary


def build_tokenizer(directory: str | Path):
    """Write the toy tokenizer to ``directory`` and load it back with ``AutoTokenizer``.

    TransformerLens reloads tokenizers by ``name_or_path`` (to add BOS handling), so a
    tokenizer that only exists in memory does not survive ``HookedTransformer.set_tokenizer``;
    saving it to a directory first makes it a normal Hugging Face tokenizer.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(vocabulary())}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=BOS, pad_token=PAD, unk_token=UNK
    )
    fast.save_pretrained(str(directory))
    return load_tokenizer(directory)


def load_tokenizer(directory: str | Path):
    """Load the toy tokenizer saved by :func:`build_tokenizer` (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
