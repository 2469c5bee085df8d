"""What an architecture package written for transformers 4 needs under glmscore's transformers 5, applied once
right after the package is imported (``cards.import_package``).

LucaOne (``lucaone``) and LucaVirus (``lucavirus``), 1.1.1 (their README pins transformers 4.41.2):

- the masked-LM class declares its tied weights as transformers 4's list (``[embedding, decoder]``); transformers 5
  reads a mapping ``{tied: source}`` and fails inside ``post_init`` (``'list' object has no attribute 'keys'``), so
  the class cannot be built at all. The same tie is restated in transformers 5's form, before ``post_init``; nothing
  else of the class changes (the decoder is the token embedding, as transformers 4 tied it from
  ``tie_word_embeddings``).
- the tokenizer class is not registered with ``AutoTokenizer`` (the hub repositories name it through remote code);
  it is registered for the package's config class, so a folder or repository of the package's model type loads it
  without running a repository's code.

Its batch call is broken under transformers 5 as well (``batch_encode_plus``); the cards' ``seq_type`` field makes
``TokenPolicy`` call it one sequence at a time (models/tokenization.py).
"""

from __future__ import annotations

from types import ModuleType

# package -> (config class, masked-LM class, tokenizer class) in that package's namespace
LUCA = {
    "lucaone": ("LucaGPLMConfig", "LucaGPLMForMaskedLM", "LucaGPLMTokenizer"),
    "lucavirus": ("LucaVirusConfig", "LucaVirusForMaskedLM", "LucaVirusTokenizer"),
}


def adapt(name: str, module: ModuleType) -> None:
    """The package ``name``'s fixes, if glmscore knows it needs any (once per process: ``cards._import`` is cached)."""
    if name in LUCA:
        _adapt_luca(module, *LUCA[name])


def _adapt_luca(module: ModuleType, config_name: str, masked_name: str, tokenizer_name: str) -> None:
    import transformers
    from transformers import AutoTokenizer

    config_cls, masked_cls, tokenizer_cls = (getattr(module, n) for n in (config_name, masked_name, tokenizer_name))
    AutoTokenizer.register(config_cls, slow_tokenizer_class=tokenizer_cls, exist_ok=True)
    if int(transformers.__version__.split(".")[0]) < 5 or getattr(masked_cls, "_glmscore_tie", False):
        return
    post_init = masked_cls.post_init

    def restated_post_init(self):
        keys = getattr(self, "_tied_weights_keys", None)
        if isinstance(keys, list) and len(keys) == 2:  # [source (the embedding), tied (the decoder)]
            self._tied_weights_keys = {keys[1]: keys[0]}
        post_init(self)

    masked_cls.post_init = restated_post_init
    masked_cls._glmscore_tie = True
