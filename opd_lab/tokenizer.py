"""A character-level tokenizer for the built-in lab, behind the Hugging Face API.

The lab's models read and write one character per token, which keeps the vocabulary
tiny (about a hundred entries) and makes every token in the token view a readable
character. It is a real `PreTrainedTokenizerFast`, saved with `save_pretrained`, so
sampling, scoring, the app and the notebooks treat lab models and real models alike.

Example:
    >>> tok = build_char_tokenizer()
    >>> ids = tok("12+34=")["input_ids"]
    >>> tok.decode(ids)
    '12+34='
    >>> tok.eos_token, tok.pad_token
    ('<eos>', '<pad>')
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
# Printable ASCII (letters, digits, punctuation, space) and newline.
CHARACTERS = sorted(set(string.printable) - set("\t\r\x0b\x0c"))


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """Build the lab's character tokenizer: special tokens first, then one id per character.

    Characters outside printable ASCII map to `<unk>`. No BOS is added automatically:
    prompts are encoded as they are, and completions end with `<eos>`.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character (newline included) is its own piece.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Concatenate pieces on decode instead of joining them with spaces.
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    return tokenizer
