"""Data: the source registry, row formatters, tokenizer, resumable streams, mixture and packing loader."""
